"""Handset day: a foreground app grows while three registered background apps
hold caches, an unregistered hog holds anonymous memory and a reader thrashes
the page cache.  Who frees what, in which order, and does the foreground live?

In the qemu guest, booted through init with a board profile::

    board/qemu-arm/run --board qemu-arm board/qemu-arm/scenarios/handset_day.py memagent
    board/qemu-arm/run --mem 64 --board zaurus-c3000 .../handset_day.py earlyoom runs=2

CONTESTANT: ``memagent`` (the agent as the init script runs it, with the
board's profile; the scenario stops it, adds ``--events-json`` to
MEMAGENT_ARGS in /etc/default/memagent, as an integrator would, and starts
it again with ``S60memagent start``), ``memagent-mpy`` (the same on
MicroPython: the guest must be booted with ``--interpreter micropython``,
which makes /usr/bin/memagent the MicroPython launcher), ``earlyoom``
(Debian's, its defaults) or ``none`` (the kernel's OOM killer); for these
two the agent stays stopped.  A0 (MemAvailable) and an empty app's private memory are measured
once per boot, with no tool running, so every contestant gets the same sizes.

The processes, sized from A0 (each share is the process's private memory,
an empty app's included; :data:`APPS`, :data:`HOG`, :data:`FG_SHARE`):

============ ====================== ====== ===================================
process      class (oom_score_adj)  share  what
============ ====================== ====== ===================================
cached-old   cached, registered     15%    cache (trimmable) + 2% fixed
cached-new   cached, registered     17%    cache + 2% fixed, registered later
service      service, registered    13%    cache + 3% fixed
hog          (900), unregistered    8%     anonymous memory
reader       (-1000)                --     dd re-reads a file of 1.25 x RAM
foreground   foreground (0)         55%    grows at 5 MiB/s, then holds 3 s
============ ====================== ====== ===================================

The apps are forked from this driver, as a handset's zygote forks its apps
(see "the apps" below).  The foreground registers as a service; the driver
(root: a trusted client, standing for the UI shell) then sends
``foreground`` with its pid.  Prints FACT lines and RESULT: for
``memagent`` and ``memagent-mpy`` every :func:`checks` must hold, for the others the runs must
complete.  Hands back ``handset-<contestant>.json`` (the raw runs,
analysed again by bench/board.py) and ``oom-<contestant>.txt`` (the
kernel's OOM reports).  CPython 3.9+ (pidfd), stdlib and memagent only.
Every process it signals is its own.
"""
import gc
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

import kill_bench
from kill_bench import Place, Proc, Sampler, mono_ms, set_adj, status_kib

from memagent.client import Client
from memagent.demo import loadgen

Result = Dict[str, Any]
# (name, class, oom_score_adj, share of A0, fixed share of A0), in start order
APPS = [("cached-old", "cached", 900, 0.15, 0.02), ("cached-new", "cached", 900, 0.17, 0.02),
        ("service", "service", 500, 0.13, 0.03)]
