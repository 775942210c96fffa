"""The event log: what happened to memory and what was done about it.

Notifications (level changes and reminders, as the dispatcher's first view),
actions (trims, kills, source switches: :meth:`EventLog.record_action`) and
plugin errors (:meth:`EventLog.plugin_error`) go to four places: one ring of
the last RECENT_EVENTS of them, numbered (``seq``) and marked with their
``kind``, for ``memagent status`` and ``memagent events`` (the control
socket's ``events`` request: :meth:`EventLog.since`); the last RECENT_NOTES
/ RECENT_ACTIONS notifications and actions (the older ``recent`` and
``actions`` of the status); the ``--events-json`` file (one JSON object per
line; actions have an ``"action"`` key, and so do plugin errors:
``"action": "plugin_error"``) and the log (level changes and
actions at WARNING).
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
# The status's "events" and what a follower can catch up on.  Entries are
# dicts of about ten keys: the three rings full (64 events, 16 notes, 16
# actions) held 41.5 KiB on CPython 3.11 (tests/test_eventlog.py, 2026-12-07).
RECENT_EVENTS = 64


class EventLog:
    """The recent notifications and actions, and where they are written."""

    def __init__(self, out: "Optional[IO[str]]" = None) -> None:
        self.out = out
        self.recent: "List[Dict[str, Any]]" = []
        self.actions: "List[Dict[str, Any]]" = []
        self.events: "List[Dict[str, Any]]" = []  # every kind, numbered, oldest first
        self.seq = 0  # the newest entry's number (0: none yet)

    def _keep(self, kind: str, obj: "Dict[str, Any]") -> "Dict[str, Any]":
        """Number ``obj`` and keep it in the ring of every kind.  Returns:
        the ring's entry (``obj`` with ``seq`` and ``kind``)."""
        self.seq += 1
        entry = dict(obj, seq=self.seq, kind=kind)
        self.events.append(entry)
        del self.events[:-RECENT_EVENTS]
        return entry

    def since(self, after_seq: int, max_count: int = RECENT_EVENTS) -> "List[Dict[str, Any]]":
        """Return: the kept entries numbered above ``after_seq``, oldest
        first, at most ``max_count`` (the oldest of them).  A follower that
        gets a first ``seq`` above ``after_seq + 1`` lost the ones between."""
        out = [e for e in self.events if e["seq"] > after_seq]
        return out[:max(max_count, 0)]

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
        self._keep("level", obj)
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
        self._keep("action", obj)
        log.warning("action %s: %s", action,
                    ", ".join("%s=%s" % (k, fields[k]) for k in sorted(fields)))
        self._write(obj)
        return obj

    def plugin_error(self, plugin: str, hook: str, error: str) -> None:
        """Keep a plugin's failure (it raised, timed out, was disabled) in
        the ring and the events file; the dispatcher has logged it."""
        obj = {"t_ms": aio.ticks_ms(), "wall": round(time.time(), 3), "plugin": plugin,
               "hook": hook, "error": error}
        # the events file's readers take a line without "action" for a
        # notification (the guest's ramp scenario did, and failed on it)
        self._write(dict(obj, action="plugin_error"))
        self._keep("plugin_error", obj)

    @property
    def last_action(self) -> "Optional[Dict[str, Any]]":
        """Return: the newest :meth:`record_action` entry, or None."""
        return self.actions[-1] if self.actions else None
