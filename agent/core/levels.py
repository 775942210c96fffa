"""Pressure levels: fuse readings into NORMAL, LOW and CRITICAL.

The rules, from the /dev/mem_notify thread (shared/seeds):

* **Available memory decides**, and it counts page cache that reclaim can
  take back, so reclaim of page cache alone with plenty left is not pressure
  (Daniel Spang's report: the v4 patch fired after 90-110 MB allocated on a
  900 MB box full of cache).  A kernel event (PSI trigger, mem_notify,
  critical vmpressure, memcg max) counts only once available memory is in the
  hysteresis band, below ``recover_kib``.
* **Lead time**: from the fill rate over the last ``rate_window_ms``, the
  time left before exhaustion; LOW comes early when it drops under
  ``lead_ms``, so something can still be saved on swapless boards, where the
  kernel's own signals come in the same instant as the OOM kill.
* **Hysteresis**: out of trouble only when available memory climbs back past
  about twice the threshold (the patch's ``(pages_high+lowmem_reserve)*2``)
  *and* the kernel has reported no shortage (nor thrashing) for ``quiet_ms``:
  the patch's other rule, "memory pressure decreases".
* **Rate limit**: while a level holds, it is notified again at most every
  ``renotify_ms``; escalation is never delayed.

Pure logic on the readings' own timestamps: the same trace gives the same
timeline, on CPython or MicroPython.
"""

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

from .reading import Reading

NORMAL = 0
LOW = 1
CRITICAL = 2
LEVEL_NAMES = ("NORMAL", "LOW", "CRITICAL")

# Events that mean the kernel itself sees a shortage (not just reclaim).
KERNEL_SHORTAGE_EVENTS = ("mem_notify", "psi", "vmpressure:critical", "events:max",
                          "events:oom", "events:oom_kill")


def level_name(level: int) -> str:
    """Return: "NORMAL", "LOW" or "CRITICAL".  Raises: IndexError for others."""
    return LEVEL_NAMES[level]


def level_from_name(name: str) -> int:
    """Return: the level for a (case-insensitive) name.  Raises: ValueError."""
    upper = name.upper()
    for level, known in enumerate(LEVEL_NAMES):
        if known == upper:
            return level
    raise ValueError("unknown level %r (NORMAL, LOW, CRITICAL)" % name)


class Thresholds:
    """Where the levels start and end, in KiB and milliseconds.

    Build with :func:`default_thresholds` for a domain size; a board profile
    or the config overrides single fields.
    """

    def __init__(self, low_kib: int, critical_kib: int,
                 recover_kib: "Optional[int]" = None,
                 critical_recover_kib: "Optional[int]" = None,
                 lead_ms: int = 2000, renotify_ms: int = 2000,
                 rate_window_ms: int = 2000, active_hold_ms: int = 2000,
                 thrash_full_pct: float = 10.0, thrash_critical_pct: float = 40.0,
                 quiet_ms: int = 5000, remind_ms: int = 5000,
                 total_kib: "Optional[int]" = None) -> None:
        if not 0 < critical_kib < low_kib:
            raise ValueError("need 0 < critical_kib (%d) < low_kib (%d)"
                             % (critical_kib, low_kib))
        cap = (low_kib + total_kib) // 2 if total_kib else 2 * low_kib
        self.low_kib = low_kib
        self.critical_kib = critical_kib
        self.recover_kib = recover_kib if recover_kib is not None else min(2 * low_kib, cap)
        self.critical_recover_kib = (critical_recover_kib if critical_recover_kib is not None
                                     else min(2 * critical_kib, low_kib))
        if self.recover_kib < low_kib or self.critical_recover_kib < critical_kib:
            raise ValueError("recover thresholds must not be below the enter thresholds")
        self.lead_ms = lead_ms
        self.renotify_ms = renotify_ms
        self.rate_window_ms = rate_window_ms
        self.active_hold_ms = active_hold_ms
        self.thrash_full_pct = thrash_full_pct
        self.thrash_critical_pct = thrash_critical_pct
        self.quiet_ms = quiet_ms
        # The longest gap between notifications while a level above NORMAL
        # holds, even when the hysteresis alone holds it: plugins and apps
        # that wait for the pressure to end hear, at least this often, that
        # it has not (ChromeOS and B2G re-check every 5 s while low).  With
        # cgroup1, LOW held 11 s of unchanging memory with no word before.
        self.remind_ms = max(remind_ms, renotify_ms)

    def as_dict(self) -> "Dict[str, Any]":
        """Return: the thresholds as a plain dict (for status and traces)."""
        return {k: getattr(self, k) for k in (
            "low_kib", "critical_kib", "recover_kib", "critical_recover_kib", "lead_ms",
            "renotify_ms", "rate_window_ms", "active_hold_ms", "thrash_full_pct",
            "thrash_critical_pct", "quiet_ms", "remind_ms")}


