"""The built-in plugin notify_ui against a real dbus-daemon and real clients.

Each test starts a dbus-daemon of its own (a socket in its tmp dir, or an
abstract socket), never the machine's buses.  Clients: dbus-monitor,
``gdbus monitor --dest`` (a name watcher that only shows the owner's signals,
as a GDBusProxy does), and GLib's GMemoryMonitor itself (python3-gi).
"""

import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
from plugrig import Rig

from conftest import ALLOC
from memagent import aio
from memagent.core.levels import CRITICAL, LOW, NORMAL, Notification
from memagent.demo.memcg import Memcg
from memagent.ipc import dbus
from memagent.ipc.control import query
from memagent.plugins.notify_ui import (
    LMM_REPEAT_MS,
    LmmPacer,
    NotifyUi,
    action_summary,
    lmm_level,
)
from memagent.runtime.dispatch import Dispatcher
from support import need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = os.path.join(ROOT, "board", "common", "rootfs-overlay", "etc", "dbus-1", "system.d",
                      "memagent.conf")
OPEN_POLICY = ('<policy context="default"><allow send_destination="*" eavesdrop="true"/>'
               '<allow eavesdrop="true"/><allow own="*"/></policy>')
# Debian's /usr/share/dbus-1/system.conf default policy, without its daemon settings
SYSTEM_POLICY = """<policy context="default">
  <allow user="*"/><deny own="*"/><deny send_type="method_call"/>
  <allow send_type="signal"/>
  <allow send_requested_reply="true" send_type="method_return"/>
  <allow send_requested_reply="true" send_type="error"/>
  <allow receive_type="method_call"/><allow receive_type="method_return"/>
  <allow receive_type="error"/><allow receive_type="signal"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  <allow send_destination="org.freedesktop.DBus"
         send_interface="org.freedesktop.DBus.Introspectable"/>
</policy>"""
MONITOR_RULES = ["type='signal',interface='org.freedesktop.LowMemoryMonitor'",
                 "type='signal',interface='org.memagent.Agent1'",
                 "type='signal',interface='org.memagent.Test'"]
GLIB_CLIENT = """
from gi.repository import Gio, GLib
monitor = Gio.MemoryMonitor.dup_default()
print("monitor", type(monitor).__gtype__.name, flush=True)
monitor.connect("low-memory-warning", lambda m, level: print("warning", int(level), flush=True))
loop = GLib.MainLoop()
GLib.timeout_add(15000, loop.quit)
loop.run()
"""
AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


# -- a real bus and real clients --------------------------------------------------------


