"""The fair trim scheduler's closed loop on pure data, for the fairness
bench and the tests: :func:`run_event` plays one pressure event the way
``release_caches`` does on a live agent (ask a round, wait its deadline,
measure, ask more while a deficit remains), with the apps and the
measurement simulated by a callback.  Not part of the agent: devices never
need it.
"""

from memagent.plugins.release_caches.scheduler import FairScheduler

try:
    from typing import Any, Callable, Dict
except ImportError:  # MicroPython: tests/test_fairness.py runs this there too
    pass


class EventStats:
    """The outcome of one pressure event under :func:`run_event`."""

    __slots__ = ("deficit_kib", "rounds", "woken", "asked_kib", "freed_kib", "end_ms")

    def __init__(self, deficit_kib: int) -> None:
        self.deficit_kib = deficit_kib
        self.rounds = 0
        self.woken = 0          # apps asked (each at most once per event)
        self.asked_kib = 0
        self.freed_kib = 0
        self.end_ms = 0

    def covered(self) -> bool:
        """Return: True if the apps freed at least the deficit."""
        return self.freed_kib >= self.deficit_kib

    def over_freeing(self) -> float:
        """Return: freed / deficit (1.0 is exact; 0.0 for no deficit)."""
        return self.freed_kib / self.deficit_kib if self.deficit_kib > 0 else 0.0

    def as_dict(self) -> "Dict[str, Any]":
        """Return: a JSON-ready dict."""
        return {k: getattr(self, k) for k in self.__slots__}


def run_event(scheduler: FairScheduler, deficit_kib: int, level: int, now_ms: int,
              respond: "Callable[[int, int], int]", max_rounds: int = 4) -> EventStats:
    """The agent's closed loop on pure data: ask a round, wait its deadline,
    measure (``respond(app_id, target_kib) -> freed_kib`` simulates the app
    and the measurement), and ask more apps only while a deficit remains,
    for at most ``max_rounds`` rounds.
    Returns: the event's EventStats.  Raises: whatever ``respond`` raises."""
    stats = EventStats(deficit_kib)
    scheduler.begin_event(now_ms)
    t_ms = now_ms
    while stats.freed_kib < deficit_kib and stats.rounds < max_rounds:
        plan = scheduler.plan_round(deficit_kib - stats.freed_kib, level, t_ms)
        if not plan:
            break
        stats.rounds += 1
        t_ms += scheduler.deadline_ms(level)
        for app_id, target_kib in plan:
            freed_kib = max(int(respond(app_id, target_kib)), 0)
            scheduler.record_result(app_id, target_kib, freed_kib, t_ms)
            stats.woken += 1
            stats.asked_kib += target_kib
            stats.freed_kib += freed_kib
    stats.end_ms = t_ms
    return stats
