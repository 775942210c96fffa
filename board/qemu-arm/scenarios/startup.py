"""Start-up: the time from an agent's exec to its first status answer, calm
and while the page cache thrashes, memagent on MicroPython and on CPython
side by side in one boot.

    board/qemu-arm/run --mem 64 --board zaurus-c3000 --interpreter micropython \
        board/qemu-arm/scenarios/startup.py [runs=5]

The board's profile, on its own socket, logging to stderr.  Calm: nothing
else runs.  Thrash: a holder takes anonymous memory until MemAvailable is
down to HEADROOM_KIB, and a reader streams a file of 1.25 x RAM through the
page cache without a break (busybox dd, as in the handset day), so every page
the agent's start touches competes with the reader's; 3 s later the starts
begin.  Each start: exec, poll the socket every 20 ms for a status answer
(60 s at most), then SIGTERM.  Between starts 1 s, so that the next one
finds the interpreter's pages reclaimed again.

FACT lines per interpreter and condition (``micropython_calm_ms``,
``micropython_thrash_ms``, ``cpython_calm_ms``, ``cpython_thrash_ms``; the
values of all runs joined by ";", "None" for a start with no answer), and
``thrash_avail_kib`` and ``thrash_psi_some_ms_s`` (the PSI some stall per
second during the thrash starts), to show the thrash was there.  RESULT
fails only if a MicroPython start got no answer.  Every process here is
the scenario's own.
"""

import os
import signal
import subprocess
import sys
import time

import rigguest
from footprint import start_agent
from rigguest import fact

CONFIG = "/etc/memagent/memagent.conf"
INIT = "/etc/init.d/S60memagent"
SOCKET = "/run/memagent-startup.sock"
FILE = "/startup-thrash"
HEADROOM_KIB = 16 * 1024  # the CPython agent (about 11 MB) must fit too
ARGS = ["run", "--config", CONFIG, "--socket", SOCKET, "--log", "stderr"]
AGENTS = (("micropython", ["/usr/bin/memagent"] + ARGS, {}),
          ("cpython", ["python3", "-m", "memagent"] + ARGS, {"PYTHONPATH": "/opt/memagent"}))


def meminfo_kib(key):
    """Return: one /proc/meminfo value in KiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def psi_some_us():
    """Return: /proc/pressure/memory's some total, in microseconds."""
    with open("/proc/pressure/memory") as f:
        return int(f.readline().split("total=")[1])


def start_once(argv, env):
    """Exec an agent, wait for its first status answer, stop it.
    Returns: ms from exec to the answer, or None."""
    p, ready = start_agent(argv, dict({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, **env),
                           SOCKET)
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return ready


def starts(condition, runs):
    """FACT each agent's start-up ``runs`` times.  Returns: True if the
    MicroPython agent answered every time (the CPython agent's starts are
    measured only: under the 64 MB thrash none answered within 60 s)."""
    ok = True
    for tag, argv, env in AGENTS:
        times = []
        for _ in range(runs):
            times.append(start_once(argv, env))
            time.sleep(1)
        fact("%s_%s_ms" % (tag, condition), ";".join(str(t) for t in times))
        if tag == "micropython":
            ok = ok and None not in times
    return ok


def thrash():
    """Start the holder and the reader.  Returns: their Popen objects."""
    rigguest.thrash_file(FILE)
    hold_mib = max(meminfo_kib("MemAvailable") - HEADROOM_KIB, 0) // 1024
    holder = subprocess.Popen([sys.executable, "-c", (
        "import mmap, time\nm = mmap.mmap(-1, %d << 20)\n"
        "for i in range(0, len(m), 4096):\n    m[i] = 1\ntime.sleep(3600)\n") % hold_mib])
    time.sleep(3)
    reader = rigguest.start_reader(FILE)
    time.sleep(3)
    return holder, reader


def main(argv):
    runs = int(argv[0].partition("=")[2]) if argv else 5
    if os.path.exists(INIT):
        subprocess.run([INIT, "stop"], capture_output=True)  # the agent init started
    ok = starts("calm", runs)
    procs = thrash()
    try:
        fact("thrash_avail_kib", meminfo_kib("MemAvailable"))
        psi0, t0 = psi_some_us(), time.monotonic()
        ok = starts("thrash", runs) and ok
        fact("thrash_psi_some_ms_s", round((psi_some_us() - psi0) / 1000 /
                                           (time.monotonic() - t0)))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.unlink(FILE)
    rigguest.result(ok, "start-up measured" if ok else "a MicroPython start got no answer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