def start_bus(tmp: str, listen: str, policy: str, name: str = "bus.conf") -> Any:
    """Start a dbus-daemon of the test's own.  Returns: (process, address)."""
    for tool in ("dbus-daemon", "dbus-monitor", "gdbus"):
        if shutil.which(tool) is None:
            need("%s is not installed (Debian: dbus-daemon, dbus-bin, libglib2.0-bin)" % tool)
    conf = os.path.join(tmp, name)
    with open(conf, "w") as f:
        f.write("<busconfig><type>session</type><listen>%s</listen><auth>EXTERNAL</auth>"
                "%s</busconfig>\n" % (listen, policy))
    proc = subprocess.Popen(["dbus-daemon", "--config-file=" + conf, "--print-address",
                             "--nofork"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    address = proc.stdout.readline().strip() if proc.stdout else ""
    assert address.startswith("unix:"), proc.communicate(timeout=5)
    return proc, address


def stop(proc: "subprocess.Popen[str]") -> None:
    proc.terminate()
    proc.communicate(timeout=10)


@pytest.fixture
def bus(tmp_path: Any) -> Iterator[str]:
    """Yield the address of a fresh, permissive dbus-daemon (session type)."""
    proc, address = start_bus(str(tmp_path), "unix:path=%s/bus.sock" % tmp_path, OPEN_POLICY)
    try:
        yield address
    finally:
        stop(proc)


class Watcher:
    """A client process; a thread collects its output lines."""

    def __init__(self, cmd: List[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, **kwargs)
        self.lines: List[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> List[str]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=5)
        return self.lines


async def until(pred: Callable[[], bool], timeout_ms: int = 10000) -> bool:
    """Wait (letting the loop run) until ``pred()``.  Returns: whether it came."""
    deadline = aio.ticks_ms() + timeout_ms
    while not pred():
        if aio.ticks_ms() > deadline:
            return False
        await aio.sleep_ms(20)
    return True


async def monitors(address: str, prefix: Optional[List[str]] = None) -> List[Watcher]:
    """Start dbus-monitor and ``gdbus monitor --dest`` on ``address`` and
    wait until both listen.  Returns: [dbus-monitor, gdbus monitor]."""
    pre = prefix or []
    mon = Watcher(pre + ["dbus-monitor", "--address", address] + MONITOR_RULES)
    gmon = Watcher(pre + ["gdbus", "monitor", "--address", address,
                          "--dest", "org.freedesktop.LowMemoryMonitor"])
    probe = await dbus.connect(address, 2000)
    try:
        for _ in range(250):
            await probe.emit("/t", "org.memagent.Test", "Probe", "s", ("probe",), 300)
            if any("member=Probe" in line for line in mon.lines) and \
                    any("org.freedesktop.LowMemoryMonitor" in line for line in gmon.lines[1:]):
                return [mon, gmon]
            await aio.sleep_ms(40)
    finally:
        probe.close()
        await probe.wait_closed()
    raise AssertionError("monitors did not start: %s %s" % (mon.lines, gmon.lines))


SIGNAL = re.compile(r"^signal .* sender=(\S+) -> .* path=([^;]+); interface=([^;]+); "
                    r"member=(\w+)")
ARG = re.compile(r"^\s+(byte|string|uint64|int64) (.*)$")


def parse_monitor(lines: List[str]) -> List[Dict[str, Any]]:
    """Return: dbus-monitor's signals: sender, path, interface, member, args."""
    out: List[Dict[str, Any]] = []
    for line in lines:
        m = SIGNAL.match(line)
        if m:
            out.append({"sender": m.group(1), "path": m.group(2), "interface": m.group(3),
                        "member": m.group(4), "args": []})
            continue
        a = ARG.match(line)
        if a and out:
            kind, text = a.groups()
            out[-1]["args"].append(text.strip('"') if kind == "string" else int(text))
    return out


def gdbus_bytes(lines: List[str]) -> List[int]:
    """Return: the LowMemoryWarning levels ``gdbus monitor`` printed."""
    return [int(m.group(1), 16) for m in (
        re.search(r"\.LowMemoryWarning \(byte (0x[0-9a-f]+),\)", line) for line in lines) if m]


def pressure_complete(lines: List[str], count: int) -> bool:
    """Return: whether dbus-monitor printed ``count`` Pressure signals, all five args each."""
    got = [s for s in parse_monitor(lines) if s["member"] == "Pressure"]
    return len(got) >= count and all(len(s["args"]) == 5 for s in got)


def note(level: int, prev: int, eta_ms: Optional[int] = None,
         avail_kib: int = 20000) -> Notification:
    return Notification(aio.ticks_ms(), level, prev, "still" if level == prev else "avail",
                        avail_kib, 131072, eta_ms)


async def started(tmp: Any, bus_setting: str, plugin: Optional[NotifyUi] = None) -> NotifyUi:
    """The plugin started on its real services, their config pointing it at
    ``bus_setting``; its first connection attempt done."""
    plugin = plugin or NotifyUi()
    rig = Rig(str(tmp), "[notify_ui]\nbus = %s\n" % bus_setting, plugins=[plugin])
    await plugin.on_start(services=rig.services(plugin))
    await plugin.wait_connected()
    return plugin


# -- the pure parts -----------------------------------------------------------------------


def test_levels_pacing_and_summary() -> None:
    assert [lmm_level(NORMAL, None, 10000), lmm_level(LOW, None, 10000),
            lmm_level(LOW, 20000, 10000), lmm_level(LOW, 9999, 10000),
            lmm_level(CRITICAL, None, 10000)] == [0, 50, 50, 100, 255]
    p = LmmPacer()
    sent = []
    for t, byte in [(0, 50), (2000, 50), (4000, 100), (6000, 50), (8000, 255), (10000, 255),
                    (19000, 50), (23000, 255), (24000, 0), (25000, 50), (26000, 100)]:
        if byte == 0:
            p.recovered()
        elif p.due(byte, t):
            p.sent(byte, t)
            sent.append((t, byte))
    # escalations at once; the same or a lower level again only after 15 s;
    # NORMAL starts a new episode (50 at once at 25 s though sent at 19 s)
    assert sent == [(0, 50), (4000, 100), (8000, 255), (19000, 50), (23000, 255),
                    (25000, 50), (26000, 100)]
    assert LMM_REPEAT_MS == 15000
    assert action_summary({"action": "kill", "t_ms": 5, "wall": 1.0, "pid": 123,
                           "name": "browser", "freed_kib": 20480, "level": "CRITICAL"}) == \
        "kill pid 123 (browser) freed 20480 KiB level=CRITICAL"
    assert action_summary(None) == ""
    assert action_summary({"action": "source", "source": "psi", "was": None}) == \
        "source source=psi was=None"


# -- signals seen by real clients ---------------------------------------------------------


def test_real_clients_see_the_signals(bus: str, tmp_path: Any) -> None:
    async def main() -> Any:
        plugin = await started(tmp_path, bus)
        assert plugin.services is not None
        plugin.services.record_action("kill", pid=123, name="browser", freed_kib=20480)
        assert plugin.unavailable is None and plugin.status()["names"] == {
            "org.freedesktop.LowMemoryMonitor": "owned", "org.memagent.Agent1": "owned"}
        watchers = await monitors(bus)
        dispatcher = Dispatcher([plugin])
        for n in [note(LOW, NORMAL), note(LOW, LOW, eta_ms=5000), note(LOW, LOW, eta_ms=4000),
                  note(CRITICAL, LOW, eta_ms=800, avail_kib=9000),
                  note(CRITICAL, CRITICAL, eta_ms=700), note(NORMAL, CRITICAL, avail_kib=60000)]:
            await dispatcher.dispatch(n)
        # Each monitor prints on its own time: wait for both (CI saw dbus-monitor
        # still short of the last three Pressure signals when gdbus had all three).
        await until(lambda: len(gdbus_bytes(watchers[1].lines)) >= 3 and
                    pressure_complete(watchers[0].lines, 6), 5000)
        unique = plugin.conn.unique_name if plugin.conn else ""
        await plugin.on_stop()
        return unique, plugin, [w.stop() for w in watchers]

    unique, plugin, (mon, gmon) = aio.run(main())
    signals = [s for s in parse_monitor(mon) if s["member"] != "Probe"]
    lmm = [s for s in signals if s["member"] == "LowMemoryWarning"]
    assert [s["args"] for s in lmm] == [[50], [100], [255]], mon
    assert all(s["path"] == "/org/freedesktop/LowMemoryMonitor" and s["sender"] == unique and
               s["interface"] == "org.freedesktop.LowMemoryMonitor" for s in lmm)
    pressure = [s for s in signals if s["member"] == "Pressure"]
    assert all(s["path"] == "/org/memagent/Agent1" and s["interface"] == "org.memagent.Agent1"
               for s in pressure)
    summary = "kill pid 123 (browser) freed 20480 KiB"
    assert [s["args"] for s in pressure] == [
        ["LOW", 20000, 131072, -1, summary], ["LOW", 20000, 131072, 5000, summary],
        ["LOW", 20000, 131072, 4000, summary], ["CRITICAL", 9000, 131072, 800, summary],
        ["CRITICAL", 20000, 131072, 700, summary], ["NORMAL", 60000, 131072, -1, summary]]
    # the name watcher (what a GDBusProxy does) saw the owner's warnings
    assert gdbus_bytes(gmon) == [50, 100, 255], gmon
    assert plugin.sent == {"LowMemoryWarning": 3, "Pressure": 6} and plugin.errors == 0


def test_gmemorymonitor_reacts_unchanged(bus: str, tmp_path: Any) -> None:
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gi; gi.require_version('Gio', "
                            "'2.0'); from gi.repository import Gio; Gio.MemoryMonitor"],
                           capture_output=True)
    if probe.returncode != 0:
        need("GLib's GMemoryMonitor from Python (Debian: python3-gi gir1.2-glib-2.0)")
    script = os.path.join(str(tmp_path), "glib_client.py")
    with open(script, "w") as f:
        f.write(GLIB_CLIENT)

    async def main() -> List[str]:
        plugin = await started(tmp_path, bus)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus)  # GMemoryMonitor: the system bus
        app = Watcher(["/usr/bin/python3", script], env=env)
        # Its GDBusProxy asks for the properties once it sees the name's owner.
        assert await until(lambda: plugin.conn is not None and plugin.conn.answered > 0)
        dispatcher = Dispatcher([plugin])
        for n in [note(LOW, NORMAL), note(LOW, LOW, eta_ms=100), note(CRITICAL, LOW)]:
            await dispatcher.dispatch(n)
        await until(lambda: sum("warning" in line for line in app.lines) >= 3, 5000)
        await plugin.on_stop()
        return app.stop()

    lines = aio.run(main())
    assert lines[0] == "monitor GMemoryMonitorDBus", lines
    assert [line for line in lines if line.startswith("warning")] == \
        ["warning 50", "warning 100", "warning 255"], lines


def test_policy_file_on_a_system_like_bus(tmp_path: Any) -> None:
    if os.geteuid() != 0:
        need("root (the policy lets root own the names)")
    if shutil.which("setpriv") is None:
        need("setpriv (util-linux), to run a client as user nobody")
    tmp = str(tmp_path)
    # an abstract socket: user nobody needs no access to the test's tmp dir
    listen = "unix:abstract=memagent-test-%d-%d" % (os.getpid(), time.monotonic_ns())
    proc, address = start_bus(tmp, listen, SYSTEM_POLICY + "<include>%s</include>" % POLICY)
    bare, bare_address = start_bus(tmp, listen + "-bare", SYSTEM_POLICY, "bare.conf")

    async def main() -> Any:
        refused = await started(tmp_path / "a", bare_address)  # no policy file: root refused
        plugin = await started(tmp_path / "b", address)
        watchers = await monitors(address, AS_NOBODY)
        await Dispatcher([plugin]).dispatch(note(CRITICAL, NORMAL))
        await until(lambda: gdbus_bytes(watchers[1].lines) == [255] and
                    any(s["member"] == "LowMemoryWarning" and s["args"]
                        for s in parse_monitor(watchers[0].lines)), 3000)
        steal = subprocess.run(AS_NOBODY + [
            "gdbus", "call", "--address", address, "--dest", "org.freedesktop.DBus",
            "--object-path", "/org/freedesktop/DBus", "--method",
            "org.freedesktop.DBus.RequestName", "org.freedesktop.LowMemoryMonitor", "4"],
            capture_output=True, text=True, timeout=10)
        intro = await aio.wait_for_ms(_introspect(address), 10000)
        await plugin.on_stop()
        await refused.on_stop()
        return refused, [w.stop() for w in watchers], steal, intro

    try:
        refused, (mon, gmon), steal, intro = aio.run(main())
    finally:
        stop(proc)
        stop(bare)
    assert refused.unavailable is not None and "AccessDenied" in refused.unavailable
    assert "memagent.conf" in refused.unavailable
    assert [s["args"] for s in parse_monitor(mon) if s["member"] == "LowMemoryWarning"] == [[255]]
    assert gdbus_bytes(gmon) == [255], gmon  # user nobody receives the owner's signal
    assert steal.returncode != 0 and "AccessDenied" in steal.stderr, steal
    assert intro.returncode == 0 and "LowMemoryWarning" in intro.stdout, intro


async def _introspect(address: str) -> "subprocess.CompletedProcess[str]":
    """gdbus introspect as user nobody, run off the loop (the agent answers)."""
    def run() -> "subprocess.CompletedProcess[str]":
        return subprocess.run(AS_NOBODY + [
            "gdbus", "introspect", "--address", address, "--dest",
            "org.freedesktop.LowMemoryMonitor", "--object-path",
            "/org/freedesktop/LowMemoryMonitor"], capture_output=True, text=True, timeout=10)
    box: List[Any] = []
    thread = threading.Thread(target=lambda: box.append(run()))
    thread.start()
    await until(lambda: bool(box), 10000)
    thread.join()
    return box[0]


# -- no bus, a lost bus, a hostile bus ----------------------------------------------------


def test_no_bus_warns_once_and_stays_quiet(caplog: Any, tmp_path: Any) -> None:
    async def main() -> NotifyUi:
        plugin = await started(tmp_path, "unix:path=/nonexistent/memagent-bus")
        dispatcher = Dispatcher([plugin])
        for n in [note(LOW, NORMAL), note(LOW, LOW), note(CRITICAL, LOW), note(NORMAL, CRITICAL)]:
            await dispatcher.dispatch(n)
        return plugin

    with caplog.at_level(logging.DEBUG, logger="memagent"):
        plugin = aio.run(main())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "notify_ui" in warnings[0].getMessage() and "start dbus-daemon" in \
        warnings[0].getMessage()
    assert plugin.unavailable and "unix:path=/nonexistent/memagent-bus" in plugin.unavailable
    # the first retry waits for the backoff: one attempt, every event unsent
    assert plugin.attempts == 1 and plugin.unsent == 4 and plugin.sent["Pressure"] == 0


def test_agent_without_a_bus_runs_and_reports(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    proc_root = os.path.join(tmp, "proc")
    os.makedirs(proc_root)
    meminfo = os.path.join(proc_root, "meminfo")

    def write(avail_kib: int) -> None:
        with open(meminfo + ".new", "w") as f:
            f.write("MemTotal: 131072 kB\nMemFree: 4096 kB\nMemAvailable: %d kB\n" % avail_kib)
        os.replace(meminfo + ".new", meminfo)

    write(6000)
    conf = os.path.join(tmp, "m.conf")
    with open(conf, "w") as f:
        f.write("[plugins]\nenable = notify_ui\n[sources]\ncalm_interval_ms = 200\n"
                "[notify_ui]\nbus = unix:path=/nonexistent/memagent-bus\n")
    sock = os.path.join(tmp, "ctl.sock")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--source", "poll",
                              "--proc-root", proc_root, "--socket", sock, "-c", conf],
                             stderr=subprocess.PIPE, text=True)
    try:
        for avail in (100000, 6000, 100000, 6000):  # level changes: retries stay quiet
            time.sleep(0.8)
            write(avail)
        time.sleep(0.8)
        reply = aio.run(query(sock))
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=15)
    assert agent.returncode == 0, err
    plugins = {p["name"]: p for p in reply["status"]["plugins"]}
    assert "no D-Bus: unix:path=/nonexistent/memagent-bus" in plugins["notify_ui"]["unavailable"]
    assert plugins["notify_ui"]["state"]["sent"]["Pressure"] == 0
    assert err.count("plugin notify_ui: nothing will be sent") == 1, err
    assert err.count("level CRITICAL") >= 2, err


