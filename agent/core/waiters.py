"""Waiters: which open files of /dev/mem_notify a pressure event wakes.

memagent serves /dev/mem_notify through CUSE (issue 12); each open() of the
device is one file, keyed by its ``fh``, with its own poll handle.  This is
the pure policy behind the POLLIN bit of each file:

* **Level-triggered**, like the 2008 patch: a woken file is ``ready``
  (POLLIN) until the pressure ends, or until its reader acknowledges the
  wakeup (:meth:`Waiters.ack`: the provider calls it when the file is
  read), so that poll, read, poll again waits for the next event instead
  of spinning.
* **Exclusive, fair wakeups** (Alan Cox): at LOW one event wakes at most
  ``max_per_event`` files, taken from the front of a FIFO queue ordered by
  when each file last became waiting; a woken file goes to the back, so
  over many events every waiter is chosen equally (see :func:`jain_index`).
  A file woken less than ``min_gap_ms`` ago is skipped (rate limit) and
  keeps its place.  At CRITICAL every file that wants it wakes at once,
  whatever the rate limit.
* **Per-file thresholds** (Nokia's /dev/memnotify, Palm's webOS device): a
  file with its own ``enter_kib < leave_kib`` wants waking when available
  memory is ``<= enter_kib`` (whatever the global level), within the same
  cap and rate limit, and stays ready until it is ``>= leave_kib``; the
  global level alone never wakes it.
* **A late opener learns the current state at once**: a file opened while
  the level is LOW or CRITICAL is ready straight away.

How the provider drives it: :meth:`Waiters.level_changed` with each reading
or notification (it records the level and returns the files to clear), then
:meth:`Waiters.pressure` for each pressure event (the files to wake).

Pure and deterministic: the clock comes in as ``now_ms`` ints; the state is
bounded by ``max_files``.  Runs on CPython and MicroPython.
"""

try:
    from typing import Dict, List, Optional, Sequence, Tuple
except ImportError:  # MicroPython
    pass

from .levels import CRITICAL, LOW, NORMAL

DEFAULT_MAX_FILES = 1024


class _File:
    """One open file: its POLLIN state, last wakeup and own thresholds."""

    __slots__ = ("fh", "ready", "last_woken_ms", "enter_kib", "leave_kib", "wakes")

    def __init__(self, fh: int) -> None:
        self.fh = fh
        self.ready = False
        self.last_woken_ms: "Optional[int]" = None
        self.enter_kib: "Optional[int]" = None
        self.leave_kib: "Optional[int]" = None
        self.wakes = 0

    def wants(self, level: int, avail_kib: int) -> bool:
        """Return: True if this file calls for a wakeup now: by its own
        ``enter_kib`` if it has thresholds, else by the global level."""
        if self.enter_kib is not None:
            return avail_kib <= self.enter_kib
        return level >= LOW

    def clears(self, level: int, avail_kib: int) -> bool:
        """Return: True if a ready file should drop POLLIN now: at its own
        ``leave_kib`` if it has thresholds, else when the level is NORMAL."""
        if self.leave_kib is not None:
            return avail_kib >= self.leave_kib
        return level == NORMAL


