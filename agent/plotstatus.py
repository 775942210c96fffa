"""A status's history for ``memagent plot``: ``memagent status --json``
(schema 1, docs/status.md) or a status fetched from a device, as a
:class:`~memagent.plotdata.Timeline`: the ring buffer's buckets of lowest
available memory and highest level, its events as marks.  No matplotlib.
"""

import time

from .core.levels import CRITICAL, NORMAL
from .plotdata import (
    STATUS_SCHEMA,
    PlotError,
    Timeline,
    add_events,
    event_of,
    found_thresholds,
    int_or_none,
    resolve_thresholds,
)

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass


def _buckets(history: "Any") -> "List[Tuple[int, int, int]]":
    """Return: the history's buckets checked.  Raises: PlotError."""
    if not isinstance(history, dict) or not isinstance(history.get("buckets"), list):
        raise PlotError("status: no history buckets to plot")
    out = []
    for b in history["buckets"]:
        ok = isinstance(b, list) and len(b) == 3 and all(int_or_none(x) is not None for x in b)
        if not ok or not NORMAL <= b[2] <= CRITICAL:
            raise PlotError("status: a history bucket is not [t_ms, avail_kib, level]: %r"
                            % (b,))
        out.append((b[0], b[1], b[2]))
    return out


def status_label(st: "Dict[str, Any]") -> str:
    """Return: "HOST, memagent VERSION, YYYY-MM-DD HH:MM:SS UTC" (the status's
    wall clock), with what the status lacks left out."""
    parts = [str(st.get("host") or "status")]
    if st.get("version"):
        parts.append("memagent %s" % st["version"])
    wall = st.get("wall")
    if isinstance(wall, (int, float)) and not isinstance(wall, bool) and 0 < wall < 2 ** 33:
        parts.append("%04d-%02d-%02d %02d:%02d:%02d UTC" % tuple(time.gmtime(int(wall))[:6]))
    return ", ".join(parts)


def timeline_of_status(st: "Dict[str, Any]", low_kib: "Optional[int]" = None,
                       critical_kib: "Optional[int]" = None) -> Timeline:
    """Return: the Timeline of a status (schema 1): the history buckets as
    available memory and level, the events as marks, t=0 at ``now_ms``.

    Raises: PlotError: code 10 for a newer schema, 3 when no agent answered,
    2 when it has no history.
    """
    schema = int_or_none(st.get("schema"))
    if schema is not None and schema > STATUS_SCHEMA:
        raise PlotError("status schema %d is newer than this memagent reads (%d): update it"
                        % (schema, STATUS_SCHEMA), code=10)
    if st.get("running") is False:
        raise PlotError("no history: %s" % (st.get("agent") or "the agent is not running"),
                        code=3)
    history = st.get("history")
    buckets = _buckets(history)
    assert isinstance(history, dict)  # _buckets checked it
    if not buckets:
        raise PlotError("status: the history is empty (no reading yet)")
    step_ms = int_or_none(history.get("step_ms")) or 5000
    tl = Timeline(status_label(st))
    for i, (t_ms, avail_kib, level) in enumerate(buckets):
        if i and t_ms - buckets[i - 1][0] > step_ms:
            tl.avail.append((buckets[i - 1][0] + step_ms, None))  # a gap: no reading
        tl.avail.append((t_ms, avail_kib))
        tl.avail.append((t_ms + step_ms - 1, avail_kib))
        tl.levels.append((t_ms, t_ms + step_ms, level))
    reading = st.get("reading")
    tl.total_kib = int_or_none(reading.get("total_kib")) if isinstance(reading, dict) else None
    resolve_thresholds(tl, low_kib, critical_kib, found_thresholds(st.get("thresholds")))
    events = st.get("events")
    if not isinstance(events, list):  # before schema 1: "recent" and "actions"
        events = [e for e in (st.get("recent") or []) + (st.get("actions") or [])
                  if isinstance(e, dict)]
    add_events(tl, [e for e in (event_of(e) for e in events if isinstance(e, dict))
                    if e is not None and int_or_none(e.get("t_ms")) is not None])
    now_ms = int_or_none(history.get("now_ms"))
    tl.t0_ms = now_ms if now_ms is not None else buckets[-1][0] + step_ms
    tl.x_label = "time (s, 0 = when the status was taken)"
    return tl