HOG = ("hog", "cached", 900, 0.08)
FG_SHARE = 0.55
RATE_MIB_S = 5.0
HOLD_S = 3.0
SETTLE_S = 2.0        # apps full and registered, before the growth
AFTER_S = 2.0         # after the foreground is done: the last kills are recorded
GROW_TIMEOUT_S = 40.0  # past the growth's own time: the guest may thrash for minutes
ENTRY_KIB = 256
SOCKET = "/run/memagent.sock"
SCRIPT = "/etc/init.d/S60memagent"
DEFAULTS_FILE = "/etc/default/memagent"
CONFIG = "/etc/memagent/memagent.conf"
EVENTS = "/var/log/memagent-events.jsonl"
PIDFILE = "/var/run/memagent.pid"
SYSLOG = "/var/log/messages"
READY_LINE = "plugins started in"  # the agent's log line once its plugins run
CONTESTANTS = ("none", "memagent", "earlyoom", "memagent-mpy")
AGENTS = ("memagent", "memagent-mpy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
THRASH_FILE = "/var/tmp/handset-thrash"
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


# -- the apps: forked from this driver, as a zygote forks a handset's apps ------------
# Each app's interpreter, memagent.client included, is this process's, shared
# copy-on-write: measured in the guest, an app started as its own CPython
# process held 5,032 KiB of private memory before its load, and five of them
# did not fit in the 64 MB guest beside the agent, nor even without it (the
# kernel OOM-killed two apps while they started).


def hold_kib(kib: int) -> List[mmap.mmap]:
    """Return: ``kib`` of anonymous memory in ENTRY_KIB mmaps, every page
    written (each its own mmap: unmapping one gives its pages back at once)."""
    pattern = b"\x5a" * (ENTRY_KIB * 1024)
    out = []
    for _ in range(max(kib, 0) // ENTRY_KIB):
        entry = mmap.mmap(-1, len(pattern), flags=mmap.MAP_PRIVATE)
        entry.write(pattern)
        out.append(entry)
    return out


def report(mib: int, done: bool = False) -> None:
    """Print a memagent.demo.loadgen progress line (``[done ]anon_mb=N mono_ms=T``)."""
    print("%sanon_mb=%d mono_ms=%d" % ("done " if done else "", mib, mono_ms()), flush=True)


def app_main(name: str, cls: str, cache_kib: int, fixed_kib: int, sock: str,
             grow_mib: int) -> None:
    """The app, in the forked child: holds ``fixed_kib`` and a cache of
    ``cache_kib``, registers at ``sock`` ("": unregistered), frees the oldest
    cache entries on a trim (prints ``trim LEVEL TARGET FREED LEFT MONO_MS``).
    With ``grow_mib`` it is the foreground: SIGUSR1 starts the growth at
    RATE_MIB_S (loadgen progress lines; ``done`` after HOLD_S).  Returns only
    by SystemExit (SIGTERM)."""
    fixed, cache = hold_kib(fixed_kib), hold_kib(cache_kib)
    grown: List[mmap.mmap] = []
    go: List[float] = []

    def on_trim(level: str, target_kib: int) -> int:
        freed = 0
        while cache and freed < max(target_kib, 1):
            cache.pop(0).close()  # the oldest entry: munmap, back to the kernel now
            freed += ENTRY_KIB
        print("trim %s %d %d %d %d" % (level, target_kib, freed, len(cache) * ENTRY_KIB,
                                       mono_ms()), flush=True)
        return freed

    client = Client(name, cls=cls, estimate_kib=len(cache) * ENTRY_KIB, on_trim=on_trim,
                    socket_path=sock, backoff_max_ms=1000) if sock else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR1, lambda *_: go.append(time.monotonic()))
    print("ready pid=%d fixed_kib=%d" % (os.getpid(), len(fixed) * ENTRY_KIB), flush=True)
    reached: List[float] = []
    while True:
        # A signal does not cut poll() short (PEP 475): before the go, wake often.
        wait_s = 0.05 if grow_mib and not go else 1.0
        mib = len(grown) * ENTRY_KIB // 1024
        if go and mib < grow_mib:
            due = go[0] + mib / RATE_MIB_S
            if time.monotonic() >= due:
                grown.extend(hold_kib(1024))
                report(mib + 1)
                continue
            wait_s = min(due - time.monotonic(), 1.0)
        elif go and not reached:
            reached.append(time.monotonic())
            wait_s = HOLD_S
        elif len(reached) == 1 and time.monotonic() >= reached[0] + HOLD_S:
            report(mib, done=True)
            reached.append(time.monotonic())
        elif len(reached) == 1:
            wait_s = reached[0] + HOLD_S - time.monotonic()
        if client is not None:
            client.poll(max(int(wait_s * 1000), 0))
        else:
            time.sleep(max(wait_s, 0.0))


class Forked:
    """What the scenario uses of subprocess.Popen, for a forked app (our
    child: until it is reaped here, its pid cannot name another process)."""

    def __init__(self, pid: int, stdout: Any) -> None:
        self.pid, self.stdout = pid, stdout
        self.returncode: Optional[int] = None
        self._lock = threading.Lock()  # the sampler reaps, the main thread polls

    def _reap(self, flags: int) -> Optional[int]:
        with self._lock:
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, flags)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def poll(self) -> Optional[int]:
        """Return: the exit code (-N: signal N), None while it runs."""
        return self._reap(os.WNOHANG)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Return: the exit code, once it has exited."""
        code = self._reap(0)
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` unless it has been reaped."""
        with self._lock:
            if self.returncode is None:
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL it (unless reaped)."""
        self.send_signal(signal.SIGKILL)


def fork_app(name: str, cls: str, adj: int, cache_kib: int, fixed_kib: int, sock: str,
             grow_mib: int = 0) -> "Forked":
    """Fork an app (see :func:`app_main`) with ``adj``.  Returns: its handle;
    its stdout is a pipe to us."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into the driver
        code = 1
        try:
            gc.freeze()  # the collector would write to every shared object's page
            os.dup2(write_fd, 1)
            os.close(read_fd)
            os.close(write_fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            set_adj(adj)()
            app_main(name, cls, cache_kib, fixed_kib, sock, grow_mib)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_fd)
    return Forked(pid, open(read_fd))


