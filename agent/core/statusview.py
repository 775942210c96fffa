"""``memagent status`` for a person: one screen from a status object of
schema 1 (docs/status.md), in two modes.

* ``terminal``: colours (the level green, yellow or red), block characters;
* ``plain``: serial consoles and pipes: pure ASCII, no escape at all.

Sections: the header (host, version, the agent or why it is not running),
memory (a bar of anonymous memory, page cache and free memory with the LOW
and CRITICAL marks, the headroom to LOW), pressure (the level and how long
it has held, the fill rate and time left, the source and why), history
(sparklines of available memory and of the level), apps, events (reason
codes in words, dry-run kills said) and plugins.

A pure renderer, CPython and MicroPython alike: no I/O, no clock (the
status carries its own times).  Nothing in the status is trusted: a missing
or wrong-typed key shows as "?", text from the status cannot inject an
escape, and every line fits ``width_cols``.
"""

from .history import History, level_marks, sparkline
from .levels import LEVEL_NAMES
from .statuslists import apps_lines, event_lines, plugin_lines
from .statusmemory import memory_lines
from .statusparts import (
    BOLD,
    CYAN,
    DIM,
    LEVEL_STYLES,
    RED,
    Line,
    as_dict,
    as_int,
    as_list,
    clock_utc,
    duration_ms,
    emit,
    hundredths,
    mib,
    text,
    wrap,
)

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

MODES = ("plain", "terminal")
MIN_WIDTH_COLS = 20
MAX_WIDTH_COLS = 1000
MAX_UNAVAILABLE = 4


def render(st: "Any", mode: str = "plain", width_cols: int = 80, events_n: int = 10,
           apps_n: int = 8) -> str:
    """Return: the status ``st`` (a dict of schema 1; anything else shows
    as unknown) as one screen of text, lines joined by "\\n", no line wider
    than ``width_cols`` (within MIN_WIDTH_COLS..MAX_WIDTH_COLS), the last ``events_n``
    events and at most ``apps_n`` apps.  Raises: ValueError for a mode
    other than "plain" or "terminal"; never for the status's content."""
    if mode not in MODES:
        raise ValueError("mode %r: plain or terminal" % (mode,))
    terminal = mode == "terminal"
    width = min(max(as_int(width_cols) or 0, MIN_WIDTH_COLS), MAX_WIDTH_COLS)
    st = as_dict(st)
    events_n = max(as_int(events_n) or 0, 0)
    apps_n = max(as_int(apps_n) or 0, 1)
    view = View(st, terminal, width)
    lines = view.section("header", _header_lines)
    lines += view.section("MEMORY", lambda v: memory_lines(v.st, v.width, v.terminal))
    lines += view.section("PRESSURE", _pressure_lines)
    if _running(st) is False:
        lines.append(Line("(no agent: no history, apps, events or plugins to show)", DIM))
    else:
        lines += view.section("HISTORY", _history_lines)
        lines += view.section("APPS", lambda v: apps_lines(v.st, v.width, apps_n))
        lines += view.section("EVENTS", lambda v: event_lines(v.st, v.now_ms, events_n))
        lines += view.section("PLUGINS", lambda v: plugin_lines(v.st, v.width))
    return "\n".join(emit(line, terminal, width) for line in lines) + "\n"


class View:
    """What the sections share: the status, the mode, the width and the
    status's own "now" (its newest time in ms)."""

    def __init__(self, st: "Dict[Any, Any]", terminal: bool, width: int) -> None:
        self.st = st
        self.terminal = terminal
        self.width = width
        self.now_ms = newest_ms(st)

    def section(self, title: str, build: "Any") -> "List[Line]":
        """Return: the lines ``build(self)`` makes; if it fails after all
        (a bug: the sections check every key), one line saying so, never
        an exception."""
        try:
            return list(build(self))
        except Exception as e:  # the screen must come up whatever the status holds
            return [Line(title + " ? (cannot show: %s)" % type(e).__name__, RED)]