class Waiters:
    """The registry of open files and the wakeup policy.

    Raises: ValueError if ``max_per_event`` or ``max_files`` is below 1 or
    ``min_gap_ms`` is negative.
    """

    def __init__(self, max_per_event: int = 1, min_gap_ms: int = 1000,
                 max_files: int = DEFAULT_MAX_FILES) -> None:
        if max_per_event < 1 or max_files < 1:
            raise ValueError("max_per_event (%d) and max_files (%d) must be >= 1"
                             % (max_per_event, max_files))
        if min_gap_ms < 0:
            raise ValueError("min_gap_ms (%d) must be >= 0" % min_gap_ms)
        self.max_per_event = max_per_event
        self.min_gap_ms = min_gap_ms
        self.max_files = max_files
        self.level = NORMAL
        self._files: "Dict[int, _File]" = {}
        self._queue: "List[int]" = []  # fh, front = waiting longest

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, fh: int) -> bool:
        return fh in self._files

    def add(self, fh: int, now_ms: int) -> bool:
        """Register a new open file (OPEN) at the back of the queue.

        Returns: True if it is ready at once (opened while the level is LOW
        or CRITICAL; that counts as a wakeup for the rate limit).
        Raises: ValueError if ``fh`` is already open; OverflowError when
        ``max_files`` files are open.
        """
        if fh in self._files:
            raise ValueError("fh %d is already open" % fh)
        if len(self._files) >= self.max_files:
            raise OverflowError("too many open files: %d (max_files)" % self.max_files)
        f = _File(fh)
        self._files[fh] = f
        self._queue.append(fh)
        if self.level >= LOW:
            self._wake(f, now_ms)
        return f.ready

    def remove(self, fh: int) -> None:
        """Forget a file (RELEASE), ready or not.  An unknown ``fh`` is a no-op."""
        if self._files.pop(fh, None) is not None:
            self._queue.remove(fh)

    def is_ready(self, fh: int) -> bool:
        """Return: True if ``fh`` has POLLIN pending; False for an unknown fh."""
        f = self._files.get(fh)
        return f is not None and f.ready

    def ack(self, fh: int) -> bool:
        """Acknowledge a wakeup (the file was read): drop its POLLIN until a
        later event chooses it again.  It keeps its place in the queue.
        Returns: True if it was ready; False for an unknown fh."""
        f = self._files.get(fh)
        if f is None or not f.ready:
            return False
        f.ready = False
        return True

    def set_thresholds(self, fh: int, enter_kib: int, leave_kib: int) -> None:
        """Give ``fh`` its own thresholds: woken at ``avail <= enter_kib``,
        cleared at ``avail >= leave_kib``.  Its ready state is kept as is
        (the next :meth:`level_changed` applies the new leave threshold).

        Raises: KeyError for an unknown fh; ValueError unless
        ``0 < enter_kib < leave_kib``.
        """
        f = self._files[fh]
        if not 0 < enter_kib < leave_kib:
            raise ValueError("thresholds need 0 < enter_kib (%d) < leave_kib (%d)"
                             % (enter_kib, leave_kib))
        f.enter_kib = enter_kib
        f.leave_kib = leave_kib

    def clear_thresholds(self, fh: int) -> None:
        """Make ``fh`` follow the global level again.  Raises: KeyError for an unknown fh."""
        f = self._files[fh]
        f.enter_kib = None
        f.leave_kib = None

    def thresholds(self, fh: int) -> "Optional[Tuple[int, int]]":
        """Return: ``(enter_kib, leave_kib)`` of ``fh``, or None if it follows
        the global level.  Raises: KeyError for an unknown fh."""
        f = self._files[fh]
        if f.enter_kib is None or f.leave_kib is None:
            return None
        return (f.enter_kib, f.leave_kib)

    def wakes(self, fh: int) -> int:
        """Return: how many times ``fh`` was woken.  Raises: KeyError for an unknown fh."""
        return self._files[fh].wakes

    def level_changed(self, level: int, avail_kib: int, now_ms: int) -> "List[int]":
        """Record the global ``level`` and clear what the pressure left.

        Returns: the fh whose ready state cleared, in queue order: every
        global file when ``level`` is NORMAL, and every file with its own
        thresholds once ``avail_kib >= leave_kib``.  Wakes nobody.
        Raises: ValueError for an unknown level.
        """
        _check_level(level)
        self.level = level
        cleared: "List[int]" = []
        for fh in self._queue:
            f = self._files[fh]
            if f.ready and f.clears(level, avail_kib):
                f.ready = False
                cleared.append(fh)
        return cleared

    def pressure(self, level: int, avail_kib: int, now_ms: int) -> "List[int]":
        """One pressure event at ``level`` (also recorded as the current level).

        At CRITICAL every file not yet ready that wants it (global files, and
        files whose ``enter_kib >= avail_kib``) wakes, whatever the rate
        limit.  Below, at most ``max_per_event`` such files wake, from the
        front of the queue, skipping those woken less than ``min_gap_ms``
        ago; at NORMAL only files with their own thresholds can want it.
        Woken files become ready and move to the back of the queue.

        Returns: the fh woken, in the order chosen.
        Raises: ValueError for an unknown level.
        """
        _check_level(level)
        self.level = level
        chosen: "List[_File]" = []
        for fh in self._queue:
            f = self._files[fh]
            if f.ready or not f.wants(level, avail_kib):
                continue
            if level < CRITICAL:
                if self._too_soon(f, now_ms):
                    continue
                if len(chosen) >= self.max_per_event:
                    break
            chosen.append(f)
        for f in chosen:
            self._wake(f, now_ms)
            self._queue.remove(f.fh)
            self._queue.append(f.fh)
        return [f.fh for f in chosen]

    def _too_soon(self, f: _File, now_ms: int) -> bool:
        """Return: True if ``f`` was woken less than ``min_gap_ms`` ago."""
        last = f.last_woken_ms
        return last is not None and now_ms - last < self.min_gap_ms

    def _wake(self, f: _File, now_ms: int) -> None:
        f.ready = True
        f.last_woken_ms = now_ms
        f.wakes += 1


def _check_level(level: int) -> None:
    """Raises: ValueError unless ``level`` is NORMAL, LOW or CRITICAL."""
    if level not in (NORMAL, LOW, CRITICAL):
        raise ValueError("unknown level %r (NORMAL, LOW or CRITICAL)" % (level,))


def jain_index(counts: "Sequence[float]") -> float:
    """Return: Jain's fairness index of ``counts``, (sum x)^2 / (n * sum x^2):
    1.0 when all are equal, 1/n when one has everything; 1.0 for an empty or
    all-zero list."""
    n = len(counts)
    squares = sum(x * x for x in counts)
    if n == 0 or squares == 0:
        return 1.0
    total = sum(counts)
    return total * total / (n * squares)
