"""When kill_background may kill at LOW: the apps' trims first, then
``[kill_background] kill_at_low``.  Pure: the newest reading, the
thresholds, the newest trim event and the clock come in as arguments.
CRITICAL waits for none of this.  The same on MicroPython.
"""

try:
    from typing import Any, Dict, Optional
except ImportError:  # MicroPython
    pass


def newest_trims(current: "Optional[Dict[str, Any]]",
                 results: "Optional[Dict[str, Any]]") -> "Optional[Dict[str, Any]]":
    """Return: the newest trim event (a dict with ``freed_kib`` and an int
    ``t_ms``) among ``current`` and the earlier plugins' ``results``."""
    for result in (results or {}).values():
        if isinstance(result, dict) and isinstance(result.get("t_ms"), int) and \
                "freed_kib" in result and (current is None or result["t_ms"] >= current["t_ms"]):
            current = result
    return current


def trims_pay(event: "Optional[Dict[str, Any]]", now_ms: int, renotify_ms: int) -> bool:
    """Return: True if the newest trim ``event``, at most two reminders old,
    freed memory (the apps still have caches to give)."""
    if event is None:
        return False
    fresh = now_ms - event["t_ms"] <= 2 * renotify_ms + 1000
    return bool(fresh and event.get("freed_kib", 0) > 0)


def thrashing(reading: "Any", th: "Any", paying: bool) -> bool:
    """Return: True if ``reading`` shows PSI full at or above the thrash
    threshold while the apps' trims no longer free anything (``paying``).

    Why the trims: a streaming reader's page-cache churn (Daniel Spang's
    report in the mem_notify thread) keeps PSI full over 10% at LOW with
    nothing in danger; in the 128 MB guest the thrash rule alone killed
    three apps a run at LOW, each just after its trim (earlyoom: two)."""
    if reading is None or th is None:
        return False
    full = reading.psi_full_avg10
    return full is not None and full >= th.thrash_full_pct and not paying


def low_allowed(kill_at_low: str, reading: "Any", th: "Any", paying: bool,
                user_away: bool) -> bool:
    """Return: True if a kill at LOW may go now.  Trims first: never while
    they still free memory (``paying``).  Never with the memory above the
    LOW threshold: not on a lead-time forecast (with "always" the 64 MB
    handset day's first kill hit a cached app 0.4-0.5 s after its start,
    before it was asked to trim, 5 of 5 runs), nor on a thrash (PSI full's
    avg10 lags: the 128 MB day's second kill came 2 s after the growth had
    ended, with 23 MB available, in 2 of 3 runs, 2026-12-07; a thrash that
    goes on reaches CRITICAL through thrash_critical_pct).  Then
    ``kill_at_low``: "always"; or "idle" and the user away, or the domain
    thrashes (deferring then left a 64 MB thrash at LOW for over 60 s with
    no kill)."""
    if kill_at_low == "never":
        return False
    if th is not None and (paying or reading is not None and reading.avail_kib > th.low_kib):
        return False
    return kill_at_low == "always" or user_away or thrashing(reading, th, paying)