def test_a_lost_bus_is_logged_once_and_reconnected(tmp_path: Any, caplog: Any) -> None:
    tmp = str(tmp_path)
    listen = "unix:path=%s/bus.sock" % tmp

    async def main() -> Any:
        proc, address = start_bus(tmp, listen, OPEN_POLICY)
        plugin = NotifyUi()
        plugin.retry_first_ms = 50  # the backoff, shortened
        plugin = await started(tmp_path, address, plugin)
        conn = plugin.conn
        stop(proc)
        assert conn is not None and await until(lambda: conn.closed, 3000)
        await Dispatcher([plugin]).dispatch(note(LOW, NORMAL))  # lost; reconnect fails
        gone = plugin.unavailable
        proc, address = start_bus(tmp, listen, OPEN_POLICY)  # the same path (a new guid)
        watchers = await monitors(address)
        await aio.sleep_ms(100)  # past the (shortened) backoff
        await Dispatcher([plugin]).dispatch(note(CRITICAL, LOW))
        await until(lambda: gdbus_bytes(watchers[1].lines) == [255] and
                    pressure_complete(watchers[0].lines, 1), 3000)
        await plugin.on_stop()
        lines = [w.stop() for w in watchers]
        stop(proc)
        return plugin, gone, lines

    with caplog.at_level(logging.INFO, logger="memagent"):
        plugin, gone, (mon, gmon) = aio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "lost the D-Bus connection" in warnings[0], warnings
    assert gone is not None and "no D-Bus" in gone and plugin.unavailable is None
    assert gdbus_bytes(gmon) == [255], (gmon, mon)
    assert [s["args"][0] for s in parse_monitor(mon) if s["member"] == "Pressure"] == ["CRITICAL"]


