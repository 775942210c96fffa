"""How the demo shows what happens: the timeline, its legend, the summary, and
the errors of its live modes (:mod:`memagent.demo.run` and the modes in
:mod:`memagent.demo.live` and :mod:`memagent.demo.apps`).

Every timeline line has one layout: the time since the ramp started, what
happened, the details (:data:`LINE`).  Lines come from several sources (the
agent's events file, each app's stdout, the demo's own ticks) and are merged
by time: :class:`Timeline` holds them back ``hold_ms`` and prints them in
order.
"""

from typing import Any, Dict, List, Optional, Tuple

from ..core.levels import Notification, Thresholds, default_thresholds, level_name

TICK_MS = 2000  # a progress line this often while a live ramp runs
LINE = "%7.2fs  %-10s  %s"  # time since the ramp started, what, details
HEAD = "%8s  %-10s  %s" % ("time", "what", "details")
# At the same millisecond: a rise first, then the trims and choices it caused,
# then a fall (the "recovered" those trims brought), then a progress tick.
RANK_RISE, RANK_ACTION, RANK_FALL, RANK_TICK = 0, 1, 2, 3
# What happens to kills, said once at the top.
KILLS_DRY_RUN = 'DRY RUN \u2014 the demo never kills; choices are shown as "would kill"'
KILLS_NONE = "none by memagent: here it only senses (no kill plugin runs)"
KILLS_REPLAY = "none: this replays recorded readings, nothing runs"


class DemoError(Exception):
    """The cooperative-apps setup failed (the agent or an app did not start)."""


