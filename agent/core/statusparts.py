"""The pieces of ``memagent status``'s screen (statusview.py): reading a
status object that may be old or hostile without trusting a single key,
figures with units, durations, the legend of reason codes, and lines of
styled text clipped to the screen's width.

Pure and deterministic, CPython and MicroPython alike: no I/O, no clock,
no float formatting (figures are integer arithmetic, so both interpreters
print the same digits).
"""

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

INF = float("inf")
# Beyond any real KiB, ms or pid figure: shown as plain digits, never
# through a float (a huge int would overflow it).
BIG = 10 ** 15

# ANSI SGR styles (terminal mode only).
BOLD = "1"
DIM = "2"
GREEN = "32"
YELLOW = "33"
RED = "1;31"  # CRITICAL, a kill
ERROR = "31"  # errors, a disabled plugin
CYAN = "36"
MAGENTA = "35"
GREY = "90"
LEVEL_STYLES = {"NORMAL": GREEN, "LOW": YELLOW, "CRITICAL": RED}

# The reason codes of core/levels.py (Monitor._target, Monitor.update), in words.
REASONS = {
    "avail": "available under threshold",
    "lead-time": "would run out within lead time",
    "thrash": "thrashing (PSI full high)",
    "recovered": "recovered over recover threshold",
    "still": "still held",
}
# The kernel events of levels.KERNEL_SHORTAGE_EVENTS ("kernel:<event>").
KERNEL_EVENTS = {
    "mem_notify": "/dev/mem_notify fired",
    "psi": "PSI trigger fired",
    "vmpressure:critical": "critical vmpressure",
    "events:max": "memcg hit memory.max",
    "events:oom": "memcg out of memory",
    "events:oom_kill": "OOM kill in the memcg",
}


# -- reading a status that may be hostile ----------------------------------------------


def as_int(value: "Any") -> "Optional[int]":
    """Return: ``value`` as an int (a finite float truncated), or None for
    anything else (bool, str, None, NaN, infinity, containers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value == INF or value == -INF:
            return None
        return int(value)
    return None


def as_dict(value: "Any") -> "Dict[Any, Any]":
    """Return: ``value`` if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: "Any") -> "List[Any]":
    """Return: ``value`` if it is a list (or tuple, as a list), else an empty list."""
    if isinstance(value, list):
        return value
    return list(value) if isinstance(value, tuple) else []


