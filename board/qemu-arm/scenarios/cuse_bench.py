"""The /dev/mem_notify (CUSE) bench: wake latency by number of waiters, the
provider's memory, and the device beside the kernel's raw PSI trigger.

    board/qemu-arm/run [--interpreter micropython] board/qemu-arm/scenarios/cuse_bench.py \
        [parts=latency,psi,rss] [counts=1,10,100,1000] [modes=n1,all] [events=60] \
        [all_wakes=2000] [ramps=2]

The provider is the product, ``memagent cuse`` on the rig's interpreter
(RIG_INTERPRETER), started without -v (its debug log writes a line per
request); the clients are /rig/bin/mem_notify_wait.  Host side: bench/cuse.py.

latency: per mode (``n1``: max_per_event = 1; ``all``: max_per_event =
65536, every file at LOW) one provider with renotify_ms = 250 and
min_gap_ms = 0; per waiter count, the waiters open the device while calm
(1 and 10: one process each; 100 and 1,000: processes of 250 files at most,
each polling all of its files with one poll()), the loadgen holds the memory
at LOW and the bench waits for ``events`` pressure events (``all``: enough
events for ``all_wakes`` wakes, 10 at least).  Latency per wake = the
client's poll-return CLOCK_MONOTONIC ms minus the t_ms of the line it read.
FACT ``lat_<mode>_<count>`` is their histogram, ``ms x count`` pairs.

psi: a fresh ramp at 10 MB/s from calm down to the provider's CRITICAL
threshold, ``ramps`` times, with one device waiter and one raw PSI trigger
("some 150000 1000000", POLLPRI) armed side by side; FACTs give, for each,
when it first fired (ms after the ramp began, one clock) and the
MemAvailable then (the trigger's client reads /proc/meminfo at once; the
device's is the avail_kib of the line it read).

rss: /proc/PID/smaps_rollup Rss and Pss of the interpreter's agent with no
plugin (``memagent run``, every built-in disabled; with and without its
control socket) and of the provider (with its socket) with 0 and 1,000 open
files and after they close.

Prints "FACT key=value" lines and one RESULT.  Everything it starts is its
own, inside this throw-away guest.
"""

import json
import os
import signal
import subprocess
import sys
import time

import mem_notify_device as mnd
import rigguest

DEV, SOCK, WAIT, Client = mnd.DEV, mnd.SOCK, mnd.WAIT, mnd.Client
device_state, end, hog, level, status, stop = (mnd.device_state, mnd.end, mnd.hog, mnd.level,
                                               mnd.status, mnd.stop)
meminfo_kib, oom_kills, wait_for, wait_normal = (mnd.meminfo_kib, mnd.oom_kills, mnd.wait_for,
                                                 mnd.wait_normal)

fact = rigguest.fact
check = rigguest.Checks()

CONF = "/tmp/cuse-bench.conf"
BASE_CONF = "/tmp/agent-bare.conf"
LOG = "/tmp/provider.log"
NOPLUGINS = "/tmp/no-plugins.d"
FILES_PER_PROCESS = 250
ALL = 65536  # max_per_event for "every file at LOW"
MODES = {"n1": 1, "all": ALL}
CONFIG = """[levels]
renotify_ms = 250
[mem_notify_device]
max_per_event = %d
min_gap_ms = 0
max_files = 2048
mode = 0666
[plugins]
dir = %s
"""
# The agent with no plugin: every built-in disabled, no drop-in directory.
BARE_CONFIG = """[plugins]
disable = release_caches, user_activity, kill_background, notify_ui, device_watch, mem_notify_device
dir = %s
""" % NOPLUGINS
PSI_TRIGGER = "some 150000 1000000"
# The raw kernel signal: arm a PSI trigger, print each POLLPRI with the
# MemAvailable read at once.
PSI_CLIENT = r"""import os, select, sys, time
fd = os.open("/proc/pressure/memory", os.O_RDWR | os.O_NONBLOCK)
os.write(fd, sys.argv[1].encode() + b"\0")
p = select.poll()
p.register(fd, select.POLLPRI)
print("READY", flush=True)
while True:
    for _, ev in p.poll(-1):
        t = int(time.monotonic() * 1000)
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:"))
        print("FIRE %d %d %d" % (t, avail, ev), flush=True)
"""


def agent_cmd():
    """Return: the rig's interpreter running memagent (never a launcher
    script: the pid measured must be the interpreter's)."""
    if os.environ.get("RIG_INTERPRETER") == "micropython":
        return ["micropython", "-X", "heapsize=2M", "-m", "memagent"]
    return [sys.executable, "-m", "memagent"]


def mono_ms():
    return int(time.monotonic() * 1000)