def default_thresholds(total_kib: int) -> Thresholds:
    """Return: thresholds scaled to a domain of ``total_kib``: LOW at 20%
    available, CRITICAL at 10%, out of LOW at 40%, out of CRITICAL at 20%.

    Measured on this machine's 128 MB memcg ramp at 10 MB/s: the first LOW
    comes with 20-23% available, 2.5 s before the limit.
    Raises: ValueError if ``total_kib`` is too small to split (< 64 KiB).
    """
    if total_kib < 64:
        raise ValueError("total_kib %d is too small" % total_kib)
    return Thresholds(total_kib // 5, total_kib // 10, total_kib=total_kib)


def deficit_kib(avail_kib: int, low_kib: int) -> int:
    """Return: KiB to free to get back above ``low_kib`` with a margin of
    ``low_kib/8`` (never less than the margin: under a lead-time LOW the
    memory is above the threshold but falling)."""
    margin = max(low_kib // 8, 1)
    return max(low_kib + margin - avail_kib, margin)


class Notification:
    """A level change, or a rate-limited reminder that a level holds.

    ``reason``: "avail" (under a threshold), "lead-time", "kernel:<event>",
    "thrash", "recovered" or "still".  ``deficit_kib``: what must be freed
    to get back above LOW (0 at NORMAL), for the plugins' on_pressure.
    """

    __slots__ = ("t_ms", "level", "prev_level", "reason", "avail_kib", "total_kib", "eta_ms",
                 "deficit_kib")

    def __init__(self, t_ms: int, level: int, prev_level: int, reason: str,
                 avail_kib: int, total_kib: int, eta_ms: "Optional[int]",
                 deficit_kib: int = 0) -> None:
        self.t_ms = t_ms
        self.level = level
        self.prev_level = prev_level
        self.reason = reason
        self.avail_kib = avail_kib
        self.total_kib = total_kib
        self.eta_ms = eta_ms
        self.deficit_kib = deficit_kib

    def seen_from(self, prev_level: int) -> "Notification":
        """Return: this notification as told to someone whose last level was
        ``prev_level`` (self if that is its own prev_level): coalescing may
        have hidden the levels in between."""
        if prev_level == self.prev_level:
            return self
        return Notification(self.t_ms, self.level, prev_level, self.reason, self.avail_kib,
                            self.total_kib, self.eta_ms, self.deficit_kib)

    def as_dict(self) -> "Dict[str, Any]":
        """Return: a JSON-ready dict of the notification."""
        return {"t_ms": self.t_ms, "level": LEVEL_NAMES[self.level],
                "prev_level": LEVEL_NAMES[self.prev_level], "reason": self.reason,
                "avail_kib": self.avail_kib, "total_kib": self.total_kib,
                "eta_ms": self.eta_ms, "deficit_kib": self.deficit_kib}


class FillRate:
    """The rate at which available memory falls, over a sliding window.

    Keeps at most ``MAX_POINTS`` samples (bounded memory whatever the rate).
    """

    MAX_POINTS = 32

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._points: "List[Tuple[int, int]]" = []

    def add(self, t_ms: int, avail_kib: int) -> None:
        """Record a sample; samples older than the window (except the newest
        one before it, which anchors the slope) are dropped."""
        points = self._points
        if points and t_ms < points[-1][0]:
            points.clear()  # time went backwards: a new trace or clock; start over
        points.append((t_ms, avail_kib))
        while len(points) > 2 and points[1][0] <= t_ms - self.window_ms:
            points.pop(0)
        if len(points) > self.MAX_POINTS:
            points.pop(0)

    def kib_per_s(self) -> "Optional[int]":
        """Return: KiB/s consumed (positive while memory fills, negative while
        it frees), or None with fewer than two samples or a stale anchor."""
        points = self._points
        if len(points) < 2:
            return None
        t0, a0 = points[0]
        t1, a1 = points[-1]
        span_ms = t1 - t0
        if span_ms <= 0 or span_ms > 4 * self.window_ms:
            return None
        return (a0 - a1) * 1000 // span_ms


class Monitor:
    """Turns readings into levels and notifications.

    Feed it with :meth:`update`; ask :meth:`next_sample_ms` how soon the
    sensing loop should read again when the kernel stays quiet.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.level = NORMAL
        self.last: "Optional[Reading]" = None
        self.eta_ms: "Optional[int]" = None
        self.rate = FillRate(thresholds.rate_window_ms)
        self.last_notified_ms: "Optional[int]" = None
        self.last_shortage_ms: "Optional[int]" = None
        self.readings = 0
        self.notifications = 0

    def _eta_ms(self, reading: Reading) -> "Optional[int]":
        rate = self.rate.kib_per_s()
        # Below 1/1000 of the domain per second is noise (slab, page tables).
        if rate is None or rate <= max(reading.total_kib // 1000, 1):
            return None
        return reading.avail_kib * 1000 // rate

    def _target(self, r: Reading) -> "Tuple[int, str]":
        """Return: (level, reason) this reading alone calls for."""
        th = self.thresholds
        full = r.psi_full_avg10
        if r.avail_kib <= th.critical_kib:
            return CRITICAL, "avail"
        if full is not None and full >= th.thrash_critical_pct:
            return CRITICAL, "thrash"
        if r.avail_kib <= th.low_kib:
            return LOW, "avail"
        if self.eta_ms is not None and self.eta_ms <= th.lead_ms and \
                r.avail_kib <= th.recover_kib:
            return LOW, "lead-time"
        if r.avail_kib < th.recover_kib:
            if full is not None and full >= th.thrash_full_pct:
                return LOW, "thrash"
            if r.event in KERNEL_SHORTAGE_EVENTS:
                return LOW, "kernel:" + r.event
        return NORMAL, "recovered"

    def _shortage(self, r: Reading) -> bool:
        """Return: True if the kernel reports a shortage or thrashing now,
        whatever the thresholds say."""
        full = r.psi_full_avg10
        return r.event in KERNEL_SHORTAGE_EVENTS or (
            full is not None and full >= self.thresholds.thrash_full_pct)

    def _after_hysteresis(self, target: int, r: Reading) -> int:
        """Return: the level to hold, given that ``target`` is below the
        current level: drop only past the recover thresholds, and only once
        the kernel has been quiet for ``quiet_ms``."""
        th = self.thresholds
        level = self.level
        last = self.last_shortage_ms
        if last is not None and r.t_ms - last < th.quiet_ms:
            return level
        if level == CRITICAL and r.avail_kib >= th.critical_recover_kib:
            level = LOW
        if level == LOW and target == NORMAL and r.avail_kib >= th.recover_kib:
            level = NORMAL
        return max(level, target)

    def update(self, reading: Reading) -> "Optional[Notification]":
        """Take a reading.

        Returns: a Notification when the level changed, or when a level
        above NORMAL still holds and ``renotify_ms`` has passed since the
        last one; None otherwise.
        """
        self.readings += 1
        self.rate.add(reading.t_ms, reading.avail_kib)
        self.last = reading
        if self._shortage(reading):
            self.last_shortage_ms = reading.t_ms
        self.eta_ms = self._eta_ms(reading)
        target, reason = self._target(reading)
        prev = self.level
        new = target if target >= prev else self._after_hysteresis(target, reading)
        if new != prev:
            self.level = new
            return self._notify(reading, prev, reason if new == target else "recovered")
        if new > NORMAL and self._renotify_due(reading.t_ms, target == new):
            return self._notify(reading, prev, "still")
        return None

    def _renotify_due(self, t_ms: int, called_for: bool) -> bool:
        """Return: True if a reminder is due: ``renotify_ms`` after the last
        notification while the reading calls for the level (``called_for``),
        ``remind_ms`` after it while only the hysteresis holds the level."""
        last = self.last_notified_ms
        th = self.thresholds
        return last is None or t_ms - last >= (th.renotify_ms if called_for else th.remind_ms)

    def _notify(self, r: Reading, prev: int, reason: str) -> Notification:
        self.last_notified_ms = r.t_ms
        self.notifications += 1
        deficit = deficit_kib(r.avail_kib, self.thresholds.low_kib) if self.level > NORMAL else 0
        return Notification(r.t_ms, self.level, prev, reason, r.avail_kib, r.total_kib,
                            self.eta_ms, deficit)

    def next_sample_ms(self, now_ms: int) -> "Optional[int]":
        """Return: how long the sensing loop may wait for the kernel before
        reading anyway, or None when calm (wait for the kernel only).

        Calm means NORMAL, above the hysteresis band, no kernel shortage
        within ``active_hold_ms``, and no measurable fill.  Plain reclaim
        events (vmpressure low, usage thresholds) far above the band do not
        count: measured on the dev machine, an idle memcg whose page cache
        the kernel trims crosses usage thresholds now and then, and
        page-cache churn fires vmpressure low ~70 times a second.  Otherwise the interval
        is a quarter of the time left before the next threshold at the
        current fill rate, within 100..1000 ms.
        """
        r = self.last
        th = self.thresholds
        if r is None:
            return 0
        rate = self.rate.kib_per_s()
        filling = rate is not None and rate > max(r.total_kib // 1000, 1)
        recent = self.last_shortage_ms is not None and \
            now_ms - self.last_shortage_ms < th.active_hold_ms
        if self.level == NORMAL and r.avail_kib >= th.recover_kib and not recent \
                and not filling:
            return None
        if not filling or rate is None:
            return 1000
        next_edge = th.critical_kib if self.level >= LOW else th.low_kib
        left_ms = max(r.avail_kib - next_edge, 0) * 1000 // rate
        return min(max(left_ms // 4, 100), 1000)
