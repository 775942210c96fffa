"""What ``memagent plot`` draws, read from its inputs, without matplotlib.

Three kinds of input, told apart by their content:

- a trace (``memagent record``): an optional header line, then one reading
  per line (:mod:`memagent.core.trace`);
- an events file (``memagent run --events-json``, or ``memagent events``):
  notifications (``prev_level``) and actions (``action``: kill, trim...), or
  entries with ``kind`` (the status schema's events);
- a status (``memagent status --json``, schema 1): :func:`status_of` tells
  it, :mod:`memagent.plotstatus` reads its ``history`` and ``events``.

Several inputs make one :class:`Timeline` on one clock (the agent's
monotonic ``t_ms``): a trace and the events file of the same agent overlay.
A bad input raises :class:`PlotError` naming the file and the line.
"""

import json

from .core import trace
from .core.levels import NORMAL, Thresholds, default_thresholds, level_from_name
from .core.reading import Reading, reading_from_dict

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython (plot is a workstation tool; kept importable)
    pass

MAX_INPUT_BYTES = 64 * 1024 * 1024
MAX_LINE_CHARS = 64 * 1024
STATUS_SCHEMA = 1
MARK_KINDS = ("trim", "kill", "dry-run", "kernel")


class PlotError(Exception):
    """An input that cannot be plotted; ``code`` is the exit code to give
    (2 bad input, 3 agent not running, 10 a status schema newer than this)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Mark:
    """A trim or a kill at ``t_ms``: ``kind`` is one of MARK_KINDS ("dry-run":
    a kill the agent chose but did not send; "kernel": the kernel's OOM
    killer).  ``label``: what to write beside it (a victim's name) or ""."""

    __slots__ = ("t_ms", "kind", "label")

    def __init__(self, t_ms: int, kind: str, label: str = "") -> None:
        if kind not in MARK_KINDS:
            raise ValueError("unknown mark kind %r" % kind)
        self.t_ms = t_ms
        self.kind = kind
        self.label = label


class Timeline:
    """One panel's data, times in ms on one clock.

    ``avail``: (t_ms, avail_kib or None for a gap), in time order.
    ``levels``: (start_ms, end_ms, level) spans.  ``psi_some``/``psi_full``:
    (t_ms, avg10 %).  ``low_kib``/``critical_kib``: the thresholds, None if
    unknown.  ``t0_ms``: the x axis' zero.  ``notes``: short remarks for the
    title (where the thresholds came from, dry run).
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.avail: "List[Tuple[int, Optional[int]]]" = []
        self.levels: "List[Tuple[int, int, int]]" = []
        self.marks: "List[Mark]" = []
        self.psi_some: "List[Tuple[int, float]]" = []
        self.psi_full: "List[Tuple[int, float]]" = []
        self.low_kib: "Optional[int]" = None
        self.critical_kib: "Optional[int]" = None
        self.total_kib: "Optional[int]" = None
        self.t0_ms = 0
        self.x_label = "time (s)"
        self.notes: "List[str]" = []

    def span_ms(self) -> "Tuple[int, int]":
        """Return: (first, last) t_ms of anything in the timeline.
        Raises: PlotError when it holds nothing to draw."""
        times = [t for t, _ in self.avail] + [m.t_ms for m in self.marks]
        times += [s for s, _, _ in self.levels] + [e for _, e, _ in self.levels]
        if not times:
            raise PlotError("%s: nothing to plot (no readings, no events)" % self.label)
        return min(times), max(times)


class Piece:
    """What one file of JSON lines held: readings, the trace header, events."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.header: "Dict[str, Any]" = {}
        self.readings: "List[Reading]" = []
        self.events: "List[Dict[str, Any]]" = []


def _no_constants(name: str) -> "Any":
    raise ValueError("%s is not a number JSON allows" % name)


def _loads(text: str) -> "Any":
    """Return: the JSON value of ``text``.  Raises: ValueError (for too deep a nesting too)."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested too deeply")


def read_text(path: str) -> str:
    """Return: the file's text.  Raises: PlotError if unreadable, larger than
    MAX_INPUT_BYTES, not UTF-8, or empty."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        raise PlotError("%s: cannot read: %s" % (path, e.strerror or e))
    if len(data) > MAX_INPUT_BYTES:
        raise PlotError("%s: larger than %d MiB" % (path, MAX_INPUT_BYTES >> 20))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PlotError("%s: not UTF-8 text (byte %d)" % (path, e.start))
    if not text.strip():
        raise PlotError("%s: empty file: expected a trace, an events file or a status JSON"
                        % path)
    return text


def event_of(obj: "Dict[str, Any]") -> "Optional[Dict[str, Any]]":
    """Return: ``obj`` as a status-schema event (with ``kind``), or None if
    it is no event.  An events-file notification has ``prev_level``, an
    action ``action``."""
    if "kind" in obj:
        return obj
    if "action" in obj:
        return dict(obj, kind="action")
    if "prev_level" in obj:
        return dict(obj, kind="level")
    return None


def parse_lines(text: str, name: str) -> Piece:
    """Parse a trace or an events file (or both in one).

    Returns: the Piece.  Raises: PlotError naming ``name`` and the line for a
    line too long, not JSON, or neither a reading, a header nor an event.
    """
    piece = Piece(name)
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise PlotError("%s: line %d: longer than %d characters" % (name, lineno,
                                                                      MAX_LINE_CHARS))
        try:
            obj = _loads(line)
        except ValueError as e:
            raise PlotError("%s: line %d: not JSON (%s)" % (name, lineno, e))
        if not isinstance(obj, dict):
            raise PlotError("%s: line %d: a JSON object was expected" % (name, lineno))
        _add_line(piece, obj, lineno)
    if not piece.readings and not piece.events:
        raise PlotError("%s: no readings and no events in it" % name)
    return piece


def _add_line(piece: Piece, obj: "Dict[str, Any]", lineno: int) -> None:
    """Add one line's object to ``piece``.  Raises: PlotError."""
    where = "%s: line %d" % (piece.name, lineno)
    if "memagent_trace" in obj:
        if obj["memagent_trace"] != trace.TRACE_VERSION:
            raise PlotError("%s: trace version %r, this memagent reads %d"
                            % (where, obj["memagent_trace"], trace.TRACE_VERSION))
        piece.header = obj
        return
    event = event_of(obj)
    if event is not None and event.get("kind") == "gap":
        return  # memagent events --follow: some were lost; nothing to draw
    if event is not None:
        if not isinstance(event.get("t_ms"), int) or isinstance(event.get("t_ms"), bool):
            raise PlotError("%s: an event without an integer t_ms" % where)
        piece.events.append(event)
        return
    try:
        reading = reading_from_dict(obj)
    except ValueError as e:
        raise PlotError("%s: neither a reading nor an event: %s" % (where, e))
    if piece.readings and reading.t_ms < piece.readings[-1].t_ms:
        raise PlotError("%s: t_ms %d goes back in time" % (where, reading.t_ms))
    piece.readings.append(reading)


def status_of(text: str) -> "Optional[Dict[str, Any]]":
    """Return: the status dict if ``text`` is one JSON object that is a
    status (or a control socket reply holding one), else None."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        obj = _loads(text)
    except ValueError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("status"), dict):
        obj = obj["status"]
    if isinstance(obj, dict) and ("history" in obj or "schema" in obj or "uptime_s" in obj):
        return obj
    return None


def int_or_none(value: "Any") -> "Optional[int]":
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _level_of(value: "Any") -> "Optional[int]":
    try:
        return level_from_name(value) if isinstance(value, str) else None
    except ValueError:
        return None


def add_events(tl: Timeline, events: "List[Dict[str, Any]]") -> "List[Tuple[int, int, int]]":
    """Add the events' marks (kills, dry-run kills, trims) to ``tl``.

    Returns: the level changes and reminders, (t_ms, level, prev_level), in
    time order, for :func:`level_spans`.  Unknown kinds are left out.
    """
    changes: "List[Tuple[int, int, int]]" = []
    for ev in events:
        t_ms = ev["t_ms"]
        if ev.get("kind") == "level":
            level, prev = _level_of(ev.get("level")), _level_of(ev.get("prev_level"))
            if level is not None:
                changes.append((t_ms, level, level if prev is None else prev))
        elif ev.get("kind") == "action" and ev.get("action") == "kill":
            dry = bool(ev.get("dry_run")) or ev.get("outcome") == "dry-run"
            tl.marks.append(Mark(t_ms, "dry-run" if dry else "kill", str(ev.get("name") or "")))
            if dry and "dry run" not in tl.notes:
                tl.notes.append("dry run")
        elif ev.get("kind") == "action" and ev.get("action") == "trim":
            tl.marks.append(Mark(t_ms, "trim"))
    changes.sort()
    return changes


def level_spans(changes: "List[Tuple[int, int, int]]", start_ms: int,
                end_ms: int) -> "List[Tuple[int, int, int]]":
    """Return: (start_ms, end_ms, level) spans from ``start_ms`` to ``end_ms``:
    before the first change the level it left (NORMAL with no change)."""
    if not changes:
        return [(start_ms, end_ms, NORMAL)]
    spans = []
    t, level = min(start_ms, changes[0][0]), changes[0][2]
    for t_ms, new, _ in changes:
        if new != level:
            spans.append((t, t_ms, level))
            t, level = t_ms, new
    spans.append((t, max(end_ms, t), level))
    return [s for s in spans if s[1] > s[0]]


def resolve_thresholds(tl: Timeline, low_kib: "Optional[int]", critical_kib: "Optional[int]",
                       found: "Optional[Tuple[int, int]]") -> "Optional[Thresholds]":
    """Set ``tl``'s thresholds: the options', else ``found`` (the input's own),
    else the defaults for its total (20% and 10%, noted in ``tl.notes``).

    Returns: Thresholds for a replay, or None without a total.
    Raises: PlotError if CRITICAL is not below LOW.
    """
    dflt = default_thresholds(tl.total_kib) if tl.total_kib and tl.total_kib >= 64 else None
    base = found or ((dflt.low_kib, dflt.critical_kib) if dflt else None)
    low = low_kib if low_kib is not None else (base[0] if base else None)
    crit = critical_kib if critical_kib is not None else (base[1] if base else None)
    if low is None or crit is None:
        return None
    if not 0 < crit < low:
        raise PlotError("CRITICAL (%d KiB) must be above 0 and below LOW (%d KiB)" % (crit, low))
    if found is None and low_kib is None and critical_kib is None:
        tl.notes.append("thresholds: the defaults for its size")
    tl.low_kib, tl.critical_kib = low, crit
    return Thresholds(low, crit, total_kib=tl.total_kib)


def found_thresholds(obj: "Any") -> "Optional[Tuple[int, int]]":
    """Return: (low_kib, critical_kib) from a thresholds dict (or a header
    holding one under "thresholds"), or None."""
    if isinstance(obj, dict) and isinstance(obj.get("thresholds"), dict):
        obj = obj["thresholds"]
    low, crit = (int_or_none(obj.get(k)) if isinstance(obj, dict) else None
                 for k in ("low_kib", "critical_kib"))
    return (low, crit) if low is not None and crit is not None else None


def timeline_of_pieces(pieces: "List[Piece]", label: str, low_kib: "Optional[int]" = None,
                       critical_kib: "Optional[int]" = None) -> Timeline:
    """Return: one Timeline of the files' readings and events overlaid.

    Levels come from the events' notifications when there are any, else from
    replaying the readings through the monitor with the thresholds.
    Raises: PlotError when nothing can be drawn.
    """
    tl = Timeline(label)
    readings = sorted((r for p in pieces for r in p.readings), key=lambda r: r.t_ms)
    events = sorted((e for p in pieces for e in p.events), key=lambda e: int(e["t_ms"]))
    tl.avail = [(r.t_ms, r.avail_kib) for r in readings]
    tl.psi_some = [(r.t_ms, r.psi_some_avg10) for r in readings if r.psi_some_avg10 is not None]
    tl.psi_full = [(r.t_ms, r.psi_full_avg10) for r in readings if r.psi_full_avg10 is not None]
    totals = [r.total_kib for r in readings] + [
        e["total_kib"] for e in events if int_or_none(e.get("total_kib"))]
    tl.total_kib = totals[0] if totals else None
    found = None
    for p in pieces:
        found = found or found_thresholds(p.header)
    thresholds = resolve_thresholds(tl, low_kib, critical_kib, found)
    changes = add_events(tl, events)
    if not tl.avail:  # an events file alone: its notifications' figures
        tl.avail = [(e["t_ms"], e["avail_kib"]) for e in events
                    if e.get("kind") == "level" and int_or_none(e.get("avail_kib")) is not None]
    if not changes and readings and thresholds is not None:
        changes = [(n.t_ms, n.level, n.prev_level) for n in trace.replay(readings, thresholds)]
        tl.notes.append("levels: replayed")
    first, last = tl.span_ms()
    tl.levels = level_spans(changes, first, last)
    tl.t0_ms = first
    return tl
