"""History: the last minutes of available memory and level, in bounded RAM,
for ``memagent status``'s sparklines (issue 13).  Not wired yet.

Readings come at uneven times: often under pressure, seldom or never while
an event-driven source is calm.  They are folded into fixed buckets of
``step_ms``: each bucket keeps the lowest available memory and the highest
level seen in it, so that a short dip survives the folding.  A calm stretch
adds no bucket at all (no reading, no wakeup); the renderer shows the gap.

Bounded by construction: at most ``capacity`` buckets, three ints each, in
three preallocated lists used as rings.  Ten minutes at 5 s a bucket (120)
held 11.5 KiB on CPython 3.11 x86_64 (tracemalloc, tests/test_history.py);
on MicroPython these small ints are immediate values: three lists of 120
words, under 2 KiB.  Pure and deterministic (the clock comes in as
``t_ms``); runs on CPython and MicroPython.
"""

from .levels import CRITICAL, NORMAL

try:
    from typing import List, Optional, Sequence, Tuple
except ImportError:  # MicroPython
    pass

# Ten minutes at 5 s a bucket.
DEFAULT_CAPACITY = 120
DEFAULT_STEP_MS = 5000
SPARK_TERMINAL = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"  # one block per eighth
SPARK_ASCII = "_.-=^"  # serial consoles: ASCII only


class History:
    """Buckets of (start t_ms, min avail_kib, max level), oldest first.

    Raises: ValueError unless ``capacity`` >= 1 and ``step_ms`` >= 1.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, step_ms: int = DEFAULT_STEP_MS) -> None:
        if capacity < 1 or step_ms < 1:
            raise ValueError("capacity (%d) and step_ms (%d) must be >= 1" % (capacity, step_ms))
        self.capacity = capacity
        self.step_ms = step_ms
        self._t: "List[int]" = [0] * capacity
        self._avail: "List[int]" = [0] * capacity
        self._level: "List[int]" = [NORMAL] * capacity
        self._count = 0
        self._head = 0  # index of the newest bucket when _count > 0

    def __len__(self) -> int:
        return self._count

    def add(self, t_ms: int, avail_kib: int, level: int) -> None:
        """Fold one reading in.  A reading older than the newest bucket
        (a clock that went back) is folded into the newest bucket."""
        start = t_ms - t_ms % self.step_ms
        if self._count and start <= self._t[self._head]:
            i = self._head
            if avail_kib < self._avail[i]:
                self._avail[i] = avail_kib
            if level > self._level[i]:
                self._level[i] = level
            return
        self._head = (self._head + 1) % self.capacity if self._count else 0
        self._count = min(self._count + 1, self.capacity)
        self._t[self._head] = start
        self._avail[self._head] = avail_kib
        self._level[self._head] = level

    def buckets(self) -> "List[Tuple[int, int, int]]":
        """Return: (start t_ms, min avail_kib, max level) per bucket, oldest first."""
        out = []
        for k in range(self._count - 1, -1, -1):
            i = (self._head - k) % self.capacity
            out.append((self._t[i], self._avail[i], self._level[i]))
        return out

    def series(self, now_ms: int, width: int) -> "Tuple[List[Optional[int]], List[Optional[int]]]":
        """Return: (avail_kib, level) for the ``width`` steps ending at
        ``now_ms``, oldest first; None where no reading came (the agent
        slept: nothing changed enough to wake it)."""
        end = now_ms - now_ms % self.step_ms
        first = end - (width - 1) * self.step_ms
        avail: "List[Optional[int]]" = [None] * width
        level: "List[Optional[int]]" = [None] * width
        for t, a, lv in self.buckets():
            if first <= t <= end:
                j = (t - first) // self.step_ms
                avail[j], level[j] = a, lv
        return avail, level


def sparkline(values: "Sequence[Optional[int]]", low: int, high: int,
              ascii_only: bool = False) -> str:
    """Return: one character per value, scaled between ``low`` and ``high``
    (clamped); a blank for None.  ``ascii_only`` for serial consoles."""
    marks = SPARK_ASCII if ascii_only else SPARK_TERMINAL
    span = max(high - low, 1)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
            continue
        frac = (min(max(v, low), high) - low) / span
        out.append(marks[min(int(frac * len(marks)), len(marks) - 1)])
    return "".join(out)


def level_marks(levels: "Sequence[Optional[int]]", ascii_only: bool = False) -> str:
    """Return: one character per level: "." NORMAL, "L" LOW, "C" CRITICAL
    (terminals: a light, medium and full shade), a blank for None."""
    marks = ".LC" if ascii_only else "\u2591\u2592\u2588"
    return "".join(" " if lv is None else marks[max(NORMAL, min(lv, CRITICAL))] for lv in levels)