async def _hostile(tmp: str, behaviour: Callable[[Any, Any], Any], timeout_ms: int) -> Any:
    """Serve ``behaviour`` on a Unix socket and connect to it.
    Returns: (error text, seconds taken)."""
    path = os.path.join(tmp, "fake.sock")
    server = await aio.start_unix_server(behaviour, path)
    start = time.monotonic()
    try:
        await dbus.connect("unix:path=" + path, timeout_ms)
        error = "connected"
    except dbus.DBusError as e:
        error = str(e)
    took = time.monotonic() - start
    server.close()
    await server.wait_closed()
    os.unlink(path)
    return error, took


async def _auth_ok(reader: Any, writer: Any) -> None:
    await reader.readline()
    writer.write(b"OK 0123456789abcdef0123456789abcdef\r\n")
    await reader.readline()  # BEGIN


async def _hold(reader: Any) -> None:
    while await reader.read(4096):
        pass


def test_hostile_bus_gives_a_clear_error_within_the_timeout(tmp_path: Any) -> None:
    async def closes(reader: Any, writer: Any) -> None:
        writer.close()

    async def garbage_line(reader: Any, writer: Any) -> None:
        await reader.readline()
        writer.write(b"HELLO THERE\r\n")
        await _hold(reader)

    async def silent(reader: Any, writer: Any) -> None:
        await _hold(reader)

    async def endless_line(reader: Any, writer: Any) -> None:
        writer.write(b"x" * 200000)
        await _hold(reader)

    async def binary_garbage(reader: Any, writer: Any) -> None:
        await _auth_ok(reader, writer)
        writer.write(b"\xff" * 64)
        await _hold(reader)

    async def huge_message(reader: Any, writer: Any) -> None:
        await _auth_ok(reader, writer)
        # a signal header announcing a 100 MiB body, then 2 MiB of it, then EOF
        writer.write(b"l\x04\x00\x01" + struct.pack("<III", 100 << 20, 1, 0))
        for _ in range(512):
            writer.write(b"\0" * 4096)
            await writer.drain()
        writer.close()

    expected = [(closes, "closed the connection during authentication"),
                (garbage_line, "authentication failed"), (silent, "no answer within 300 ms"),
                (endless_line, "authentication failed"), (binary_garbage, "protocol error"),
                (huge_message, "the bus closed the connection")]
    for behaviour, text in expected:
        error, took = aio.run(_hostile(str(tmp_path), behaviour, 300))
        assert text in error, (behaviour.__name__, error)
        assert took < 1.5, (behaviour.__name__, took)  # loose: the bound is 300 ms


