"""The event log: what happened to memory and what was done about it.

Notifications (level changes and reminders, as the dispatcher's first view)
and actions (kills, source switches: :meth:`EventLog.record_action`) go to
three places: the last RECENT_NOTES / RECENT_ACTIONS of each for
``memagent status``, the ``--events-json`` file (one JSON object per line;
actions have an ``"action"`` key) and the log (level changes and actions
at WARNING).
"""

import json
import time

from .. import aio
from ..core.levels import Notification, level_name
from ..core.logs import get_logger

try:
    from typing import IO, Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass

log = get_logger("memagent")

RECENT_NOTES = 16
RECENT_ACTIONS = 16


class EventLog:
    """The recent notifications and actions, and where they are written."""

    def __init__(self, out: "Optional[IO[str]]" = None) -> None:
        self.out = out
        self.recent: "List[Dict[str, Any]]" = []
        self.actions: "List[Dict[str, Any]]" = []

    def _write(self, obj: "Dict[str, Any]") -> None:
        if self.out is not None:
            self.out.write(json.dumps(obj) + "\n")
            self.out.flush()

    def note(self, note: Notification) -> None:
        """A view of the dispatcher: keep, log (a change) and write ``note``."""
        obj = note.as_dict()
        obj["wall"] = round(time.time(), 3)
        self.recent.append(obj)
        del self.recent[:-RECENT_NOTES]
        if note.level != note.prev_level:
            log.warning("level %s (was %s): %s, available %d KiB of %d KiB, eta %s",
                        level_name(note.level), level_name(note.prev_level), note.reason,
                        note.avail_kib, note.total_kib,
                        "-" if note.eta_ms is None else "%d ms" % note.eta_ms)
        self._write(obj)

    def record_action(self, action: str, **fields: "Any") -> "Dict[str, Any]":
        """Log what was done about memory (a kill, a source switch...).
        Returns: the entry, a dict with ``action``, ``t_ms`` (the agent's
        monotonic clock), ``wall`` and ``fields``."""
        obj: "Dict[str, Any]" = {"action": action, "t_ms": aio.ticks_ms(),
                                 "wall": round(time.time(), 3)}
        obj.update(fields)
        self.actions.append(obj)
        del self.actions[:-RECENT_ACTIONS]
        log.warning("action %s: %s", action,
                    ", ".join("%s=%s" % (k, fields[k]) for k in sorted(fields)))
        self._write(obj)
        return obj

    @property
    def last_action(self) -> "Optional[Dict[str, Any]]":
        """Return: the newest :meth:`record_action` entry, or None."""
        return self.actions[-1] if self.actions else None
