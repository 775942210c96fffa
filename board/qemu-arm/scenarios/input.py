"""The user_activity plugin on real input devices: uinput keyboards in the guest.

input.py [capture]

Phase 0, the reader (plugins/user_activity/reader.py, no python-evdev)
against python-evdev on the same uinput devices: a keyboard types "hi" as a
USB keyboard reports it (scan code, key, sync) and an autorepeat, a touch
screen swipes; every record the reader parses equals python-evdev's, and the
raw bytes parse the same with the armhf layout.  The name and the input
properties (INPUT_PROP_DIRECT, INPUT_PROP_ACCELEROMETER) come from the
reader's own ioctls.  The raw bytes are handed back (armhf-keyboard.bin,
armhf-touch.bin: tests/data/evdev/).  With ``capture``, only this phase.

Phase 1, the agent in this process (loaded by the real plugin loader, only
user_activity enabled, idle_after_ms = 1500; a uinput accelerometer is
skipped): a uinput keyboard types, the
activity goes active, then idle 1.5 s after the last key; a fake backlight
turns it to screen-off; the keyboard is destroyed (the plugin drops it, the
agent runs on); a new one is watched after rescan(), another after an
on_pressure (the path without pyudev).

Phase 2, the cost: `memagent run` as a process (psi source, no watermark
timer), a uinput keyboard flooding 200 reports a second (key + sync): the
agent's context switches while calm and under the flood (each report a
press or a release, so the input core passes every one), with the plugin's
quiet period (idle_after_ms 60000: 1000 ms) and without it (idle_after_ms 0).

Prints "FACT key=value" lines and RESULT ok/fail.  Every device and process
it acts on is its own, inside this throw-away guest.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import evdev
import rigguest
from evdev import ecodes

from memagent import aio
from memagent.core.config import load_config
from memagent.core.levels import LOW, NORMAL, Notification
from memagent.ipc.control import query
from memagent.plugins.user_activity import reader
from memagent.runtime.agent import Agent

BACKLIGHT = "/tmp/backlight/panel/bl_power"
CONF = """[agent]
socket = %(sock)s
[sources]
max_fill_kib_s = 0
[plugins]
enable = user_activity
[user_activity]
idle_after_ms = %(idle)d
backlight = /tmp/backlight/*/bl_power
"""
FLOOD_S = 4
FLOOD_HZ = 200

fact = rigguest.fact
check = rigguest.Checks()


def write_conf(path, sock, idle_ms):
    with open(path, "w") as f:
        f.write(CONF % {"sock": sock, "idle": idle_ms})


def keyboard(name):
    """Return: a uinput keyboard, once its event node exists."""
    ui = evdev.UInput(name=name)
    deadline = time.monotonic() + 5
    while not os.path.exists(ui.device.path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ui


def wait_node(ui):
    """Return: ``ui`` once its event node exists."""
    deadline = time.monotonic() + 5
    while not os.path.exists(ui.device.path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ui


def accelerometer(name):
    """Return: a uinput accelerometer (EV_ABS x, y, z; INPUT_PROP_ACCELEROMETER)."""
    axis = evdev.AbsInfo(0, -512, 512, 0, 0, 0)
    return wait_node(evdev.UInput({ecodes.EV_ABS: [(ecodes.ABS_X, axis), (ecodes.ABS_Y, axis),
                                                   (ecodes.ABS_Z, axis)]},
                                  name=name, input_props=[ecodes.INPUT_PROP_ACCELEROMETER]))


def press(ui, value=None):
    """Press and release KEY_A (or send one report with ``value``)."""
    for v in (1, 0) if value is None else (value,):
        ui.write(ecodes.EV_KEY, ecodes.KEY_A, v)
        ui.syn()


# -- phase 0: the reader against python-evdev, the captures ----------------------


def drain_all(device):
    """Return: every event ``device`` (the reader or python-evdev's) holds."""
    out = []
    while True:
        try:
            batch = list(device.read())
        except BlockingIOError:
            return out
        if not batch:
            return out
        out.extend(batch)


def raw_bytes(fd):
    """Return: every byte the non-blocking ``fd`` holds."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def type_hi(ui):
    """Type "hi" as a USB keyboard reports it, then hold "a" (a repeat)."""
    for code, scan in ((ecodes.KEY_H, 0x7000B), (ecodes.KEY_I, 0x7000C)):
        for v in (1, 0):
            ui.write(ecodes.EV_MSC, ecodes.MSC_SCAN, scan)
            ui.write(ecodes.EV_KEY, code, v)
            ui.syn()
    for v in (1, 2, 0):
        ui.write(ecodes.EV_KEY, ecodes.KEY_A, v)
        ui.syn()


def swipe(ui):
    """One finger down, 8 moves, up (type B multitouch and the single-touch axes)."""
    ui.write(ecodes.EV_ABS, ecodes.ABS_MT_SLOT, 0)
    ui.write(ecodes.EV_ABS, ecodes.ABS_MT_TRACKING_ID, 7)
    ui.write(ecodes.EV_KEY, ecodes.BTN_TOUCH, 1)
    for i in range(9):
        for mt, st, v in ((ecodes.ABS_MT_POSITION_X, ecodes.ABS_X, 100 + 40 * i),
                          (ecodes.ABS_MT_POSITION_Y, ecodes.ABS_Y, 900 - 20 * i)):
            ui.write(ecodes.EV_ABS, mt, v)
            ui.write(ecodes.EV_ABS, st, v)
        ui.syn()
    ui.write(ecodes.EV_ABS, ecodes.ABS_MT_TRACKING_ID, -1)
    ui.write(ecodes.EV_KEY, ecodes.BTN_TOUCH, 0)
    ui.syn()


def touchscreen(name):
    """Return: a uinput touch screen (INPUT_PROP_DIRECT)."""
    def axis(high):
        return evdev.AbsInfo(0, 0, high, 0, 0, 0)
    caps = {ecodes.EV_KEY: [ecodes.BTN_TOUCH],
            ecodes.EV_ABS: [(ecodes.ABS_X, axis(719)), (ecodes.ABS_Y, axis(1279)),
                            (ecodes.ABS_MT_SLOT, axis(9)),
                            (ecodes.ABS_MT_TRACKING_ID, evdev.AbsInfo(0, 0, 65535, 0, 0, 0)),
                            (ecodes.ABS_MT_POSITION_X, axis(719)),
                            (ecodes.ABS_MT_POSITION_Y, axis(1279))]}
    return wait_node(evdev.UInput(caps, name=name, input_props=[ecodes.INPUT_PROP_DIRECT]))


def compare(label, ui, act):
    """Open ``ui``'s node three ways (raw fd, the reader, python-evdev), run
    ``act(ui)``, compare.  Returns: the raw bytes."""
    path = ui.device.path
    raw = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    ours = reader.open_evdev(path)
    theirs = evdev.InputDevice(path)
    try:
        act(ui)
        time.sleep(0.2)
        data = raw_bytes(raw)
        mine = [tuple(e) for e in drain_all(ours)]
        want = [(e.sec, e.usec, e.type, e.code, e.value) for e in drain_all(theirs)]
        fact("%s_name" % label, ours.name)
        fact("%s_props" % label, ",".join(str(p) for p in ours.input_props()))
        fact("%s_events" % label, len(mine))
        fact("%s_bytes" % label, len(data))
        armhf = reader.ARMHF
        size = struct.calcsize(armhf)
        parsed = [struct.unpack_from(armhf, data, at) for at in range(0, len(data), size)]
        check(ours.name == theirs.name == ui.device.name, "%s: name %r" % (label, ours.name))
        check(len(mine) > 10 and mine == want, "%s: the reader's events are python-evdev's"
              % label)
        check(len(data) == size * len(mine) and parsed == mine,
              "%s: the raw bytes parse as %s" % (label, armhf))
        check(ours.pending == 0, "%s: no cut record on an evdev node" % label)
    finally:
        os.close(raw)
        ours.close()
        theirs.close()
    return data


def phase_reader():
    fact("event_size", struct.calcsize(reader.NATIVE))
    check(struct.calcsize(reader.NATIVE) == 16, "struct input_event is 16 bytes on armhf")
    caps = {ecodes.EV_KEY: [ecodes.KEY_A, ecodes.KEY_H, ecodes.KEY_I],
            ecodes.EV_MSC: [ecodes.MSC_SCAN]}
    kbd = wait_node(evdev.UInput(caps, name="memagent-capture-kbd"))
    touch = touchscreen("memagent-capture-touch")
    accel = accelerometer("memagent-capture-accel")
    try:
        rigguest.handback("armhf-keyboard.bin", data=compare("kbd", kbd, type_hi))
        rigguest.handback("armhf-touch.bin", data=compare("touch", touch, swipe))
        dev = reader.open_evdev(accel.device.path)
        props = dev.input_props()
        dev.close()
        fact("accel_props", ",".join(str(p) for p in props))
        check(props == [ecodes.INPUT_PROP_ACCELEROMETER], "accelerometer: props %s" % props)
        try:
            reader.open_evdev("/dev/null")
            check(False, "/dev/null opened as an evdev node")
        except OSError as e:
            fact("not_evdev", "%s %s" % (e.errno, os.strerror(e.errno)))
    finally:
        for ui in (kbd, touch, accel):
            ui.close()


# -- phase 1: the states and the devices, in process ----------------------------------


async def until(cond, timeout_ms=8000):
    """Wait for ``cond()``.  Returns: ms taken, or None on timeout."""
    start = aio.ticks_ms()
    while not cond():
        if aio.ticks_ms() - start > timeout_ms:
            return None
        await aio.sleep_ms(10)
    return aio.ticks_ms() - start


async def phase_states():
    sock = "/run/ua-states.sock"
    write_conf("/tmp/states.conf", sock, 1500)
    accel = accelerometer("memagent-accel")
    kbd1 = keyboard("memagent-kbd1")
    agent = Agent(load_config("/tmp/states.conf"), config_path="/tmp/states.conf")
    plugins = {p.name: p for p in agent.dispatcher.plugins}
    check(list(plugins) == ["user_activity"], "plugins loaded: %s" % list(plugins))
    plugin = plugins["user_activity"]
    task = aio.create_task(agent.run())
    check(await until(lambda: plugin.presence is not None and os.path.exists(sock)) is not None,
          "agent started")
    state = lambda: agent.activity.state(aio.ticks_ms())  # noqa: E731
    st = (await query(sock))["status"]
    view = {p["name"]: p for p in st["plugins"]}["user_activity"]
    names = sorted(d["name"] for d in view["state"]["devices"])
    fact("devices_at_start", ",".join(names))
    check("memagent-kbd1" in names and view["unavailable"] is None, "kbd1 watched at start")
    check(st["activity"]["feeder"] == "evdev", "feeding")
    ignored = view["state"]["ignored"]
    fact("ignored_at_start", ",".join("%s:%s" % item for item in sorted(ignored.items())))
    check(ignored.get(accel.device.path) == "accelerometer", "the accelerometer skipped")

    check(await until(lambda: state() == "idle") is not None, "idle after start")
    press(kbd1)
    fact("key_to_active_ms", await until(lambda: state() == "active", 2000))
    t0 = aio.ticks_ms()
    idle_ms = await until(lambda: state() == "idle", 5000)
    fact("key_to_idle_ms", idle_ms)
    check(idle_ms is not None and 1300 <= aio.ticks_ms() - t0 < 3000, "idle after 1.5 s")
    fact("inputs_after_one_key", plugin.inputs)
    check(plugin.inputs == 2, "a press and a release are 2 inputs")

    os.makedirs(os.path.dirname(BACKLIGHT), exist_ok=True)
    with open(BACKLIGHT, "w") as f:
        f.write("4\n")
    fact("backlight_off_state", state())
    check(state() == "screen-off", "screen-off from bl_power")
    with open(BACKLIGHT, "w") as f:
        f.write("0\n")
    check(state() == "idle", "screen back on: idle")

    path1 = kbd1.device.path
    kbd1.close()
    fact("unplug_dropped_ms", await until(lambda: path1 not in plugin.devices, 3000))
    check(path1 not in plugin.devices and plugin.dropped == 1 and not task.done(),
          "kbd1 dropped, agent running")

    kbd2 = keyboard("memagent-kbd2")
    await aio.sleep_ms(300)
    check(kbd2.device.path not in plugin.devices, "kbd2 not watched before a rescan")
    opened, dropped = plugin.rescan()
    fact("rescan", "opened=%s dropped=%s" % (",".join(opened), ",".join(dropped)))
    check(opened == [kbd2.device.path], "rescan opened kbd2")
    press(kbd2)
    fact("kbd2_key_to_active_ms", await until(lambda: state() == "active", 2000))
    check(plugin.inputs == 4, "kbd2's keys counted")

    kbd3 = keyboard("memagent-kbd3")
    note = Notification(aio.ticks_ms(), LOW, NORMAL, "avail", 1, 100, None)
    await agent.dispatcher.dispatch(note)
    check(kbd3.device.path in plugin.devices, "on_pressure rescanned: kbd3 watched")
    press(kbd3, 2)  # an autorepeat report
    check(await until(lambda: plugin.inputs == 5, 2000) is not None, "kbd3's key counted")

    st = (await query(sock))["status"]
    view = {p["name"]: p for p in st["plugins"]}["user_activity"]
    fact("status_state", json.dumps(view["state"], sort_keys=True).replace(" ", ""))
    agent.stop()
    code = await aio.wait_for_ms(task, 15000)
    fact("agent_exit", code)
    check(code == 0 and not plugin.devices and agent.activity.feeder is None, "clean stop")
    kbd2.close()
    kbd3.close()
    accel.close()


# -- phase 2: what input costs the agent ------------------------------------------


def switches(pid):
    """Return: the main thread's context switches (voluntary + not)."""
    n = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n


def cpu_s(pid):
    """Return: the process's user + system CPU time, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_of(sock):
    out = subprocess.run([sys.executable, "-m", "memagent", "status", "--json",
                          "--socket", sock], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def phase_cost(label, idle_ms, calm_s):
    sock = "/run/ua-%s.sock" % label
    conf = "/tmp/%s.conf" % label
    write_conf(conf, sock, idle_ms)
    kbd = keyboard("memagent-flood-" + label)
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "-c", conf],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # past the start-up samples
        c0 = switches(agent.pid)
        time.sleep(calm_s)
        c1 = switches(agent.pid)
        cpu0 = cpu_s(agent.pid)
        t0 = time.monotonic()
        reports = 0
        while time.monotonic() - t0 < FLOOD_S:
            # Press, release, press...: each report changes the key's state (the
            # input core drops a report that changes nothing, e.g. a second press).
            press(kbd, (reports + 1) % 2)
            reports += 1
            time.sleep(max(t0 + reports / FLOOD_HZ - time.monotonic(), 0))
        c2 = switches(agent.pid)
        flood_s = time.monotonic() - t0
        cpu_pct = 100 * (cpu_s(agent.pid) - cpu0) / flood_s
        st = status_of(sock)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            err = agent.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            agent.kill()
            err = agent.communicate()[1]
        kbd.close()
    view = {p["name"]: p for p in st.get("plugins", [])}.get("user_activity", {})
    state = view.get("state") or {}
    if calm_s:
        fact("%s_calm_switches_per_s" % label, "%.2f" % ((c1 - c0) / calm_s))
    fact("%s_flood_reports_per_s" % label, "%.0f" % (reports / flood_s))
    fact("%s_flood_switches_per_s" % label, "%.1f" % ((c2 - c1) / flood_s))
    fact("%s_flood_cpu_pct" % label, "%.1f" % cpu_pct)
    fact("%s_plugin" % label, "wakes=%s events=%s inputs=%s quiet_ms=%s" % (
        state.get("wakes"), state.get("events"), state.get("inputs"), state.get("quiet_ms")))
    # While the plugin rests, the kernel's evdev buffer may overflow (it keeps the
    # newest events, SYN_DROPPED): fewer inputs than reports is expected.
    ok = agent.returncode == 0 and state.get("inputs", 0) > 0
    if not ok:
        print(err[-3000:])
    check(ok, "%s: the agent read the flood and stopped cleanly" % label)
    return (c1 - c0) / calm_s if calm_s else None, (c2 - c1) / flood_s


def main():
    phase_reader()
    if sys.argv[1:] == ["capture"]:
        check.finish("the reader reads what python-evdev reads; captures handed back")
        return
    aio.run(phase_states())
    calm, quiet = phase_cost("quiet", 60000, 4)
    _, eager = phase_cost("eager", 0, 0)
    check(calm is not None and calm < 0.5, "no wakeups while calm")
    check(quiet < 10, "quiet period: few wakeups under the flood")
    check(eager > 3 * quiet, "the quiet period matters (eager %.1f/s)" % eager)
    check.finish("user_activity on uinput: states, unplug, rescan; %.1f vs %.1f wakeups/s"
                 % (quiet, eager))


if __name__ == "__main__":
    main()
