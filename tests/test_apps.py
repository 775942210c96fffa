"""The app registry behind a real control socket, with real client processes.

Clients are separate processes (a stdlib-only script run by the system
python, some as uid 65534 through setpriv) or raw sockets in threads; the
agent side (ControlServer + AppRegistry) runs in the test's event loop.
Memory is measured by the registry from the children's smaps_rollup.
"""

import asyncio  # the test drives the loop; the package itself uses memagent.aio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional

import pytest

from memagent import aio
from memagent.core.config import Config
from memagent.core.levels import CRITICAL, LOW, NORMAL, Notification
from memagent.core.pidfs import parse_kib_fields, parse_stat, private_kib
from memagent.core.protocol import parse_server_message
from memagent.ipc.control import MAX_LINE_BYTES, ControlServer, query
from memagent.ipc.registry import App, AppRegistry
from memagent.runtime.agent import Agent
from memagent.sense.footprint import footprint_kib
from support import exchange

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
CACHE_MB = 20

# The client app: connects, runs each session's requests (printing every
# reply), keeps the last connection open and serves trims per its mode.
CHILD = r'''
import json, os, socket, sys
path, plan = sys.argv[1], json.loads(sys.argv[2])
mb = plan.get("cache_mb", 0)
cache = bytearray(b"\x01") * (mb << 20)  # written: really resident
def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
for n, requests in enumerate(plan["sessions"]):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = s.makefile("rb")
    for req in requests:
        s.sendall((json.dumps(req) + "\n").encode())
        line = f.readline()
        out(json.loads(line) if line else {"closed": True})
    if n < len(plan["sessions"]) - 1:
        s.close()
out({"ready": os.getpid()})
for line in f:
    ev = json.loads(line)
    out(ev)
    if ev.get("cmd") != "trim":
        continue
    mode = plan["mode"]
    if mode == "exit":
        os._exit(0)
    if mode == "honest":
        cache = None
    if mode in ("honest", "liar"):
        s.sendall((json.dumps({"cmd": "trimmed", "trim_id": ev["trim_id"],
                               "freed_kib": mb << 10}) + "\n").encode())
'''


