"""The kill benchmark's scenario "handset": background apps hold memory, then a
foreground app ramps until it would OOM.  Who kills what, in which order, and
how soon is the memory back?

In the qemu guest (system-wide memory, as root)::

    board/qemu-arm/run board/qemu-arm/scenarios/kill_bench.py CONTESTANT [runs=3] [rate=10]

CONTESTANT: ``none`` (nobody but the kernel's OOM killer), ``memagent``
(``memagent run`` with the plugin kill_background, ``dry_run = no``),
``"memagent:OPT OPT"`` (the same with ``mlock``: ``[agent] mlockall = yes``,
or ``SECTION.KEY=VALUE`` config lines, e.g. ``kill_background.cooldown_ms=0``),
``earlyoom`` (Debian's earlyoom 1.7, its defaults) or ``"earlyoom:ARG ARG"``
(extra arguments, e.g. ``"earlyoom:-m 20,10"``).  Every run in one boot starts
from the same state: the previous run's processes are killed and the
available memory is back within 2 MiB of where it started.  Hands back
``kill-<contestant>.json`` (the raw runs, analysed by bench/kill.py) and
prints FACT and RESULT lines.

The host's ``bench/kill.py`` imports this file and runs the same scenario in a
throw-away memcg: a :class:`Place` says where the processes go and which
memory is read.  CPython 3.9+, stdlib and memagent only (no asyncio: the
driver stays small, its memory is charged to every contestant alike).

The scenario, sized from A0, the available memory before anything starts;
each share is the process's private memory, its Python interpreter included
(measured on a probe first: :func:`interpreter_kib`):

=========== ============== ===================================================
process      oom_score_adj  private memory
=========== ============== ===================================================
cached-old   900 (cached)   15% of A0, started first (least recently used)
cached-big   900 (cached)   20% of A0
service      500 (service)  12% of A0
foreground   0              the ramp: 10 MiB/s up to 65% of A0, held 2 s
=========== ============== ===================================================

Without a kill that is 112% of A0: something must go.  Killing both cached
apps leaves the foreground its room, if the tool itself costs little.
"""

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from memagent.core.levels import default_thresholds
from memagent.demo import loadgen

Result = Dict[str, Any]
LOADGEN = [sys.executable, "-S", os.path.abspath(loadgen.__file__)]
# (name, class, oom_score_adj, share of A0), in start order.
APPS = [("cached-old", "cached", 900, 0.15), ("cached-big", "cached", 900, 0.20),
        ("service", "service", 500, 0.12)]
RAMP_SHARE = 0.65
RAMP_HOLD_S = 2.0
SETTLE_S = 1.0      # after the apps are full, before the ramp: the tool sees calm
AFTER_S = 1.5       # after the ramp ends: the tool's last kill is recorded
RAMP_TIMEOUT_S = 60.0  # past the ramp's own time: a thrashing 64 MB guest stalled 80 s
SAMPLE_MS = 50
EARLYOOM_KILL_RE = re.compile(r"sending (SIG\w+) to process (\d+)")


def mono_ms() -> int:
    """Return: CLOCK_MONOTONIC in ms (memagent's ticks_ms, loadgen's mono_ms)."""
    return int(time.monotonic() * 1000)


def status_kib(pid: int, key: str = "VmRSS") -> Optional[int]:
    """Return: the ``key`` line (VmRSS, RssAnon...) of /proc/PID/status in
    KiB, or None if ``pid`` is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def set_adj(value: int) -> Callable[[], None]:
    """Return: a preexec_fn that sets the child's oom_score_adj to ``value``."""
    def apply() -> None:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"%d" % value)
        finally:
            os.close(fd)
    return apply


# -- where the processes run ---------------------------------------------------------


def parse_events(lines):
    """Returns: (kill actions, each with ``decision_ms``; notifications, trimmed)
    from the agent's --events-json lines; bad lines are skipped."""
    kills, notes = [], []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("action") == "kill":
            obj["decision_ms"] = obj["t_ms"] - int(obj.get("ms") or 0)
            kills.append(obj)
        elif "level" in obj and "prev_level" in obj:
            notes.append({k: obj.get(k) for k in ("t_ms", "level", "prev_level",
                                                  "reason", "avail_kib")})
    return kills, notes