class App(Proc):
    """A scenario process whose stdout is read as it comes: trims, progress."""

    def __init__(self, name: str, cls: str, adj: int, popen: Any) -> None:
        super().__init__(name, cls, adj, popen)
        self.trims: List[Tuple[int, str, int, int]] = []  # (mono_ms, level, target, freed)
        self.done_ms: Optional[int] = None

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            words = line.split()
            if words[:1] == ["trim"] and len(words) == 6:
                self.trims.append((int(words[5]), words[1], int(words[2]), int(words[3])))
                continue
            point = loadgen.parse_line(line)
            if point is not None:
                self.points.append((point.mono_ms, point.count))
                if point.done:
                    self.done_ms = point.mono_ms

    def as_dict(self) -> Result:
        out = super().as_dict()
        out.update(trims=self.trims, done_ms=self.done_ms)
        return out


def private_kib(pid: int) -> Optional[int]:
    """Return: Private_Dirty of /proc/PID/smaps_rollup (what its death gives
    back: the shared interpreter stays), None if it is gone."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def start_app(name: str, cls: str, adj: int, cache_kib: int, fixed_kib: int, sock: str,
              grow_mib: int = 0, sampler: Optional[Sampler] = None) -> App:
    """Fork an app and wait until it holds its memory (``sampler`` watches
    it from the fork on).  Returns: the App, its stdout followed; one that
    died first (the tool or the kernel may kill it while it fills) has
    ``died_ms`` and ``returncode`` set."""
    app = App(name, cls, adj, fork_app(name, cls, adj, cache_kib, fixed_kib, sock, grow_mib))
    if sampler is not None:
        sampler.watch(app)
    assert app.popen.stdout is not None
    line = app.popen.stdout.readline()
    if line.startswith("ready"):
        app.rss_kib, app.anon_kib = status_kib(app.pid), private_kib(app.pid)
        threading.Thread(target=app._read, daemon=True).start()
    else:
        app.returncode = app.popen.wait()
        app.died_ms = app.died_ms or mono_ms()
        print("%s died while starting (exit %s)" % (name, app.returncode), flush=True)
    return app


def app_private_kib() -> int:
    """Return: an app's private memory with nothing held (measured: see
    docs/bench-board.md).  Raises: RuntimeError if the probe dies."""
    probe = start_app("probe", "cached", 1000, 0, 0, "")
    time.sleep(0.5)
    kib = private_kib(probe.pid)
    probe.popen.kill()
    if probe.popen.wait() != -signal.SIGKILL or kib is None:
        raise RuntimeError("the probe app died (exit %s)" % probe.returncode)
    return kib


# -- the guest around the scenario ------------------------------------------------------


def syslog_text() -> str:
    """Return: the syslog so far ("" if there is none)."""
    try:
        with open(SYSLOG, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def uptime_s() -> float:
    """Return: seconds since the kernel started (a process's start time's clock)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def alive(pid: int) -> bool:
    """Return: True while ``pid`` exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def started_s(pid: int) -> Optional[float]:
    """Return: when ``pid`` started (its exec follows), in seconds since boot."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rpartition(")")[2].split()[19]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def smaps_kib(pid: int) -> Dict[str, int]:
    """Return: the "kB" fields of /proc/PID/smaps_rollup (Rss, Anonymous...), {} if gone."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                words = line.split()
                if len(words) == 3 and words[2] == "kB":
                    out[words[0].rstrip(":")] = int(words[1])
    except (OSError, ValueError):
        return {}
    return out


def launcher_error() -> str:
    """Return: "; " and the last line /usr/bin/memagent prints when run in
    the foreground for up to 5 s (start-stop-daemon -b sends its stderr to
    /dev/null), or "" if it keeps running."""
    try:
        p = subprocess.run(["/usr/bin/memagent", "run", "--config", CONFIG, "--no-socket"],
                           env=BARE_ENV, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return ""
    lines = (p.stdout + p.stderr).strip().splitlines()
    return "; in the foreground it exits %d: %s" % (p.returncode, lines[-1] if lines else "")


def psi_some_total_us() -> int:
    """Return: /proc/pressure/memory's ``some total=`` (µs since boot)."""
    with open("/proc/pressure/memory") as f:
        return int(f.readline().rpartition("total=")[2])


def dmesg_ooms() -> int:
    """Return: the kernel's "Out of memory" reports in dmesg so far."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    return out.count("Out of memory")


def pid_of(comm: str) -> Optional[int]:
    """Return: the pid of a process named ``comm``, or None."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % name) as f:
                if f.read().strip() == comm:
                    return int(name)
        except OSError:
            continue
    return None