def legend_lines(th: Thresholds, apps: bool) -> List[str]:
    """Return: the legend of the timeline's words and reason codes (those of
    :meth:`memagent.core.levels.Monitor.update`), with ``th``'s figures;
    with ``apps``, also the apps' trims and the dry-run kill choices."""
    mib = 1024
    lines = [
        "legend: a level line says what came from what, and why:",
        "  avail       available memory fell to the level's threshold (LOW %d MiB, "
        "CRITICAL %d MiB)" % (th.low_kib // mib, th.critical_kib // mib),
        "  lead-time   above LOW, but at the fill rate it runs out in under %.1f s"
        % (th.lead_ms / 1000),
        "  thrash      the kernel's PSI says tasks stall on memory (full >= %g%%: LOW, "
        ">= %g%%: CRITICAL)" % (th.thrash_full_pct, th.thrash_critical_pct),
        "  kernel:...  the kernel reported a shortage (e.g. kernel:psi, kernel:events:max) "
        "while under %d MiB" % (th.recover_kib // mib),
        "  recovered   back up past the way out: CRITICAL ends at %d MiB available, "
        "LOW at %d MiB" % (th.critical_recover_kib // mib, th.recover_kib // mib),
        "  still       the level holds: a reminder, every %.0f s at most" % (th.renotify_ms / 1000),
    ]
    if apps:
        lines += ["  trim        the agent asked an app to free cache (asked), its answer "
                  "(freed), what it still holds (left)",
                  "  trim event  the agent's summary of one round of trims: what it wanted, "
                  "what it measured",
                  "  would kill  the process kill_background picks now; it is signalled only "
                  "when kills are armed"]
    return lines


class Timeline:
    """Merges timeline lines by time and prints them, ``hold_ms`` late."""

    def __init__(self, show: "Show", t0_ms: Optional[int] = None, hold_ms: int = 0) -> None:
        self.show = show
        self.t0_ms = t0_ms  # None: not started, lines wait
        self.hold_ms = hold_ms
        self.printed_ms: Optional[int] = None  # the newest line printed
        self.lines: List[str] = []  # what was printed, for the tests and --json
        self._pending: List[Tuple[int, int, int, str, str]] = []
        self._seq = 0

    def add(self, t_ms: int, what: str, details: str, rank: int = RANK_ACTION) -> None:
        """Queue a line at monotonic ``t_ms`` (``rank`` orders lines of the same ms)."""
        self._seq += 1
        self._pending.append((t_ms, rank, self._seq, what, details))

    def flush(self, now_ms: Optional[int] = None) -> None:
        """Print, in order, the queued lines older than ``now_ms - hold_ms``
        (all of them when ``now_ms`` is None), once started."""
        if self.t0_ms is None:
            return
        self._pending.sort()
        cut = None if now_ms is None else now_ms - self.hold_ms
        while self._pending and (cut is None or self._pending[0][0] <= cut):
            t_ms, _rank, _seq, what, details = self._pending.pop(0)
            line = LINE % ((t_ms - self.t0_ms) / 1000, what, details)
            self.lines.append(line)
            self.printed_ms = t_ms
            self.show.say(line)


class Show:
    """Prints the timeline (unless ``quiet``) and collects the summary."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.events: List[Dict[str, Any]] = []
        self.timeline = Timeline(self)

    def say(self, text: str) -> None:
        """Print a human line (not with --json)."""
        if not self.quiet:
            print(text, flush=True)

    def start(self, t0_ms: int, hold_ms: int = 0) -> None:
        """Start the timeline at ``t0_ms`` (its times count from there; lines
        are held back ``hold_ms``) and print its column heads."""
        self.timeline.t0_ms, self.timeline.hold_ms = t0_ms, hold_ms
        self.say(HEAD)

    def line(self, t_ms: int, what: str, details: str, rank: int = RANK_ACTION) -> None:
        """Queue a timeline line at monotonic ``t_ms``."""
        self.timeline.add(t_ms, what, details, rank)

    def flush(self, now_ms: Optional[int] = None) -> None:
        """Print the timeline's lines that are due (see :meth:`Timeline.flush`)."""
        self.timeline.flush(now_ms)

    def note(self, note: Notification, t0_ms: int, mib: Optional[int]) -> None:
        """Keep one notification, with the MiB allocated by then, and queue
        its line if the level changed."""
        pct = 100 * note.avail_kib // note.total_kib if note.total_kib else 0
        self.events.append({"t_s": round((note.t_ms - t0_ms) / 1000, 2),
                            "level": level_name(note.level),
                            "prev_level": level_name(note.prev_level), "reason": note.reason,
                            "allocated_mib": mib, "avail_mib": note.avail_kib // 1024,
                            "avail_pct": pct, "eta_ms": note.eta_ms})
        if note.level == note.prev_level:
            return
        eta = "" if note.eta_ms is None else ", time left %.1f s" % (note.eta_ms / 1000)
        allocated = "" if mib is None else "%d MiB allocated, " % mib
        self.line(note.t_ms, level_name(note.level), "from %s (%s): %savailable %d MiB (%d%%)%s"
                  % (level_name(note.prev_level), note.reason, allocated,
                     note.avail_kib // 1024, pct, eta),
                  RANK_RISE if note.level > note.prev_level else RANK_FALL)

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


def header(show: Show, limit_mib: int, rate: float, kills: str, apps: bool = False) -> None:
    """Print the handset's size, its LOW and CRITICAL thresholds, the ramp,
    what happens to kills (``kills``, said once, here) and the legend
    (``apps``: with the apps' words)."""
    th = default_thresholds(limit_mib * 1024)
    show.say("virtual handset: %d MiB memcg, no swap; LOW at <= %d MiB available, "
             "CRITICAL at <= %d MiB" % (limit_mib, th.low_kib // 1024, th.critical_kib // 1024))
    show.say("allocating %g MiB/s of anonymous memory after filling the page cache "
             "(Daniel Spang's 2008 test)" % rate)
    show.say("kills: %s" % kills)
    for line in legend_lines(th, apps):
        show.say(line)


def apps_summary(result: Dict[str, Any]) -> List[str]:
    """Return: the summary lines of :func:`memagent.demo.apps.coop_run`'s ``result``: per ramp
    (its own trims only) and each app in it, then in all."""
    lines = []
    for ramp in result["ramps"]:
        lines.append("  ramp %d   %d MiB allocated, %d trims of %d apps, freed by apps %d MiB "
                     "(they said %d MiB), would-kill choices %d, OOM kills %d"
                     % (ramp["ramp"], ramp["allocated_mib"], ramp["trims"], ramp["asked_apps"],
                        ramp["freed_by_apps_mib"], ramp["claimed_by_apps_mib"],
                        ramp["kill_choices"], ramp["oom_kills"]))
        for name, app in sorted(ramp["per_app"].items()):
            lines.append("    %-8s asked %2d times for %6d KiB, said %6d KiB, measured %6d KiB"
                         % (name, app["asked"], app["asked_kib"], app["claimed_kib"],
                            app["measured_kib"]))
    lines.append("  in all   %d MiB allocated, %d trims, freed by apps %d MiB, would-kill "
                 "choices %d"
                 % (result["allocated_mib"], len(result["trims"]), result["freed_by_apps_mib"],
                    len(result["kill_choices"])))
    return lines
