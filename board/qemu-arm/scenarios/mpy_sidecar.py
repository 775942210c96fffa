"""MicroPython in the guest: Debian trixie's micropython from the sidecar
(/opt/trixie, `run --interpreter micropython`), beside bookworm's python3.

    board/qemu-arm/run --mem 64 --board zaurus-c3000 --interpreter micropython \
        board/qemu-arm/scenarios/mpy_sidecar.py

Checks (RESULT):

- ``micropython -c "import asyncio, ffi, socket, select, struct, json"`` exits 0;
- ffi calls trixie's libc (its getpid is the process's pid; its version is
  not python3's: the two C libraries live side by side);
- the process is called "micropython" (comm), not the loader's name;
- with ``--init``: /usr/bin/memagent, the MicroPython launcher, runs
  ``memagent --version`` through the wrapper and reaches memagent's own
  code (it prints the version, or a traceback from
  /usr/lib/micropython/memagent: memagent's own import failed).

FACT lines: the interpreter's version and footprint (/proc/PID/smaps_rollup
Rss; VmRSS beside it, which under-counts on 6.1), the start-up times (median
of 7), python3's for scale, the sidecar's size on disk; and, with --init,
the agent S60memagent started: running or not, and if it runs, its Rss and
the time from its exec to its control socket's first answer and to "plugins
started" in the syslog (``agent_*``).  Whether the agent runs is not a
check here: tests/test_guest_micropython.py judges it.
"""

import json
import os
import socket
import subprocess
import sys
import time

import rigguest
from rigguest import BARE, Checks, fact

SIDECAR = "/opt/trixie"
IMPORTS = "asyncio, ffi, socket, select, struct, json"
SCRIPT = "/etc/init.d/S60memagent"
PIDFILE = "/var/run/memagent.pid"
CONFIG = "/etc/memagent/memagent.conf"
SOCKET = "/run/memagent.sock"
SYSLOG = "/var/log/messages"
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# trixie's libc through ffi: its pid and its version
FFI_PROBE = ("import ffi\nlibc = ffi.open('libc.so.6')\n"
             "print(libc.func('i', 'getpid', '')(), libc.func('s', 'gnu_get_libc_version', '')())")