def start_provider(max_per_event):
    """Start ``memagent cuse`` with the bench's config.  Returns: (Popen,
    seconds to the device) or (Popen, None)."""
    with open(CONF, "w") as f:
        f.write(CONFIG % (max_per_event, NOPLUGINS))
    t0 = time.time()
    with open(LOG, "a") as log:
        log.write("=== memagent cuse, max_per_event %d\n" % max_per_event)
        log.flush()
        p = subprocess.Popen(agent_cmd() + ["cuse", "-c", CONF, "--socket", SOCK],
                             stderr=log)
    ok = wait_for(lambda: os.path.exists(DEV) and device_state().get("devnum"), 120, 0.05)
    return p, (time.time() - t0) if ok else None


def waiters(count, seconds=600):
    """Return: Clients holding ``count`` open files of the device."""
    if count <= 10:
        return [Client([WAIT, "-n", "0", "-t", str(seconds)]) for _ in range(count)]
    out, left = [], count
    while left > 0:
        n = min(left, FILES_PER_PROCESS)
        out.append(Client([WAIT, "-c", str(n), "-n", "0", "-t", str(seconds)]))
        left -= n
    return out


def histogram(values):
    """Return: ``ms x count`` pairs, ascending, comma-separated ("-" if none)."""
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return ",".join("%dx%d" % (v, counts[v]) for v in sorted(counts)) or "-"


