"""The built-in plugin ``release_caches``: ask registered apps to free their
caches, fairly, in a closed loop, and measure what they really freed.

On each LOW or CRITICAL notification it takes the deficit the monitor
computed (what must be freed to get back above LOW, plus a margin) and runs rounds
of the fair trim scheduler (:mod:`.scheduler`): a bounded number of apps per
round, asked through ``services.trim``, each answer audited against the
app's real footprint.  It stops as soon as the
deficit is covered, when no app is left to ask, or when its time budget (kept
under the dispatcher's hook timeout) runs out.  At LOW the dispatcher waits
for the event; at CRITICAL the event runs beside the plugins after this one
(kill_background), which must not wait for the apps' answers.  The hook
returns the newest finished event (a dict with ``freed_kib`` and ``t_ms``):
the plugins after it see it in ``results``, and kill_background reads it.

At CRITICAL, when the apps could not cover the deficit, and only if the
config allows it (``[release_caches] drop_caches`` / ``compact_memory``), it
writes the kernel knobs ``/proc/sys/vm/drop_caches`` (1: clean page cache)
and ``/proc/sys/vm/compact_memory``, as a last resort before any kill.
"""

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.core.config import Key
from memagent.core.levels import CRITICAL, LOW, Notification, level_name
from memagent.core.logs import get_logger
from memagent.plugins.release_caches.scheduler import FairScheduler
from memagent.runtime.services import AppView, Services

log = get_logger("memagent.plugin.release_caches")

BUDGET_MS = 1800  # under the dispatcher's default 2000 ms hook timeout
# While a LOW round waits for its apps, how often it looks for an escalation.
ESCALATION_CHECK_MS = 50


