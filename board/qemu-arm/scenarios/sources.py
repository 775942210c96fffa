"""memagent's kernel sources on the ARM guest: what the dev machine cannot do.

sources.py MODE
  psi       system-wide PSI trigger source: calm costs no wakeups, page-cache
            thrash wakes it ("psi" events); records the churn trace.
  cgroup2   a v2 memcg (memory.max) filled with page cache, then a 10 MB/s
            anonymous ramp inside it: the cgroup2 source wakes on
            memory.events, LOW comes before the OOM kill; records the trace.
  ramp      system-wide 10 MB/s anonymous ramp with the psi source (auto):
            LOW before the kernel's OOM kill.
  spike     a v2 memcg: a sudden allocation of 60% of the limit, released.

Prints RESULT ok/fail and "FACT key=value" lines; hands back traces/events.
Every process it loads is its own, inside this throw-away guest.
"""

import json
import os
import signal
import subprocess
import sys
import time

import rigguest

from memagent.demo import loadgen

CG_ROOT = "/sys/fs/cgroup"
LOADGEN = [sys.executable, "-m", "memagent.demo.loadgen"]  # /opt/memagent is on PYTHONPATH


THRASH = r"""
echo $$ > %(cg)s/cgroup.procs
python3 -m memagent.demo.loadgen anon --rate 0 --max-mb %(hold)d --hold 600 >/dev/null &
dd if=/dev/zero of=/var/tmp/thrash bs=1M count=%(fill)d 2>/dev/null; sync
while :; do python3 -c 'import asyncio, json, email.parser, argparse'; done &
while :; do dd if=/var/tmp/thrash of=/dev/null bs=1M 2>/dev/null; done
"""


