"""device_watch on the ARM guest: real kernel uevents, a /dev/mem_notify that
comes and goes, and an input device.

No udev daemon runs here (devtmpfs only), so the plugin listens to the
kernel's own uevents.  The device is the CUSE test fixture
cuse_mem_notify.py, which the rig ships beside this scenario.  Steps:

1. ``memagent run`` (source auto: psi; the built-in plugins).
2. A uinput device appears and goes: the plugin counts two input events.
3. The fixture starts: /dev/mem_notify appears, the agent switches to it.
4. SIGUSR1 (pressure): the agent wakes on "mem_notify"; SIGUSR2 clears it.
5. SIGTERM: the device goes, the agent falls back to psi, one switch each
   way (the plugin and the agent's own fallback do not fight).
6. A 20 MB/s anonymous ramp: LOW still comes; the ramp is then stopped.
7. The agent's own fallback, without the plugin's help: a second agent with
   ``[device_watch] switch_source = no`` starts on the device (auto), the
   fixture dies, the dead fd fails the source and the agent falls back.

Prints "FACT key=value" lines and one RESULT.  Everything it starts is its
own, inside this throw-away guest.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import rigguest

SOCK = "/run/memagent.sock"
HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN = [sys.executable, "-m", "memagent.demo.loadgen"]
fact = rigguest.fact
check = rigguest.Checks()


def status():
    """Return: the running agent's status (its control socket), or {}."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(SOCK)
        s.sendall(b'{"cmd": "status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf.decode()).get("status") or {}
    except (OSError, ValueError):
        return {}
    finally:
        s.close()


def plugin_state(st, name="device_watch"):
    for p in st.get("plugins") or []:
        if p.get("name") == name:
            return p
    return {}


def wait_for(pred, timeout_s, step_s=0.1):
    """Returns: (the first true pred(status), seconds waited) or (None, timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        st = status()
        if st and pred(st):
            return st, time.time() - t0
        time.sleep(step_s)
    return None, timeout_s


def fixture_path():
    return os.path.join(HERE, "cuse_mem_notify.py")


def stats_of(text):
    """Return: the counters of the fixture's last STATS line in ``text``."""
    lines = [ln for ln in text.splitlines() if ln.startswith("STATS ")]
    return {k: int(v) for k, v in (kv.split("=") for kv in lines[-1].split()[1:])} \
        if lines else {}


def step_input():
    import evdev  # python3-evdev, in the rig

    before = plugin_state(status()).get("state", {}).get("by_kind", {}).get("input", 0)
    ui = evdev.UInput(name="memagent-test-keys")
    time.sleep(0.5)
    ui.close()
    st, _ = wait_for(lambda s: plugin_state(s).get("state", {}).get("by_kind", {})
                     .get("input", 0) >= before + 2, 5)
    state = plugin_state(st or status()).get("state", {})
    fact("input_events", state.get("by_kind", {}).get("input", 0) - before)
    fact("published", state.get("published"))  # to every plugin's on_device
    check(st is not None, "a uinput device added and removed: two input events")


def step_mem_notify():
    fixture = subprocess.Popen([sys.executable, fixture_path()], stdout=subprocess.PIPE,
                               text=True)
    ready = fixture.stdout.readline().strip()
    fact("fixture", ready or "no READY line")
    st, waited = wait_for(lambda s: s.get("source") == "mem_notify", 10)
    fact("switch_to_mem_notify_s", "%.2f" % waited)
    check(st is not None, "the agent switches to mem_notify when the device appears")
    before = status().get("readings", 0)
    fixture.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    fixture.send_signal(signal.SIGUSR2)
    at_clear = stats_of(fixture.stdout.readline())
    st = status()
    fact("readings_1s_pressure", st.get("readings", 0) - before)
    fact("last_reading_event", (st.get("reading") or {}).get("event"))
    fact("drains_1s_pressure", at_clear.get("reads"))
    fact("poll_wakeups_sent", at_clear.get("wakeups"))
    check((st.get("reading") or {}).get("event") == "mem_notify" and
          at_clear.get("reads", 0) >= 3, "the agent wakes on mem_notify under pressure")
    time.sleep(1.5)
    t_kill = time.time()
    fixture.send_signal(signal.SIGTERM)
    at_exit = stats_of(fixture.communicate(timeout=10)[0])
    fact("drains_1.5s_after_clear", at_exit.get("reads", 0) - at_clear.get("reads", 0))
    check(at_exit.get("reads") == at_clear.get("reads"), "no wake once pressure is cleared")
    st, waited = wait_for(lambda s: s.get("source") == "psi", 10)
    fact("fallback_s", "%.2f" % waited)
    check(st is not None and not os.path.exists("/dev/mem_notify"),
          "the agent falls back to psi when the device goes")
    st = status()
    switches = [(a.get("was"), a.get("source")) for a in st.get("actions", [])
                if a.get("action") == "source"]
    fact("switches", ";".join("%s>%s" % s for s in switches))
    check(switches == [("psi", "mem_notify"), ("mem_notify", "psi")],
          "one switch each way")
    state = plugin_state(st).get("state", {})
    fact("plugin_switches", len(state.get("switches", [])))
    fact("plugin_last_event", "%(action)s/%(subsystem)s/%(devname)s" % (
        state.get("last_event") or {"action": "", "subsystem": "", "devname": ""}))
    return t_kill


def step_ramp(t_kill):
    hog = subprocess.Popen(LOADGEN + ["anon", "--rate", "20", "--max-mb", "1000",
                                      "--hold", "60"], stdout=subprocess.DEVNULL)
    t0 = time.time()
    st, waited = wait_for(lambda s: any(n["level"] == "LOW" and n["wall"] > t_kill
                                        for n in s.get("recent", [])), 30, 0.2)
    hog.kill()
    hog.wait()
    fact("low_after_ramp_s", "%.2f" % waited)
    if st is not None:
        low = [n for n in st["recent"] if n["level"] == "LOW" and n["wall"] > t_kill][0]
        fact("low_avail_pct", 100 * low["avail_kib"] // low["total_kib"])
        fact("low_reason", low["reason"])
        fact("low_source", st.get("source"))
    check(st is not None and st.get("source") == "psi" and time.time() - t0 < 31,
          "a real ramp still gets a LOW notification after the fallback")


def start_agent(log_path, *args):
    with open(log_path, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "memagent", "run", "-v"] + list(args),
                                stderr=err)


def stop_agent(agent):
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=20)
    except subprocess.TimeoutExpired:
        agent.kill()


