"""The built-in plugin ``kill_background``: when trimming is not enough, kill
the least valuable background process, one at a time, safely.

Policy (operator's view: docs/kill.md): each level may reach down to a class
(``[kill_background] low_class``, ``critical_class``); LOW kills only after
the trims, and while the user is away unless ``kill_at_low`` says otherwise.
Candidates and their order come from :mod:`.victims` (registered apps by
class, others by oom_score_adj; lowest standing, least recently used,
largest), within the watched domain (the ``[agent] memcg``, if set).  The
kill is :mod:`.pidkill` (pidfd, SIGTERM, grace, SIGKILL, process_mrelease):
a recycled pid is never hit; a registered app is signalled through the
pidfd bound when it connected.

Pacing: on_pressure only starts one background task (the sequence) and
returns; while it runs, later notifications are only counted.  The sequence
kills one victim, waits for it to die, re-measures the domain
(``services.remeasure``), and stops once the level is back below the one that
started it, the deficit is covered (a CRITICAL sequence: the memory is above
CRITICAL by ``critical_margin_pct`` of the way to LOW), or ``max_kills`` were
made; it waits ``cooldown_ms`` between kills and after the sequence, except
at CRITICAL (the next victim goes once the last is dead and re-measured).
``dry_run`` (the default) records the victim it would pick, signals nothing,
once per choice and pressure episode.  The same on MicroPython.
"""

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.core.config import ConfigError
from memagent.core.levels import CRITICAL, LOW, Notification, deficit_kib, level_name
from memagent.core.logs import get_logger
from memagent.plugins.kill_background import lowrules, pidkill, victims
from memagent.plugins.kill_background.settings import SCHEMA, SECTION, Settings
from memagent.runtime.services import Services

__all__ = ["KillBackground", "Settings", "SECTION"]

log = get_logger("memagent.plugin.kill_background")

WATCH_MS = 100  # the re-measure period at CRITICAL after a kill met its margin
WATCH_FOR_MS = 10000
FRESH_MS = 200  # a reading younger than this needs no re-measure before a kill