class ReleaseCaches:
    """Trims registered apps on pressure (see the module docstring)."""

    name = "release_caches"
    # The kernel knobs are last resorts, off by default: drop_caches empties
    # the whole machine's clean page cache, compact_memory costs CPU.
    config_schema = {
        "fanout": Key("int", "3", low=1, doc="apps asked per round"),
        "drop_caches": Key("bool", "no", doc="at CRITICAL, after the apps: write "
                           "/proc/sys/vm/drop_caches"),
        "compact_memory": Key("bool", "no", doc="at CRITICAL, after the apps: write "
                              "/proc/sys/vm/compact_memory"),
    }

    def __init__(self, fanout: int = 3, budget_ms: int = BUDGET_MS) -> None:
        self.scheduler = FairScheduler(fanout=fanout)
        self.budget_ms = budget_ms
        self.services: Optional[Services] = None
        self.events = 0
        self.busy = 0  # CRITICAL notes that came while a CRITICAL event ran
        self.escalated = 0  # LOW rounds left to finish alone when CRITICAL came
        self.late_answers = 0  # answers of those rounds, recorded when they came
        self.last_event: Optional[Dict[str, Any]] = None
        self._task: Optional[Any] = None
        self._late: Optional[Any] = None  # a LOW round left to finish alone

    async def on_start(self, services: Optional[Services] = None, **kwargs: Any) -> None:
        """Keep the services (the apps, the trim path, the config)."""
        self.services = services
        if services is not None:
            self.scheduler.fanout = services.config.get_int("fanout")

    def _last_resort(self) -> List[str]:
        """Write the kernel knobs the config allows.  Returns: what was done
        (or why not), one line each."""
        services = self.services
        assert services is not None
        done = []
        for key, knob, value in (("drop_caches", "drop_caches", "1"),
                                 ("compact_memory", "compact_memory", "1")):
            if not services.config.get_bool(key):
                continue
            path = services.proc_root + "/sys/vm/" + knob
            try:
                with open(path, "w") as f:
                    f.write(value + "\n")
                done.append("wrote %s to %s" % (value, path))
            except OSError as e:
                done.append("%s: %s" % (path, e.strerror or e))
        return done

    def _sync_apps(self, services: Services) -> Dict[int, AppView]:
        """Mirror the registered apps into the scheduler.  Returns: app_id -> app."""
        apps = {app.app_id: app for app in services.apps()}
        for app_id in self.scheduler.ids():
            if app_id not in apps:
                self.scheduler.remove(app_id)
        known = set(self.scheduler.ids())
        for app_id, app in apps.items():
            if app_id in known:
                self.scheduler.set_class(app_id, app.cls)
                # Each event starts from the app's own word: the scheduler
                # lowers an estimate by what was freed, and caches regrow
                # (measured by bench/trim_latency.py: apps with an estimate
                # stopped being asked after 7 of 30 events without this).
                self.scheduler.set_estimate(app_id, app.estimate_kib)
            else:
                self.scheduler.register(app_id, app.cls, app.estimate_kib)
        return apps

    async def on_pressure(self, level: int, notification: Notification,
                          deficit_kib: int = 0, **kwargs: Any) -> Optional[Dict[str, Any]]:
        """Run one trim event for ``notification``: awaited at LOW, so that
        later plugins see its result; at CRITICAL started as a background
        task (one at a time) and not awaited.

        Returns: the newest finished trim event (at LOW this one's), or None
        before the first: ``deficit_kib``, ``freed_kib``, ``asked``, ``ms``,
        ``t_ms``, and at CRITICAL maybe ``last_resort``.

        Why not at CRITICAL: the plugins after this one (kill_background)
        would wait for the apps' answers.  In the 128 MB handset day the
        answers came about 400 ms after the CRITICAL crossing, and the kernel
        OOM-killed an app first, in 2 of 3 runs."""
        services = self.services
        if services is None or level < LOW:
            return None
        apps = self._sync_apps(services)
        if not apps and level < CRITICAL:
            return self.last_event
        deficit = deficit_kib or notification.deficit_kib
        if level < CRITICAL:
            await self._run_event(apps, level, deficit)
        elif any(t is not None and not t.done() for t in (self._task, self._late)):
            self.busy += 1  # the apps are being asked already
        else:
            self._task = aio.create_task(self._run_event(apps, level, deficit))
        return self.last_event

    async def _run_event(self, apps: Dict[int, AppView], level: int, deficit: int) -> None:
        """One trim event, then the last resorts at CRITICAL if it fell short."""
        event = await self._event(apps, level, deficit)
        if level >= CRITICAL and event["freed_kib"] < deficit:
            event["last_resort"] = self._last_resort()
        self.last_event = event
        self.events += 1
        log.info("trim event: %s", event)
        if self.services is not None and event["asked"]:
            self.services.record_action(
                "trim", level=level_name(level), apps=len({a[0] for a in event["asked"]}),
                asks=len(event["asked"]), deficit_kib=deficit, freed_kib=event["freed_kib"],
                ms=event["ms"], escalated=bool(event.get("escalated")))

    async def on_stop(self, **kwargs: Any) -> None:
        """Cancel a CRITICAL trim event, or a LOW round, still running."""
        for task in (self._task, self._late):
            await aio.cancel_and_wait(task)
        self._task = self._late = None

    async def _ask(self, services: Services, asks: List[Tuple[AppView, int]], level: int,
                   deadline: int) -> Optional[List[Any]]:
        """Ask each (app, target) of ``asks`` at once.  Returns: the trim
        results, in order; or, at LOW, None once the monitor is at CRITICAL
        before they all came: the round then finishes alone, and its answers
        go to the scheduler when they come (``late_answers``).

        Why: the dispatcher awaits this hook at LOW, and a CRITICAL that came
        meanwhile waited for the slowest app.  In the 64 MB handset day the
        thrashing apps took 0.9-1.5 s to answer a LOW round, and the first
        kill came 1.3-1.5 s after CRITICAL for that alone (2026-12-07)."""
        box: Dict[str, Any] = {"results": None, "late": False}
        done = aio.Event()

        async def ask_all() -> None:
            box["results"] = await aio.gather(*(services.trim(app, level, target, deadline)
                                                for app, target in asks))
            done.set()
            if box["late"]:
                self._record_round(asks, box["results"])
                self.late_answers += len(asks)

        task = aio.create_task(ask_all())
        try:
            if level >= CRITICAL:
                await done.wait()
            while not done.is_set():
                if services.level >= CRITICAL:
                    box["late"], self._late = True, task
                    self.escalated += 1
                    return None
                await aio.sleep_ms(ESCALATION_CHECK_MS)
        except aio.CancelledError:
            task.cancel()
            raise
        results: Optional[List[Any]] = box["results"]
        return results

    def _record_round(self, asks: List[Tuple[AppView, int]], results: List[Any]) -> int:
        """Give the scheduler each app's measured answer.  Returns: the KiB freed."""
        freed_kib = 0
        for (app, target), result in zip(asks, results):
            freed = max(result.measured_kib or 0, 0)
            self.scheduler.record_result(app.app_id, target, freed, aio.ticks_ms())
            freed_kib += freed
        return freed_kib

    async def _event(self, apps: Dict[int, AppView], level: int,
                     deficit: int) -> Dict[str, Any]:
        services = self.services
        assert services is not None
        start_ms = aio.ticks_ms()
        self.scheduler.begin_event(start_ms)
        asked: List[Tuple[int, int, Optional[int]]] = []
        left = deficit
        deadline = self.scheduler.deadline_ms(level)
        while left > 0 and aio.ticks_ms() - start_ms + deadline <= self.budget_ms:
            asks = [(apps[app_id], target)
                    for app_id, target in self.scheduler.plan_round(left, level, aio.ticks_ms())
                    if app_id in apps]
            if not asks:
                break
            results = await self._ask(services, asks, level, deadline)
            if results is None:  # CRITICAL came: the round finishes alone
                return self._summary(deficit, left, asked, start_ms, escalated=True)
            left -= self._record_round(asks, results)
            asked += [(app.app_id, target, result.measured_kib)
                      for (app, target), result in zip(asks, results)]
        return self._summary(deficit, left, asked, start_ms)

    @staticmethod
    def _summary(deficit: int, left: int, asked: List[Tuple[int, int, Optional[int]]],
                 start_ms: int, escalated: bool = False) -> Dict[str, Any]:
        """Return: a trim event's record (``escalated``: a LOW event cut
        short by CRITICAL, its last round still out)."""
        event = {"deficit_kib": deficit, "freed_kib": deficit - left, "asked": asked,
                 "ms": aio.ticks_ms() - start_ms, "t_ms": start_ms}
        if escalated:
            event["escalated"] = True
        return event
