"""dropbear in the guest, as a run with ssh starts it (rigssh.py, guest/rig-init),
and what it costs; the host logs in meanwhile.

    board/qemu-arm/run --ssh-port 0 board/qemu-arm/scenarios/ssh_login.py [WAIT_S]

Reads the listener's /proc/PID/smaps_rollup (pid from /run/dropbear.pid) and
MemAvailable, then waits up to WAIT_S (default 120) seconds for the host to
log in and ``touch /tmp/rig-ssh-done``, sampling every 100 ms the Rss of
every dropbear process (the listener, and a child per session, found by
their exe) and of the commands the sessions run (their descendants: what a
remote ``memagent status`` costs the device).  FACT lines:
``dropbear_rss_kib``, ``dropbear_anon_kib``, ``dropbear_pss_kib`` (the
listener, calm), ``mem_available_kib``, ``session_rss_kib`` (the largest
session child), ``dropbear_peak_kib`` (the largest Rss sum of the dropbear
processes), ``remote_peak_kib`` (the largest Rss sum of the sessions'
commands; shared pages count in each), ``sessions`` (children seen),
``remote_comms`` (the commands' names), ``host_done`` (the host said so).
When dropbear was up (guest uptime) is on the console's RIG-SSH line.
With ``run --board NAME`` the agent runs (S60memagent), so a remote
``memagent status`` gets a real answer.  RESULT fails without dropbear or
when the host never said it was done.
"""

import os
import sys
import time

import rigguest
from rigguest import fact, proc_kib

DONE = "/tmp/rig-ssh-done"
PIDFILE = "/run/dropbear.pid"


def exe_of(pid):
    """Return: the target of /proc/PID/exe ("" if gone or not ours)."""
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return ""


def processes():
    """Return: {pid: (ppid, basename of its exe)} of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(name)] = (ppid, os.path.basename(exe_of(int(name))))
    return out


def under(pid, roots, procs):
    """Return: True if ``pid`` descends from one of ``roots``."""
    for _ in range(64):
        pid = procs.get(pid, (0, ""))[0]
        if pid in roots:
            return True
        if pid <= 1:
            return False
    return False


def mem_available_kib():
    """Return: MemAvailable in KiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def listener_pid():
    """Return: dropbear's listener pid from its pidfile, 0 if none."""
    try:
        with open(PIDFILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def sample(listener, figures):
    """Read every dropbear process (by its exe: the listener, a child per
    session) and every process a session started (the commands run over
    ssh) once; raise the maxima in ``figures``."""
    procs = processes()
    dropbear = [p for p, (_, exe) in procs.items() if exe == "dropbear"]
    sessions = [p for p in dropbear if p != listener]
    total = 0
    for pid in dropbear:
        rss = proc_kib(pid).get("Rss", 0)
        total += rss
        if pid != listener:
            figures["session_rss_kib"] = max(figures["session_rss_kib"], rss)
            figures["sessions"].add(pid)
    figures["dropbear_peak_kib"] = max(figures["dropbear_peak_kib"], total)
    remote = 0
    for pid in procs:
        if pid not in sessions and under(pid, set(sessions), procs):
            remote += proc_kib(pid).get("Rss", 0)
            figures["remote_comms"].add(rigguest.comm(pid) or "?")
    figures["remote_peak_kib"] = max(figures["remote_peak_kib"], remote)


def watch(listener, wait_s):
    """Sample (:func:`sample`) every 100 ms until DONE appears or ``wait_s``
    passes.  Returns: {"session_rss_kib": the largest session child's Rss,
    "dropbear_peak_kib": the largest Rss sum of the dropbear processes,
    "remote_peak_kib": the largest Rss sum of the commands the sessions ran,
    "sessions": the session pids seen, "remote_comms": those commands'
    names, "done": whether the host said it was done}."""
    figures = {"session_rss_kib": 0, "dropbear_peak_kib": 0, "remote_peak_kib": 0,
               "sessions": set(), "remote_comms": set(), "done": False}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not figures["done"]:
        sample(listener, figures)
        figures["done"] = os.path.exists(DONE)
        time.sleep(0.1)
    return figures


def print_watch(figures):
    """Print the FACT lines of :func:`watch`'s figures."""
    for key in ("session_rss_kib", "dropbear_peak_kib", "remote_peak_kib"):
        fact(key, figures[key])
    fact("sessions", len(figures["sessions"]))
    fact("remote_comms", ",".join(sorted(figures["remote_comms"])) or "-")
    fact("host_done", figures["done"])


def main(argv):
    """``[WAIT_S]``.  Returns: 0 (the verdict is the RESULT line)."""
    wait_s = float(argv[0]) if argv else 120.0
    check = rigguest.Checks()
    listener = listener_pid()
    if not check(listener and rigguest.comm(listener) == "dropbear",
                 "no dropbear (%s): was the run started with ssh?" % PIDFILE):
        check.finish("")
        return 0
    calm = proc_kib(listener)
    fact("dropbear_rss_kib", calm.get("Rss"))
    fact("dropbear_anon_kib", calm.get("Anonymous"))
    fact("dropbear_pss_kib", calm.get("Pss"))
    fact("mem_available_kib", mem_available_kib())
    print("ssh scenario: waiting up to %.0f s for the host" % wait_s, flush=True)
    figures = watch(listener, wait_s)
    print_watch(figures)
    check(figures["done"], "the host did not log in and touch %s within %.0f s" % (DONE, wait_s))
    check.finish("dropbear: listener %s kB Rss, %d sessions" % (calm.get("Rss"),
                                                                 len(figures["sessions"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
