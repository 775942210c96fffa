"""``memagent demo`` with cooperative apps (``--apps N``, the default).

``memagent run`` runs as a real process outside the virtual handset's memcg
and N cache apps inside it hold caches they give back when the agent asks.
Ramp 1 allocates what fits only if the apps free their caches; ramp 2 goes
past that, to CRITICAL (or the OOM kill with ``--until-oom``).  The memcg,
the signals and the common summary are :func:`memagent.demo.run.live`'s.
"""

import argparse
import os
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from .. import aio
from ..core.levels import CRITICAL, default_thresholds
from ..ipc.control import query
from ..sense import domains
from . import scenario
from .coop import Coop
from .coopstate import CoopState, action_line, app_line, kills_dry_run, ramp_totals
from .show import RANK_RISE, RANK_TICK, TICK_MS, DemoError, Show

POLL_MS = 100  # the apps' stdout, the agent's events and status
START_TIMEOUT_MS = 15000  # the agent's socket, the apps' registrations
SETTLE_MS = 1500  # after the bounded ramp: let the last trims finish
HOLD_MS = 500  # timeline lines wait this long for older ones from slower sources


async def _observe(coop: Coop, st: CoopState, show: Show) -> None:
    """Once: the agent's new notifications and actions, the apps' trims, the
    status, a tick; then print the timeline lines that are due."""
    coop.check_agent()
    notes, actions = coop.new_events()
    for note in notes:
        show.note(note, st.t0_ms, st.allocated(note.t_ms) if st.ramps else None)
    for action in actions:
        action_line(st, show, action)
    for name, lines in coop.app_lines():
        for line in lines:
            app_line(coop, st, show, name, line)
    try:
        reply = await query(coop.sock, timeout_ms=2000)
    except (OSError, TimeoutError, ValueError):
        reply = {}  # busy or just gone: the next poll asks again
    st.status = reply.get("status") or st.status
    now = aio.ticks_ms()
    reading = st.status.get("reading")
    if reply and st.ramps and now >= st.next_tick_ms and reading:
        st.next_tick_ms = now + TICK_MS
        show.line(now, "state", "%s: %d MiB allocated, available %d MiB (%d%%), app caches "
                  "%d MiB" % (st.status.get("level"), st.allocated(),
                              reading["avail_kib"] // 1024,
                              100 * reading["avail_kib"] // max(reading["total_kib"], 1),
                              sum(coop.cache_kib.values()) // 1024), RANK_TICK)
    show.flush(now)


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
    """Return: the loadgen argv of an anonymous ramp (held at ``max_mib`` if given)."""
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


async def _start(hs: scenario.Handset, coop: Coop, st: CoopState, show: Show) -> Tuple[int, int]:
    """Fill the page cache, start the apps and the agent.  Returns: (the MiB
    ramp 1 allocates: what fits only if the apps give their caches back, how
    much more that is than fits without them).
    Raises: DemoError if something does not start, or there is no room."""
    t = aio.ticks_ms()
    await hs.fill_page_cache()
    show.say("page cache filled in %.1f s: %d MiB charged to %s"
             % ((aio.ticks_ms() - t) / 1000, hs.memcg.usage_kib() // 1024, hs.path))
    # The apps fill their caches before the agent watches: that fall is no threat.
    coop.start_apps()
    await _wait_filled(coop)
    coop.start_agent()
    await _wait_ready(coop, st, show)
    st.names.update({int(a["pid"]): str(a["name"]) for a in st.apps()})
    if not kills_dry_run(st.status):
        raise DemoError("the agent's kill_background is not in dry run: the demo never kills")
    show.say("agent pid %d (outside the memcg) on %s; %d apps registered, each holding "
             "%d MiB of cache: %s" % (coop.agent.pid if coop.agent else 0, coop.sock, coop.n,
                                      coop.cache_mib, ", ".join(
                                          "%s (pid %d)" % (a["name"], a["pid"])
                                          for a in st.apps())))
    first = domains.MemcgDomain(hs.path).read(aio.ticks_ms(), "demo")
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
    return bounded, bounded - (first.total_kib - anon_kib) // 1024


async def _ramp1(hs: scenario.Handset, coop: Coop, st: CoopState, show: Show,
                 bounded: Tuple[int, int], rate_mib_s: float) -> Dict[str, Any]:
    """Ramp 1: ``bounded[0]`` MiB, absorbed by the apps.  Returns: its figures."""
    st.t0_ms = aio.ticks_ms()
    show.start(st.t0_ms, HOLD_MS)
    kills0 = hs.memcg.oom_kill_count()
    p1 = scenario.Progress()
    st.start_ramp(st.t0_ms, p1)
    show.line(st.t0_ms, "ramp 1", "starts: %d MiB at %g MiB/s, %d MiB more than fits "
              "without the apps giving memory back" % (bounded[0], rate_mib_s, bounded[1]),
              RANK_RISE)
    ramp1 = hs.memcg.spawn(_ramp_argv(rate_mib_s, bounded[0]), stdout=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    st.names[ramp1.pid] = "ramp 1's allocator"
    full = await _observing(coop, st, show, _until_full(ramp1, p1))
    if full:
        await _observing(coop, st, show, aio.sleep_ms(SETTLE_MS))
    phase1 = ramp_totals(st, 1)
    phase1.update({"oom_kills": hs.memcg.oom_kill_count() - kills0,
                   "level": st.status.get("level"),
                   "caches_left_mib": sum(coop.cache_kib.values()) // 1024})
    show.line(aio.ticks_ms(), "ramp 1", "done: %d MiB allocated, %d trims, the apps freed "
              "%d MiB (measured by the agent; they said %d MiB), OOM kills %d, level %s, "
              "caches left %d MiB" % (phase1["allocated_mib"], phase1["trims"],
                                      phase1["freed_by_apps_mib"],
                                      phase1["claimed_by_apps_mib"], phase1["oom_kills"],
                                      phase1["level"], phase1["caches_left_mib"]), RANK_TICK)
    show.flush()
    return phase1


async def _ramp2(hs: scenario.Handset, coop: Coop, st: CoopState, show: Show,
                 rate_mib_s: float, until_oom: bool) -> scenario.ChildEnd:
    """Ramp 2: past what the caches give, to CRITICAL (or the OOM kill with
    ``until_oom``).  Returns: how it ended."""
    await _observe(coop, st, show)  # a fresh status: the apps' counters at the boundary
    p2 = scenario.Progress()
    st.start_ramp(aio.ticks_ms(), p2)
    show.line(st.ramp_start_ms[-1], "ramp 2", "starts: past what the caches can give, %s" % (
        "until the OOM killer ends it" if until_oom else "stopped at CRITICAL"), RANK_RISE)
    kills1 = hs.memcg.oom_kill_count()
    ramp2 = hs.memcg.spawn(_ramp_argv(rate_mib_s, None), stdout=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, preexec_fn=_oom_first)
    st.names[ramp2.pid] = "ramp 2's allocator"

    def stop() -> bool:
        # At CRITICAL under its threshold in ramp 2: a CRITICAL that ramp 1's
        # end left held (by hysteresis, above the threshold) does not count.
        reading = st.status.get("reading") or {}
        critical_kib = (st.status.get("thresholds") or {}).get("critical_kib", 0)
        if until_oom or st.level() < CRITICAL or \
                reading.get("t_ms", 0) < st.ramp_start_ms[-1] or \
                reading.get("avail_kib", critical_kib + 1) > critical_kib:
            return False
        st.stopped_ms = aio.ticks_ms()  # the end's line: before the recovery it brings
        return True

    stopped = await _observing(coop, st, show, scenario.follow(ramp2, p2, stop))
    while ramp2.poll() is None:
        await aio.sleep_ms(2)
    assert ramp2.stdout is not None
    ramp2.stdout.close()
    return scenario.ChildEnd(ramp2.returncode, aio.ticks_ms(),
                             hs.memcg.oom_kill_count() - kills1, stopped)


async def coop_run(hs: scenario.Handset, coop: Coop, args: argparse.Namespace,
                   show: Show) -> Dict[str, Any]:
    """The cooperative run in ``hs``: fill the page cache, start the apps and
    the agent, then ramp 1 (bounded: absorbed by the apps giving memory
    back) and ramp 2 (past it, to CRITICAL or the OOM kill).

    Returns: the summary dict.  Raises: DemoError if the agent or an app
    does not start, or there is no room for ramp 1.
    """
    st = CoopState(aio.ticks_ms())
    bounded = await _start(hs, coop, st, show)
    phase1 = await _ramp1(hs, coop, st, show, bounded, args.rate_mib_s)
    end = await _ramp2(hs, coop, st, show, args.rate_mib_s, args.until_oom)
    if end.oom_killed:
        end_text = "ramp 2 OOM-killed after %d MiB in all" % st.allocated()
    elif end.stopped:
        end_text = "ramp 2 stopped by the demo at CRITICAL after %d MiB in all" % st.allocated()
    else:
        end_text = "ramp 2 exited (status %d) after %d MiB" % (end.returncode, st.allocated())
    phase2 = ramp_totals(st, 2)
    phase2["oom_kills"] = end.oom_kills
    show.line(st.stopped_ms or end.end_ms, "ramp 2", "ends: %s" % end_text[len("ramp 2 "):],
              RANK_RISE)
    show.flush()
    apps = [{"name": a["name"], "pid": a["pid"], **a["compliance"]} for a in st.apps()]
    return {"mode": "live", "apps": coop.n, "memcg": hs.path, "source": st.status.get("source"),
            "agent_pid": coop.agent.pid if coop.agent else None, "socket": coop.sock,
            "end": end_text, "end_s": round((end.end_ms - st.t0_ms) / 1000, 2),
            "oom_killed": end.oom_killed, "allocated_mib": st.allocated(),
            "absorbed": phase1, "ramps": [phase1, phase2],
            "freed_by_apps_mib": st.measured_kib() // 1024, "trims": st.trims,
            "kill_choices": st.kills, "kills_dry_run": kills_dry_run(st.status),
            "app_compliance": apps,
            "events": show.events, "timeline": show.timeline.lines}