def hold_at_low(rate=20):
    """Allocate to midway between LOW and CRITICAL and hold.  Returns: the
    loadgen, or None if the provider did not reach LOW within 90 s."""
    th = status().get("thresholds") or {}
    target = (th.get("low_kib", 0) + th.get("critical_kib", 0)) // 2
    h = hog(max(1, (meminfo_kib() - target) // 1024), rate=rate, hold_s=400)
    if not wait_for(lambda: level() in ("LOW", "CRITICAL"), 90, 0.2):
        end(h)
        return None
    return h


def latency_case(mode, count, events):
    """Hold at LOW until ``events`` pressure events passed with ``count``
    waiters.  FACTs: lat_<mode>_<count> (histogram), and its events,
    wakes, woken per event, levels, duration."""
    tag = "%s_%d" % (mode, count)
    wait_normal(90)
    cl = waiters(count)
    ready = all(c.ready(120) for c in cl)
    before = oom_kills()
    st0 = device_state()
    n0, per0 = st0.get("events", 0), st0.get("woken_per_event") or {}
    t0 = time.time()
    h = hold_at_low() if ready else None
    got = None
    if h is not None:
        got = wait_for(lambda: device_state().get("events", 0) - n0 >= events, 240, 0.25)
    st = device_state()
    held_s = time.time() - t0
    if h is not None:
        end(h)
    for c in cl:
        if c.p.poll() is None:
            c.p.send_signal(signal.SIGTERM)
    lat, levels, errors = [], {}, 0
    for c in cl:
        c.finish(60)
        errors += len(c.kind("ERROR"))
        for ln in c.kind("WAKE"):
            w = ln.split()  # WAKE mono idx level avail total eta target t_ms
            if len(w) < 9:
                continue
            lat.append(int(w[1]) - int(w[8]))
            levels[w[3]] = levels.get(w[3], 0) + 1
    per_event = {k: v - per0.get(k, 0) for k, v in (st.get("woken_per_event") or {}).items()
                 if v - per0.get(k, 0)}
    fact("lat_" + tag, histogram(lat))
    fact("events_" + tag, st.get("events", 0) - n0)
    fact("wakes_" + tag, len(lat))
    fact("woken_per_event_" + tag, json.dumps(per_event, sort_keys=True).replace(" ", ""))
    fact("levels_" + tag, json.dumps(levels, sort_keys=True).replace(" ", ""))
    fact("held_s_" + tag, "%.1f" % held_s)
    fact("client_errors_" + tag, errors)
    fact("oom_kills_" + tag, oom_kills() - before)
    check(ready, "%s: %d waiters ready" % (tag, count))
    check(h is not None and got, "%s: %d pressure events at LOW" % (tag, events))
    check(errors == 0, "%s: no client error" % tag)


def part_latency(modes, counts, events, all_wakes):
    for mode in modes:
        provider, start_s = start_provider(MODES[mode])
        fact("provider_start_s_%s" % mode, "%.2f" % start_s if start_s else "none")
        if not check(start_s is not None, "the provider (%s) made %s" % (mode, DEV)):
            stop(provider)
            continue
        try:
            for count in counts:
                n = events if mode == "n1" else max(10, min(events, -(-all_wakes // count)))
                latency_case(mode, count, n)
        finally:
            fact("provider_rc_%s" % mode, stop(provider))


def first_psi(cl):
    """Return: (mono_ms, avail_kib) of the PSI client's first FIRE, or None."""
    for ln in cl.kind("FIRE"):
        w = ln.split()
        return int(w[1]), int(w[2])
    return None


def first_wake(cl):
    """Return: (mono_ms, avail_kib of the line) of the first WAKE, or None."""
    for ln in cl.kind("WAKE"):
        w = ln.split()
        if len(w) >= 9:
            return int(w[1]), int(w[4])
    return None


def part_psi(ramps):
    """The raw PSI trigger and the device side by side on one ramp."""
    provider, start_s = start_provider(1)
    if not check(start_s is not None, "the provider (psi) made %s" % DEV):
        stop(provider)
        return
    try:
        th = status().get("thresholds") or {}
        fact("psi_thresholds", json.dumps(th, sort_keys=True).replace(" ", ""))
        for run in range(1, ramps + 1):
            wait_normal(90)
            time.sleep(2)
            before = oom_kills()
            psi = Client([sys.executable, "-c", PSI_CLIENT, PSI_TRIGGER])
            dev = Client([WAIT, "-n", "1", "-t", "120"])
            ready = psi.ready() and dev.ready()
            start_kib = meminfo_kib()
            crit = th.get("critical_kib", 0)
            t0 = mono_ms()
            h = hog(max(1, (start_kib - crit) // 1024), rate=10, hold_s=3)
            # the ramp, 3 s held at CRITICAL's threshold, then released
            try:
                h.wait(timeout=120)
            except subprocess.TimeoutExpired:
                end(h)
            dev.p.send_signal(signal.SIGTERM)
            psi.p.send_signal(signal.SIGTERM)
            dev.finish(20)
            psi.finish(20)
            p, d = first_psi(psi), first_wake(dev)
            fact("psi_run%d" % run, "start_kib=%d ramp_to_kib=%d psi=%s device=%s fires=%d" % (
                start_kib, crit,
                "%d:%d" % (p[0] - t0, p[1]) if p else "none",
                "%d:%d" % (d[0] - t0, d[1]) if d else "none",
                len(psi.kind("FIRE"))))
            fact("psi_run%d_oom_kills" % run, oom_kills() - before)
            check(ready, "psi run %d: both clients ready" % run)
    finally:
        stop(provider)


def smaps(pid):
    s = rigguest.proc_kib(pid)
    return "%s/%s" % (s.get("Rss"), s.get("Pss"))


def part_rss():
    """Rss/Pss of the bare agent and of the provider with 0 and 1,000 files."""
    wait_normal(90)
    with open(BASE_CONF, "w") as f:
        f.write(BARE_CONFIG)
    for tag, extra in (("agent_socket", ["--socket", SOCK]), ("agent_nosocket", ["--no-socket"])):
        p = subprocess.Popen(agent_cmd() + ["run", "-c", BASE_CONF] + extra,
                             stderr=open(LOG, "a"))
        if extra[0] == "--socket":
            ok = wait_for(lambda: status().get("level"), 120, 0.05)
            fact("rss_agent_plugins", ",".join(x.get("name", "?") for x in
                                               status().get("plugins") or []) or "none")
        else:
            time.sleep(10)  # no socket to ask: give it the start-up a socket shows
            ok = p.poll() is None
        time.sleep(3)
        fact("rss_" + tag, smaps(p.pid) if ok else "none")
        stop(p)
    provider, start_s = start_provider(1)
    if not check(start_s is not None, "the provider (rss) made %s" % DEV):
        stop(provider)
        return
    time.sleep(3)
    fact("rss_provider_0", smaps(provider.pid))
    many = waiters(1000)
    ok = all(c.ready(120) for c in many)
    time.sleep(3)
    fact("rss_provider_1000", smaps(provider.pid) if ok else "none")
    fact("rss_open_files", device_state().get("open_files"))
    for c in many:
        c.p.kill()
        c.finish(30)
    wait_for(lambda: device_state().get("open_files") == 0 and "0", 30, 0.1)
    time.sleep(3)
    fact("rss_provider_after", smaps(provider.pid))
    stop(provider)


def main(argv):
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    parts = opts.get("parts", "latency,psi,rss").split(",")
    counts = [int(x) for x in opts.get("counts", "1,10,100,1000").split(",")]
    modes = opts.get("modes", "n1,all").split(",")
    if not os.path.exists(WAIT):
        rigguest.result(False, "missing %s (gcc-arm-linux-gnueabihf on the host)" % WAIT)
        return 1
    subprocess.run(["modprobe", "cuse"], stderr=subprocess.DEVNULL)
    os.makedirs(NOPLUGINS, exist_ok=True)
    fact("interpreter", os.environ.get("RIG_INTERPRETER", "python3"))
    fact("mem_total_kib", meminfo_kib("MemTotal"))
    t0 = time.time()
    try:
        if "latency" in parts:
            part_latency(modes, counts, int(opts.get("events", "60")),
                         int(opts.get("all_wakes", "2000")))
        if "psi" in parts:
            part_psi(int(opts.get("ramps", "2")))
        if "rss" in parts:
            part_rss()
    finally:
        fact("bench_s", "%.0f" % (time.time() - t0))
        rigguest.handback("provider.log", path=LOG)
    check.finish("cuse bench: %s" % ",".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
