"""memagent's /dev/mem_notify (CUSE) on a real ARM kernel: the 2008 patch's
usage example, its alloc-test, exclusive and fair wakeups, SIGIO-style
delivery, and what clients do to it (1,000 opens, deaths, a second server,
a shutdown).

The provider is the product, ``memagent cuse`` (``/usr/bin/memagent``: the
board's interpreter, CPython or MicroPython), with its own config.  The
clients are /rig/bin/mem_notify_wait and /rig/bin/alloc_test (C, static
armhf, cross-built by the rig) and /rig/bin/mem_notify_poll.py (Python).
Pressure is real: anonymous memory from the loadgen.

    scenario [parts=calm,pressure,alloc,fair,robust] [alloc_runs=5] [calm_s=30]

Prints "FACT key=value" lines and one RESULT.  Everything it starts is its
own, inside this throw-away guest.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import rigguest

fact = rigguest.fact
check = rigguest.Checks()

DEV = "/dev/mem_notify"
SOCK = "/run/memagent-cuse.sock"
CONF = "/tmp/cuse.conf"
LOG = "/tmp/provider.log"
BIN = "/rig/bin/"
WAIT = BIN + "mem_notify_wait"
ALLOC = BIN + "alloc_test"
PYCLIENT = BIN + "mem_notify_poll.py"
CHURN_FILE = "/var/tmp/churn"
LOADGEN = [sys.executable, "-S", "-m", "memagent.demo.loadgen"]
# renotify_ms: one pressure event every 250 ms while a level holds; N=1 and
# no rate limit, so that each event's choice is visible.
CONFIG = """[levels]
renotify_ms = 250
[mem_notify_device]
max_per_event = 1
min_gap_ms = 0
mode = 0666
"""



def agent_cmd():
    """Return: how to run the agent: the board's launcher when installed,
    else the interpreter the rig was asked for (RIG_INTERPRETER)."""
    if os.path.exists("/usr/bin/memagent"):
        return ["/usr/bin/memagent"]
    if os.environ.get("RIG_INTERPRETER") == "micropython":
        return ["micropython", "-X", "heapsize=2M", "-m", "memagent"]
    return [sys.executable, "-m", "memagent"]


def status():
    """Return: the provider's status (its control socket), or {}."""
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


def device_state(st=None):
    """Return: the mem_notify_device plugin's state in a status."""
    for p in (st if st is not None else status()).get("plugins") or []:
        if p.get("name") == "mem_notify_device":
            return p.get("state") or {}
    return {}


def wait_for(pred, timeout_s, step_s=0.1):
    """Return: the first true pred() value, or None after timeout_s."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        v = pred()
        if v:
            return v
        time.sleep(step_s)
    return None


def start_provider(extra_args=()):
    """Start ``memagent cuse``; wait for the device and the socket.
    Returns: (Popen, seconds to the device node)."""
    with open(CONF, "w") as f:
        f.write(CONFIG)
    t0 = time.time()
    log = open(LOG, "a")
    p = subprocess.Popen(agent_cmd() + ["cuse", "-c", CONF, "--socket", SOCK, "-v"]
                         + list(extra_args), stderr=log)
    log.close()
    ok = wait_for(lambda: os.path.exists(DEV) and device_state().get("devnum"), 90, 0.05)
    return p, (time.time() - t0) if ok else None


def stop(p, sig=signal.SIGTERM, timeout_s=20):
    """Signal ``p`` and reap it.  Returns: its exit code (or None)."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        return p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def meminfo_kib(field="MemAvailable"):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def oom_kills():
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


def level():
    return (status().get("level") or "").upper()


def wait_normal(timeout_s=60):
    """Wait for the provider's level to be NORMAL.  Returns: True if it is."""
    return bool(wait_for(lambda: level() == "NORMAL", timeout_s, 0.2))


