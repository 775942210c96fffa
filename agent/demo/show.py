"""How the demo shows what happens: the timeline lines, the summary, and the
errors of its live modes (:mod:`memagent.demo.run` and the modes in
:mod:`memagent.demo.live` and :mod:`memagent.demo.apps`).
"""

from typing import Any, Dict, List, Optional

from ..core.levels import Notification, default_thresholds, level_name

TICK_MS = 2000  # a progress line this often while a live ramp runs


class DemoError(Exception):
    """The cooperative-apps setup failed (the agent or an app did not start)."""


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


def summary_lines(show: Show, end_text: str, end_s: float) -> List[str]:
    """Return: the summary lines: when LOW and CRITICAL first came, and the end."""
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


def header(show: Show, limit_mib: int, rate: float) -> None:
    """Print the handset's size, its LOW and CRITICAL thresholds and the ramp."""
    th = default_thresholds(limit_mib * 1024)
    show.say("virtual handset: %d MiB memcg, no swap; LOW at <= %d MiB available, "
             "CRITICAL at <= %d MiB" % (limit_mib, th.low_kib // 1024, th.critical_kib // 1024))
    show.say("allocating %g MiB/s of anonymous memory after filling the page cache "
             "(Daniel Spang's 2008 test)" % rate)
