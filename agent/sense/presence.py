"""Is the user there?  The agent's view of user activity and the screen.

The plugin ``user_activity`` (it reads evdev nodes) calls :meth:`Activity.note_input`
on every input event; other code only asks :meth:`Activity.state`.  The
screen is read from the backlight's ``bl_power`` only when asked (no timer:
reading it at pressure time costs nothing while calm).

States: ``"active"`` (input within ``idle_after_ms``), ``"idle"`` (no input
for that long), ``"screen-off"`` (every matched backlight is powered down),
``"unknown"`` (nothing feeds input events and no backlight was found).
Policy code treats ``"unknown"`` like ``"active"``: without evidence that the
user is away, nothing is done earlier than it would be anyway.
"""

import os

try:
    from typing import Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass

ACTIVE, IDLE, SCREEN_OFF, UNKNOWN = "active", "idle", "screen-off", "unknown"


def expand_star(pattern: str) -> "List[str]":
    """Return: the existing paths matching ``pattern``, which may hold one
    ``*`` standing for a whole path component (``/sys/class/backlight/*/bl_power``);
    sorted.  No glob module: MicroPython has none."""
    if "*" not in pattern:
        return [pattern] if _exists(pattern) else []
    head, _, tail = pattern.partition("*")
    parent, _, prefix = head.rpartition("/")
    rest, sep, after = tail.partition("/")
    try:
        names = sorted(os.listdir(parent or "/"))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(prefix) and name.endswith(rest):
            path = (parent or "") + "/" + name + (sep + after if sep else "")
            if _exists(path):
                out.append(path)
    return out


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def screen_off(backlight_pattern: str) -> "Optional[bool]":
    """Return: True if every backlight matched has ``bl_power`` != 0 (powered
    down), False if one is on, None if none was found or readable."""
    seen = False
    for path in expand_star(backlight_pattern) if backlight_pattern else []:
        try:
            with open(path) as f:
                value = int(f.read().strip() or "0")
        except (OSError, ValueError):
            continue
        seen = True
        if value == 0:
            return False
    return True if seen else None


class Activity:
    """The last user input time, fed by the ``user_activity`` plugin."""

    def __init__(self, idle_after_ms: int = 60000,
                 backlight: str = "/sys/class/backlight/*/bl_power") -> None:
        self.idle_after_ms = idle_after_ms
        self.backlight = backlight
        self.last_input_ms: "Optional[int]" = None
        self.feeder: "Optional[str]" = None  # who calls note_input ("evdev")
        self.fed_since_ms = 0
        self.inputs = 0

    def configure(self, idle_after_ms: int, backlight: str) -> None:
        """Set how long without input means idle, and the backlights'
        ``bl_power`` pattern ("" for none) (``[user_activity]``, applied by
        that plugin at start)."""
        self.idle_after_ms, self.backlight = idle_after_ms, backlight

    def start_feeding(self, feeder: str, t_ms: int) -> None:
        """A plugin starts to report input as ``feeder``; the idle time
        counts from ``t_ms`` until the first input."""
        self.feeder, self.fed_since_ms = feeder, t_ms

    def stop_feeding(self) -> None:
        """The feeder stopped: the state is UNKNOWN again (unless the screen is off)."""
        self.feeder = None

    def note_input(self, t_ms: int) -> None:
        """Record a user input at ``t_ms`` (the agent's monotonic clock)."""
        self.last_input_ms = t_ms
        self.inputs += 1

    def idle_ms(self, now_ms: int) -> "Optional[int]":
        """Return: ms since the last input, or None if none was seen."""
        return None if self.last_input_ms is None else now_ms - self.last_input_ms

    def state(self, now_ms: int) -> str:
        """Return: ACTIVE, IDLE, SCREEN_OFF or UNKNOWN (see the module docstring)."""
        if screen_off(self.backlight):
            return SCREEN_OFF
        if self.feeder is None:
            return UNKNOWN
        since = self.fed_since_ms if self.last_input_ms is None else self.last_input_ms
        return ACTIVE if now_ms - since < self.idle_after_ms else IDLE

    def user_away(self, now_ms: int) -> bool:
        """Return: True if the user is known to be away (idle or screen off)."""
        return self.state(now_ms) in (IDLE, SCREEN_OFF)

    def as_dict(self, now_ms: int) -> "Dict[str, Any]":
        """Return: the state for ``memagent status``."""
        return {"state": self.state(now_ms), "idle_ms": self.idle_ms(now_ms),
                "feeder": self.feeder, "inputs": self.inputs}
