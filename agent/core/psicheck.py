"""Using PSI defensively: judging trigger events and the "full" line from
successive reads of the pressure file (pure; the psi source does the I/O).

Field reports against other PSI users list three problems; the trigger
string's NUL is the psi source's (``some S W\\0``: some kernels reject the
string without it).  The two others are judged here:

- **A false first event.**  A trigger can fire once at the first stall after
  it is armed, without ``stall_us`` of stall in its window.  A genuine event
  means the ``some`` total grew by at least ``stall_us`` since the trigger
  was armed or the last event was judged: :meth:`PsiCheck.confirm` says
  whether it did.  An unconfirmed event is still a reading, but not a
  kernel shortage (``psi:unconfirmed``).
- **A "full" line that never moves** (a 6.12 kernel bug broke it): once the
  ``some`` total has grown by FULL_CHECK_US while the ``full`` total has
  not moved at all, "full" is judged broken, and ``some`` stands in for it
  from then on (on a one-CPU handset they are nearly the same).

MicroPython-clean.
"""

try:
    from typing import Dict, Optional
except ImportError:  # MicroPython
    pass

# Stall of "some" (µs) with no "full" at all before "full" is judged broken:
# 10 s of some-stall.  Read on the dev machine (6.18, 2 CPUs) on 2026-12-07:
# some total=9.92 s, full total=6.32 s since boot: full moves with some.
# A kernel whose full stays put through 10 s of some-stall reports nothing.
FULL_CHECK_US = 10000000


class PsiCheck:
    """Judges one pressure file's trigger events and "full" line."""

    def __init__(self, stall_us: int) -> None:
        self.stall_us = stall_us
        self.some_total_us: "Optional[float]" = None  # at arming or the last event
        self.full_broken = False
        self.unconfirmed = 0  # events judged false
        self._full_base: "Optional[float]" = None
        self._some_base: "Optional[float]" = None

    def arm(self, psi: "Dict[str, Dict[str, float]]") -> None:
        """The trigger was armed with the file reading ``psi``
        (:func:`memagent.core.procfs.parse_pressure`'s result)."""
        self.some_total_us = psi["some"]["total"]
        self.watch_full(psi)

    def confirm(self, psi: "Dict[str, Dict[str, float]]") -> bool:
        """A trigger event came, and the file now reads ``psi``.

        Returns: True if ``some`` grew by at least ``stall_us`` since the
        arming or the last event (so the event is genuine); False otherwise
        (counted in ``unconfirmed``).  With no earlier total, True.
        """
        total = psi["some"]["total"]
        last, self.some_total_us = self.some_total_us, total
        if last is None or total - last >= self.stall_us:
            return True
        self.unconfirmed += 1
        return False

    def watch_full(self, psi: "Dict[str, Dict[str, float]]") -> bool:
        """Follow the totals.  Returns: True the first time "full" is judged
        broken (``some`` grew by FULL_CHECK_US, ``full`` not at all)."""
        full = psi.get("full")
        some_total = psi["some"]["total"]
        if self.full_broken or full is None:
            return False
        if self._full_base is None or self._some_base is None \
                or full["total"] != self._full_base:
            self._full_base, self._some_base = full["total"], some_total
            return False
        if some_total - self._some_base >= FULL_CHECK_US:
            self.full_broken = True
            return True
        return False

    def full_avg10(self, psi: "Dict[str, Dict[str, float]]") -> "Optional[float]":
        """Return: the "full" avg10 to use: "some"'s once "full" is judged
        broken, None without a "full" line."""
        if self.full_broken:
            return psi["some"]["avg10"]
        full = psi.get("full")
        return full["avg10"] if full is not None else None
