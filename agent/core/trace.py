"""Traces: readings as JSON lines, recorded from a real source and replayed
through the monitor on the trace's own clock.

A trace is one optional header line ``{"memagent_trace": 1, ...}`` followed
by one reading per line (:meth:`memagent.core.reading.Reading.to_dict`).  Replay is
deterministic: it never looks at the wall clock.

MicroPython-clean.
"""

import json

try:
    from typing import Any, Dict, Iterable, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

from .levels import Monitor, Notification, Thresholds, default_thresholds, level_name
from .reading import Reading, reading_from_dict

TRACE_VERSION = 1
MAX_LINE_CHARS = 4096


class TraceError(ValueError):
    """A trace line is not a reading; the message names the line."""


def header(domain: str, source: str, extra: "Optional[Dict[str, Any]]" = None) -> str:
    """Return: the header line (no newline) for a new trace."""
    obj = {"memagent_trace": TRACE_VERSION, "domain": domain, "source": source}
    if extra:
        obj.update(extra)
    return json.dumps(obj)


def parse_line(line: str, lineno: int) -> "Optional[Reading]":
    """Parse one trace line.

    Returns: the Reading, or None for a blank line or the header.
    Raises: TraceError naming ``lineno`` for anything else.
    """
    text = line.strip()
    if not text:
        return None
    if len(text) > MAX_LINE_CHARS:
        raise TraceError("line %d: longer than %d characters" % (lineno, MAX_LINE_CHARS))
    try:
        obj = json.loads(text)
    except ValueError:
        raise TraceError("line %d: not JSON" % lineno)
    if isinstance(obj, dict) and "memagent_trace" in obj:
        if obj["memagent_trace"] != TRACE_VERSION:
            raise TraceError("line %d: trace version %r, expected %d"
                             % (lineno, obj["memagent_trace"], TRACE_VERSION))
        return None
    try:
        return reading_from_dict(obj)
    except ValueError as e:
        raise TraceError("line %d: %s" % (lineno, e))


def parse_trace(lines: "Iterable[str]") -> "List[Reading]":
    """Parse a whole trace.

    Returns: its readings in order.
    Raises: TraceError at the first bad line, or if time runs backwards.
    """
    readings: "List[Reading]" = []
    lineno = 0
    for line in lines:
        lineno += 1
        reading = parse_line(line, lineno)
        if reading is None:
            continue
        if readings and reading.t_ms < readings[-1].t_ms:
            raise TraceError("line %d: t_ms %d goes back in time" % (lineno, reading.t_ms))
        readings.append(reading)
    return readings


def load_trace(path: str) -> "List[Reading]":
    """Return: the readings of the trace file at ``path``.
    Raises: OSError if unreadable, TraceError if malformed."""
    with open(path) as f:
        return parse_trace(f)


def replay(readings: "List[Reading]",
           thresholds: "Optional[Thresholds]" = None) -> "List[Notification]":
    """Run the monitor over ``readings`` on their own clock.

    Returns: the notifications in order (level changes and reminders).
    Thresholds default to :func:`default_thresholds` of the first reading's
    total.  Raises: ValueError for an empty trace.
    """
    if not readings:
        raise ValueError("the trace has no readings")
    monitor = Monitor(thresholds or default_thresholds(readings[0].total_kib))
    out: "List[Notification]" = []
    for reading in readings:
        note = monitor.update(reading)
        if note is not None:
            out.append(note)
    return out


def level_changes(notes: "List[Notification]") -> "List[Tuple[int, str]]":
    """Return: (t_ms, level name) for each change of level, reminders left out."""
    return [(n.t_ms, level_name(n.level)) for n in notes if n.level != n.prev_level]


def format_timeline(notes: "List[Notification]", t0_ms: int = 0) -> "List[str]":
    """Return: one human line per notification, times relative to ``t0_ms``."""
    lines = []
    for n in notes:
        eta = "-" if n.eta_ms is None else "%.1fs" % (n.eta_ms / 1000)
        pct = 100 * n.avail_kib // n.total_kib if n.total_kib else 0
        lines.append("%8.2fs  %-8s <- %-8s %-14s avail %7d KiB (%2d%%)  eta %s" % (
            (n.t_ms - t0_ms) / 1000, level_name(n.level), level_name(n.prev_level),
            n.reason, n.avail_kib, pct, eta))
    return lines