class Place:
    """The whole system: processes start in the caller's cgroup, memory is
    /proc/meminfo's MemAvailable, OOM kills are /proc/vmstat's oom_kill."""

    label = "system"

    def spawn(self, argv: List[str], preexec: Callable[[], None],
              **kw: Any) -> "subprocess.Popen[str]":
        """Start ``argv`` (``preexec`` runs in the child).  Returns: the Popen."""
        return subprocess.Popen(argv, preexec_fn=preexec, text=True, **kw)

    def avail_kib(self) -> Tuple[int, int]:
        """Return: (available KiB, total KiB) of the domain.  Raises: OSError."""
        values = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    values[key] = int(rest.split()[0])
        return values["MemAvailable"], values["MemTotal"]

    def oom_kills(self) -> int:
        """Return: the kernel's OOM kills so far (0 if it does not count them)."""
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        return 0

    def agent_args(self) -> List[str]:
        """Return: the ``memagent run`` arguments that select this domain."""
        return []


# -- the contestants -------------------------------------------------------------------


class Contestant:
    """Nobody: the kernel's OOM killer alone.  Subclasses start a tool."""

    label = "none"
    proc: "Optional[subprocess.Popen[str]]" = None

    def start(self, place: Place, tmp: str) -> None:
        """Start the tool and wait until it watches.  Raises: RuntimeError."""

    def stop(self) -> Result:
        """Stop the tool.  Returns: what it did: ``kills`` (each with ``pid``,
        ``t_ms``, ``decision_ms``), ``notes`` (level changes), ``log``, ``rss_kib``."""
        return {"kills": [], "notes": [], "log": "", "rss_kib": None}

    def _stop_proc(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Memagent(Contestant):
    """``memagent run`` with only the plugin kill_background, killing.
    ``options``: "mlock" (``[agent] mlockall = yes``) or "SECTION.KEY=VALUE"
    config lines, e.g. "kill_background.cooldown_ms=0"."""

    def __init__(self, options: Optional[List[str]] = None) -> None:
        self.options = options or []
        self.conf: Dict[str, Dict[str, str]] = {
            "plugins": {"enable": "kill_background"}, "kill_background": {"dry_run": "no"}}
        for opt in self.options:
            key, sep, value = opt.partition("=")
            section, dot, name = key.partition(".")
            if opt == "mlock":
                self.conf.setdefault("agent", {})["mlockall"] = "yes"
            elif sep and dot and section and name:
                self.conf.setdefault(section, {})[name] = value
            else:
                raise ValueError("memagent option %r: mlock or SECTION.KEY=VALUE" % opt)
        self.label = " ".join(["memagent"] + self.options)
        self.log_path = self.events_path = ""
        self.rss_kib: Optional[int] = None

    def start(self, place: Place, tmp: str) -> None:
        conf = os.path.join(tmp, "memagent.conf")
        self.conf["plugins"]["dir"] = os.path.join(tmp, "plugins.d")
        os.makedirs(self.conf["plugins"]["dir"], exist_ok=True)
        with open(conf, "w") as f:
            for section, values in self.conf.items():
                f.write("[%s]\n" % section)
                f.writelines("%s = %s\n" % kv for kv in values.items())
        self.log_path = os.path.join(tmp, "agent.log")
        self.events_path = os.path.join(tmp, "events.jsonl")
        for path in (self.log_path, self.events_path):
            if os.path.exists(path):
                os.unlink(path)
        with open(self.log_path, "w") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "memagent", "run", "-c", conf, "--no-socket",
                 "--events-json", self.events_path] + place.agent_args(),
                stdout=subprocess.DEVNULL, stderr=log_file, text=True)
        deadline = time.monotonic() + 30
        while "levels:" not in self._log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stop_proc()
                raise RuntimeError("memagent did not start: %s" % self._log()[-1500:])
            time.sleep(0.1)
        time.sleep(0.5)  # on_start of the plugins
        loaded = [ln for ln in self._log().splitlines() if "plugins: " in ln]
        if not loaded or "kill_background" not in loaded[-1]:
            self._stop_proc()
            raise RuntimeError("memagent runs without kill_background: %s"
                               % self._log()[-1500:])
        self.rss_kib = status_kib(self.proc.pid)

    def _log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> Result:
        self._stop_proc()
        with open(self.events_path) as f:
            kills, notes = parse_events(f)
        return {"kills": kills, "notes": notes, "log": self._log()[-4000:],
                "rss_kib": self.rss_kib}