class Client:
    """A client process whose stdout lines are collected (read from the raw
    pipe: a text wrapper's buffer would hide lines from select())."""

    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  bufsize=0)
        self.lines = []
        self._buf = b""
        self._seen = 0

    def _pump(self, timeout_s):
        """Read what is there within ``timeout_s``.  Returns: False at EOF."""
        r, _, _ = select.select([self.p.stdout], [], [], timeout_s)
        if not r:
            return True
        data = os.read(self.p.stdout.fileno(), 65536)
        if not data:
            return False
        self._buf += data
        *done, self._buf = self._buf.split(b"\n")
        self.lines += [ln.decode(errors="replace") for ln in done if ln]
        return True

    def ready(self, timeout_s=30):
        """Wait for the READY line.  Returns: True if it came."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if any(ln.startswith("READY") for ln in self.lines):
                return True
            if not self._pump(max(0.0, deadline - time.time())):
                break
        return any(ln.startswith("READY") for ln in self.lines)

    def finish(self, timeout_s=60):
        """Wait for the exit; collect the rest.  Returns: the exit code."""
        deadline = time.time() + timeout_s
        while time.time() < deadline and self._pump(max(0.0, deadline - time.time())):
            pass
        if self.p.poll() is None:
            self.p.kill()
        self.p.stdout.close()
        return self.p.wait()

    def kind(self, word):
        return [ln for ln in self.lines if ln.startswith(word + " ")]


def hog(mb, rate=20, hold_s=60):
    """Start the loadgen: ``mb`` MiB of anonymous memory at ``rate`` MB/s."""
    return subprocess.Popen(LOADGEN + ["anon", "--rate", str(rate), "--max-mb", str(mb),
                                       "--hold", str(hold_s)], stdout=subprocess.DEVNULL)


def end(p):
    if p.poll() is None:
        p.kill()
    p.wait()


# -- the parts ---------------------------------------------------------------------------

def part_calm(calm_s):
    """The seed's usage example while calm, then during page-cache churn: no wake."""
    for phase in ("calm", "churn"):
        reader = None
        if phase == "churn":
            mib = rigguest.thrash_file(CHURN_FILE, ratio=1.5)
            fact("churn_file_mib", mib)
            reader = rigguest.start_reader(CHURN_FILE)
        c = Client([WAIT, "-n", "0", "-t", str(calm_s)])
        py = Client([sys.executable, PYCLIENT, "--count", "0", "--timeout", str(calm_s)])
        ready = c.ready() and py.ready()
        c.finish(calm_s + 30)
        py.finish(calm_s + 30)
        if reader is not None:  # the shell loop, then its dd
            reader.kill()
            reader.wait()
            subprocess.run("pkill -f 'dd if=%s'" % CHURN_FILE, shell=True)
        st = status()
        fact("%s_wakes_c" % phase, len(c.kind("WAKE")))
        fact("%s_wakes_py" % phase, len(py.kind("WAKE")))
        fact("%s_level" % phase, st.get("level"))
        fact("%s_avail_kib" % phase, meminfo_kib())
        check(ready and not c.kind("WAKE") and not py.kind("WAKE"),
              "no wake in %d s of %s (C and Python clients)" % (calm_s, phase))
    os.unlink(CHURN_FILE)


def part_pressure():
    """Real pressure wakes the C client, the Python client and a SIGIO opener."""
    c = Client([WAIT, "-n", "1", "-t", "90"])
    py = Client([sys.executable, PYCLIENT, "--count", "1", "--timeout", "90"])
    sig = Client([WAIT, "-n", "1", "-t", "90", "-s", "10"])
    ready = c.ready() and py.ready() and sig.ready()
    before = oom_kills()
    t0 = time.time()
    h = hold_at_low(rate=10, wait=False)
    codes = [c.finish(100), py.finish(100), sig.finish(100)]
    fact("pressure_woke_s", "%.1f" % (time.time() - t0))
    end(h)
    for name, cl, fields in (("c", c, 3), ("py", py, 2), ("sigio", sig, 3)):
        wakes = cl.kind("WAKE")  # WAKE mono_ms [index] line
        fact("pressure_%s" % name, wakes[0].split(" ", fields)[fields] if wakes else "-")
    fact("pressure_sig_lines", len(sig.kind("SIG")))
    fact("pressure_oom_kills", oom_kills() - before)
    check(ready and codes == [0, 0, 0] and c.kind("WAKE") and py.kind("WAKE"),
          "real pressure wakes the C and the Python client")
    check(sig.kind("SIG") and sig.kind("SIG")[0].split()[2] == "10",
          "a wakeup sends the registered signal (MEMNOTIFY_SETSIG) to its opener")
    check(oom_kills() == before, "no OOM kill")
    wait_normal()


