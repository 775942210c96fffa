"""device_watch on the ARM guest: real kernel uevents, a /dev/mem_notify that
comes, goes and comes back, and an input device.

No udev daemon runs here (devtmpfs only), so the plugin listens to the
kernel's own uevents.  The device is the product's: ``memagent cuse`` (the
mem_notify_device plugin, docs/cuse.md), a second process with its own
control socket, whose monitor decides the pressure from real memory.  The
consuming agent runs the built-in plugins except kill_background and
release_caches (they would kill the load or the provider).  Steps:

1. ``memagent run`` (source auto: psi; the built-in plugins).
2. A uinput device appears and goes: the plugin counts two input events.
3. The provider starts: /dev/mem_notify appears, the agent switches to it.
4. Real pressure: the loadgen allocates at 20 MB/s until the provider's
   level is LOW, is stopped there (SIGSTOP) for 2 s, then killed.  The
   agent wakes on "mem_notify" meanwhile; once the provider is back at
   NORMAL, not once in 1.5 s.
5. ``kill -9`` of the provider: the C client polling the device gets an
   error and exits 3, the node goes, the agent falls back to psi.
6. A 20 MB/s anonymous ramp: LOW still comes; the ramp is then stopped.
7. The provider restarts: the device comes back and the agent switches to
   it again (psi>mem_notify, mem_notify>psi, psi>mem_notify).
8. The agent's own fallback, without the plugin's help: a second agent with
   ``[device_watch] switch_source = no`` starts on the device (auto), the
   provider is stopped, the dead fd fails the source and the agent falls back.

Prints "FACT key=value" lines and one RESULT; hands back the agents' and the
provider's logs.  Everything it starts is its own, inside this throw-away
guest.
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
PROVIDER_SOCK = "/run/memagent-cuse.sock"
NODE = "/dev/mem_notify"
CLIENT = "/rig/bin/mem_notify_wait"
MEMAGENT = [sys.executable, "-m", "memagent"]
LOADGEN = [sys.executable, "-m", "memagent.demo.loadgen"]
# The consuming agents: no plugin that kills (the loadgen, the provider) or
# drops caches under the pressure this scenario makes on purpose.
NO_KILL = "[plugins]\ndisable = kill_background, release_caches\n"
fact = rigguest.fact
check = rigguest.Checks()
provider_logs = []


def status(path=SOCK):
    """Return: the status of the agent (or provider) at ``path``, or {}."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
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


def provider_status():
    return status(PROVIDER_SOCK)


def plugin_state(st, name="device_watch"):
    for p in st.get("plugins") or []:
        if p.get("name") == name:
            return p
    return {}


def device_state(st):
    """Return: the mem_notify_device plugin's state in a provider's status."""
    return plugin_state(st, "mem_notify_device").get("state") or {}


def wait_for(pred, timeout_s, step_s=0.1, path=SOCK):
    """Returns: (the first true pred(status), seconds waited) or (None, timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        st = status(path)
        if st and pred(st):
            return st, time.time() - t0
        time.sleep(step_s)
    return None, timeout_s


def mono_ms():
    """CLOCK_MONOTONIC in ms: the clock of the agents' reading t_ms."""
    return int(time.monotonic() * 1000)


class WakeCounter:
    """Counts the agent's readings with event "mem_notify" taken after
    ``since_ms``, by polling its status every 0.1 s (a mem_notify reading
    is at least 100 ms after the last one: MIN_GAP_MS)."""

    def __init__(self, since_ms):
        self.since_ms = since_ms
        self.seen = set()

    def poll(self):
        r = status().get("reading") or {}
        if r.get("event") == "mem_notify" and r.get("t_ms", 0) > self.since_ms:
            self.seen.add(r["t_ms"])
        return r

    def watch(self, seconds, also=None):
        t_end = time.time() + seconds
        while time.time() < t_end:
            self.poll()
            if also is not None:
                also()
            time.sleep(0.1)
        return len(self.seen)


def start_provider():
    """Start ``memagent cuse``.  Returns: (the process, seconds until its
    device exists and its status answers, or None)."""
    log_path = "/tmp/provider%d.log" % (len(provider_logs) + 1)
    provider_logs.append(log_path)
    with open("/tmp/cuse.conf", "w") as f:
        f.write("[agent]\nsource = auto\n")
    with open(log_path, "w") as err:
        proc = subprocess.Popen(MEMAGENT + ["cuse", "-v", "-c", "/tmp/cuse.conf",
                                            "--socket", PROVIDER_SOCK], stderr=err)
    st, waited = wait_for(lambda s: device_state(s).get("devnum") and os.path.exists(NODE),
                          60, 0.2, PROVIDER_SOCK)
    return proc, (waited if st is not None else None)


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