def newest_ms(st: "Dict[Any, Any]") -> "Optional[int]":
    """Return: the status's newest time on the agent's clock (history's
    now_ms, the reading's t_ms, the last event's t_ms), None if none."""
    times = [as_int(as_dict(st.get("history")).get("now_ms")),
             as_int(as_dict(st.get("reading")).get("t_ms"))]
    events = as_list(st.get("events"))
    if events:
        times.append(as_int(as_dict(events[-1]).get("t_ms")))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _running(st: "Dict[Any, Any]") -> "Optional[bool]":
    """Return: False when no agent answered, True when one did, None if the
    status does not say (an older one: "agent" then says not running)."""
    running = st.get("running")
    if isinstance(running, bool):
        return running
    agent = st.get("agent")
    if isinstance(agent, str) and agent.startswith("not running"):
        return False
    return True if as_int(st.get("pid")) is not None else None


def level_style(level: "Any") -> str:
    """Return: the colour of a level name ("" for an unknown one)."""
    return LEVEL_STYLES.get(level, "") if isinstance(level, str) else ""


# -- header ------------------------------------------------------------------------


def _header_lines(v: View) -> "List[Line]":
    """Return: the header: host, version, the device's clock, and the
    agent's pid and uptime, or agent NOT RUNNING and, below, why in the
    status's own words (and where the level then comes from)."""
    st = v.st
    line = Line("memagent ", BOLD).add(text(st.get("version")), BOLD)
    line.add(" on ").add(text(st.get("host")), BOLD)
    if st.get("wall") is not None:
        line.add(" at " + clock_utc(st.get("wall")))
    running = _running(st)
    if running is False:
        line.add(" | ").add("agent NOT RUNNING", RED)
        why = text(st.get("agent"), "(no reason given)")
        return [line] + wrap(Line("  " + why), v.width, 4)
    uptime_s = as_int(st.get("uptime_s"))
    line.add(" | agent pid %s, up %s" % (text(st.get("pid")),
                                        duration_ms(None if uptime_s is None else uptime_s * 1000)))
    return [line]


# -- pressure and history ---------------------------------------------------------------


def _pressure_lines(v: View) -> "List[Line]":
    """Return: the pressure section: the level and how long it has held,
    the fill rate and time left, the source and why, the sources that
    cannot run, PSI and the counts of readings and notifications."""
    st = v.st
    level = st.get("level")
    head = Line("PRESSURE", BOLD).add(" ")
    head.add(text(level), level_style(level) or BOLD)
    since = st.get("level_since_ms")
    if _running(st) is False:
        head.add(" (computed now, without the agent's history)")
    else:
        head.add(" for " + duration_ms(since) if since is not None else " (held for ?)")
        head.add("; " + _fill_words(st))
    lines = [head] + wrap(_source_line(st), v.width, 4)
    gone = as_dict(st.get("unavailable"))
    if gone:
        lines += _unavailable_lines(gone)
    r = as_dict(st.get("reading"))
    some, full = r.get("psi_some_avg10"), r.get("psi_full_avg10")
    tail = "%s readings, %s notifications" % (text(st.get("readings")),
                                              text(st.get("notifications")))
    if _running(st) is False:
        tail = ""
    if some is not None or full is not None:
        lines.append(Line("  PSI avg10 some %s%%, full %s%%" % (hundredths(some), hundredths(full))
                          + ("; " + tail if tail else "")))
    elif _running(st) is not False:
        lines.append(Line("  PSI: none from this kernel; " + tail))
    return lines