def step_own_fallback():
    fixture = subprocess.Popen([sys.executable, fixture_path()], stdout=subprocess.PIPE,
                               text=True)
    fixture.stdout.readline()
    with open("/tmp/no-switch.conf", "w") as f:
        f.write("[device_watch]\nswitch_source = no\n")
    agent = start_agent("/tmp/agent2.log", "-c", "/tmp/no-switch.conf")
    st, _ = wait_for(lambda s: plugin_state(s).get("state", {}).get("monitor"), 30, 0.2)
    fact("own_first_source", (st or {}).get("source"))
    fixture.send_signal(signal.SIGTERM)
    fixture.communicate(timeout=10)
    st, waited = wait_for(lambda s: s.get("source") == "psi", 10)
    fact("own_fallback_s", "%.2f" % waited)
    stop_agent(agent)
    with open("/tmp/agent2.log") as f:
        failed = [ln for ln in f if "source mem_notify failed" in ln]
    fact("own_fallback_error", failed[0].split("failed: ")[-1].split(";")[0] if failed
         else None)
    check(st is not None and failed and plugin_state(st).get("state", {}).get("switches")
          == [], "the agent falls back on its own when the device's fd fails")
    rigguest.handback("agent2.log", path="/tmp/agent2.log")


def main():
    agent = start_agent("/tmp/agent.log")
    st, waited = wait_for(lambda s: plugin_state(s).get("state", {}).get("monitor"), 30, 0.2)
    fact("agent_ready_s", "%.1f" % waited)
    st = st or status()
    fact("source", st.get("source"))
    fact("plugins", ",".join("%s%s" % (p["name"], "(unavailable)" if p.get("unavailable")
                                       else "") for p in st.get("plugins", [])))
    fact("monitor", plugin_state(st).get("state", {}).get("monitor"))
    if check(st.get("source") == "psi" and plugin_state(st).get("unavailable") is None,
             "the agent runs on psi with device_watch available"):
        step_input()
        step_ramp(step_mem_notify())
    stop_agent(agent)
    rigguest.handback("agent.log", path="/tmp/agent.log")
    if not check.failures:
        step_own_fallback()
    check.finish("device_watch: mem_notify came and went, switched each way; the "
                 "agent's own fallback too; input events seen")


if __name__ == "__main__":
    main()
