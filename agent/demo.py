"""``memagent demo``: the "virtual handset", safe on any Linux machine.

With root and a memory controller it makes a 128 MiB memcg (no swap), fills
it with page cache, then runs Daniel Spang's 2008 alloc-test inside it (10
MB/s of anonymous memory) while memagent senses the memcg in this process,
and prints the timeline as it goes: when LOW and CRITICAL came, the MiB
allocated, the headroom left and the predicted time left.  The allocator is
stopped at CRITICAL (``--until-oom``: left to the OOM killer).  The memcg is
removed at the end, also on Ctrl-C or SIGTERM; the demo only ever signals
processes it started inside its own memcg.

Without privileges or a memory controller (or with ``--replay``) it replays
a trace recorded that way (``memagent/data/ramp-128m.jsonl``) through the
same monitor and says why it is replaying.

Measured here (cgroup v1, kernel 6.18): the live run takes ~12 s (~13 s with
``--until-oom``); LOW came after 95-96 MiB with 19-20% (25 MiB) available,
2.8 s before the OOM kill at 123 MiB; CRITICAL after 108-109 MiB (9%).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import IO, Any, Dict, List, Optional, Tuple

from . import aio, memcg, readers, scenario, trace
from .control import query
from .levels import CRITICAL, LEVEL_NAMES, Notification, default_thresholds, level_name

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BUNDLED_TRACE = os.path.join(DATA_DIR, "ramp-128m.jsonl")
TICK_MS = 2000
POLL_MS = 100  # the apps' stdout, the agent's events and status
START_TIMEOUT_MS = 15000  # the agent's socket, the apps' registrations
SETTLE_MS = 1500  # after the bounded ramp: let the last trims finish
# The cache apps: memagent.scenario.cache_app_main, inside the memcg.
CACHE_APP_ARGV = (sys.executable, "-u", "-c",
                  "import sys; from memagent.scenario import cache_app_main; "
                  "sys.exit(cache_app_main())")
# Only the built-in release_caches plugin: no drop-in directory of this machine.
AGENT_CONFIG = "[plugins]\nenable = release_caches\ndir = %s\n"


class DemoError(Exception):
    """The cooperative-apps setup failed (the agent or an app did not start)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the ``demo`` subcommand)."""
    parser.add_argument("--replay", action="store_true",
                        help="replay the bundled recording even if a live run is possible")
    parser.add_argument("--trace", help="replay this trace instead of the bundled one")
    parser.add_argument("--until-oom", action="store_true",
                        help="do not stop the allocator at CRITICAL: let the OOM killer end it")
    parser.add_argument("--memcg-mib", type=int, default=128,
                        help="size of the virtual handset (default 128)")
    parser.add_argument("--rate-mib-s", type=float, default=10.0,
                        help="allocation rate in MiB/s (default 10, as in 2008)")
    parser.add_argument("--source", default="auto",
                        help="memagent source to sense with (default auto)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary instead of the timeline")
    parser.add_argument("--apps", type=int, default=3,
                        help="cooperative cache apps in the handset, with the agent as a real "
                             "process freeing their caches (default 3; 0: the agent senses "
                             "in-process and nobody frees anything)")
    parser.add_argument("--cache-mib", type=int, default=16,
                        help="cache each app holds and can give back, MiB (default 16)")


class Show:
    """Prints the timeline (unless ``quiet``) and collects the summary."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.events: List[Dict[str, Any]] = []

    def say(self, text: str) -> None:
        """Print a human line (not with --json)."""
        if not self.quiet:
            print(text, flush=True)

    def note(self, note: Notification, t0_ms: int, mib: Optional[int]) -> None:
        """Print and keep one notification, with the MiB allocated by then."""
        pct = 100 * note.avail_kib // note.total_kib if note.total_kib else 0
        eta = "-" if note.eta_ms is None else "%.1f s" % (note.eta_ms / 1000)
        mib_text = "?" if mib is None else "%d MiB" % mib
        self.events.append({"t_s": round((note.t_ms - t0_ms) / 1000, 2),
                            "level": level_name(note.level),
                            "prev_level": level_name(note.prev_level), "reason": note.reason,
                            "allocated_mib": mib, "avail_mib": note.avail_kib // 1024,
                            "avail_pct": pct, "eta_ms": note.eta_ms})
        if note.level != note.prev_level:
            self.say("%6.2fs  %-8s <- %-8s %-9s allocated %-7s  headroom %3d MiB (%2d%%)"
                     "  time left %s" % ((note.t_ms - t0_ms) / 1000, level_name(note.level),
                                         level_name(note.prev_level), note.reason, mib_text,
                                         note.avail_kib // 1024, pct, eta))

    def first(self, level: str) -> Optional[Dict[str, Any]]:
        """Return: the first kept event at ``level`` that was a change of level."""
        for event in self.events:
            if event["level"] == level and event["prev_level"] != level:
                return event
        return None


def _summary_lines(show: Show, end_text: str, end_s: float) -> List[str]:
    lines = ["", "summary:"]
    for name in ("LOW", "CRITICAL"):
        ev = show.first(name)
        if ev is None:
            lines.append("  %-8s never" % name)
            continue
        lines.append("  %-8s at %5.2f s, after %s MiB allocated, %d MiB (%d%%) left, "
                     "%.1f s before the end" % (name, ev["t_s"],
                                                "?" if ev["allocated_mib"] is None
                                                else ev["allocated_mib"],
                                                ev["avail_mib"], ev["avail_pct"],
                                                end_s - ev["t_s"]))
    lines.append("  end      %s at %.2f s" % (end_text, end_s))
    return lines


def _header(show: Show, limit_mib: int, rate: float) -> None:
    th = default_thresholds(limit_mib * 1024)
    show.say("virtual handset: %d MiB memcg, no swap; LOW at <= %d MiB available, "
             "CRITICAL at <= %d MiB" % (limit_mib, th.low_kib // 1024, th.critical_kib // 1024))
    show.say("allocating %g MiB/s of anonymous memory after filling the page cache "
             "(Daniel Spang's 2008 test)" % rate)


async def _live_run(hs: scenario.Handset, args: argparse.Namespace,
                    show: Show) -> Dict[str, Any]:
    t = aio.ticks_ms()
    await hs.fill_page_cache()
    show.say("page cache filled in %.1f s: %d MiB charged to %s"
             % ((aio.ticks_ms() - t) / 1000, hs.memcg.usage_kib() // 1024, hs.path))
    progress = scenario.Progress()
    t0 = aio.ticks_ms()
    watch = scenario.Watch(hs.path, args.source,
                           on_note=lambda n: show.note(n, t0, progress.at(n.t_ms)))
    show.say("sensing with memagent's %s source; the allocator starts now" % watch.source_label)
    next_tick = [t0 + TICK_MS]

    def stop() -> bool:
        now = aio.ticks_ms()
        if now >= next_tick[0] and watch.monitor.last is not None:
            next_tick[0] += TICK_MS
            r = watch.monitor.last
            show.say("%6.2fs  %-8s allocated %3d MiB, available %3d MiB (%2d%%)" % (
                (now - t0) / 1000, level_name(watch.monitor.level), progress.last(),
                r.avail_kib // 1024, 100 * r.avail_kib // r.total_kib))
        return not args.until_oom and watch.monitor.level >= CRITICAL

    end = await scenario.watching(watch, hs.ramp(args.rate_mib_s, progress, stop))
    end_s = (end.end_ms - t0) / 1000
    if end.oom_killed:
        end_text = "OOM-killed after %d MiB" % progress.last()
    elif end.stopped:
        end_text = "allocator stopped by the demo at CRITICAL after %d MiB" % progress.last()
    else:
        end_text = "allocator exited (status %d) after %d MiB" % (end.returncode,
                                                                  progress.last())
    return {"mode": "live", "memcg": hs.path, "source": watch.source_label,
            "end": end_text, "end_s": round(end_s, 2), "oom_killed": end.oom_killed,
            "allocated_mib": progress.last(), "events": show.events}


class Coop:
    """The cooperative-apps side of a live run: ``memagent run`` as a real
    process outside the memcg (on a socket in a temp directory, events to a
    file there), and ``n`` cache apps started inside ``hs``'s memcg.

    :meth:`close` stops only what it started (by Popen, never by name) and
    removes the temp directory; the memcg itself is the Handset's.
    """

    def __init__(self, hs: scenario.Handset, n: int, cache_mib: int) -> None:
        self.hs = hs
        self.n = n
        self.cache_mib = cache_mib
        self.tmp = tempfile.mkdtemp(prefix="memagent-demo-")
        self.sock = os.path.join(self.tmp, "agent.sock")
        self.events_path = os.path.join(self.tmp, "events.jsonl")
        self.log_path = os.path.join(self.tmp, "agent.log")
        self.agent: "Optional[subprocess.Popen[bytes]]" = None
        self.apps: "List[Tuple[str, subprocess.Popen[bytes]]]" = []
        self._events: Optional[IO[str]] = None
        self._partial: Dict[str, bytes] = {}
        self.cache_kib: Dict[str, int] = {}  # what each app still holds (its own report)

    def start_agent(self) -> None:
        """Start the agent (own session: Ctrl-C on the terminal is ours to handle)."""
        cfg = os.path.join(self.tmp, "memagent.conf")
        with open(cfg, "w") as f:
            f.write(AGENT_CONFIG % os.path.join(self.tmp, "plugins.d"))
        with open(self.log_path, "wb") as log_file:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "memagent", "run", "-c", cfg, "--memcg", self.hs.path,
                 "--socket", self.sock, "--events-json", self.events_path],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)

    def start_apps(self) -> None:
        """Start the cache apps inside the memcg."""
        for i in range(self.n):
            name = "cache%d" % (i + 1)
            child = self.hs.memcg.spawn(
                list(CACHE_APP_ARGV) + ["--socket", self.sock, "--name", name,
                                        "--cache-mib", str(self.cache_mib)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, start_new_session=True)
            assert child.stdout is not None
            os.set_blocking(child.stdout.fileno(), False)
            self.apps.append((name, child))

    def agent_log_tail(self, lines: int = 8) -> str:
        """Return: the last ``lines`` of the agent's log, for an error message."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).strip()
        except OSError:
            return ""

    def check_agent(self) -> None:
        """Raises: DemoError if the agent has exited."""
        if self.agent is not None and self.agent.poll() is not None:
            raise DemoError("the agent exited (status %s): %s"
                            % (self.agent.returncode, self.agent_log_tail()))

    def app_lines(self) -> List[Tuple[str, List[str]]]:
        """Return: (app name, its complete new stdout lines) for each app."""
        out = []
        for name, child in self.apps:
            assert child.stdout is not None
            data = b""
            while True:
                try:
                    chunk = os.read(child.stdout.fileno(), 65536)
                except (BlockingIOError, ValueError):
                    break
                if not chunk:
                    break
                data += chunk
            lines = (self._partial.get(name, b"") + data).split(b"\n")
            self._partial[name] = lines.pop()
            out.append((name, [line.decode("ascii", "replace") for line in lines]))
        return out

    def new_notes(self) -> List[Notification]:
        """Return: the agent's notifications written since the last call."""
        if self._events is None:
            try:
                self._events = open(self.events_path)
            except FileNotFoundError:
                return []
        notes: List[Notification] = []
        while True:
            pos = self._events.tell()
            line = self._events.readline()
            if not line.endswith("\n"):
                self._events.seek(pos)  # a partial line: read it whole next time
                return notes
            obj = json.loads(line)
            notes.append(Notification(int(obj["t_ms"]), LEVEL_NAMES.index(obj["level"]),
                                      LEVEL_NAMES.index(obj["prev_level"]), str(obj["reason"]),
                                      int(obj["avail_kib"]), int(obj["total_kib"]),
                                      obj.get("eta_ms")))

    def close(self) -> None:
        """SIGTERM the apps then the agent (SIGKILL after 5 s), remove the temp directory."""
        try:
            for _name, child in self.apps:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for _name, child in self.apps:
                _stop(child, 5.0)
                if child.stdout is not None:
                    child.stdout.close()
            if self.agent is not None:
                if self.agent.poll() is None:
                    self.agent.send_signal(signal.SIGTERM)
                _stop(self.agent, 5.0)
        finally:
            if self._events is not None:
                self._events.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def _stop(child: "subprocess.Popen[bytes]", timeout_s: float) -> None:
    """Wait for ``child`` (ours) to exit; SIGKILL it after ``timeout_s``."""
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class CoopState:
    """What the demo learns while the apps run: trims, the agent's status."""

    def __init__(self, t0_ms: int) -> None:
        self.t0_ms = t0_ms
        self.trims: List[Dict[str, Any]] = []
        self.status: Dict[str, Any] = {}
        self.ramps: List[scenario.Progress] = []
        self.next_tick_ms = 0

    def allocated(self, t_ms: Optional[int] = None) -> int:
        """Return: MiB allocated by all ramps (at ``t_ms``, default now)."""
        if t_ms is None:
            return sum(p.last() for p in self.ramps)
        return sum(p.at(t_ms) for p in self.ramps)

    def level(self) -> int:
        """Return: the agent's level (NORMAL before the first status)."""
        return LEVEL_NAMES.index(self.status.get("level", "NORMAL"))

    def apps(self) -> List[Dict[str, Any]]:
        """Return: the agent's registered apps (status ``apps``)."""
        apps: List[Dict[str, Any]] = (self.status.get("apps") or {}).get("apps") or []
        return apps

    def measured_kib(self) -> int:
        """Return: KiB the agent measured the apps freeing, all trims so far."""
        return sum(int(a["compliance"]["measured_kib"]) for a in self.apps())


async def _observe(coop: Coop, st: CoopState, show: Show) -> None:
    """Once: the agent's new notifications, the apps' trims, the status, a tick."""
    coop.check_agent()
    for note in coop.new_notes():
        show.note(note, st.t0_ms, st.allocated(note.t_ms) if st.ramps else None)
    for name, lines in coop.app_lines():
        for line in lines:
            words = line.split()
            if words[:1] == ["ready"] and words[1:2] and words[1].startswith("cache_kib="):
                coop.cache_kib[name] = int(words[1].split("=")[1])
            elif words[:1] == ["trim"] and len(words) == 6:
                level = words[1]
                target, freed, left, t_ms = (int(w) for w in words[2:])
                coop.cache_kib[name] = left
                trim = {"t_s": round((t_ms - st.t0_ms) / 1000, 2), "app": name,
                        "level": level, "target_kib": target, "freed_kib": freed,
                        "left_kib": left, "allocated_mib": st.allocated(t_ms)}
                st.trims.append(trim)
                show.say("%6.2fs  trim     %-8s asked %5d KiB at %-8s freed %5d KiB, "
                         "cache left %2d MiB" % ((t_ms - st.t0_ms) / 1000, name, target,
                                                 level, freed, left // 1024))
    try:
        reply = await query(coop.sock, timeout_ms=2000)
    except (OSError, TimeoutError, ValueError):
        return  # busy or just gone: the next poll asks again
    st.status = reply.get("status") or st.status
    now = aio.ticks_ms()
    reading = st.status.get("reading")
    if st.ramps and now >= st.next_tick_ms and reading:
        st.next_tick_ms = now + TICK_MS
        show.say("%6.2fs  %-8s allocated %3d MiB, available %3d MiB (%2d%%), app caches %d MiB"
                 % ((now - st.t0_ms) / 1000, st.status.get("level"), st.allocated(),
                    reading["avail_kib"] // 1024,
                    100 * reading["avail_kib"] // max(reading["total_kib"], 1),
                    sum(coop.cache_kib.values()) // 1024))


async def _observing(coop: Coop, st: CoopState, show: Show, body: Any) -> Any:
    """Run coroutine ``body`` while observing every POLL_MS.  Returns: its result.
    Raises: DemoError if the agent exits meanwhile."""
    failed: List[BaseException] = []

    async def loop() -> None:
        while True:
            try:
                await _observe(coop, st, show)
            except DemoError as e:
                failed.append(e)
                return
            await aio.sleep_ms(POLL_MS)

    task = aio.create_task(loop())
    try:
        result = await body
    finally:
        task.cancel()
        await aio.gather(task, return_exceptions=True)
    await _observe(coop, st, show)  # the last lines and status
    if failed:
        raise failed[0]
    return result


def _ramp_argv(rate: float, max_mib: Optional[int]) -> List[str]:
    argv = list(scenario.LOADGEN_ARGV) + ["anon", "--rate", str(rate)]
    if max_mib is not None:
        argv += ["--max-mb", str(max_mib), "--hold", "-1"]
    return argv


def _oom_first() -> None:
    """In the child between fork and exec: make it the OOM killer's first pick."""
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    try:
        os.write(fd, b"1000")
    finally:
        os.close(fd)


async def _until_full(child: Any, progress: scenario.Progress) -> bool:
    """Feed the holding ramp's progress until its done line.  Returns: False
    if it exited first (OOM-killed)."""
    fd = child.stdout.fileno()
    os.set_blocking(fd, False)
    while progress.full_ms is None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            await aio.sleep_ms(scenario.SAMPLE_MS // 2)
            continue
        if not data:
            return False
        progress.feed(data)
    return True


async def _wait_filled(coop: Coop) -> None:
    """Wait until every app reported its cache filled.  Raises: DemoError
    on START_TIMEOUT_MS or if an app exits."""
    deadline = aio.ticks_ms() + START_TIMEOUT_MS
    while len(coop.cache_kib) < coop.n:
        for name, lines in coop.app_lines():
            for line in lines:
                words = line.split()
                if words[:1] == ["ready"] and words[1:2] and words[1].startswith("cache_kib="):
                    coop.cache_kib[name] = int(words[1].split("=")[1])
        gone = [name for name, child in coop.apps if child.poll() is not None]
        if gone or aio.ticks_ms() > deadline:
            raise DemoError("cache apps did not start: %s" % ", ".join(gone or ["timeout"]))
        await aio.sleep_ms(POLL_MS)


async def _wait_ready(coop: Coop, st: CoopState, show: Show) -> None:
    """Wait for the agent's socket, then for every app to register.
    Raises: DemoError on START_TIMEOUT_MS or if the agent exits."""
    deadline = aio.ticks_ms() + START_TIMEOUT_MS
    while not os.path.exists(coop.sock):
        coop.check_agent()
        if aio.ticks_ms() > deadline:
            raise DemoError("the agent did not open %s: %s" % (coop.sock,
                                                               coop.agent_log_tail()))
        await aio.sleep_ms(POLL_MS)
    while len(st.apps()) < coop.n:
        if aio.ticks_ms() > deadline:
            raise DemoError("only %d of %d apps registered" % (len(st.apps()), coop.n))
        await _observe(coop, st, show)
        await aio.sleep_ms(POLL_MS)


async def _coop_run(hs: scenario.Handset, coop: Coop, args: argparse.Namespace,
                    show: Show) -> Dict[str, Any]:
    st = CoopState(aio.ticks_ms())
    t = aio.ticks_ms()
    await hs.fill_page_cache()
    show.say("page cache filled in %.1f s: %d MiB charged to %s"
             % ((aio.ticks_ms() - t) / 1000, hs.memcg.usage_kib() // 1024, hs.path))
    # The apps fill their caches before the agent watches: that fall is no threat.
    coop.start_apps()
    await _wait_filled(coop)
    coop.start_agent()
    await _wait_ready(coop, st, show)
    show.say("agent pid %d (outside the memcg) on %s; %d apps registered, each holding "
             "%d MiB of cache: %s" % (coop.agent.pid if coop.agent else 0, coop.sock, coop.n,
                                      coop.cache_mib, ", ".join(
                                          "%s (pid %d)" % (a["name"], a["pid"])
                                          for a in st.apps())))
    first = readers.MemcgDomain(hs.path).read(aio.ticks_ms(), "demo")
    th = default_thresholds(first.total_kib)
    caches_kib = sum(coop.cache_kib.values())
    anon_kib = first.anon_kib if first.anon_kib is not None else first.total_kib - first.avail_kib
    # Absorbable: what is left above LOW (less a margin) plus what the apps can give.
    bounded = (first.total_kib - th.low_kib * 9 // 8 - anon_kib + caches_kib) // 1024
    show.say("%d MiB charged, %d MiB of it anonymous (the apps: %d MiB of cache + their "
             "interpreters)" % (hs.memcg.usage_kib() // 1024, anon_kib // 1024,
                                caches_kib // 1024))
    if bounded < 1:
        raise DemoError("no room for a ramp: use fewer --apps or a smaller --cache-mib")
    show.say("ramp 1: %d MiB at %g MiB/s, %d MiB more than fits without the apps giving "
             "memory back" % (bounded, args.rate_mib_s,
                              bounded - (first.total_kib - anon_kib) // 1024))
    st.t0_ms = aio.ticks_ms()
    kills0 = hs.memcg.oom_kill_count()
    p1 = scenario.Progress()
    st.ramps.append(p1)
    ramp1 = hs.memcg.spawn(_ramp_argv(args.rate_mib_s, bounded), stdout=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    full = await _observing(coop, st, show, _until_full(ramp1, p1))
    if full:
        await _observing(coop, st, show, aio.sleep_ms(SETTLE_MS))
    phase1 = {"allocated_mib": p1.last(), "asked_apps": len(
        [a for a in st.apps() if a["compliance"]["asked"] > 0]), "trims": len(st.trims),
        "freed_by_apps_mib": st.measured_kib() // 1024,
        "claimed_by_apps_mib": sum(t["freed_kib"] for t in st.trims) // 1024,
        "oom_kills": hs.memcg.oom_kill_count() - kills0, "level": st.status.get("level"),
        "caches_left_mib": sum(coop.cache_kib.values()) // 1024}
    show.say("")
    show.say("ramp 1 done: %d MiB allocated, apps asked %d times, freed %d MiB (measured by "
             "the agent; they said %d MiB), OOM kills %d, level %s, caches left %d MiB"
             % (phase1["allocated_mib"], phase1["trims"], phase1["freed_by_apps_mib"],
                phase1["claimed_by_apps_mib"], phase1["oom_kills"], phase1["level"],
                phase1["caches_left_mib"]))
    show.say("ramp 2: past what the caches can give, %s" % (
        "until the OOM killer ends it" if args.until_oom else "stopped at CRITICAL"))
    show.say("")
    p2 = scenario.Progress()
    st.ramps.append(p2)
    kills1 = hs.memcg.oom_kill_count()
    ramp2 = hs.memcg.spawn(_ramp_argv(args.rate_mib_s, None), stdout=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, preexec_fn=_oom_first)

    def stop() -> bool:
        return not args.until_oom and st.level() >= CRITICAL

    stopped = await _observing(coop, st, show, scenario.follow(ramp2, p2, stop))
    while ramp2.poll() is None:
        await aio.sleep_ms(2)
    assert ramp2.stdout is not None
    ramp2.stdout.close()
    end = scenario.ChildEnd(ramp2.returncode, aio.ticks_ms(),
                            hs.memcg.oom_kill_count() - kills1, stopped)
    if end.oom_killed:
        end_text = "ramp 2 OOM-killed after %d MiB in all" % st.allocated()
    elif end.stopped:
        end_text = "ramp 2 stopped by the demo at CRITICAL after %d MiB in all" % st.allocated()
    else:
        end_text = "ramp 2 exited (status %d) after %d MiB" % (end.returncode, st.allocated())
    apps = [{"name": a["name"], "pid": a["pid"], **a["compliance"]} for a in st.apps()]
    return {"mode": "live", "apps": coop.n, "memcg": hs.path, "source": st.status.get("source"),
            "agent_pid": coop.agent.pid if coop.agent else None, "socket": coop.sock,
            "end": end_text, "end_s": round((end.end_ms - st.t0_ms) / 1000, 2),
            "oom_killed": end.oom_killed, "allocated_mib": st.allocated(),
            "absorbed": phase1, "freed_by_apps_mib": st.measured_kib() // 1024,
            "trims": st.trims, "app_compliance": apps, "events": show.events}


def _apps_summary(result: Dict[str, Any]) -> List[str]:
    ab = result["absorbed"]
    lines = ["  ramp 1   %d MiB allocated, %d trims of %d apps, freed by apps %d MiB, "
             "OOM kills %d" % (ab["allocated_mib"], ab["trims"], ab["asked_apps"],
                               ab["freed_by_apps_mib"], ab["oom_kills"])]
    for app in result["app_compliance"]:
        lines.append("    %-8s asked %2d times for %6d KiB, said %6d KiB, measured %6d KiB"
                     % (app["name"], app["asked"], app["asked_kib"], app["claimed_kib"],
                        app["measured_kib"]))
    lines.append("  in all   %d MiB allocated, freed by apps %d MiB"
                 % (result["allocated_mib"], result["freed_by_apps_mib"]))
    return lines


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def live(args: argparse.Namespace, show: Show) -> Dict[str, Any]:
    """Run the virtual handset for real.

    Returns: the summary dict.  Raises: memcg.MemcgError if the memcg
    cannot be made; KeyboardInterrupt on Ctrl-C/SIGTERM (after cleanup).
    """
    _header(show, args.memcg_mib, args.rate_mib_s)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        hs = scenario.Handset(args.memcg_mib)
        coop = Coop(hs, args.apps, args.cache_mib) if args.apps > 0 else None
        try:
            if coop is not None:
                result = aio.run(_coop_run(hs, coop, args, show))
            else:
                result = aio.run(_live_run(hs, args, show))
        finally:
            try:
                if coop is not None:
                    coop.close()
            finally:
                hs.close()
    finally:
        signal.signal(signal.SIGTERM, old)
    if coop is not None:
        show.say("agent and apps stopped, %s removed" % coop.tmp)
    show.say("memcg %s removed" % hs.path)
    for line in _summary_lines(show, result["end"], result["end_s"]):
        show.say(line)
    if coop is not None:
        for line in _apps_summary(result):
            show.say(line)
    return result


def _replay_mib(head: Dict[str, Any], t_ms: int) -> Optional[int]:
    """Return: the MiB allocated at ``t_ms`` by the recorded ramp, from its header."""
    start, rate = head.get("ramp_start_ms"), head.get("rate_mib_s")
    if not isinstance(start, int) or not isinstance(rate, (int, float)):
        return None
    most = head.get("alloc_mib_at_end", 1 << 30)
    return max(0, min(int((t_ms - start) * rate / 1000), int(most)))


def replay(path: str, why: str, show: Show) -> Dict[str, Any]:
    """Replay a recorded ramp through the monitor and print its timeline.

    Returns: the summary dict.  Raises: OSError, trace.TraceError.
    """
    with open(path) as f:
        first = f.readline()
        head: Dict[str, Any] = json.loads(first) if "memagent_trace" in first else {}
    readings = trace.load_trace(path)
    show.say("replaying %s: %s" % (os.path.basename(path), why))
    show.say("(recorded on kernel %s, %s source, %s)" % (
        head.get("kernel", "?"), head.get("source", "?"), head.get("recorded", "?")))
    limit_mib = readings[0].total_kib // 1024
    _header(show, limit_mib, float(head.get("rate_mib_s", 10)))
    t0 = int(head.get("ramp_start_ms", readings[0].t_ms))
    for note in trace.replay(readings):
        show.note(note, t0, _replay_mib(head, note.t_ms))
    end_ms = int(head.get("end_ms", readings[-1].t_ms))
    oom = bool(head.get("oom_killed"))
    end_text = ("OOM-killed after %s MiB" if oom else "recording ended after %s MiB") % (
        head.get("alloc_mib_at_end", "?"))
    for line in _summary_lines(show, end_text, (end_ms - t0) / 1000):
        show.say(line)
    return {"mode": "replay", "why": why, "trace": path, "end": end_text,
            "end_s": round((end_ms - t0) / 1000, 2), "oom_killed": oom,
            "events": show.events}


def why_not_live(args: argparse.Namespace) -> Optional[str]:
    """Return: why the demo must replay, or None if it can run live."""
    if args.replay or args.trace:
        return "replay asked for (--replay/--trace)"
    return memcg.available()


def main(args: argparse.Namespace) -> int:
    """Run the demo.  Returns: 0, 1 if it failed, 130 on Ctrl-C."""
    show = Show(quiet=bool(args.json))
    why = why_not_live(args)
    result: Dict[str, Any] = {}
    try:
        if why is None:
            try:
                result = live(args, show)
            except memcg.MemcgError as e:
                why = "cannot run live: %s" % e
        if why is not None:
            result = replay(args.trace or BUNDLED_TRACE, why, show)
    except KeyboardInterrupt:
        print("memagent demo: interrupted; what it started was stopped and the memcg removed",
              file=sys.stderr)
        return 130
    except (OSError, ValueError, DemoError) as e:
        print("memagent demo: %s" % e, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