def part_alloc(runs):
    """The seed's alloc-test: 10 MB/s, exit on notification, before any OOM kill."""
    exits, avail = [], []
    for i in range(runs):
        wait_normal()
        before = oom_kills()
        a = Client([ALLOC, "-r", "10"])
        code = a.finish(180)
        kills = oom_kills() - before
        note = a.kind("NOTIFIED")
        fields = dict(kv.split("=", 1) for kv in note[0].split()[2:4]) if note else {}
        exits.append("%s/%d" % (code, kills))
        avail.append(int(fields.get("mem_available_kib", 0)) // 1024)
        fact("alloc_run%d" % (i + 1), note[0] if note else (a.lines[-1:] or ["-"])[0])
    fact("alloc_exits_code_oomkills", ",".join(exits))
    fact("alloc_mb_available_at_exit", ",".join(str(x) for x in avail))
    check(all(e == "0/0" for e in exits), "alloc-test exits on notification before the OOM "
          "killer, every run")


def hold_at_low(rate=20, wait=True):
    """Allocate until the provider is at LOW, midway to CRITICAL; hold.
    Returns: the loadgen (kill it to end the pressure), or None if the
    level did not come within 60 s (with ``wait``)."""
    th = status().get("thresholds") or {}
    low, crit = th.get("low_kib", 0), th.get("critical_kib", 0)
    target = (low + crit) // 2
    mb = max(1, (meminfo_kib() - target) // 1024)
    fact("hold_target_avail_kib", target)
    h = hog(mb, rate=rate, hold_s=300)
    if wait and not wait_for(lambda: level() == "LOW", 60, 0.2):
        end(h)
        return None
    return h


def part_fair(waiters=10, events=50):
    """N=1: each pressure event wakes exactly one of 10 waiters; Jain over 50."""
    wait_normal()  # opened during pressure, every waiter would be woken at once
    cl = [Client([WAIT, "-n", "0", "-t", "300"]) for _ in range(waiters)]
    ready = all(c.ready() for c in cl)
    h = hold_at_low()
    start = device_state()
    n0, per0 = start.get("events", 0), start.get("woken_per_event") or {}
    late = None
    if h is not None:
        wait_for(lambda: device_state().get("events", 0) - n0 >= events, 120, 0.25)
        late = late_opener()
    st = device_state()
    per_event = {k: v - per0.get(k, 0) for k, v in (st.get("woken_per_event") or {}).items()
                 if v - per0.get(k, 0)}
    if h is not None:
        end(h)
    for c in cl:
        c.p.send_signal(signal.SIGTERM)
    wakes = []  # (mono_ms, waiter) of every wake, the first `events` counted
    for i, c in enumerate(cl):
        c.finish(30)
        wakes += [(int(ln.split()[1]), i) for ln in c.kind("WAKE")]
    counts = [0] * waiters
    for _, i in sorted(wakes)[:events]:
        counts[i] += 1
    total = sum(counts)
    jain = (total * total / (len(counts) * sum(x * x for x in counts))) if total else 0.0
    fact("fair_events", st.get("events", 0) - n0)
    fact("fair_woken_per_event", json.dumps(per_event, sort_keys=True).replace(" ", ""))
    fact("fair_wakes_total", len(wakes))
    fact("fair_order", "".join("%d" % i for _, i in sorted(wakes)))
    fact("fair_wakes_per_waiter_first_%d" % events, ",".join(str(x) for x in counts))
    fact("fair_jain", "%.4f" % jain)
    fact("late_opener_readable_at_once", late)
    check(ready and h is not None, "10 waiters and the memory held at LOW")
    check(set(per_event) <= {"LOW 1"} and per_event.get("LOW 1", 0) >= events,
          "each pressure event at LOW wakes exactly one file (N=1)")
    check(total == events and jain >= 0.99, "Jain's index over %d events >= 0.99" % events)
    check(late is True, "a file opened during pressure is readable at once")
    wait_normal()


def late_opener():
    fd = os.open(DEV, os.O_RDONLY)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    finally:
        os.close(fd)


def part_robust(provider):
    """1,000 opens; waiters that die while polling; a second server; shutdown."""
    many = Client([WAIT, "-c", "1000", "-n", "0", "-t", "600"])
    ok = many.ready(60)
    during = device_state().get("open_files")
    rss = rigguest.proc_kib(provider.pid).get("Rss")
    many.p.kill()  # dies while polling: the kernel releases its 1,000 files
    many.finish(30)
    after = wait_for(lambda: device_state().get("open_files") == 0 and "0", 30, 0.1)
    fact("open_files_during", during)
    fact("open_files_after_kill", device_state().get("open_files"))
    fact("provider_rss_kib_1000_open", rss)
    check(ok and during == 1000 and after, "1,000 opens served, all freed when the opener dies")
    fact("interrupted_read", interrupted_read(provider))
    check(device_state().get("malformed") == 0 and provider.poll() is None,
          "an interrupted request leaves the provider serving")
    second = subprocess.run(agent_cmd() + ["cuse", "-c", CONF], capture_output=True,
                            text=True, timeout=120)
    fact("second_instance", "%d %s" % (second.returncode,
                                       (second.stderr.strip().splitlines() or ["-"])[-1]))
    check(second.returncode != 0 and "already served" in second.stderr,
          "a second instance refuses cleanly")
    poller = Client([WAIT, "-n", "0", "-t", "60"])
    poller.ready()
    t0 = time.time()
    code = stop(provider)
    pcode = poller.finish(30)
    fact("shutdown", "provider %s, poller %s after %.2f s: %s" % (
        code, pcode, time.time() - t0, (poller.kind("ERROR") or ["-"])[0]))
    check(pcode == 3 and not os.path.exists(DEV),
          "shutdown removes the device and a poller gets an error, not a hang")


# A client whose read() is interrupted by signals while the provider is stopped:
# the kernel then sends the READ and an INTERRUPT for it once the provider runs.
INTERRUPTED = """import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *a: None)
fd = os.open("%s", os.O_RDONLY)
print("READY", flush=True)
time.sleep(0.5)
print("READ", os.read(fd, 256).decode().strip(), flush=True)
""" % DEV


def interrupted_read(provider):
    """Returns: what the interrupted client read, with the time it took."""
    c = Client([sys.executable, "-c", INTERRUPTED])
    if not c.ready():
        return "no READY"
    provider.send_signal(signal.SIGSTOP)
    time.sleep(1.0)  # the client is in read(), waiting for the stopped server
    for _ in range(3):
        c.p.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
    provider.send_signal(signal.SIGCONT)
    code = c.finish(30)
    return "%s exit %s" % ((c.kind("READ") or ["READ -"])[0][5:], code)


def main(argv):
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    parts = opts.get("parts", "calm,pressure,alloc,fair,robust").split(",")
    missing = [p for p in (WAIT, ALLOC, PYCLIENT) if not os.path.exists(p)]
    if missing:
        rigguest.result(False, "missing clients: %s (gcc-arm-linux-gnueabihf on the host)"
                        % ", ".join(missing))
        return 1
    subprocess.run(["modprobe", "cuse"], stderr=subprocess.DEVNULL)
    provider, start_s = start_provider()
    fact("interpreter", os.environ.get("RIG_INTERPRETER", "python3"))
    fact("provider_start_s", "%.2f" % start_s if start_s else "none")
    if start_s is None:
        stop(provider)
        rigguest.handback("provider.log", path=LOG)
        rigguest.result(False, "the provider did not make %s" % DEV)
        return 1
    st = status()
    fact("device", "%s mode %o" % (device_state(st).get("devnum"),
                                   os.stat(DEV).st_mode & 0o777))
    fact("thresholds", json.dumps(st.get("thresholds") or {}, sort_keys=True)
         .replace(" ", ""))
    fact("provider_rss_kib", rigguest.proc_kib(provider.pid).get("Rss"))
    try:
        if "calm" in parts:
            part_calm(int(opts.get("calm_s", "30")))
        if "pressure" in parts:
            part_pressure()
        if "alloc" in parts:
            part_alloc(int(opts.get("alloc_runs", "5")))
        if "fair" in parts:
            part_fair()
        fact("device_state", json.dumps(device_state(), sort_keys=True).replace(" ", ""))
        if "robust" in parts:
            part_robust(provider)
    finally:
        stop(provider)
        rigguest.handback("provider.log", path=LOG)
    check.finish("mem_notify device: %s" % ",".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