class Earlyoom(Contestant):
    """Debian's earlyoom, its stderr timestamped line by line as it arrives."""

    def __init__(self, args: List[str]) -> None:
        self.args = args
        self.label = "earlyoom" + (" " + " ".join(args) if args else "")
        self.lines: List[Tuple[int, str]] = []
        self.rss_kib: Optional[int] = None
        self._reader: Optional[threading.Thread] = None

    def start(self, place: Place, tmp: str) -> None:
        # -r 3600: Debian's /etc/default/earlyoom; the reports would only add noise.
        self.proc = subprocess.Popen(["earlyoom", "-r", "3600"] + self.args,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,),
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while not any("SIGKILL when" in line for _, line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stop_proc()
                raise RuntimeError("earlyoom did not start: %s" % self._text())
            time.sleep(0.05)
        self.rss_kib = status_kib(self.proc.pid)

    def _read(self, stream: "IO[str]") -> None:
        for line in stream:
            self.lines.append((mono_ms(), line.rstrip()))

    def _text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self) -> Result:
        self._stop_proc()
        if self._reader is not None:
            self._reader.join(5)
        kills = []
        for t_ms, line in self.lines:
            m = EARLYOOM_KILL_RE.search(line)
            if m:
                kills.append({"pid": int(m.group(2)), "sig": m.group(1), "t_ms": t_ms,
                              "decision_ms": t_ms, "line": line})
        return {"kills": kills, "notes": [], "log": self._text()[-4000:],
                "rss_kib": self.rss_kib}


def contestant(spec: str) -> Contestant:
    """Return: the contestant for ``none``, ``memagent[:OPT OPT...]``,
    ``earlyoom[:ARG ARG...]`` (blank-separated: earlyoom's own values hold commas).
    Raises: ValueError for anything else."""
    name, _, args = spec.partition(":")
    if name == "none" and not args:
        return Contestant()
    if name == "memagent":
        return Memagent(args.split())
    if name == "earlyoom":
        return Earlyoom(args.split())
    raise ValueError("unknown contestant %r (none, memagent[:OPTS], earlyoom[:ARGS])" % spec)


# -- the scenario's processes and the sampler -----------------------------------------


class Proc:
    """One process of the scenario: a background app or the foreground ramp."""

    def __init__(self, name: str, cls: str, adj: int, popen: "subprocess.Popen[str]") -> None:
        self.name, self.cls, self.adj, self.popen = name, cls, adj, popen
        self.pid = popen.pid
        self.start_ms = mono_ms()
        self.rss_kib: Optional[int] = None
        self.anon_kib: Optional[int] = None  # what its death gives back
        self.died_ms: Optional[int] = None
        self.returncode: Optional[int] = None
        self.points: List[Tuple[int, float]] = []  # the ramp's (mono_ms, MiB)

    def as_dict(self) -> Result:
        """Return: the process for the JSON result."""
        return {"name": self.name, "cls": self.cls, "adj": self.adj, "pid": self.pid,
                "rss_kib": self.rss_kib, "anon_kib": self.anon_kib, "start_ms": self.start_ms,
                "died_ms": self.died_ms, "rc": self.returncode}


VM_EVERY = 10
VM_KEYS = ("workingset_refault_file", "workingset_activate_file")


def vm_counters() -> Tuple[int, int, int]:
    """Return: /proc/vmstat's file refaults and activations (pages), and PSI
    memory full avg10 x 100; -1 for what this kernel lacks."""
    got = {k: -1 for k in VM_KEYS}
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key in got:
                    got[key] = int(value)
        with open("/proc/pressure/memory") as f:
            full = f.read().split("full avg10=")[1].split()[0]
        return got[VM_KEYS[0]], got[VM_KEYS[1]], int(float(full) * 100)
    except (OSError, IndexError, ValueError):
        return got[VM_KEYS[0]], got[VM_KEYS[1]], -1