def mpy(code, env=None):
    """Run ``micropython -c CODE``.  Returns: (exit code, stdout, stderr, pid)."""
    p = subprocess.Popen(["micropython", "-c", code], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err, p.pid


def du_kib(path):
    """Return: the KiB of the files under ``path`` (their sizes)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total // 1024


def check_interpreter(check):
    """The interpreter itself: imports, ffi on trixie's libc, its name."""
    rc, out, err, _ = mpy("import %s\nimport sys\nprint(sys.implementation.version)" % IMPORTS)
    check(rc == 0, "micropython -c 'import %s' exited %d: %s" % (IMPORTS, rc, err.strip()))
    fact("mpy_imports_ok", rc == 0)
    fact("mpy_version", out.strip().replace(" ", ""))
    rc, out, err, pid = mpy(FFI_PROBE)
    words = out.split()
    check(rc == 0 and words[:1] == [str(pid)],
          "ffi getpid: exit %d, %r (pid %d) %s" % (rc, out, pid, err.strip()))
    mpy_libc = words[1] if len(words) > 1 else None
    py_libc = os.confstr("CS_GNU_LIBC_VERSION")
    fact("mpy_glibc", mpy_libc)
    fact("python3_glibc", py_libc.split()[-1])
    check(mpy_libc is not None and mpy_libc != py_libc.split()[-1],
          "micropython's libc %s, python3's %s: not the sidecar's" % (mpy_libc, py_libc))
    fact("sidecar_kib", du_kib(SIDECAR))


def check_footprint(check):
    """Rss and start-up times: MicroPython, python3 beside it."""
    for label, imports in (("asyncio", "asyncio"), ("imports", IMPORTS)):
        got = rigguest.footprint(["micropython", "-c", BARE % imports])
        for key in ("rss_kib", "anon_kib", "pss_kib", "vmrss_kib", "ready_ms"):
            fact("mpy_%s_%s" % (label, key), got[key])
        if label == "asyncio":
            fact("mpy_comm", got["comm"])
            check(got["comm"] == "micropython", "micropython's comm is %r" % got["comm"])
        check(got["rss_kib"] is not None, "no footprint of micropython with %s: %s"
              % (imports, got))
    got = rigguest.footprint([sys.executable, "-c", BARE % "asyncio"])
    for key in ("rss_kib", "anon_kib", "vmrss_kib", "ready_ms"):
        fact("python3_asyncio_%s" % key, got[key])
    fact("mpy_pass_ms", rigguest.startup_ms(["micropython", "-c", "pass"]))
    fact("mpy_asyncio_ms", rigguest.startup_ms(["micropython", "-c", "import asyncio"]))
    fact("mpy_imports_ms", rigguest.startup_ms(["micropython", "-c", "import " + IMPORTS]))
    fact("python3_asyncio_ms", rigguest.startup_ms([sys.executable, "-c", "import asyncio"],
                                                   runs=3))


# -- with --init: the launcher and the agent -----------------------------------------------


def check_launcher(check):
    """/usr/bin/memagent --version as an operator runs it: the launcher, the
    wrapper, the loader, MICROPYPATH and the heap size all worked if memagent
    prints its version or its own code raised."""
    with open("/usr/bin/memagent", "rb") as f:
        head = f.read(200)
    check(b"micropython" in head.lower(), "/usr/bin/memagent is not the MicroPython launcher")
    p = subprocess.run(["/usr/bin/memagent", "--version"], env=BARE_ENV,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    text = (p.stdout + p.stderr).strip()
    last = text.splitlines()[-1] if text else ""
    fact("launcher_rc", p.returncode)
    fact("launcher_last_line", last)
    ours = "/usr/lib/micropython/memagent/" in p.stderr
    fact("launcher_reached", "version" if p.returncode == 0 else
         "memagent's own code" if ours else "no")
    check(p.returncode == 0 and "memagent" in p.stdout or p.returncode != 0 and ours,
          "memagent --version (exit %d) did not reach memagent: %r" % (p.returncode, text[-400:]))


def alive(pid):
    """Return: True while ``pid`` exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def read_pid():
    """Return: the pid in the pidfile if it is alive, else None."""
    try:
        with open(PIDFILE) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def answers():
    """Return: True if the agent answers ``status`` on SOCKET."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(SOCKET)
            s.sendall(b'{"v": 1, "id": 1, "cmd": "status"}\n')
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return bool(json.loads(buf.split(b"\n")[0]).get("ok"))
    except (OSError, ValueError, AttributeError):
        return False


def syslog_text():
    """Return: the syslog so far ("" if there is none)."""
    try:
        with open(SYSLOG, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def uptime_s():
    """Return: seconds since the kernel started."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def started_s(pid):
    """Return: when ``pid`` started (its exec follows), in seconds since boot."""
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rpartition(")")[2].split()[19]) / CLK_TCK


def initscript(action):
    """Run ``S60memagent ACTION`` as init would.  Returns: its output."""
    p = subprocess.run([SCRIPT, action], env=BARE_ENV, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    print("S60memagent %s -> %d: %s" % (action, p.returncode, p.stdout.strip()), flush=True)
    return p.stdout


def agent_facts():
    """The agent on MicroPython, started again by S60memagent and watched
    every 20 ms: FACTs only (see the module's doc)."""
    fact("agent_at_boot", read_pid() is not None)
    if os.path.exists(PIDFILE):
        initscript("stop")
    seen = len(syslog_text())
    initscript("start")
    pid, status_s, ready_s = None, None, None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and (status_s is None or ready_s is None):
        if pid is None:
            pid = read_pid()
            if pid is None and time.monotonic() - t0 > 5:
                break  # it never ran, or it has exited already
        elif not alive(pid):
            break
        if pid is not None and status_s is None and answers():
            status_s = uptime_s()
        if pid is not None and ready_s is None and "plugins started in" in syslog_text()[seen:]:
            ready_s = uptime_s()
        time.sleep(0.02)
    running = read_pid() is not None
    fact("agent_running", running)
    if not running:
        rigguest.handback("messages", data=syslog_text())
        return
    start = started_s(pid)
    fact("agent_comm", rigguest.comm(pid))
    fact("agent_exec_to_status_ms", None if status_s is None else round((status_s - start) * 1000))
    fact("agent_exec_to_ready_ms", None if ready_s is None else round((ready_s - start) * 1000))
    time.sleep(1)
    smaps = rigguest.proc_kib(pid)
    fact("agent_rss_kib", smaps.get("Rss"))
    fact("agent_anon_kib", smaps.get("Anonymous"))
    fact("agent_vmrss_kib", rigguest.proc_kib(pid, "status").get("VmRSS"))
    rigguest.handback("messages", data=syslog_text())


def main():
    check = Checks()
    fact("interpreter", os.environ.get("RIG_INTERPRETER"))
    if not os.path.exists("/usr/bin/micropython"):
        rigguest.result(False, "no /usr/bin/micropython: boot with --interpreter micropython")
        return 0
    check_interpreter(check)
    check_footprint(check)
    if os.path.exists("/rig/boot-init"):
        fact("board", open("/rig/boot-init").read().strip())
        check_launcher(check)
        agent_facts()
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("MemTotal:", "MemAvailable:")):
                fact(line.split(":")[0].lower() + "_kib", line.split()[1])
    check.finish("micropython %s runs from %s: asyncio, ffi on its own libc" % (
        IMPORTS.replace(", ", ","), SIDECAR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