def step_provider():
    """Start the provider; the agent switches to its device.  Returns: it."""
    provider, ready_s = start_provider()
    fact("provider_ready_s", "%.1f" % ready_s if ready_s is not None else None)
    pst = provider_status()
    fact("provider_source", pst.get("source"))
    fact("provider_plugins", ",".join(p["name"] for p in pst.get("plugins", [])))
    fact("provider_devnum", device_state(pst).get("devnum"))
    check(ready_s is not None and provider.poll() is None,
          "memagent cuse serves /dev/mem_notify")
    st, waited = wait_for(lambda s: s.get("source") == "mem_notify", 10)
    fact("switch_to_mem_notify_s", "%.2f" % waited)
    check(st is not None, "the agent switches to mem_notify when the device appears")
    fact("provider_open_files", device_state(provider_status()).get("open_files"))
    return provider


def step_pressure():
    """Real pressure up to the provider's LOW, held, then released."""
    pst = provider_status()
    th, reading = pst.get("thresholds") or {}, pst.get("reading") or {}
    before = device_state(pst)
    # A cap halfway between LOW and CRITICAL: the loadgen is stopped at the
    # first LOW well before it (LOW comes by lead-time, ~2 s ahead).
    cap_mb = max(1, (reading.get("avail_kib", 0) -
                     (th.get("low_kib", 0) + th.get("critical_kib", 0)) // 2) // 1024)
    fact("pressure_cap_mb", cap_mb)
    wakes = WakeCounter(mono_ms())
    hog = subprocess.Popen(LOADGEN + ["anon", "--rate", "20", "--max-mb", str(cap_mb),
                                      "--hold", "60"], stdout=subprocess.DEVNULL)
    t0 = time.time()
    low = None
    while time.time() - t0 < 30 and low is None:
        pst = provider_status()
        if pst.get("level") in ("LOW", "CRITICAL"):
            low = pst
            hog.send_signal(signal.SIGSTOP)  # holds what it has, allocates no more
        wakes.poll()
        time.sleep(0.1)
    fact("provider_low_s", "%.2f" % (time.time() - t0) if low else None)
    levels = set()
    if low is not None:
        note = [n for n in low.get("recent", []) if n["level"] != "NORMAL"][-1:]
        fact("provider_low_reason", note[0]["reason"] if note else None)
        fact("provider_low_avail_pct", 100 * low["reading"]["avail_kib"] //
             low["reading"]["total_kib"])
        levels.add(low.get("level"))
        wakes.watch(2.0, lambda: levels.add(provider_status().get("level")))
    hog.kill()
    hog.wait()
    fact("provider_levels_held", ",".join(sorted(str(v) for v in levels)))
    fact("agent_level_under_pressure", status().get("level"))
    at_low = device_state(provider_status())
    fact("mem_notify_wakes_under_pressure", len(wakes.seen))
    fact("provider_wakeups", at_low.get("wakeups", 0) - before.get("wakeups", 0))
    fact("provider_events", at_low.get("events", 0) - before.get("events", 0))
    fact("woken_per_event", json.dumps(at_low.get("woken_per_event"), sort_keys=True)
         .replace(" ", ""))
    check(low is not None and levels == {"LOW"} and len(wakes.seen) >= 1,
          "the agent wakes on mem_notify while the provider is at LOW")
    t1 = time.time()
    pst, _ = wait_for(lambda s: s.get("level") == "NORMAL", 30, 0.1, PROVIDER_SOCK)
    fact("provider_normal_s", "%.2f" % (time.time() - t1) if pst else None)
    at_normal = device_state(pst or {})
    after = WakeCounter(mono_ms())
    n = after.watch(1.5)
    fact("mem_notify_wakes_1.5s_after_normal", n)
    later = device_state(provider_status())
    fact("provider_wakeups_1.5s_after_normal",
         later.get("wakeups", 0) - at_normal.get("wakeups", 0))
    fact("provider_device_level", later.get("level"))
    # the agent's own level: held after its last wake ([levels] quiet_ms)
    fact("agent_level_1.5s_after_normal", status().get("level"))
    check(pst is not None and n == 0 and later.get("wakeups") == at_normal.get("wakeups"),
          "no wake on mem_notify once the provider is back at NORMAL")


def step_crash(provider):
    """kill -9 of the provider: its pollers get an error, the node goes,
    the agent falls back to psi.  Returns: the time of the kill."""
    client = subprocess.Popen([CLIENT, "-n", "0", "-t", "30"], stdout=subprocess.PIPE,
                              text=True)
    fact("client", client.stdout.readline().strip() or "no READY line")
    time.sleep(0.5)
    t_kill = time.time()
    provider.kill()
    provider.wait()
    try:
        out = client.communicate(timeout=10)[0]
        rc = client.returncode
    except subprocess.TimeoutExpired:
        client.kill()
        out, rc = client.communicate()[0], None
    fact("client_exit", rc)
    fact("client_exit_s", "%.2f" % (time.time() - t_kill))
    errors = [ln for ln in out.splitlines() if ln.startswith("ERROR ")]
    fact("client_error", " ".join(errors[0].split()[2:]) if errors else None)
    check(rc == 3 and errors, "a poller of the device gets an error when the provider dies")
    st, waited = wait_for(lambda s: s.get("source") == "psi", 10)
    fact("fallback_s", "%.2f" % waited)
    check(st is not None and not os.path.exists(NODE),
          "the agent falls back to psi when the provider dies, the node is gone")
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
    # back to NORMAL before the next step
    wait_for(lambda s: s.get("level") == "NORMAL", 30, 0.2)


def step_restart():
    """The provider restarts: the agent switches to its device again.
    Returns: the provider."""
    provider, ready_s = start_provider()
    fact("restart_ready_s", "%.1f" % ready_s if ready_s is not None else None)
    t_node = time.time()
    st, waited = wait_for(lambda s: s.get("source") == "mem_notify", 10)
    fact("switch_back_s", "%.2f" % (time.time() - t_node) if st else None)
    check(ready_s is not None and st is not None,
          "the provider restarts and the agent switches to its device again")
    st = status()
    switches = [(a.get("was"), a.get("source")) for a in st.get("actions", [])
                if a.get("action") == "source"]
    fact("switches", ";".join("%s>%s" % s for s in switches))
    check(switches == [("psi", "mem_notify"), ("mem_notify", "psi"), ("psi", "mem_notify")],
          "one switch each way, and back when the provider restarts")
    state = plugin_state(st).get("state", {})
    fact("plugin_switches", len(state.get("switches", [])))
    fact("plugin_last_event", "%(action)s/%(subsystem)s/%(devname)s" % (
        state.get("last_event") or {"action": "", "subsystem": "", "devname": ""}))
    return provider


def start_agent(log_path, conf_text):
    conf = log_path[:-len(".log")] + ".conf"
    with open(conf, "w") as f:
        f.write(conf_text)
    with open(log_path, "w") as err:
        return subprocess.Popen(MEMAGENT + ["run", "-v", "-c", conf], stderr=err)


def stop(proc):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def step_own_fallback(provider):
    agent = start_agent("/tmp/agent2.log", NO_KILL + "[device_watch]\nswitch_source = no\n")
    st, _ = wait_for(lambda s: plugin_state(s).get("state", {}).get("monitor"), 30, 0.2)
    fact("own_first_source", (st or {}).get("source"))
    stop(provider)
    fact("provider_stop_exit", provider.returncode)
    st, waited = wait_for(lambda s: s.get("source") == "psi", 10)
    fact("own_fallback_s", "%.2f" % waited)
    stop(agent)
    with open("/tmp/agent2.log") as f:
        failed = [ln for ln in f if "source mem_notify failed" in ln]
    fact("own_fallback_error", failed[0].split("failed: ")[-1].split(";")[0] if failed
         else None)
    check(st is not None and failed and plugin_state(st).get("state", {}).get("switches")
          == [], "the agent falls back on its own when the device's fd fails")
    rigguest.handback("agent2.log", path="/tmp/agent2.log")


def main():
    agent = start_agent("/tmp/agent.log", NO_KILL)
    provider = None
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
        provider = step_provider()
        if not check.failures:
            step_pressure()
            t_kill = step_crash(provider)
            step_ramp(t_kill)
            provider = step_restart()
    stop(agent)
    rigguest.handback("agent.log", path="/tmp/agent.log")
    if not check.failures and provider is not None:
        step_own_fallback(provider)
    if provider is not None:
        stop(provider)
    for path in provider_logs:
        rigguest.handback(os.path.basename(path), path=path)
        if check.failures:
            with open(path) as f:
                sys.stdout.write("".join("%s: %s" % (os.path.basename(path), ln)
                                         for ln in f.readlines()[-40:]))
    check.finish("memagent cuse: its device came, went on kill -9 and came back; the "
                 "agent woke on real pressure, switched each way, fell back on its own; "
                 "input events seen")


if __name__ == "__main__":
    main()
