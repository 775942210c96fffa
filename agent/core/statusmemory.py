"""The memory section of ``memagent status``'s screen (statusview.py):
available memory and the headroom to LOW, a bar of anonymous memory, the
kernel's own, page cache and free memory, with marks where LOW and
CRITICAL start.  Pure, CPython and MicroPython alike.
"""

from .statusparts import (
    BOLD,
    CYAN,
    DIM,
    GREY,
    MAGENTA,
    RED,
    YELLOW,
    Line,
    as_dict,
    as_int,
    mib,
    percent,
)

try:
    from typing import Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass


def memory_lines(st: "Dict[Any, Any]", width: int, terminal: bool) -> "List[Line]":
    """Return: the memory section: available memory and the headroom to
    LOW, the bar, the LOW and CRITICAL marks, the legend."""
    r = as_dict(st.get("reading"))
    th = as_dict(st.get("thresholds"))
    total_kib, avail_kib = as_int(r.get("total_kib")), as_int(r.get("avail_kib"))
    low_kib, crit_kib = as_int(th.get("low_kib")), as_int(th.get("critical_kib"))
    head = Line("MEMORY ", BOLD).add("%s MiB" % mib(avail_kib), BOLD)
    head.add(" of %s MiB available (%s)" % (mib(total_kib), percent(avail_kib, total_kib)))
    if avail_kib is not None and low_kib is not None:
        if avail_kib >= low_kib:
            head.add(", headroom to LOW %s MiB" % mib(avail_kib - low_kib))
        else:
            head.add(", below LOW by %s MiB" % mib(low_kib - avail_kib), YELLOW)
    else:
        head.add(", headroom to LOW ? MiB")
    lines = [head]
    parts_kib = _bar_parts(r, total_kib)
    bar_w = width - 4
    if parts_kib is None or bar_w < 8:
        lines.append(Line("  [?] (no total or breakdown of memory)"))
        return lines
    lines.append(_bar(parts_kib, bar_w, terminal))
    lines += _marks(total_kib or 1, low_kib, crit_kib, bar_w, terminal)
    lines.append(_legend(parts_kib, terminal))
    return lines


# (name, plain mark, terminal mark, style), in the bar's order: what cannot be
# reclaimed on the left, what is available on the right.
BAR_KINDS = (("anon", "#", "\u2588", MAGENTA), ("kernel/other", ":", "\u2588", GREY),
             ("page cache", "=", "\u2588", CYAN), ("free", ".", "\u2591", DIM))


def _bar_parts(r: "Dict[Any, Any]", total: "Optional[int]") -> "Optional[List[int]]":
    """Return: KiB of anon, kernel/other, page cache and free memory, or None
    without a total and at least one of them."""
    anon, cache, free = (as_int(r.get(k)) for k in ("anon_kib", "file_kib", "free_kib"))
    if total is None or total <= 0 or (anon is None and cache is None and free is None):
        return None
    anon, cache, free = (max(x or 0, 0) for x in (anon, cache, free))
    other = max(total - anon - cache - free, 0)
    return [anon, other, cache, free]


def _bar(parts: "List[int]", bar_w: int, terminal: bool) -> Line:
    """Return: the bar line: each kind's share of ``bar_w`` columns."""
    whole = max(sum(parts), 1)
    line = Line("  [")
    done = cum = 0
    for kib, (_, plain, term, style) in zip(parts, BAR_KINDS):
        cum += kib
        edge = cum * bar_w // whole
        line.add((term if terminal else plain) * (edge - done), style if terminal else "")
        done = edge
    return line.add("]")


def _marks(total_kib: int, low_kib: "Optional[int]", crit_kib: "Optional[int]", bar_w: int,
           terminal: bool) -> "List[Line]":
    """Return: the line under the bar marking where LOW and CRITICAL start
    ("^L", "^C": available memory falls below the mark when the left part
    of the bar reaches it), the thresholds in MiB on its left when they fit
    there, else on a line of their own."""
    label = Line("  LOW < %s MiB available (L), CRITICAL < %s (C)"
                 % (mib(low_kib), mib(crit_kib)),
                 DIM if terminal else "")
    chars = [" "] * (bar_w + 1)
    styles = [""] * (bar_w + 1)
    first = bar_w
    for kib, name, style in ((crit_kib, "C", RED), (low_kib, "L", YELLOW)):
        if kib is None:
            continue
        col = min(max((total_kib - kib) * bar_w // total_kib, 0), bar_w - 1)
        while col > 0 and (chars[col] != " " or chars[col + 1] != " "):
            col -= 1
        chars[col], chars[col + 1] = ("\u25b2" if terminal else "^"), name
        styles[col] = styles[col + 1] = style if terminal else ""
        first = min(first, col)
    marks = Line("   ")
    for ch, style in zip(chars, styles):
        marks.add(ch, style)
    while marks.parts and marks.parts[-1][0] == " ":
        marks.parts.pop()
    if label.width() + 1 < first + 3:
        return [_overlay(label, marks)]
    return [marks, label]


def _overlay(label: Line, marks: Line) -> Line:
    """Return: ``marks`` with ``label`` written over its leading blanks."""
    out = Line()
    for t, s in label.parts:
        out.add(t, s)
    skip = label.width()
    for t, s in marks.parts:
        if skip >= len(t):
            skip -= len(t)
            continue
        out.add(t[skip:], s)
        skip = 0
    return out


def _legend(parts: "List[int]", terminal: bool) -> Line:
    """Return: the bar's legend: each kind's mark, name and MiB."""
    line = Line(" ")
    for kib, (name, plain, term, style) in zip(parts, BAR_KINDS):
        if name == "kernel/other" and kib == 0:
            continue
        line.add(" ")
        line.add(term if terminal else plain, style if terminal else "")
        line.add(" %s %s" % (name, mib(kib)))
    return line.add(" MiB")