class KillBackground:
    """Kills background processes on pressure (see the module docstring)."""

    name = "kill_background"
    config_schema = SCHEMA

    def __init__(self) -> None:
        self.services: Optional[Services] = None
        self.settings: Optional[Settings] = None
        self.unavailable: Optional[str] = None
        self._task: Optional[Any] = None
        self._quiet_until_ms: Optional[int] = None
        self.kills = self.dry_runs = self.skipped = self.sequences = 0
        self.busy = self.cooling = self.deferred = self.no_victim = self.dry_repeats = 0
        self.relieved = 0  # sequences the re-measure found no longer needed
        self.rewatched = 0  # kills after the watch at CRITICAL saw it fall again
        self.watching = False  # a sequence watches CRITICAL after a kill (no victim dying)
        self.last_victim: Optional[Dict[str, Any]] = None
        # The last dry-run choice (pid, level) of this pressure episode: the
        # same choice is recorded once, not at every reminder.
        self._last_dry: Optional[Tuple[int, int]] = None
        # The newest trim event a plugin before this one returned (a dict
        # with freed_kib and t_ms: release_caches' result), for the thrash rule.
        self._trims: Optional[Dict[str, Any]] = None
        self.last_pool: Optional[Tuple[int, List[int]]] = None  # the last full pick's

    async def on_start(self, services: Optional[Services] = None, **kwargs: Any) -> None:
        """Read ``[kill_background]``.  Settings that contradict each other
        are logged and leave the plugin unavailable (it then does nothing)."""
        self.services = services
        if services is None:
            self.unavailable = "no services"
            return
        try:
            self.settings = Settings(services.config)
        except ConfigError as e:
            self.unavailable = "bad config: %s" % e
            log.error("plugin %s: %s; it will kill nothing", self.name, e)
            return
        why = pidkill.supported()
        if why is not None and not self.settings.dry_run:
            self.unavailable = why
            log.error("plugin %s: cannot kill safely here: %s", self.name, why)
            return
        log.info("plugin %s: %s; LOW reaches %s (%s), CRITICAL reaches %s", self.name,
                 "dry run" if self.settings.dry_run else "armed", self.settings.low_class,
                 self.settings.kill_at_low, self.settings.critical_class)

    async def on_stop(self, **kwargs: Any) -> None:
        """Cancel a running sequence and wait for it to end."""
        task, self._task = self._task, None
        await aio.cancel_and_wait(task)

    async def on_level_change(self, level: int, **kwargs: Any) -> None:
        """Back to NORMAL: the pressure episode is over."""
        if level < LOW:
            self._last_dry = None

    @property
    def running(self) -> bool:
        """True while a kill sequence runs."""
        return self._task is not None and not self._task.done()

    async def on_pressure(self, level: int, notification: Notification, deficit_kib: int = 0,
                          results: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        """Start a kill sequence for ``notification`` unless one runs, the
        cooldown holds, or the policy defers it (LOW while the user is there).
        ``results``: what the plugins before this one returned; a trim event
        among them (``freed_kib`` and ``t_ms``) feeds the thrash rule."""
        self._note_trims(results)
        s = self.settings
        if s is None or self.services is None or self.unavailable or level < LOW:
            return
        now_ms = aio.ticks_ms()
        if self.running:
            self.busy += 1  # a victim is still dying: never a second kill meanwhile
            return
        if self._quiet_until_ms is not None and now_ms < self._quiet_until_ms \
                and level < CRITICAL:
            self.cooling += 1
            return
        if level < CRITICAL and not self._low_allowed(now_ms):
            self.deferred += 1
            return
        reason = "%s %s" % (level_name(level), notification.reason)
        deficit = deficit_kib or notification.deficit_kib
        self._task = aio.create_task(self._sequence(level, reason, deficit))

    def _low_allowed(self, now_ms: int) -> bool:
        """Return: True if a kill at LOW may go now (:func:`.lowrules.low_allowed`)."""
        s, services = self.settings, self.services
        assert s is not None and services is not None
        reading, th = self._now()
        paying = th is not None and lowrules.trims_pay(self._trims, now_ms, th.renotify_ms)
        away = s.kill_at_low == "idle" and bool(services.presence.user_away(now_ms))
        return lowrules.low_allowed(s.kill_at_low, reading, th, paying, away)

    def _note_trims(self, results: Optional[Dict[str, Any]]) -> None:
        """Keep the newest trim event among the earlier plugins' ``results``."""
        self._trims = lowrules.newest_trims(self._trims, results)

    def _now(self) -> Tuple[Optional[Any], Optional[Any]]:
        """Return: (the newest reading, the thresholds), Nones without services."""
        services = self.services
        return (None, None) if services is None else (services.reading, services.thresholds)

    async def _sequence(self, level: int, reason: str, deficit: int) -> None:
        """Kill one victim at a time until the pressure is gone (see the
        module docstring).  Errors are logged, never raised."""
        s, services = self.settings, self.services
        assert s is not None and services is not None
        self.sequences += 1
        freed_total = 0
        pool: Optional[Tuple[int, List[int]]] = None  # (reach, candidate pids)
        tried: Dict[int, str] = {}  # never twice in one sequence (EPERM, stuck, reused)
        try:
            if self._relieved_already(level):
                return
            for attempt in range(s.max_kills):
                if attempt and not self._critical_now():
                    await aio.sleep_ms(s.cooldown_ms)
                reach = max(level, services.level)
                # A sequence that escalated to CRITICAL stops as a CRITICAL one
                # (the 128 MB handset day: a LOW one at CRITICAL killed three in 420 ms).
                if attempt and (self._relieved(reach) or (
                        reach < CRITICAL and not self._low_allowed(aio.ticks_ms()))):
                    break
                # The sequence's first pick reads every process; the next ones
                # re-read only its candidates, at the same reach (in the 64 MB
                # thrash a full scan took 0.4-1.2 s before each kill).
                pool = pool if pool is not None and pool[0] == reach else None
                victim = self.pick(reach, tried, pool)
                pool = pool or self.last_pool
                if victim is None:
                    self.no_victim += 1
                    log.info("no eligible victim at %s", level_name(reach))
                    break
                if s.dry_run:
                    if self._last_dry == (victim.pid, reach):
                        self.dry_repeats += 1
                    else:
                        self._last_dry = (victim.pid, reach)
                        self._record(victim, reach, reason, None, None, dry_run=True)
                    break
                entry = await self.execute(victim, reach, reason)
                tried[victim.pid] = "tried in this sequence"
                freed_total += max(entry.get("freed_kib") or 0, 0)
                if freed_total >= deficit or self._relieved(reach):
                    if reach < CRITICAL or not await self._watch_critical():
                        break
                    freed_total, deficit = 0, self._deficit_now()
        except aio.CancelledError:
            raise
        except Exception as e:  # the agent must outlive a bug here
            log.error("plugin %s: kill sequence failed: %s: %s", self.name,
                      type(e).__name__, e)
        finally:
            self._quiet_until_ms = aio.ticks_ms() + s.cooldown_ms

    async def _watch_critical(self) -> bool:
        """After a CRITICAL kill met its margin, re-measure every WATCH_MS
        while the monitor stays at CRITICAL, for at most WATCH_FOR_MS.

        Returns: True when the memory is at CRITICAL again (the next kill
        goes at once), False when the level left CRITICAL or the time ran
        out.  Why: the level stays CRITICAL through its hysteresis, so a
        ramp that crosses the threshold again makes no new notification,
        only a reminder up to renotify_ms (2 s) later.  In the 128 MB kill
        bench a 10 MiB/s ramp reached the kernel's OOM killer in that gap
        (1 run of 3).  The wakeups happen only at CRITICAL, never while calm."""
        services = self.services
        assert services is not None
        deadline = aio.ticks_ms() + WATCH_FOR_MS
        self.watching = True
        try:
            while services.level >= CRITICAL and aio.ticks_ms() < deadline:
                await aio.sleep_ms(WATCH_MS)
                reading = services.remeasure("critical watch")
                th = services.thresholds
                if reading is None or th is None:
                    return False
                if reading.avail_kib <= th.critical_kib:
                    self.rewatched += 1
                    return True
            return False
        finally:
            self.watching = False

    def _deficit_now(self) -> int:
        """Return: the deficit to LOW at the newest reading."""
        reading, th = self._now()
        if reading is None or th is None:
            return 1
        return deficit_kib(reading.avail_kib, th.low_kib)

    def _relieved_already(self, level: int) -> bool:
        """Re-measure before the first kill.  Returns: True (counted in
        ``relieved``) if the pressure is already over.

        Why: trims, a victim's death or the kernel can end the pressure
        between the notification and the kill.  In the 128 MB handset day
        (then with release_caches' trims awaited before this plugin at
        CRITICAL too) they lifted the memory from 10,448 to 24,204 KiB, and
        a kill still went 200 ms later on the notification's old figure."""
        services = self.services
        assert services is not None
        # A reading this fresh is the figure already: a /proc read costs tens
        # of ms on the emulated ARM guest, where a cold first kill lost its
        # race with the kernel by ~150 ms (kill bench, 2026-11-26).
        last = services.reading
        fresh = last is not None and aio.ticks_ms() - last.t_ms <= FRESH_MS
        if not fresh and services.remeasure("before kill") is None:
            return False
        now = services.level
        # At LOW only a level already back to NORMAL counts: a lead-time LOW
        # is above the threshold by design, and its kill is meant to go early.
        over = self._relieved(CRITICAL) if max(level, now) >= CRITICAL else now < level
        if not over:
            return False
        self.relieved += 1
        return True

    def _critical_now(self) -> bool:
        """Return: True if the monitor is at CRITICAL.  The cooldown does not
        hold then: the last victim is dead and re-measured, and waiting
        let a 10 MiB/s ramp reach the kernel's OOM killer in the 128 MB ARM
        guest (bench/kill.py: with a 2000 ms cooldown the ramp was back at
        CRITICAL 1.3-1.6 s after the first kill, and the kernel killed in
        every run)."""
        return self.services is not None and self.services.level >= CRITICAL

    def _relieved(self, level: int) -> bool:
        """Return: True once the level is below ``level``, or the newest
        reading ends a sequence that started at ``level`` (Settings.covered)."""
        reading, th = self._now()
        if reading is None or th is None or self.settings is None or self.services is None:
            return False
        return self.services.level < level or self.settings.covered(reading.avail_kib, th, level)

    def scope_pids(self) -> Optional[List[int]]:
        """Return: the pids of the watched memcg (and its children), or None
        for the whole system.  Raises: OSError if the memcg is gone."""
        assert self.services is not None
        memcg = self.services.memcg
        return victims.memcg_pids(memcg) if memcg else None

    def pick(self, level: int, exclude: Optional[Dict[int, str]] = None,
             pool: Optional[Tuple[int, List[int]]] = None) -> Optional[victims.Candidate]:
        """Return: the victim for ``level`` in the watched domain now (never
        a pid of ``exclude``), or None (nothing eligible, or the scope cannot
        be read: logged).  With ``pool`` (level, pids) from an earlier pick,
        only those pids are read again; without, every process is, and
        ``self.last_pool`` becomes the candidates found."""
        s, services = self.settings, self.services
        assert s is not None and services is not None
        try:
            pids = pool[1] if pool is not None else self.scope_pids()
        except OSError as e:
            log.warning("plugin %s: cannot list the memcg's processes: %s", self.name, e)
            return None
        found: List[victims.Candidate] = []
        victim = victims.pick(services.proc_root, pids,
                              [(a.pid, a.cls, a.last_active_ms, a.started, a.process)
                               for a in services.apps()], services.foreground_pid,
                              s.reach_rank(level), s.protect, exclude, found)
        if pool is None:
            self.last_pool = (level, [c.pid for c in found])
        return victim

    async def execute(self, victim: victims.Candidate, level: int,
                      reason: str) -> Dict[str, Any]:
        """Kill ``victim`` (pidkill), measuring the domain before and after.
        Returns: the event-log entry (see :meth:`_record`)."""
        s, services = self.settings, self.services
        assert s is not None and services is not None
        # The newest reading is the notification's or the last victim's
        # re-measure: fresh, and one /proc read less before the SIGTERM.
        before = services.reading
        # The identity check reads the real /proc whatever [agent] proc_root
        # says: pidfds name real processes, and a victim scanned from a test's
        # /proc tree then never matches a real one (skipped as "reused").
        # A registered app is signalled through the pidfd bound when it
        # connected (victim.process), never through its pid.
        result = await pidkill.kill(victim.pid, victim.started, s.grace_for(level), s.wait_ms,
                                    s.mrelease, process=victim.process)
        freed = None
        if result.signalled:
            after = services.remeasure("killed")
            if before is not None and after is not None:
                freed = after.avail_kib - before.avail_kib
        return self._record(victim, level, reason, result, freed, dry_run=False)

    def _record(self, victim: victims.Candidate, level: int, reason: str,
                result: Optional[pidkill.KillResult], freed_kib: Optional[int],
                dry_run: bool) -> Dict[str, Any]:
        """Count and log one choice in the event log.  Returns: the entry."""
        assert self.services is not None
        if dry_run:
            self.dry_runs += 1
        elif result is not None and result.signalled:
            self.kills += 1
        else:
            self.skipped += 1
        entry: Dict[str, Any] = self.services.record_action(
            "kill", pid=victim.pid, name=victim.comm, cls=victim.cls, reason=reason,
            level=level_name(level), rss_kib=victim.rss_kib, freed_kib=freed_kib,
            ms=result.ms if result else 0, sigkill=bool(result and result.sigkill),
            dry_run=dry_run, outcome=result.outcome if result else "dry-run",
            mrelease=result.mrelease if result else None, registered=victim.registered,
            adj=victim.adj)
        self.last_victim = entry
        return entry

    def status(self) -> Dict[str, Any]:
        """Return: the counters, the last victim and whether a sequence runs."""
        return {"dry_run": self.settings.dry_run if self.settings else None,
                "running": self.running, "sequences": self.sequences, "kills": self.kills,
                "dry_run_choices": self.dry_runs, "dry_run_repeats": self.dry_repeats,
                "skipped": self.skipped,
                "busy": self.busy, "cooling": self.cooling, "deferred": self.deferred,
                "no_victim": self.no_victim, "relieved": self.relieved,
                "rewatched": self.rewatched, "watching": self.watching,
                "last_victim": self.last_victim}
