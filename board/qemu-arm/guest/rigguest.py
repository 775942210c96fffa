"""Helpers for Python scenarios running inside the qemu-arm guest.

The scenario's directory (/rig) is on sys.path, so ``import rigguest`` works.
"""
import base64
import select
import statistics
import subprocess
import sys
import time

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


def handback(name, data=None, path=None):
    """Send bytes/str ``data`` (or the file at ``path``) to the host as OUT/name."""
    if not name or name.startswith(".") or not set(name) <= _NAME_OK:
        raise ValueError("bad handback name %r" % (name,))
    if path is not None:
        with open(path, "rb") as f:
            data = f.read()
    if isinstance(data, str):
        data = data.encode()
    enc = base64.encodebytes(data).decode()
    out = "=====BEGIN FILE %s=====\n%s%s=====END FILE %s=====\n" % (
        name, enc, "" if enc.endswith("\n") or not enc else "\n", name)
    sys.stdout.write(out)
    sys.stdout.flush()


# The page-cache thrash of the scenarios: busybox sh and dd re-reading a file
# bigger than RAM (RssAnon 44 KiB for sh, 984 KiB for dd and its 1 MiB buffer;
# a Python reader held 1,956 KiB, which the 64 MB guest cannot spare).
READER = "while :; do dd if=%s of=/dev/null bs=1M 2>/dev/null; done"


def thrash_file(path, ratio=1.25):
    """Write ``path``, ``ratio`` x MemTotal of zeros, sync it and drop it
    from the page cache.  Returns: its size in MiB."""
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    mib = int(total_kib * ratio) // 1024
    subprocess.run("dd if=/dev/zero of=%s bs=1M count=%d 2>/dev/null; sync; "
                   "echo 1 > /proc/sys/vm/drop_caches" % (path, mib), shell=True, check=True)
    return mib


def start_reader(path):
    """Start a reader that streams ``path`` through the page cache without a
    break.  Returns: its Popen (the shell; kill it to stop the reader)."""
    return subprocess.Popen(["sh", "-c", READER % path])


def fact(key, value):
    """Print a ``FACT key=value`` line (the host's tests read them)."""
    print("FACT %s=%s" % (key, value), flush=True)


class Checks:
    """Collects failed checks; ``finish()`` prints the RESULT line."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        """Record ``what`` as failed unless ``ok``.  Returns: ``ok``."""
        if not ok:
            self.failures.append(what)
            print("CHECK FAILED: %s" % what, flush=True)
        return ok

    def finish(self, ok_msg):
        """Print RESULT ok ``ok_msg``, or fail with the failed checks."""
        result(not self.failures, "; ".join(self.failures) or ok_msg)


def result(ok, msg=""):
    """Print the RESULT line the host judges the run by."""
    line = "RESULT %s" % ("ok" if ok else "fail")
    if msg:
        line += " " + msg
    print(line, flush=True)


# -- the footprint of a process --------------------------------------------------------

# What a bare interpreter runs to be measured: its imports, then "ready"
# (flushed: CPython's stdout on a pipe is block-buffered), then it waits for
# its stdin to close.  MicroPython and CPython alike.
BARE = 'import %s, sys\nsys.stdout.write("ready\\n")\nsys.stdout.flush()\nsys.stdin.read()'


def proc_kib(pid, name="smaps_rollup"):
    """Return: the "kB" fields of /proc/PID/NAME (smaps_rollup: Rss, Pss,
    Anonymous...; status: VmRSS, RssAnon...) as {field: KiB}, {} if gone.
    Measure with smaps_rollup: on 6.1 the per-task counters behind VmRSS
    sync only every 64 page faults (measured: VmRSS 696 kB where
    smaps_rollup said 1,828 kB, for MicroPython)."""
    out = {}
    try:
        with open("/proc/%d/%s" % (pid, name)) as f:
            for line in f:
                words = line.split()
                if len(words) == 3 and words[2] == "kB":
                    out[words[0].rstrip(":")] = int(words[1])
    except (OSError, ValueError):
        return {}
    return out


def comm(pid):
    """Return: /proc/PID/comm ("" if gone)."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def footprint(argv, settle_s=0.5, timeout_s=60):
    """Start ``argv`` (a bare interpreter running :data:`BARE`), wait for its
    "ready" and ``settle_s``, read it and end it.  Returns: {"rss_kib",
    "anon_kib", "pss_kib" (smaps_rollup), "vmrss_kib" (status), "comm",
    "ready_ms" (from the start), "rc"}; the sizes None if it never got ready."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = {"rss_kib": None, "anon_kib": None, "pss_kib": None, "vmrss_kib": None,
           "comm": comm(p.pid), "ready_ms": None}
    try:
        # the child ends on its own if it fails; one that hangs is killed
        ready = select.select([p.stdout], [], [], timeout_s)[0]
        if ready and p.stdout.readline().strip() == "ready":
            out["ready_ms"] = round((time.monotonic() - t0) * 1000)
            time.sleep(settle_s)
            smaps = proc_kib(p.pid)
            out.update(rss_kib=smaps.get("Rss"), anon_kib=smaps.get("Anonymous"),
                       pss_kib=smaps.get("Pss"), comm=comm(p.pid),
                       vmrss_kib=proc_kib(p.pid, "status").get("VmRSS"))
    finally:
        p.stdin.close()
        try:
            out["rc"] = p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            out["rc"] = p.wait()
    return out


def startup_ms(argv, runs=7):
    """Return: the median wall time of ``argv`` from its start to its exit,
    in ms, over ``runs`` runs (None if one failed)."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            return None
        times.append((time.monotonic() - t0) * 1000)
    return round(statistics.median(times))
