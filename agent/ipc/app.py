"""A registered app, its compliance record and its trims' audits.

The registry (:mod:`memagent.ipc.registry`) keeps one :class:`App` per
registered connection.  Its identity is the connection's: ``pid`` and
``uid`` from SO_PEERCRED and ``process``, the process bound when the
connection was accepted (:class:`memagent.core.pidref.ProcessRef`), whose
pidfd every use of the app checks first.
"""

from .. import aio
from ..core.pidref import ProcessRef
from .session import Peer, Session

try:
    from typing import Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass


class Compliance:
    """What an app was asked for, and what it said and did about it."""

    def __init__(self) -> None:
        self.asked = self.answered = self.late = self.timeouts = self.gone = 0
        self.asked_kib = self.claimed_kib = self.measured_kib = 0

    def as_dict(self) -> "Dict[str, int]":
        """Return: the counters, JSON-ready."""
        return dict(self.__dict__)


class TrimResult:
    """One trim request and its audit.

    ``outcome``: "answered", "timeout" (no answer by the deadline), "gone"
    (the client closed or unregistered) or "dropped" (it could not be sent).
    ``claimed_kib``: the app's ``freed_kib``, None without an answer.
    ``before_kib``/``after_kib``: footprints (smaps.py); ``after_kib`` None
    when the process is gone.  ``measured_kib``: before - after (after taken
    as 0 for a process that is gone), never below 0, None when
    ``before_kib`` is; ``grew_kib``: how much the footprint grew instead
    (the app allocated meanwhile: the log showed ``(2, 8686, -4)``), else 0.
    """

    def __init__(self, app: "App", trim_id: int, level: str, target_kib: int,
                 deadline_ms: int, before_kib: "Optional[int]") -> None:
        self.app_id, self.pid, self.name = app.app_id, app.pid, app.name
        self.trim_id, self.level = trim_id, level
        self.target_kib, self.deadline_ms = target_kib, deadline_ms
        self.outcome = "dropped"
        self.claimed_kib: "Optional[int]" = None
        self.before_kib = before_kib
        self.after_kib: "Optional[int]" = None
        self.measured_kib: "Optional[int]" = None
        self.grew_kib = 0
        self.waited_ms = 0

    def finish(self, after_kib: "Optional[int]", waited_ms: int) -> None:
        """Set the after-footprint and what it says was freed."""
        self.after_kib, self.waited_ms = after_kib, waited_ms
        if self.before_kib is not None:
            freed_kib = self.before_kib - (after_kib or 0)
            self.measured_kib, self.grew_kib = max(freed_kib, 0), max(-freed_kib, 0)

    def as_dict(self) -> "Dict[str, Any]":
        """Return: the result, JSON-ready."""
        return dict(self.__dict__)


class App:
    """A registered app.  ``pid``/``uid`` come from SO_PEERCRED, ``process``
    is the process bound at accept (owned by the session: closed with it),
    ``started`` its start time."""

    def __init__(self, app_id: int, session: Session, peer: Peer, process: ProcessRef,
                 name: str, cls: str, estimate_kib: "Optional[int]") -> None:
        self.app_id = app_id
        self.session = session
        self.pid, self.uid = peer.pid, peer.uid
        self.process = process
        self.started: "Optional[int]" = process.started
        self.name, self.cls, self.estimate_kib = name, cls, estimate_kib
        self.registered_ms = aio.ticks_ms()
        # Last time the app was in the foreground (or registered): the
        # least recently used background app is the first to go.
        self.last_active_ms = self.registered_ms
        self.compliance = Compliance()
        self.last_trim: "Optional[TrimResult]" = None
        self.expired: "List[int]" = []  # trim ids whose deadline passed

    def record(self, result: TrimResult) -> None:
        """Fold one trim's audit into the compliance record."""
        c = self.compliance
        c.asked += 1
        c.asked_kib += result.target_kib
        if result.outcome == "answered":
            c.answered += 1
            c.claimed_kib += result.claimed_kib or 0
        elif result.outcome == "timeout":
            c.timeouts += 1
        else:
            c.gone += 1
        c.measured_kib += max(result.measured_kib or 0, 0)
        self.last_trim = result

    def as_dict(self) -> "Dict[str, Any]":
        """Return: the app for ``status``, JSON-ready."""
        return {"app_id": self.app_id, "pid": self.pid, "uid": self.uid, "name": self.name,
                "identity": self.process.via,
                "class": self.cls, "estimate_kib": self.estimate_kib,
                "registered_ms": self.registered_ms,
                "last_active_ms": self.last_active_ms, "compliance": self.compliance.as_dict(),
                "last_trim": self.last_trim.as_dict() if self.last_trim else None}