def initscript(action: str) -> Tuple[int, str]:
    """Run ``S60memagent ACTION`` as init would.  Returns: (exit code, output)."""
    p = subprocess.run([SCRIPT, action], env=BARE_ENV, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    print("S60memagent %s -> %d: %s" % (action, p.returncode, p.stdout.strip()), flush=True)
    return p.returncode, p.stdout


def agent_request(cmd: str, **fields: Any) -> Result:
    """Send one request to the agent's control socket (as root: trusted).
    Returns: the reply.  Raises: OSError, ValueError."""
    req = dict(fields, cmd=cmd, v=1, id=1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(SOCKET)
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf.split(b"\n")[0])
    if not isinstance(reply, dict):
        raise ValueError("not an object: %r" % reply)
    return reply


def agent_apps() -> Dict[str, Result]:
    """Return: the agent's registered apps by name ({} if it does not answer)."""
    try:
        status = agent_request("status").get("status") or {}
    except (OSError, ValueError):
        return {}
    return {a["name"]: a for a in (status.get("apps") or {}).get("apps") or []}


class InitAgent(kill_bench.Contestant):
    """The agent as the init script runs it, with ``--events-json`` added to
    MEMAGENT_ARGS; started once per boot and left running for the shutdown.
    ``label``: memagent, or memagent-mpy when /usr/bin/memagent is the
    MicroPython launcher (the rig's --interpreter micropython)."""

    def __init__(self, label: str = "memagent") -> None:
        self.label = label
        self.offset = 0
        self.rss: Dict[str, Optional[int]] = {}
        self.startup: Dict[str, Optional[int]] = {}

    def start(self, place: Place, tmp: str) -> None:
        if read_pid() is None:
            with open(DEFAULTS_FILE, "w") as f:
                f.write('MEMAGENT_CONFIG="%s"\nMEMAGENT_ARGS="--events-json %s"\n'
                        % (CONFIG, EVENTS))
            seen = len(syslog_text())
            rc, out = initscript("start")
            self.startup = self._watch_start(seen, out)
        self.offset = os.path.getsize(EVENTS) if os.path.exists(EVENTS) else 0
        pid = read_pid()
        # smaps_rollup's Rss: on 6.1 VmRSS lags (its counters sync every 64 faults)
        smaps = smaps_kib(pid) if pid else {}
        self.rss = {k: status_kib(pid, k) if pid else None for k in ("VmRSS", "RssAnon")}
        self.rss.update(Rss=smaps.get("Rss"), Anonymous=smaps.get("Anonymous"))
        self.rss_kib = self.rss["VmRSS"]

    def _watch_start(self, seen: int, out: str) -> Dict[str, Optional[int]]:
        """Wait (polling every 20 ms) until the agent answers on the socket and
        its READY_LINE is in the syslog.  Returns: ms from its exec to each.
        Raises: RuntimeError if it exits, or does not answer within 60 s."""
        deadline = time.monotonic() + 60
        pid, status_s, ready_s = None, None, None
        while status_s is None or ready_s is None:
            pid = pid or read_pid()
            if pid is None or not alive(pid):  # s-s-d wrote the pidfile before the exec
                raise RuntimeError("the agent exited after start: %s%s"
                                   % (out.strip(), launcher_error()))
            if status_s is None and self._answers():
                status_s = uptime_s()
            if ready_s is None and READY_LINE in syslog_text()[seen:]:
                ready_s = uptime_s()
            if time.monotonic() > deadline:
                if status_s is None:
                    raise RuntimeError("the agent does not answer after start: %s%s"
                                       % (out.strip(), launcher_error()))
                break  # it answers, and does not log READY_LINE to the syslog
            time.sleep(0.02)
        start = started_s(pid) if pid else None
        return {k: None if t is None or start is None else round((t - start) * 1000)
                for k, t in (("exec_to_status_ms", status_s), ("exec_to_ready_ms", ready_s))}

    @staticmethod
    def _answers() -> bool:
        try:
            return bool(agent_request("status").get("ok"))
        except (OSError, ValueError):
            return False

    def stop(self) -> Result:
        with open(EVENTS) as f:
            f.seek(self.offset)
            kills, notes = kill_bench.parse_events(f)
        return {"kills": kills, "notes": notes, "log": "", "rss_kib": self.rss_kib,
                "rss": self.rss, "startup": self.startup}


def contestant(spec: str) -> kill_bench.Contestant:
    """Return: the contestant for ``none``, ``memagent``, ``memagent-mpy`` or
    ``earlyoom``.  Raises: ValueError for anything else."""
    if spec in AGENTS:
        return InitAgent(spec)
    if spec in ("none", "earlyoom"):
        return kill_bench.contestant(spec)
    raise ValueError("unknown contestant %r (%s)" % (spec, ", ".join(CONTESTANTS)))


# -- one run --------------------------------------------------------------------------


def sizes_kib(a0_kib: int, app_kib: int) -> Result:
    """Return: the scenario's sizes for ``a0_kib`` available, given an empty
    app's private memory ``app_kib``: each app's cache and fixed KiB, the
    hog's KiB and the foreground's growth in MiB (at least one unit each)."""
    apps = []
    for name, cls, adj, share, fixed_share in APPS:
        fixed = max(int(a0_kib * fixed_share), ENTRY_KIB)
        apps.append((name, cls, adj, max(int(a0_kib * share) - app_kib - fixed, ENTRY_KIB), fixed))
    return {"a0_kib": a0_kib, "app_kib": app_kib, "apps": apps,
            "hog_kib": max(int(a0_kib * HOG[3]) - app_kib, ENTRY_KIB),
            "grow_mib": max(int((a0_kib * FG_SHARE - app_kib) / 1024), 1)}


def start_all(sizes: Result, sock: str, sampler: Sampler) -> List[App]:
    """Start the background apps, the hog (unregistered) and the foreground
    (last).  Returns: them, in start order (some may have died already)."""
    procs = []
    for name, cls, adj, cache, fixed in sizes["apps"]:
        procs.append(start_app(name, cls, adj, cache, fixed, sock, sampler=sampler))
        time.sleep(0.3)  # distinct registration times: least recently used is defined
    name, cls, adj, _share = HOG
    procs.append(start_app(name, cls, adj, 0, sizes["hog_kib"], "", sampler=sampler))
    procs.append(start_app("foreground", "service", 0, 0, 0, sock, sizes["grow_mib"], sampler))
    return procs


def stop_all(procs: Sequence[Proc]) -> None:
    """Kill and reap ``procs`` (our own children: their pids cannot be reused)."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait()


def make_foreground(fg: Proc, expect: int) -> Optional[str]:
    """Wait until ``expect`` apps registered, then say (as the UI shell) that
    ``fg`` is in the foreground.  Returns: its class in the registry then."""
    deadline = time.monotonic() + 30
    while len(agent_apps()) < expect and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        reply = agent_request("foreground", pid=fg.pid)
    except (OSError, ValueError) as e:
        print("foreground: %s" % e, flush=True)
    else:
        if not reply.get("ok"):
            print("foreground refused: %s" % reply, flush=True)
    return (agent_apps().get("foreground") or {}).get("class")


def run_once(place: Place, tool: kill_bench.Contestant, sizes: Result, crit_kib: int,
             low_kib: int, tmp: str) -> Result:
    """One handset day with ``tool`` watching.  Returns: the raw run.
    Raises: RuntimeError if the tool or an app fails to start."""
    import rigguest

    oom0, dmesg0 = place.oom_kills(), dmesg_ooms()
    avail0, total = place.avail_kib()
    t_start = time.monotonic()
    tool.start(place, tmp)
    tool_start_ms = round((time.monotonic() - t_start) * 1000)
    avail_tool = place.avail_kib()[0]
    tool_smaps = smaps_kib(tool.proc.pid) if tool.proc is not None else {}
    sock = SOCKET if isinstance(tool, InitAgent) else ""
    reader = place.spawn(["sh", "-c", rigguest.READER % THRASH_FILE], set_adj(-1000),
                         stdout=subprocess.DEVNULL, start_new_session=True)
    procs: List[App] = []
    sampler = Sampler(place)
    fg_class = None
    try:
        sampler.start()  # from the first fork on: deaths while the apps fill count too
        psi_start, start_ms = psi_some_total_us(), mono_ms()
        procs = start_all(sizes, sock, sampler)
        fg = procs[-1]
        if sock:
            fg_class = make_foreground(fg, sum(1 for p in procs if p.died_ms is None
                                               and p.name != HOG[0]))
        time.sleep(SETTLE_S)
        psi0, t0 = psi_some_total_us(), mono_ms()
        fg.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + sizes["grow_mib"] / RATE_MIB_S + HOLD_S + GROW_TIMEOUT_S
        while fg.done_ms is None and fg.died_ms is None and time.monotonic() < deadline:
            time.sleep(0.1)
        timed_out = fg.done_ms is None and fg.died_ms is None
        time.sleep(AFTER_S)
        end_ms, psi1 = mono_ms(), psi_some_total_us()
        protected = {"syslogd": pid_of("syslogd") is not None}
        if sock:
            protected["memagent"] = read_pid() is not None
    finally:
        if sampler.is_alive():
            sampler.finish()
        what = tool.stop()
        stop_all(procs)
        os.killpg(reader.pid, signal.SIGKILL)  # its own session: sh and its dd
        reader.wait()
    return {"contestant": tool.label, "total_kib": total, "a0_kib": avail0,
            "avail_with_tool_kib": avail_tool, "crit_kib": crit_kib, "low_kib": low_kib,
            "rate_mib_s": RATE_MIB_S, "sizes": sizes, "t0_ms": t0, "end_ms": end_ms,
            "timed_out": timed_out, "procs": [p.as_dict() for p in procs],
            "ramp_points": fg.points, "samples": sampler.samples,
            "vm_samples": sampler.vm_samples, "fg_class": fg_class,
            "oom_kills": place.oom_kills() - oom0, "dmesg_ooms": dmesg_ooms() - dmesg0,
            "start_ms": start_ms, "psi_some_us": psi1 - psi_start,
            "psi_growth_us": psi1 - psi0, "protected": protected, "tool": what,
            "tool_start_ms": tool_start_ms, "tool_smaps": tool_smaps,
            "calm_after_kib": kill_bench.wait_calm(place, avail_tool)}


def read_pid() -> Optional[int]:
    """Return: the live pid in the init script's pidfile, or None."""
    try:
        with open(PIDFILE) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


# -- what a run shows (bench/board.py uses the same) ------------------------------------

RANK = {"foreground": 0, "visible": 1, "perceptible": 2, "service": 3, "cached": 4}
# outcomes of memagent.plugins.kill_background.pidkill that sent a signal
SIGNALLED = ("exited", "killed", "stuck")


def killer(proc: Result, entries: List[Result]) -> str:
    """Return: who ended ``proc``: "tool" (a SIGTERM, which only a tool
    sends: exit 0 through the app's handler, or -15 before it is set; or a
    SIGKILL the tool's entries record), "kernel" (any other SIGKILL) or
    "exit N".  ``entries``: the tool's kill entries for its pid.  A SIGTERM
    with memagent's outcome "gone" is the tool's too: pidkill says "gone"
    when the victim exits between the grace and the SIGKILL (measured:
    cached-old, thrashing, took 2 s to act on its SIGTERM)."""
    rc = proc["rc"]
    if rc in (0, -15) and entries:
        return "tool"
    sigkill = any(e.get("sigkill") or e.get("sig") == "SIGKILL" for e in entries)
    if rc == -9:
        return "tool" if sigkill else "kernel"
    return "exit %s" % rc


def recovery(run: Result) -> Tuple[Optional[int], int]:
    """Return: (ms from the first sample at or below CRITICAL to the first
    sample after the last one at or below it: 0 if it never got there, None
    if it was still there at the end; ms spent at or below CRITICAL, each
    sample's state held until the next)."""
    crit = run["crit_kib"]
    samples = [s for s in run["samples"] if run["t0_ms"] <= s[0] <= run["end_ms"]]
    below = sum(b[0] - a[0] for a, b in zip(samples, samples[1:]) if a[1] <= crit)
    low = [i for i, s in enumerate(samples) if s[1] <= crit]
    if not low:
        return 0, below
    if low[-1] + 1 >= len(samples):
        return None, below
    return samples[low[-1] + 1][0] - samples[low[0]][0], below


def longest_stall_ms(run: Result) -> Optional[int]:
    """Return: the foreground's longest stall in its growth, in ms: the
    largest time between two of its progress points (the growth's start
    first) beyond what RATE_MIB_S allows for the MiB between them (the
    hold at full size is no stall); None before any point.  A growth on
    schedule stalls about 0 ms."""
    points = run.get("ramp_points") or []
    if not points:
        return None
    rate = run.get("rate_mib_s") or RATE_MIB_S
    prev_ms, prev_mib, worst = run["t0_ms"], 0.0, 0.0
    for t_ms, mib in points:
        if mib <= prev_mib:
            continue  # the point that ends the hold at full size
        worst = max(worst, (t_ms - prev_ms) - (mib - prev_mib) * 1000 / rate)
        prev_ms, prev_mib = t_ms, mib
    return int(worst)


def analyse(run: Result) -> Result:
    """Return: the run's figures: victims in order of death (name, class,
    by "tool"/"kernel"/"exit N"), the trims, whether they came before the
    tool's first kill, class order, the foreground's fate, OOM kills, PSI
    stall and the recovery (see :func:`recovery`)."""
    ours = {p["pid"] for p in run["procs"]}
    entries: Dict[int, List[Result]] = {}
    for k in run["tool"]["kills"]:
        if not k.get("dry_run") and k.get("outcome") not in ("reused", "denied"):
            entries.setdefault(k["pid"], []).append(k)
    fg = run["procs"][-1]
    victims = [{"name": p["name"], "cls": p["cls"], "died_ms": p["died_ms"],
                "by": killer(p, entries.get(p["pid"], []))}
               for p in sorted((p for p in run["procs"][:-1] if p["died_ms"] is not None),
                               key=lambda p: p["died_ms"])]
    trims = sorted(t for p in run["procs"] for t in p.get("trims") or [])
    first_kill = min((k["decision_ms"] for e in entries.values() for k in e), default=None)
    ranks = [RANK[v["cls"]] for v in victims]
    rec_ms, below_ms = recovery(run)
    lows = [n["t_ms"] for n in run["tool"].get("notes") or []
            if n["level"] == "LOW" and n["prev_level"] == "NORMAL"]
    first_death = min((v["died_ms"] for v in victims), default=None)
    strays = {pid for pid, e in entries.items()
              if any(k.get("outcome", "exited") in SIGNALLED for k in e)} - ours
    return {"victims": victims, "tool_kills": sum(1 for v in victims if v["by"] == "tool"),
            "stray_kills": sorted(strays),
            "kernel_kills": sum(1 for v in victims if v["by"] == "kernel"),
            "oom_kills": run["oom_kills"], "dmesg_ooms": run["dmesg_ooms"],
            "trims": len(trims), "trimmed_kib": sum(t[3] for t in trims),
            "first_trim_ms": trims[0][0] - run["t0_ms"] if trims else None,
            "first_kill_ms": None if first_kill is None else first_kill - run["t0_ms"],
            "trims_first": bool(trims) and (first_kill is None or trims[0][0] <= first_kill),
            # the agent's first LOW, from the growth's start (negative: the
            # apps' start brought it), and its lead over the first death
            "first_low_ms": lows[0] - run["t0_ms"] if lows else None,
            "low_lead_ms": (first_death - lows[0]) if lows and first_death is not None
            else None,
            "low_first": bool(lows) and (first_death is None or lows[0] < first_death),
            "class_order": all(a >= b for a, b in zip(ranks, ranks[1:])),
            "fg_survived": fg["died_ms"] is None and fg.get("done_ms") is not None,
            "fg_rc": fg["rc"], "fg_mib": run["ramp_points"][-1][1] if run["ramp_points"] else 0,
            "fg_class": run.get("fg_class"), "timed_out": run["timed_out"],
            "psi_some_ms": run["psi_some_us"] // 1000,
            "psi_growth_ms": run.get("psi_growth_us", 0) // 1000, "recovery_ms": rec_ms,
            "fg_stall_ms": longest_stall_ms(run) if fg["died_ms"] is None else None,
            "below_crit_ms": below_ms, "protected_alive": all(run["protected"].values()),
            "setup_ms": run["t0_ms"] - run.get("start_ms", run["t0_ms"]),
            "wall_ms": run["end_ms"] - run["t0_ms"]}


def checks(fig: Result) -> List[str]:
    """Return: what a tool that keeps the handset usable failed (empty: all held)."""
    want = [(fig["trims"] > 0, "no trim"), (fig["trims_first"], "a kill before the first trim"),
            (fig["class_order"], "kills out of class order"),
            (fig["oom_kills"] == 0, "%d kernel OOM kills" % fig["oom_kills"]),
            (fig["dmesg_ooms"] == 0, "'Out of memory' in dmesg"),
            (fig["fg_survived"], "the foreground did not survive (rc %s, %s MiB%s)" % (
                fig["fg_rc"], fig["fg_mib"], ", timed out" if fig["timed_out"] else "")),
            (fig["fg_class"] == "foreground", "foreground class %s" % fig["fg_class"]),
            (fig["protected_alive"], "a protected process died"),
            (not fig["stray_kills"], "killed pids outside the scenario")]
    return [what for ok, what in want if not ok]


# -- in the guest -------------------------------------------------------------------------


def setup() -> None:
    """The agent from init stops (the tools start in run_once); the thrash
    file (1.25 x RAM) is written and dropped from the cache."""
    import rigguest

    if read_pid() is not None:
        initscript("stop")
    rigguest.thrash_file(THRASH_FILE)


def bare_interpreter(spec: str) -> None:
    """FACT the footprint of the agent's interpreter with nothing but
    ``import asyncio`` (rigguest.footprint: smaps_rollup Rss, VmRSS beside
    it), and for MicroPython its start-up (median of 5 runs), for scale."""
    import rigguest

    if spec == "memagent-mpy":
        bare = rigguest.footprint(["micropython", "-c", rigguest.BARE % "asyncio"])
        rigguest.fact("micropython_asyncio_ms",
                      rigguest.startup_ms(["micropython", "-c", "import asyncio"], runs=5))
        prefix = "micropython_asyncio"
    else:
        bare = rigguest.footprint([sys.executable, "-c", rigguest.BARE % "asyncio"])
        prefix = "python_asyncio"
    for key in ("rss_kib", "vmrss_kib"):
        rigguest.fact("%s_%s" % (prefix, key), bare[key])


def tool_rss(run: Result) -> Dict[str, Optional[int]]:
    """Return: the tool's memory once it watched, in KiB: VmRSS and RssAnon
    (/proc/PID/status), Rss and Anonymous (/proc/PID/smaps_rollup; VmRSS
    lags it on 6.1), those that were measured."""
    tool = run["tool"]
    out = dict(tool.get("rss") or {"VmRSS": tool.get("rss_kib")})
    for key in ("Rss", "Anonymous"):
        if out.get(key) is None and (run.get("tool_smaps") or {}).get(key) is not None:
            out[key] = run["tool_smaps"][key]
    return out


def guest_main(argv: List[str]) -> int:
    """``CONTESTANT [runs=N]`` in the guest.  Returns: 0 (the verdict is the RESULT line)."""
    import rigguest

    from memagent.core.config import load_config, thresholds_from_config

    if not argv or argv[0] not in CONTESTANTS:
        raise SystemExit(__doc__)
    spec, runs = argv[0], int(argv[1].partition("=")[2]) if len(argv) > 1 else 1
    if spec == "memagent-mpy" and os.environ.get("RIG_INTERPRETER") != "micropython":
        rigguest.result(False, "memagent-mpy: boot the guest with --interpreter micropython "
                        "(rig.run(..., interpreter=\"micropython\"))")
        return 0
    set_adj(-1000)()  # the driver is no one's victim
    place = Place()
    total = place.avail_kib()[1]
    th = thresholds_from_config(load_config(CONFIG), total)
    os.makedirs("/tmp/handset", exist_ok=True)
    results, figs = [], []
    try:
        setup()
        if spec in AGENTS:
            bare_interpreter(spec)
        a0 = kill_bench.wait_calm(place, place.avail_kib()[0])
        sizes = sizes_kib(a0, app_private_kib())
        for key in ("VmRSS", "RssAnon"):  # the apps share its pages; it is at -1000
            rigguest.fact("driver_%s_kib" % key.lower(), status_kib(os.getpid(), key))
        for _ in range(runs):
            tool = contestant(spec)
            results.append(run_once(place, tool, sizes, th.critical_kib, th.low_kib,
                                    "/tmp/handset"))
            figs.append(analyse(results[-1]))
            # after each run: the host keeps the last copy, should a later run
            # end the guest (measured at 64 MB: "System is deadlocked on memory")
            rigguest.handback("handset-%s.json" % spec, data=json.dumps(results))
    except (RuntimeError, ValueError, OSError) as e:
        rigguest.result(False, "%s: %s" % (spec, e))
        return 0
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    rigguest.handback("oom-%s.txt" % spec, data="".join(
        line + "\n" for line in dmesg.splitlines()
        if "Out of memory" in line or "invoked oom-killer" in line or "oom_reaper" in line))
    rigguest.handback("dmesg-%s.txt" % spec, data=dmesg[-400000:])  # the whole reports
    for name in ("zoneinfo", "meminfo", "vmstat"):  # the watermarks' boost, after the day
        with open("/proc/" + name) as f:
            rigguest.handback("%s-%s.txt" % (name, spec), data=f.read())
    rigguest.handback("messages-%s.txt" % spec, data=syslog_text()[-200000:])
    print_facts(results, figs)
    failed = [c for fig in figs for c in checks(fig)] if spec in AGENTS else []
    rigguest.result(not failed, "; ".join(failed) or "%s: %d runs, %s" % (
        spec, len(figs), "trims first, kills in class order, no kernel OOM kill, "
        "the foreground lives" if spec in AGENTS else "completed"))
    return 0


def print_facts(results: List[Result], figs: List[Result]) -> None:
    """FACT lines; a value per run, joined by ";"."""
    from rigguest import fact

    run = results[0]
    fact("a0_kib", run["a0_kib"])
    fact("avail_with_tool_kib", run["avail_with_tool_kib"])
    for key, value in sorted(tool_rss(run).items()):
        fact("tool_%s_kib" % key.lower(), value)
    # how long the tool took to watch: an agent from its exec to its first
    # status answer and to its READY_LINE; earlyoom from its start to its banner
    for key, value in sorted((run["tool"].get("startup") or {}).items()):
        fact("tool_%s" % key, value)
    fact("tool_start_ms", run.get("tool_start_ms"))
    fact("sizes", json.dumps(run["sizes"], separators=(",", ":")))
    for key in ("first_low_ms", "low_lead_ms", "low_first",
                "trims", "trimmed_kib", "first_trim_ms", "first_kill_ms", "trims_first",
                "tool_kills", "kernel_kills", "oom_kills", "dmesg_ooms", "class_order",
                "fg_survived", "fg_class", "fg_mib", "fg_stall_ms", "psi_some_ms",
                "psi_growth_ms",
                "recovery_ms", "below_crit_ms", "setup_ms", "wall_ms"):
        fact(key, ";".join(str(f[key]) for f in figs))
    fact("kills", ";".join(",".join(v["name"] + ("" if v["by"] == "tool" else
                                                 "(%s)" % v["by"])
                                    for v in f["victims"]) or "-" for f in figs))


if __name__ == "__main__":
    sys.exit(guest_main(sys.argv[1:]))