def start_thrash():
    """Page-cache thrash in group "thrash" (60% of MemAvailable): a holder of
    anonymous memory, a file larger than RAM streamed, imports looping.
    Measured by the rig's psi_trigger.py: PSI fires within 2-5 s."""
    with open("/proc/meminfo") as f:
        avail_mb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable")) >> 10
    limit_mb = avail_mb * 6 // 10
    group = make_group("thrash", limit_mb)
    script = THRASH % {"cg": group, "hold": limit_mb * 7 // 10,
                       "fill": int(os.environ.get("RIG_MEM_MB", "128")) * 3 // 2}
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def fact(key, value):
    print("FACT %s=%s" % (key, value), flush=True)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# RIG_INTERPRETER micropython (`run --interpreter micropython`): memagent runs
# on the sidecar's MicroPython, from the launcher's tree (.mpy bytecode).
MICROPYTHON = os.environ.get("RIG_INTERPRETER") == "micropython"
MPY_ENV = {"MICROPYPATH": ".frozen:/usr/lib/memagent/micropython"}


def memagent(*args, log=None, **kw):
    """Start ``memagent ARGS`` (on MicroPython with RIG_INTERPRETER
    micropython); its stderr goes to the file ``log``, else a pipe."""
    err = open(log, "w") if log else subprocess.PIPE
    head = [sys.executable, "-m", "memagent"]
    if MICROPYTHON:
        head = ["micropython", "-X", "heapsize=2M", "-m", "memagent"]
        kw["env"] = dict(os.environ, **MPY_ENV)
    proc = subprocess.Popen(head + list(args), stderr=err, text=True, **kw)
    proc.log_path = log
    return proc


def exe_fact(proc):
    """FACT agent_exe: which interpreter runs ``proc`` (read once it has
    exec'd; the sidecar's is its loader in /opt/trixie)."""
    try:
        fact("agent_exe", os.readlink("/proc/%d/exe" % proc.pid))
    except OSError:
        pass


def stop(proc):
    """SIGTERM, then wait.  Returns: the agent's stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.log_path:
        with open(proc.log_path) as f:
            err = f.read()
    return err or ""


def wait_ready(procs, t0, timeout_s=60):
    """Wait until each agent (started with a ``log``) has taken its first
    reading: its "levels:" line.  A CPython agent takes seconds to start
    under TCG, and a ramp must not begin before it senses.  Returns: the
    seconds from ``t0`` until the last was ready.  Raises: RuntimeError
    naming the log of one that exited or stayed silent."""
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        while True:
            with open(proc.log_path) as f:
                if "levels: LOW <=" in f.read():
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent not sensing (exit %s); see %s"
                                   % (proc.poll(), proc.log_path))
            time.sleep(0.05)
    return time.monotonic() - t0


def make_group(name, max_mb):
    write(CG_ROOT + "/cgroup.subtree_control", "+memory")
    path = CG_ROOT + "/" + name
    os.makedirs(path, exist_ok=True)
    write(path + "/memory.max", "%dM" % max_mb)
    return path


def in_group(path):
    return lambda: write(path + "/cgroup.procs", str(os.getpid()))


def start_alloc(rate_mb_s, limit_mb, group=None, hold_s=3600):
    argv = LOADGEN + ["anon", "--rate", str(rate_mb_s), "--max-mb", str(limit_mb),
                      "--hold", str(hold_s)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            preexec_fn=in_group(group) if group else None)


def allocated_mb(out):
    """Return: the MiB the allocator last reported in its output ``out``."""
    counts = [p.count for p in map(loadgen.parse_line, out.splitlines()) if p is not None]
    return int(counts[-1]) if counts else 0


def fill_cache(group, mb):
    """Write a file, then read it from inside ``group`` so its cache is charged there."""
    subprocess.run("dd if=/dev/zero of=/var/tmp/cache bs=1M count=%d 2>/dev/null; sync; "
                   "echo 1 > /proc/sys/vm/drop_caches" % mb, shell=True, check=True)
    subprocess.run(["cat", "/var/tmp/cache"], stdout=subprocess.DEVNULL, check=True,
                   preexec_fn=in_group(group))


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def events_of(readings):
    return [r.get("event", "poll") for r in readings]


def mode_psi():
    # max_fill_kib_s = 0: trust PSI alone (no watermark check beside it), so
    # that every reading after start-up is the kernel's doing.
    write("/tmp/psi-only.conf", "[sources]\nmax_fill_kib_s = 0\n")
    rec = memagent("record", "--source", "psi", "--interval-ms", "600000", "-c",
                   "/tmp/psi-only.conf", "-o", "/tmp/t.jsonl")
    time.sleep(8)  # calm: past the start-up samples, then nothing should wake it
    exe_fact(rec)
    calm = load_jsonl("/tmp/t.jsonl")[1:]
    time.sleep(10)
    calm_after = load_jsonl("/tmp/t.jsonl")[1:]
    fact("calm_readings_8s_to_18s", len(calm_after) - len(calm))
    thrash = start_thrash()
    time.sleep(20)
    os.killpg(thrash.pid, signal.SIGKILL)
    thrash.wait()
    err = stop(rec)
    readings = load_jsonl("/tmp/t.jsonl")
    psi_wakes = events_of(readings).count("psi")
    fact("psi_wakes", psi_wakes)
    fact("readings", len(readings) - 1)
    rigguest.handback("churn-guest128m.jsonl", path="/tmp/t.jsonl")
    ok = psi_wakes > 0 and len(calm_after) - len(calm) == 0 and "source: psi" in err
    if not ok:
        print(err)
    rigguest.result(ok, "psi source: %d psi wakes under thrash, %d readings while calm"
                    % (psi_wakes, len(calm_after) - len(calm)))


def ramp_in_group(name, max_mb, cache_mb, source):
    group = make_group(name, max_mb)
    fill_cache(group, cache_mb)
    t_exec = time.monotonic()
    agent = memagent("run", "--memcg", group, "--source", source, "--no-socket",
                     "--events-json", "/tmp/ev.jsonl", log="/tmp/agent.log")
    rec = memagent("record", "--memcg", group, "--source", source, "--interval-ms", "100",
                   "-o", "/tmp/t.jsonl", log="/tmp/record.log")
    fact("agent_ready_s", "%.2f" % wait_ready([agent, rec], t_exec))
    exe_fact(agent)
    time.sleep(1)
    t0 = time.time()
    hog = start_alloc(10, max_mb * 2, group)
    out, _ = hog.communicate(timeout=120)
    killed_wall = time.time()
    time.sleep(1)
    err = stop(agent)
    stop(rec)
    with open(group + "/memory.events") as f:
        oom_kills = int([ln for ln in f if ln.startswith("oom_kill ")][0].split()[1])
    return t0, killed_wall, hog.returncode, out, err, oom_kills


def judge_ramp(t0, killed_wall, rc, out, err, oom_kills, label):
    evs = load_jsonl("/tmp/ev.jsonl") if os.path.exists("/tmp/ev.jsonl") else []
    evs = [e for e in evs if "action" not in e]  # notifications only: not kills, plugin errors
    lows = [e for e in evs if e["level"] == "LOW" and e["prev_level"] == "NORMAL"]
    mb_total = allocated_mb(out)
    fact("alloc_exit", rc)
    fact("oom_kills", oom_kills)
    fact("allocated_mb", mb_total)
    if lows:
        first = lows[0]
        fact("first_low_s", "%.2f" % (first["wall"] - t0))
        fact("first_low_avail_pct", 100 * first["avail_kib"] // first["total_kib"])
        fact("low_lead_s", "%.2f" % (killed_wall - first["wall"]))
    ok = bool(lows) and rc == -9 and lows[0]["wall"] < killed_wall
    if not ok:
        print(err)
    rigguest.result(ok, "%s: LOW %s the OOM kill" % (label, "before" if ok else "NOT before"))


def mode_cgroup2():
    facts = ramp_in_group("ramp", 48, 40, "cgroup2")
    readings = load_jsonl("/tmp/t.jsonl")
    fact("events_wakes", sum(1 for e in events_of(readings) if e.startswith("events:")))
    rigguest.handback("ramp-guest48m-cgroup2.jsonl", path="/tmp/t.jsonl")
    rigguest.handback("ramp-guest48m-cgroup2.events.jsonl", path="/tmp/ev.jsonl")
    judge_ramp(*facts, label="cgroup2 ramp")


def mode_poll():
    facts = ramp_in_group("ramp", 48, 40, "poll")
    rigguest.handback("ramp-guest48m-poll.events.jsonl", path="/tmp/ev.jsonl")
    judge_ramp(*facts, label="poll ramp")


def mode_ramp():
    t_exec = time.monotonic()
    agent = memagent("run", "--no-socket", "--events-json", "/tmp/ev.jsonl",
                     log="/tmp/agent.log")
    rec = memagent("record", "--interval-ms", "100", "-o", "/tmp/t.jsonl", log="/tmp/record.log")
    fact("agent_ready_s", "%.2f" % wait_ready([agent, rec], t_exec))
    time.sleep(1)
    t0 = time.time()
    hog = start_alloc(10, 1000)
    out, _ = hog.communicate(timeout=120)
    killed_wall = time.time()
    time.sleep(1)
    err = stop(agent)
    stop(rec)
    fact("source", err.split("source: ")[1].split()[0] if "source: " in err else "?")
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    rigguest.handback("ramp-guest128m-system.jsonl", path="/tmp/t.jsonl")
    judge_ramp(t0, killed_wall, hog.returncode, out, err,
               dmesg.count("Out of memory"), label="system ramp (psi)")


def mode_spike():
    group = make_group("spike", 64)
    rec = memagent("record", "--memcg", group, "--source", "cgroup2", "--interval-ms", "100",
                   "-o", "/tmp/t.jsonl")
    time.sleep(3)
    hog = start_alloc(1000, 40, group, hold_s=2)
    hog.communicate(timeout=60)
    time.sleep(3)
    stop(rec)
    readings = load_jsonl("/tmp/t.jsonl")[1:]
    low = min(r["avail_kib"] for r in readings)
    fact("min_avail_pct", 100 * low // readings[0]["total_kib"])
    rigguest.handback("spike-guest64m-cgroup2.jsonl", path="/tmp/t.jsonl")
    rigguest.result(hog.returncode == 0 and low < readings[0]["avail_kib"] // 2,
                    "spike recorded")


MODES = {"psi": mode_psi, "cgroup2": mode_cgroup2, "poll": mode_poll, "ramp": mode_ramp,
         "spike": mode_spike}

if __name__ == "__main__":
    MODES[sys.argv[1]]()