class Sampler(threading.Thread):
    """Reads the available memory every SAMPLE_MS and notes each watched
    process's death the moment its pidfd turns readable."""

    def __init__(self, place: Place, sample_ms: int = SAMPLE_MS) -> None:
        super().__init__(daemon=True)
        self.place, self.sample_ms = place, sample_ms
        self.samples: List[Tuple[int, int]] = []
        # every VM_EVERY-th sample: (ms, refault_file, activate_file, psi full avg10 x100)
        self.vm_samples: List[Tuple[int, int, int, int]] = []
        self._watched: Dict[int, Proc] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def watch(self, proc: Proc) -> None:
        """Watch ``proc`` (it must not be reaped yet)."""
        with self._lock:
            self._watched[os.pidfd_open(proc.pid)] = proc

    def run(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                fds = list(self._watched)
            ready, _, _ = select.select(fds, [], [], self.sample_ms / 1000.0)
            now = mono_ms()
            for fd in ready:
                with self._lock:
                    proc = self._watched.pop(fd)
                proc.died_ms = now
                proc.returncode = proc.popen.wait()
                os.close(fd)
            try:
                self.samples.append((now, self.place.avail_kib()[0]))
            except OSError:
                pass
            if len(self.samples) % VM_EVERY == 1:
                self.vm_samples.append((now,) + vm_counters())

    def finish(self) -> None:
        """Stop sampling and close the pidfds still open."""
        self._halt.set()
        self.join(5)
        with self._lock:
            for fd in self._watched:
                os.close(fd)
            self._watched.clear()


def start_app(place: Place, name: str, cls: str, adj: int, mib: int) -> Proc:
    """Start a background app holding ``mib`` MiB and wait until it is full.
    Returns: the Proc.  Raises: RuntimeError if it dies meanwhile."""
    popen = place.spawn(LOADGEN + ["anon", "--rate", "0", "--max-mb", str(mib), "--hold", "-1"],
                        set_adj(adj), stdout=subprocess.PIPE)
    proc = Proc(name, cls, adj, popen)
    assert popen.stdout is not None
    for line in popen.stdout:
        if line.startswith(loadgen.DONE):
            break
    popen.stdout.close()
    proc.rss_kib = status_kib(proc.pid)
    proc.anon_kib = status_kib(proc.pid, "RssAnon")
    if proc.rss_kib is None or popen.poll() is not None:
        raise RuntimeError("app %s died while filling (exit %s)" % (name, popen.poll()))
    return proc


def _read_progress(proc: Proc) -> None:
    assert proc.popen.stdout is not None
    for line in proc.popen.stdout:
        point = loadgen.parse_line(line)
        if point is not None:
            proc.points.append((point.mono_ms, point.count))


def wait_calm(place: Place, target_kib: int, timeout_s: float = 15.0) -> int:
    """Wait until the available memory is back to ``target_kib`` (minus 2 MiB).
    Returns: the available KiB then."""
    deadline = time.monotonic() + timeout_s
    while True:
        avail = place.avail_kib()[0]
        if avail >= target_kib - 2048 or time.monotonic() > deadline:
            return avail
        time.sleep(0.2)


def interpreter_kib(place: Place) -> int:
    """Return: the private memory (RssAnon) one loadgen process costs beyond
    its load, measured on a probe holding 1 MiB (measured: 2.4 MiB on the
    ARM guest, 3.5 MiB on x86-64).  Raises: RuntimeError if the probe dies."""
    probe = start_app(place, "probe", "cached", 1000, 1)
    try:
        return max((probe.anon_kib or 0) - 1024, 0)
    finally:
        probe.popen.kill()  # our child, not reaped yet
        probe.popen.wait()


def sizes_mib(a0_kib: int, overhead_kib: int = 0) -> Result:
    """Return: the scenario's sizes for ``a0_kib`` available: each app's load
    and the ramp's in MiB, so that each process's private memory, with the
    ``overhead_kib`` of its interpreter, is its share of ``a0_kib``."""
    def load(share: float) -> int:
        return max(int((a0_kib * share - overhead_kib) / 1024), 1)

    return {"apps": [(name, cls, adj, load(share)) for name, cls, adj, share in APPS],
            "ramp_mib": load(RAMP_SHARE), "overhead_kib": overhead_kib}


def run_once(place: Place, tool: Contestant, sizes: Result, rate_mib_s: float,
             tmp: str) -> Result:
    """One run of the scenario with ``tool`` watching.  Returns: the raw run:
    processes, the ramp's progress, the samples, the tool's kills and notes,
    the kernel's OOM kills.  Raises: RuntimeError if the tool or an app fails
    to start (what was started is stopped)."""
    procs: List[Proc] = []
    sampler = Sampler(place)
    reader: Optional[threading.Thread] = None
    oom0 = place.oom_kills()
    avail0, total = place.avail_kib()
    tool.start(place, tmp)
    try:
        avail_tool = place.avail_kib()[0]
        for name, cls, adj, mib in sizes["apps"]:
            procs.append(start_app(place, name, cls, adj, mib))
            time.sleep(0.2)  # distinct start times: "least recently used" is well defined
        time.sleep(SETTLE_S)
        for proc in procs:
            sampler.watch(proc)
        sampler.start()
        t0 = mono_ms()
        ramp = Proc("foreground", "foreground", 0, place.spawn(
            LOADGEN + ["anon", "--rate", str(rate_mib_s), "--max-mb", str(sizes["ramp_mib"]),
                       "--hold", str(RAMP_HOLD_S)], set_adj(0), stdout=subprocess.PIPE))
        sampler.watch(ramp)
        procs.append(ramp)
        reader = threading.Thread(target=_read_progress, args=(ramp,), daemon=True)
        reader.start()
        deadline = time.monotonic() + RAMP_TIMEOUT_S + sizes["ramp_mib"] / rate_mib_s
        while ramp.died_ms is None and time.monotonic() < deadline:
            time.sleep(0.1)
        timed_out = ramp.died_ms is None
        time.sleep(AFTER_S)
        end_ms = ramp.died_ms or mono_ms()
    finally:
        if sampler.is_alive():
            sampler.finish()
        what = tool.stop()
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.kill()  # our own child, not reaped: its pid cannot be reused
            proc.popen.wait()
        if reader is not None:
            reader.join(5)
    thresholds = default_thresholds(total)
    return {"contestant": tool.label, "total_kib": total, "a0_kib": avail0,
            "avail_with_tool_kib": avail_tool, "crit_kib": thresholds.critical_kib,
            "low_kib": thresholds.low_kib, "rate_mib_s": rate_mib_s, "sizes": sizes,
            "t0_ms": t0, "end_ms": end_ms, "timed_out": timed_out,
            "procs": [p.as_dict() for p in procs], "ramp_points": ramp.points,
            "samples": sampler.samples, "oom_kills": place.oom_kills() - oom0,
            "tool": what, "calm_after_kib": wait_calm(place, avail0)}


def run_contestant(place: Place, spec: str, runs: int, rate_mib_s: float,
                   tmp: str, sizes: Optional[Result] = None) -> List[Result]:
    """Run the scenario ``runs`` times with contestant ``spec``, each from a
    calm start.  Returns: the raw runs.  Raises: RuntimeError, ValueError."""
    out = []
    for _ in range(runs):
        if sizes is None:
            sizes = sizes_mib(place.avail_kib()[0], interpreter_kib(place))
            wait_calm(place, place.avail_kib()[0])
        out.append(run_once(place, contestant(spec), sizes, rate_mib_s, tmp))
    return out


# -- in the guest ------------------------------------------------------------------------


def _options(argv: List[str]) -> Tuple[str, int, float]:
    """Return: (contestant, runs, rate) from ``CONTESTANT [runs=N] [rate=MB/s]``."""
    if not argv:
        raise SystemExit(__doc__)
    opts = {"runs": "3", "rate": "10"}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in opts:
            raise SystemExit("unknown option %r" % arg)
        opts[key] = value
    return argv[0], int(opts["runs"]), float(opts["rate"])


def guest_main(argv: List[str]) -> int:
    """Run in the qemu guest.  Returns: 0 (the verdict is the RESULT line)."""
    import rigguest

    spec, runs, rate = _options(argv)
    set_adj(-1000)()  # the driver is no contestant's victim
    os.makedirs("/tmp/kill-bench", exist_ok=True)
    try:
        results = run_contestant(Place(), spec, runs, rate, "/tmp/kill-bench")
    except (RuntimeError, ValueError, OSError) as e:
        rigguest.result(False, "%s: %s" % (spec, e))
        return 0
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", spec)
    rigguest.handback("kill-%s.json" % name, data=json.dumps(results))
    ours = {p["pid"] for r in results for p in r["procs"]}
    strays = [k["pid"] for r in results for k in r["tool"]["kills"]
              if k["pid"] not in ours and not k.get("dry_run")]
    fg = sum(1 for r in results if r["procs"][-1]["rc"] == 0)
    print("FACT runs=%d" % len(results))
    print("FACT tool_kills=%d" % sum(len(r["tool"]["kills"]) for r in results))
    print("FACT oom_kills=%d" % sum(r["oom_kills"] for r in results))
    print("FACT foreground_survived=%d" % fg, flush=True)
    ok = not strays
    rigguest.result(ok, "%s: %d runs%s" % (spec, len(results),
                                         ", killed pids it should not: %s" % strays
                                         if strays else ""))
    return 0


if __name__ == "__main__":
    sys.exit(guest_main(sys.argv[1:]))