def text(value: "Any", default: str = "?") -> str:
    """Return: ``value`` as text: a str as it is, a number in digits,
    ``default`` for None and anything else (containers are not dumped)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = as_int(value)
    if number is not None and not isinstance(value, float):
        return "%d" % number
    if isinstance(value, float) and number is not None:
        return hundredths(value)
    return default


# -- figures ----------------------------------------------------------------------------


def _tenths(numerator: int, denominator: int) -> str:
    """Return: numerator/denominator rounded to one decimal, half away from zero."""
    sign = "-" if numerator < 0 else ""
    t = (abs(numerator) * 10 * 2 + denominator) // (2 * denominator)
    return "%s%d.%d" % (sign, t // 10, t % 10)


def mib(kib: "Any") -> str:
    """Return: KiB as MiB with one decimal ("1512.3"), "?" if not a number."""
    n = as_int(kib)
    if n is None:
        return "?"
    if abs(n) >= BIG:
        return "%d" % (n // 1024)
    return _tenths(n, 1024)


def hundredths(value: "Any") -> str:
    """Return: a number with two decimals ("0.37"), "?" if not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    if as_int(value) is None:
        return "?"
    if abs(value) >= BIG:
        return "%d" % int(value)
    sign = "-" if value < 0 else ""
    h = int(abs(value) * 100 + 0.5)
    return "%s%d.%02d" % (sign, h // 100, h % 100)


def percent(part: "Optional[int]", whole: "Optional[int]") -> str:
    """Return: part of whole in whole percent ("76%"), "?%" when unknown."""
    if part is None or whole is None or whole <= 0:
        return "?%"
    return "%d%%" % (part * 100 // whole)


def duration_ms(ms: "Any") -> str:
    """Return: a duration the way a person reads it: "4.2s", "45s",
    "2m05s", "3h02m", "4d07h"; "?" if not a number or negative."""
    n = as_int(ms)
    if n is None or n < 0:
        return "?"
    if n < 10000:
        return "%d.%ds" % (n // 1000, n % 1000 // 100)
    s = n // 1000
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def ago_ms(t_ms: "Any", now_ms: "Optional[int]") -> str:
    """Return: ``t_ms`` relative to ``now_ms``: "-12s" (before), "+1.0s"
    (after: a clock that went back), "?" when either is unknown."""
    t = as_int(t_ms)
    if t is None or now_ms is None:
        return "?"
    if t > now_ms:
        return "+" + duration_ms(t - now_ms)
    return "-" + duration_ms(now_ms - t)


def clock_utc(wall_s: "Any") -> str:
    """Return: seconds since the epoch as "HH:MM:SS UTC", "?" if unknown."""
    n = as_int(wall_s)
    if n is None or n < 0:
        return "?"
    s = n % 86400
    return "%02d:%02d:%02d UTC" % (s // 3600, s % 3600 // 60, s % 60)


def reason_words(code: "Any") -> str:
    """Return: a reason code in words: "avail" -> "available under
    threshold", "kernel:psi" -> "kernel: PSI trigger fired"; a kill's
    "LOW avail" -> "LOW: available under threshold"; unknown codes as they are."""
    if not isinstance(code, str):
        return "?"
    if code in REASONS:
        return REASONS[code]
    if code.startswith("kernel:"):
        event = code[7:]
        return "kernel: " + KERNEL_EVENTS.get(event, event)
    head, _, rest = code.partition(" ")
    if rest and head in LEVEL_STYLES:
        return head + ": " + reason_words(rest)
    return code


def pad(value: str, width: int) -> str:
    """Return: ``value`` padded with blanks on the right to ``width``."""
    return value + " " * (width - len(value))


def rpad(value: str, width: int) -> str:
    """Return: ``value`` padded with blanks on the left to ``width``."""
    return " " * (width - len(value)) + value


def shorten(value: str, width: int) -> str:
    """Return: ``value`` cut to ``width`` characters, its end marked "~"."""
    if len(value) <= width:
        return value
    return value[:max(width - 1, 0)] + "~" if width > 0 else ""


# -- lines ------------------------------------------------------------------------------


class Line:
    """One screen line: runs of (text, style), style an ANSI SGR code or ""."""

    def __init__(self, first: str = "", style: str = "") -> None:
        self.parts: "List[Tuple[str, str]]" = []
        if first:
            self.parts.append((first, style))

    def add(self, more: str, style: str = "") -> "Line":
        """Append a run.  Returns: the line itself."""
        if more:
            self.parts.append((more, style))
        return self

    def width(self) -> int:
        """Return: the line's width in characters (one column each)."""
        return sum(len(t) for t, _ in self.parts)


def _split(line: Line, col: int) -> "Tuple[Line, Line]":
    """Return: ``line`` cut at column ``col`` into two lines, styles kept."""
    head, tail = Line(), Line()
    for t, s in line.parts:
        if col >= len(t):
            head.add(t, s)
        elif col <= 0:
            tail.add(t, s)
        else:
            head.add(t[:col], s)
            tail.add(t[col:], s)
        col -= len(t)
    return head, tail


def wrap(line: Line, width: int, indent: int, max_lines: int = 2) -> "List[Line]":
    """Return: ``line`` broken at blanks into at most ``max_lines`` lines of
    ``width``, the next ones indented by ``indent``; the last one may still
    be too long (emit cuts it)."""
    out: "List[Line]" = []
    while len(out) < max_lines - 1 and line.width() > width:
        flat = "".join(t for t, _ in line.parts)
        col = flat.rfind(" ", indent + 1, width + 1)
        if col <= indent:
            break
        head, tail = _split(line, col)
        out.append(head)
        rest = "".join(t for t, _ in tail.parts)
        line = Line(" " * indent)
        _, kept = _split(tail, len(rest) - len(rest.lstrip(" ")))
        line.parts += kept.parts
    out.append(line)
    return out


def _shown_on_terminal(code: int) -> bool:
    """Return: True for a character a terminal shows in one column: Latin,
    Greek, Cyrillic and the like, and the arrows, boxes, blocks and
    ellipsis the screen draws itself; not controls, not wide scripts."""
    return (0xA0 <= code < 0x300 or 0x370 <= code < 0x1100 or code == 0x2026
            or 0x2190 <= code < 0x2200 or 0x2500 <= code < 0x2600)


def clean(value: str, terminal: bool) -> str:
    """Return: ``value`` with every character that could move the cursor,
    start an escape or take two columns (and in plain mode every non-ASCII
    one) replaced by "?": the same length, so widths hold."""
    for ch in value:
        if not " " <= ch <= "~":
            break
    else:
        return value  # the common case: printable ASCII already
    out = []
    for ch in value:
        code = ord(ch)
        ok = 0x20 <= code < 0x7F or (terminal and _shown_on_terminal(code))
        out.append(ch if ok else "?")
    return "".join(out)


def emit(line: Line, terminal: bool, width_cols: int) -> str:
    """Return: ``line`` as text at most ``width_cols`` columns wide (an
    overlong line cut, its end marked "~", or an ellipsis on a terminal),
    styled with ANSI escapes on a terminal, pure ASCII in plain mode."""
    parts = [(clean(t, terminal), s) for t, s in line.parts]
    total = sum(len(t) for t, _ in parts)
    if total > width_cols:
        room = max(width_cols - 1, 0)
        cut = []
        for t, s in parts:
            if room <= 0:
                break
            cut.append((t[:room], s))
            room -= len(t[:room])
        if width_cols > 0:
            cut.append(("\u2026" if terminal else "~", ""))
        parts = cut
    if not terminal:
        return "".join(t for t, _ in parts).rstrip()
    runs: "List[Tuple[str, str]]" = []
    for t, s in parts:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0] + t, s)  # one escape for a run of one style
        else:
            runs.append((t, s))
    return "".join("\x1b[%sm%s\x1b[0m" % (s, t) if s and t else t for t, s in runs).rstrip()