@pytest.fixture
def world() -> Iterator[str]:
    """Yield a directory every uid can enter (for the socket and the child
    script; /root and pytest's tmp dirs are 0700)."""
    path = tempfile.mkdtemp(prefix="memagent-apps-", dir="/tmp")
    os.chmod(path, 0o755)
    with open(os.path.join(path, "child.py"), "w") as f:
        f.write(CHILD)
    os.chmod(os.path.join(path, "child.py"), 0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


Scenario = Callable[[str, AppRegistry], Awaitable[Any]]


def audited(**kw: Any) -> AppRegistry:
    """Return: a registry whose trims are audited against real footprints,
    as the agent builds it."""
    return AppRegistry(
        measure=lambda process: footprint_kib(process.pid, "/proc", process=process), **kw)


def serve(world: str, scenario: Scenario, registry: "Optional[AppRegistry]" = None,
          **kw: Any) -> Any:
    """Return: what ``scenario(socket_path, registry)`` returns, run with a
    ControlServer on a socket in ``world``."""
    path = os.path.join(world, "ctl.sock")
    reg = registry if registry is not None else audited()

    async def main() -> Any:
        server = ControlServer(path, lambda: {"level": "NORMAL"}, registry=reg, **kw)
        await server.start()
        try:
            return await scenario(path, reg)
        finally:
            await server.close()

    return aio.run(main())


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Return: ``fn(*args)`` run in a thread, so the server keeps serving."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Child:
    """A client app process running CHILD."""

    def __init__(self, world: str, path: str, sessions: "List[List[Dict[str, Any]]]",
                 mode: str = "silent", cache_mb: int = 0, nobody: bool = False) -> None:
        plan = json.dumps({"sessions": sessions, "mode": mode, "cache_mb": cache_mb})
        cmd = [SYSTEM_PYTHON, os.path.join(world, "child.py"), path, plan]
        self.proc = subprocess.Popen((NOBODY if nobody else []) + cmd,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid  # setpriv execs python: the same process

    async def line(self, timeout_s: float = 10.0) -> "Dict[str, Any]":
        """Return: the next JSON line the child printed."""
        assert self.proc.stdout is not None
        text = await asyncio.wait_for(blocking(self.proc.stdout.readline), timeout_s)
        assert text, "the child exited early"
        obj: Dict[str, Any] = json.loads(text)
        return obj

    async def replies(self) -> "List[Dict[str, Any]]":
        """Return: the replies printed before "ready"."""
        out: "List[Dict[str, Any]]" = []
        while True:
            obj = await self.line()
            if "ready" in obj:
                return out
            out.append(obj)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def reg(name: str, cls: str, **extra: Any) -> "Dict[str, Any]":
    return dict({"cmd": "register", "name": name, "class": cls}, **extra)


def codes(replies: "List[Dict[str, Any]]") -> "List[Optional[str]]":
    return [None if r["ok"] else r["code"] for r in replies]


async def app_of(registry: AppRegistry, pid: int) -> App:
    """Return: the one app of process ``pid``, once its earlier connections
    are reaped."""
    for _ in range(250):
        mine = [app for app in registry.apps() if app.pid == pid]
        if len(mine) == 1 and registry.snapshot()["connections"] == len(registry.apps()):
            return mine[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no single app of pid %d" % pid)


# -- identity ------------------------------------------------------------------------

def test_register_takes_the_pid_from_the_socket(world: str) -> None:
    async def scenario(path: str, registry: AppRegistry) -> Any:
        child = Child(world, path, [[reg("Photos", "cached", pid=1),
                                     reg("Photos", "cached", estimate_kib=12000)]])
        try:
            replies = await child.replies()
            st = await blocking(lambda: aio.run(query(path, "status")))
            return child.pid, replies, st
        finally:
            child.stop()

    pid, replies, st = serve(world, scenario)
    assert codes(replies) == ["forbidden", None]
    assert "SO_PEERCRED" in replies[0]["error"]
    [app] = st["status"]["apps"]["apps"]
    assert (app["pid"], app["uid"], app["name"], app["class"]) == (pid, 0, "Photos", "cached")
    assert app["estimate_kib"] == 12000


def test_untrusted_client_policy(world: str) -> None:
    sessions = [
        [reg("a", "visible"), reg("a", "service"), {"cmd": "set_class", "class": "cached"},
         {"cmd": "set_class", "class": "service"}],  # forbidden, ok, ok (lower), forbidden
        [reg("b", "foreground"), reg("b", "cached"), reg("b", "service")],  # raise: no
        [reg("c", "perceptible"), {"cmd": "foreground", "pid": 2}, {"cmd": "ping"}],
        [reg("d", "service"), {"cmd": "set_class", "class": "perceptible"}],
    ]

    async def scenario(path: str, registry: AppRegistry) -> Any:
        child = Child(world, path, sessions, nobody=True)
        try:
            replies = await child.replies()
            app = await app_of(registry, child.pid)
            return replies, app.uid, app.cls
        finally:
            child.stop()

    replies, uid, cls = serve(world, scenario)
    assert codes(replies) == ["forbidden", None, None, "forbidden",
                              "forbidden", None, "forbidden",
                              "forbidden", "forbidden", None,
                              None, "forbidden"]
    assert replies[-1]["error"] == "set_class: 'perceptible' needs a trusted client"
    assert uid == 65534 and cls == "service"


def test_trusted_clients_and_foreground(world: str) -> None:
    async def scenario(path: str, registry: AppRegistry) -> Any:
        music = Child(world, path, [[reg("music", "service")]], nobody=True)
        ui = Child(world, path, [[reg("ui", "visible")]], nobody=True)  # ui_uid: trusted
        children = [music, ui]
        try:
            out: "Dict[str, Any]" = {"music": await music.replies(),
                                     "ui": await ui.replies()}
            shell = Child(world, path, [[reg("shell", "foreground"),
                                         {"cmd": "set_class", "class": "cached"},
                                         {"cmd": "set_class", "class": "foreground"},
                                         {"cmd": "foreground", "pid": music.pid}]])
            children.append(shell)
            out["shell"] = await shell.replies()
            out["after"] = {a.name: a.cls for a in registry.apps()}
            return out
        finally:
            for child in children:
                child.stop()

    out = serve(world, scenario, audited(ui_uid=65534))
    assert codes(out["music"]) == [None] and codes(out["ui"]) == [None]
    assert codes(out["shell"]) == [None, None, None, None]
    assert out["after"] == {"music": "foreground", "ui": "visible", "shell": "visible"}


# -- trims ------------------------------------------------------------------------------

def trim_child(world: str, mode: str) -> Any:
    """Return: the TrimResult of one trim of a child in ``mode`` holding
    CACHE_MB, and the apps left registered afterwards."""
    async def scenario(path: str, registry: AppRegistry) -> Any:
        child = Child(world, path, [[reg("c-" + mode, "cached")]], mode, CACHE_MB)
        try:
            await child.replies()
            app = await app_of(registry, child.pid)
            result = await registry.trim(app, "LOW", CACHE_MB << 10, 500)
            await asyncio.sleep(0.1)
            return result, registry.apps(), app
        finally:
            child.stop()

    return serve(world, scenario)


def test_trim_honest_app_is_measured(world: str) -> None:
    result, apps, app = trim_child(world, "honest")
    assert result.outcome == "answered" and result.claimed_kib == CACHE_MB << 10
    assert result.before_kib > CACHE_MB << 10  # the cache plus the interpreter
    assert 0.8 * (CACHE_MB << 10) < result.measured_kib < 1.2 * (CACHE_MB << 10)
    assert app.compliance.answered == 1 and app.compliance.measured_kib == result.measured_kib
    assert app.last_trim is result and len(apps) == 1


def test_trim_lying_app_is_caught(world: str) -> None:
    result, _, app = trim_child(world, "liar")
    assert result.outcome == "answered" and result.claimed_kib == CACHE_MB << 10
    assert abs(result.measured_kib) < 2048  # it freed nothing
    assert app.compliance.claimed_kib == CACHE_MB << 10


def test_trim_silent_app_times_out(world: str) -> None:
    result, apps, app = trim_child(world, "silent")
    assert result.outcome == "timeout" and result.claimed_kib is None
    assert 450 <= result.waited_ms < 1500
    assert app.compliance.timeouts == 1 and len(apps) == 1


def test_trim_app_exiting_midway(world: str) -> None:
    result, apps, _ = trim_child(world, "exit")
    assert result.outcome == "gone" and result.claimed_kib is None
    assert result.after_kib is None and result.measured_kib == result.before_kib
    assert result.waited_ms < 450 and apps == []


# -- robustness over raw sockets ------------------------------------------------------------

def connect(path: str, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(path)  # blocking: waits while the listen backlog (100) is full
    s.settimeout(5)
    return s




def ask(s: socket.socket, req: "Dict[str, Any]") -> "Dict[str, Any]":
    s.sendall((json.dumps(req) + "\n").encode())
    line = s.makefile("rb").readline()
    obj: Dict[str, Any] = json.loads(line)
    return obj


def test_garbage_oversized_and_error_limit(world: str) -> None:
    async def scenario(path: str, registry: AppRegistry) -> Any:
        bad = await blocking(exchange, connect(path),
                             b'junk\n{"cmd":"trimmed","trim_id":1,"freed_kib":-3,"id":7}\n'
                             b'{"cmd":"set_class","class":"cached"}\n{"cmd":"ping"}\n')
        big = await blocking(exchange, connect(path), b"x" * (MAX_LINE_BYTES + 10) + b"\n"
                             + b'{"cmd":"ping"}\n')
        return bad, big

    bad, big = serve(world, scenario)
    assert codes(bad) == ["malformed", "bad_field", "not_registered"]  # then closed
    assert bad[1]["id"] == 7
    assert codes(big) == ["too_long"]


def test_many_connections_come_and_go(world: str) -> None:
    def churn(path: str) -> None:
        for n in range(600):
            s = connect(path)
            try:
                if n % 2:
                    s.sendall((json.dumps(reg("app%d" % n, "cached")) + "\n").encode())
            except (BrokenPipeError, ConnectionResetError):
                pass  # at its connection cap the agent may refuse us first: its right
            s.close()  # before the reply

    async def scenario(path: str, registry: AppRegistry) -> Any:
        await blocking(churn, path)
        for _ in range(100):
            if registry.snapshot()["connections"] == 0:
                break
            await asyncio.sleep(0.02)
        pong = await blocking(lambda: ask(connect(path), {"cmd": "ping"}))
        return registry.snapshot(), pong

    snap, pong = serve(world, scenario, max_clients=64)
    assert pong["ok"] and snap["apps"] == [] and snap["connections"] <= 1


def test_max_apps(world: str) -> None:
    def client(path: str) -> Any:
        held = [connect(path) for _ in range(4)]
        out = [ask(s, reg("app%d" % n, "cached")) for n, s in enumerate(held)]
        out.append(ask(held[0], {"cmd": "unregister"}))
        out.append(ask(held[3], reg("late", "cached")))
        for s in held:
            s.close()
        return out

    out = serve(world, lambda path, r: blocking(client, path), audited(max_apps=3))
    assert codes(out) == [None, None, None, "busy", None, None]
    assert "max_apps" in out[3]["error"]


def test_registered_clients_may_idle(world: str) -> None:
    def client(path: str) -> Any:
        idle, app = connect(path), connect(path)
        ask(app, reg("idle", "cached"))
        time.sleep(0.8)  # past read_timeout_ms
        return idle.recv(100), ask(app, {"cmd": "ping"})

    closed, pong = serve(world, lambda path, r: blocking(client, path), read_timeout_ms=300)
    assert closed == b"" and pong["ok"]


def note(level: int, prev: int) -> Notification:
    return Notification(1000, level, prev, "avail", 5800, 65536, None)


def test_subscription_gets_level_events(world: str) -> None:
    def client(path: str) -> Any:
        s = connect(path)
        assert ask(s, {"cmd": "subscribe", "levels": ["low", "CRITICAL"], "id": "s"})["ok"]
        f = s.makefile("rb")
        return [parse_server_message(f.readline()) for _ in range(2)]

    async def scenario(path: str, registry: AppRegistry) -> Any:
        got = blocking(client, path)
        task = asyncio.ensure_future(got)
        while registry.snapshot()["subscribers"] == 0:
            await asyncio.sleep(0.01)
        counts = [registry.broadcast_level(note(lv, prev))
                  for lv, prev in ((LOW, NORMAL), (NORMAL, LOW), (CRITICAL, NORMAL))]
        return counts, await task

    counts, events = serve(world, scenario)
    assert counts == [1, 0, 1]
    assert [(e["cmd"], e["level"], e["avail_kib"]) for e in events] == \
        [("level", "LOW", 5800), ("level", "CRITICAL", 5800)]


def test_slow_subscriber_is_dropped_without_blocking(world: str) -> None:
    def subscribe(path: str, rcvbuf: int) -> socket.socket:
        s = connect(path, rcvbuf)
        assert ask(s, {"cmd": "subscribe"})["ok"]
        return s

    def drain(s: socket.socket, want: int) -> int:
        lines = 0
        try:
            while lines < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                lines += chunk.count(b"\n")
        except socket.timeout:
            pass
        return lines

    async def scenario(path: str, registry: AppRegistry) -> Any:
        slow = await blocking(subscribe, path, 4096)  # and never reads
        fast = await blocking(subscribe, path, 0)
        reading = asyncio.ensure_future(blocking(drain, fast, 10000))
        worst_ms, sent = 0.0, 0
        for _ in range(50):  # 10,000 events of ~80 bytes: far past any buffer
            t0 = time.perf_counter()
            sent += sum(registry.broadcast_level(note(LOW, LOW)) for _ in range(200))
            worst_ms = max(worst_ms, (time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.005)
        snap = registry.snapshot()
        received = await reading
        fast.close()
        slow.close()
        return worst_ms, sent, snap, received

    worst_ms, sent, snap, received = serve(world, scenario)
    assert snap["subscribers_dropped"] == 1 and snap["subscribers"] == 1
    assert worst_ms < 200  # 200 sends never wait for a reader
    assert 10000 < sent < 20000 and received == 10000


# -- the pure parts and the agent's wiring ----------------------------------------------

def test_footprint_parsers() -> None:
    rollup = "5560-7ffd ---p 00000000 00:00 0   [rollup]\nRss:  1728 kB\nPss:  280 kB\n" \
             "Pss_Anon:   112 kB\nPss_File:  168 kB\nPss_Shmem:  8 kB\nAnonymous: 130 kB\n"
    def footprint(text: str) -> "Optional[int]":
        return private_kib(parse_kib_fields(text))

    assert footprint(rollup) == 120
    assert footprint("Rss: 10 kB\nAnonymous: 130 kB\n") == 130  # kernels < 5.x
    assert footprint("") is None
    assert footprint("Name:\tx\nVmRSS:\t 900 kB\nRssAnon:\t 500 kB\nRssShmem:\t 4 kB\n") == 504
    assert footprint("Name:\tx\nVmRSS:\t 900 kB\n") == 900
    assert footprint("Name:\tx\nState:\tZ (zombie)\n") is None
    stat = "42 (a) b) c) S " + " ".join(str(n) for n in range(4, 30))
    st = parse_stat(stat)
    assert st is not None and st.started == 22 and parse_stat("garbage") is None


def test_agent_exposes_the_registry() -> None:
    agent = Agent(Config({"apps": {"max_apps": "5", "ui_uid": "1000"}}), plugins=[],
                  control=False)
    assert isinstance(agent.apps, AppRegistry)
    assert agent.apps.max_apps == 5 and agent.apps.ui_uid == 1000
    snap = agent.status()["apps"]
    assert snap["apps"] == [] and snap["max_apps"] == 5