def test_plugin_on_a_silent_bus_keeps_within_the_hook_timeout(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "silent.sock")

    async def main() -> Any:
        server = await aio.start_unix_server(lambda r, w: _hold(r), path)
        plugin = NotifyUi()
        plugin.retry_first_ms = 0  # retry at once: the hook pays a whole connect timeout
        plugin = await started(tmp_path, "unix:path=" + path, plugin)
        start = time.monotonic()
        await Dispatcher([plugin], hook_timeout_ms=2000).dispatch(note(LOW, NORMAL))
        took = time.monotonic() - start
        server.close()
        await server.wait_closed()
        return plugin, took

    plugin, took = aio.run(main())
    assert plugin.unavailable and "no answer within 1000 ms" in plugin.unavailable
    assert plugin.attempts == 2 and 0.9 < took < 1.9, took


# -- end to end: the agent on a memcg under real pressure ---------------------------------


@pytest.mark.memcg
def test_agent_under_real_pressure_warns_the_ui(memcg: Memcg, bus: str, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    conf = os.path.join(tmp, "m.conf")
    with open(conf, "w") as f:
        f.write("[plugins]\nenable = notify_ui\n[notify_ui]\nbus = %s\n" % bus)
    events_path = os.path.join(tmp, "events.jsonl")

    async def main() -> List[List[str]]:
        watchers = await monitors(bus)
        agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", memcg.path,
                                  "--no-socket", "-c", conf, "--events-json", events_path],
                                 stderr=subprocess.PIPE, text=True)
        assert await until(lambda: any("is owned by" in x for x in watchers[1].lines), 15000)
        hog = memcg.spawn(ALLOC + ["--rate", "10"], stdout=subprocess.DEVNULL)
        await until(lambda: hog.poll() is not None, 60000)
        await aio.sleep_ms(1500)  # the recovery after the OOM kill
        agent.terminate()
        _, err = agent.communicate(timeout=15)
        assert agent.returncode == 0, err
        return [w.stop() for w in watchers]

    mon, gmon = aio.run(main())
    with open(events_path) as f:
        changes = [e for e in map(json.loads, f) if e.get("prev_level", e.get("level"))
                   != e.get("level")]
    signals = parse_monitor(mon)
    lmm = [s["args"][0] for s in signals if s["member"] == "LowMemoryWarning"]
    pressure = [s["args"] for s in signals if s["member"] == "Pressure"]
    assert lmm and lmm[0] in (50, 100), lmm
    assert (255 in lmm) == any(e["level"] == "CRITICAL" for e in changes), (lmm, changes)
    if 255 in lmm:  # escalations only, up to CRITICAL
        up = lmm[:lmm.index(255) + 1]
        assert up == sorted(set(up)), lmm
    assert gdbus_bytes(gmon) == lmm
    # a Pressure per level change (the dispatcher may coalesce two quick
    # changes into the newer one), plus reminders, with the agent's numbers
    levels = [p[0] for i, p in enumerate(pressure) if i == 0 or pressure[i - 1][0] != p[0]]
    wanted = iter([e["level"] for e in changes])
    assert all(level in wanted for level in levels), (levels, changes)  # a subsequence
    assert levels[0] == changes[0]["level"] == "LOW" and levels[-1] == changes[-1]["level"]
    first = pressure[0]
    assert first[1:3] == [changes[0]["avail_kib"], changes[0]["total_kib"]], (first, changes[0])