def _fill_words(st: "Dict[Any, Any]") -> str:
    """Return: the fill rate and time left in words: "filling 1.2 MiB/s,
    time left 2m05s", "steady", "recovering 0.5 MiB/s", "fill rate ?"."""
    fill_kib_s = as_int(st.get("fill_kib_s"))
    eta_ms = st.get("eta_ms")
    if fill_kib_s is None:
        return "fill rate ?" if eta_ms is None else "time left " + duration_ms(eta_ms)
    total_kib = as_int(as_dict(st.get("reading")).get("total_kib")) or 0
    # levels.Monitor's noise: below it, slab and page tables come and go
    noise_kib_s = max(total_kib // 1000, 1)
    if fill_kib_s > noise_kib_s:
        words = "filling %s MiB/s" % mib(fill_kib_s)
        return words + (", time left " + duration_ms(eta_ms) if eta_ms is not None else "")
    if fill_kib_s < -noise_kib_s:
        return "recovering %s MiB/s" % mib(-fill_kib_s)
    return "steady"


def _source_line(st: "Dict[Any, Any]") -> Line:
    """Return: the source in use and why it was chosen."""
    source = st.get("source")
    why = st.get("source_why")
    if source is None:
        if _running(st) is False:
            return Line("  source: none (no agent runs)")
        return Line("  source: none yet (sensing has not started)")
    line = Line("  source ").add(text(source), BOLD)
    return line.add(": " + text(why) if why is not None else " (why: ?)")


def _unavailable_lines(gone: "Dict[Any, Any]") -> "List[Line]":
    """Return: the sources that cannot run here, one line each (at most
    MAX_UNAVAILABLE), with their why cut short at a parenthesis."""
    keys = sorted(text(k) for k in gone)
    lines: "List[Line]" = []
    for key in keys[:MAX_UNAVAILABLE]:
        why = text(gone.get(key))
        if why.startswith(key + ": "):
            why = why[len(key) + 2:]  # the sources prefix their own name
        lead = "  unavailable: " if not lines else " " * 15
        lines.append(Line(lead + key + ": " + why.split(" (")[0], DIM))
    if len(keys) > MAX_UNAVAILABLE:
        lines.append(Line(" " * 15 + "... and %d more" % (len(keys) - MAX_UNAVAILABLE), DIM))
    return lines


def _history_lines(v: View) -> "List[Line]":
    """Return: the history section: its span, a sparkline of the lowest
    available memory and a line of the highest level, per column of one or
    more of the ring's buckets (folded to fit the width); blanks where no
    reading came."""
    h = v.st.get("history")
    if not isinstance(h, dict):
        return [Line("HISTORY", BOLD).add(" ? (this agent keeps no history)")]
    step_ms, now_ms = as_int(h.get("step_ms")), as_int(h.get("now_ms"))
    buckets = _good_buckets(h.get("buckets"))
    if step_ms is None or step_ms < 1 or now_ms is None:
        return [Line("HISTORY", BOLD).add(" ? (no step_ms or now_ms)")]
    if not buckets:
        return [Line("HISTORY", BOLD).add(" no reading in the ring yet")]
    room = max(v.width - 35, 8)  # the level line ends with its 26-column legend
    span_steps = max((now_ms - min(b[0] for b in buckets)) // step_ms + 1, 1)
    fold = (span_steps + room - 1) // room
    cols = min((span_steps + fold - 1) // fold, room)
    ring = History(capacity=cols, step_ms=step_ms * fold)
    for t, a, lv in buckets:
        ring.add(t, a, lv)
    avail_kib, levels = ring.series(now_ms, cols)
    total_kib = as_int(as_dict(v.st.get("reading")).get("total_kib"))
    known_kib = [a for a in avail_kib if a is not None]
    top_kib = total_kib if total_kib is not None and total_kib > 0 else max(known_kib + [1])
    ascii_only = not v.terminal
    column_ms = fold * step_ms
    head = Line("HISTORY", BOLD).add(" last %s, %s a column; blank: no reading (the agent slept)"
                                     % (duration_ms(cols * column_ms), duration_ms(column_ms)))
    spark = Line("  avail ").add(sparkline(avail_kib, 0, top_kib, ascii_only),
                                 CYAN if v.terminal else "")
    if known_kib:
        spark.add(" min %s MiB" % mib(min(known_kib)))
    marks = Line("  level ")
    for mark, held in zip(level_marks(levels, ascii_only), levels):
        name = LEVEL_NAMES[max(0, min(held, 2))] if held is not None else ""
        marks.add(mark, level_style(name) if v.terminal else "")
    marks.add(" ")
    for lv, name in enumerate(LEVEL_NAMES):
        marks.add(" ").add(level_marks([lv], ascii_only), level_style(name) if v.terminal else "")
        marks.add(" " + name)
    return [head, spark, marks]


def _good_buckets(raw: "Any") -> "List[Tuple[int, int, int]]":
    """Return: the well-formed [t_ms, min_avail_kib, max_level] buckets of
    ``raw`` (at most the newest 4096), levels clamped to 0..2."""
    out = []
    for b in as_list(raw)[-4096:]:
        b = as_list(b)
        if len(b) < 3:
            continue
        t, a, lv = as_int(b[0]), as_int(b[1]), as_int(b[2])
        if t is not None and a is not None and lv is not None:
            out.append((t, a, max(0, min(lv, 2))))
    return out
