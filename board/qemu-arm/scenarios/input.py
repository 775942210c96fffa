"""The user_activity plugin on real input devices: uinput keyboards in the guest.

input.py

Phase 1, the agent in this process (loaded by the real plugin loader, only
user_activity enabled, idle_after_ms = 1500): a uinput keyboard types, the
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


def press(ui, value=None):
    """Press and release KEY_A (or send one report with ``value``)."""
    for v in (1, 0) if value is None else (value,):
        ui.write(ecodes.EV_KEY, ecodes.KEY_A, v)
        ui.syn()


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
