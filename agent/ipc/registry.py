"""The app registry: who is connected, who they are, and what they really free.

Identity is the connection's SO_PEERCRED (pid, uid, gid), read once when the
client connects (:mod:`memagent.ipc.session`); nothing in a message can
change it.  One app per connection; closing the connection unregisters it.
Trusted clients are uid 0 and ``[apps] ui_uid`` (the UI shell): only they
may enter a protected class or say which pid is in the foreground (rules:
:mod:`memagent.core.classes`).

:meth:`AppRegistry.trim` asks one app to free memory and audits the answer:
the ``measure`` the registry was built with (the runtime gives it
:func:`memagent.sense.footprint.footprint_kib`) is taken before and after,
so an app that claims more than it frees is caught.  Sending never blocks
the agent: a client whose output buffer is full is dropped.  Who registers
and who goes is told to ``on_change`` (the runtime turns it into the
plugins' ``on_app_registered`` and ``on_app_gone``).
"""

from .. import aio
from ..core.classes import may_register_as, may_set_class
from ..core.levels import LEVEL_NAMES
from ..core.logs import get_logger
from ..core.protocol import MAX_INT, ProtocolError, level_event, trim_request
from .session import Peer, Session, peer_of, process_start

try:
    from typing import Any, Callable, Dict, List, Optional, Union

    # pid, its start time -> the process's footprint in KiB, None if gone
    Measure = Callable[[int, Optional[int]], Optional[int]]
    Listener = Callable[[str, "App"], None]
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.apps")

NO_UID = -1  # [apps] ui_uid when no UI shell is trusted
RECENT_TRIM_IDS = 8  # expired trim ids kept per app, so late answers are known


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
    as 0 for a process that is gone), None when ``before_kib`` is.
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
        self.waited_ms = 0

    def finish(self, after_kib: "Optional[int]", waited_ms: int) -> None:
        """Set the after-footprint and what it says was freed."""
        self.after_kib, self.waited_ms = after_kib, waited_ms
        if self.before_kib is not None:
            self.measured_kib = self.before_kib - (after_kib or 0)

    def as_dict(self) -> "Dict[str, Any]":
        """Return: the result, JSON-ready."""
        return dict(self.__dict__)


class App:
    """A registered app.  ``pid``/``uid`` come from SO_PEERCRED."""

    def __init__(self, app_id: int, session: Session, peer: Peer, name: str, cls: str,
                 estimate_kib: "Optional[int]", proc_root: str) -> None:
        self.app_id = app_id
        self.session = session
        self.pid, self.uid = peer.pid, peer.uid
        self.started = process_start(peer.pid, proc_root)  # tells a reused pid apart
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
                "class": self.cls, "estimate_kib": self.estimate_kib,
                "registered_ms": self.registered_ms,
                "last_active_ms": self.last_active_ms, "compliance": self.compliance.as_dict(),
                "last_trim": self.last_trim.as_dict() if self.last_trim else None}


class _Pending:
    """A trim request in flight: set ``event`` once it is settled."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.event = aio.Event()
        self.claimed_kib: "Optional[int]" = None
        self.gone = False


def _forbidden(message: str) -> ProtocolError:
    return ProtocolError("forbidden", message)


class AppRegistry:
    """Registered apps and level subscribers, bounded by ``max_apps``.

    Methods called for a request raise ProtocolError (code "forbidden",
    "not_registered", "busy" or "unknown_trim") for the server to reply with.
    """

    def __init__(self, ui_uid: int = NO_UID, max_apps: int = 64,
                 proc_root: str = "/proc", measure: "Optional[Measure]" = None,
                 on_change: "Optional[Listener]" = None) -> None:
        self.ui_uid = ui_uid
        self.max_apps = max_apps
        self.proc_root = proc_root
        self.measure = measure  # None: trims are not audited
        self.on_change = on_change  # ("registered" or "gone", the app)
        self._sessions: "List[Session]" = []  # bounded by the server's connection cap
        self._pending: "Dict[int, _Pending]" = {}
        self._next_app_id = 1
        self._next_trim_id = 1
        self.events_sent = self.subscribers_dropped = self.trims = 0
        self.foreground_pid: "Optional[int]" = None  # the last `foreground` pid, registered or not

    # -- connections ---------------------------------------------------------------

    def open_session(self, writer: "Any", peer: "Optional[Peer]" = None) -> Session:
        """Return: a new session for a connection, with its peer credentials
        (``peer``, else read from the socket)."""
        session = Session(peer if peer is not None else peer_of(writer), writer)
        self._sessions.append(session)
        return session

    def close_session(self, session: Session) -> None:
        """Forget a connection: unregister its app, end its subscription."""
        if session.app is not None:
            self._remove(session.app)
        session.levels = None
        if session in self._sessions:
            self._sessions.remove(session)

    def trusted(self, peer: "Optional[Peer]") -> bool:
        """Return: True for root and the configured UI shell uid."""
        return peer is not None and (peer.uid == 0 or
                                     (self.ui_uid != NO_UID and peer.uid == self.ui_uid))

    # -- requests --------------------------------------------------------------------

    def register(self, session: Session, name: str, cls: str,
                 estimate_kib: "Optional[int]") -> App:
        """Register the connection's app, or update it (within policy) if it
        already registered.  Returns: the app.  Raises: ProtocolError."""
        peer, trusted = session.peer, self.trusted(session.peer)
        if peer is None:
            raise _forbidden("register: the agent cannot read this socket's credentials")
        if not may_register_as(cls, trusted):
            raise _forbidden("register: %r needs a trusted client" % cls)
        app = session.app
        if app is not None:
            if not may_set_class(app.cls, cls, trusted):
                raise _forbidden("register: an untrusted client may not raise its class "
                                 "(now %r)" % app.cls)
            app.name, app.cls, app.estimate_kib = name, cls, estimate_kib
            return app
        if len(self.apps()) >= self.max_apps:
            raise ProtocolError("busy", "register: the agent already serves %d apps "
                                "([apps] max_apps)" % self.max_apps)
        app = App(self._next_app_id, session, peer, name, cls, estimate_kib, self.proc_root)
        self._next_app_id += 1
        session.app = app
        log.info("app %d registered: %r pid %d uid %d class %s", app.app_id, name,
                 app.pid, app.uid, cls)
        self._tell("registered", app)
        return app

    def _tell(self, what: str, app: App) -> None:
        """Tell ``on_change`` that ``app`` was ``what``; its errors are logged."""
        if self.on_change is None:
            return
        try:
            self.on_change(what, app)
        except Exception as e:  # a listener's bug must not fail a client's request
            log.error("app %s listener failed: %s: %s", what, type(e).__name__, e)

    def _app_of(self, session: Session, cmd: str) -> App:
        """Return: the session's app.  Raises: ProtocolError if none."""
        if session.app is None:
            raise ProtocolError("not_registered", "%s: register first" % cmd)
        return session.app

    def unregister(self, session: Session) -> App:
        """Remove the connection's app.  Returns: it.  Raises: ProtocolError."""
        app = self._app_of(session, "unregister")
        self._remove(app)
        return app

    def _remove(self, app: App) -> None:
        """Forget ``app``; its trims in flight end as "gone"."""
        app.session.app = None
        for pending in self._pending.values():
            if pending.app is app:
                pending.gone = True
                pending.event.set()
        log.info("app %d unregistered: %r pid %d", app.app_id, app.name, app.pid)
        self._tell("gone", app)

    def set_class(self, session: Session, cls: str) -> App:
        """Change the app's class.  Returns: the app.  Raises: ProtocolError
        ("forbidden" when protocol.may_set_class says no)."""
        app = self._app_of(session, "set_class")
        trusted = self.trusted(session.peer)
        if not may_register_as(cls, trusted):
            raise _forbidden("set_class: %r needs a trusted client" % cls)
        if not may_set_class(app.cls, cls, trusted):
            raise _forbidden("set_class: an untrusted client may only keep or lower its "
                             "class (now %r)" % app.cls)
        app.cls = cls
        return app

    def foreground(self, session: Session, pid: int) -> "List[App]":
        """Mark the apps of process ``pid`` foreground; other foreground apps
        become "visible".  Returns: the apps of ``pid`` (maybe none: the
        process need not be registered).  Raises: ProtocolError unless trusted."""
        if not self.trusted(session.peer):
            raise _forbidden("foreground: needs a trusted client (root or [apps] ui_uid)")
        marked = []
        now_ms = aio.ticks_ms()
        self.foreground_pid = pid
        for app in self.apps():
            if app.pid == pid:
                app.cls = "foreground"
                app.last_active_ms = now_ms
                marked.append(app)
            elif app.cls == "foreground":
                app.cls = "visible"
                app.last_active_ms = now_ms
        return marked

    def subscribe(self, session: Session, levels: "List[str]") -> None:
        """Send ``level`` events for ``levels`` to this connection (replaces
        an earlier subscription)."""
        session.levels = list(levels)

    def answer(self, session: Session, trim_id: int, freed_kib: int) -> None:
        """Take an app's ``trimmed``.  A late answer (its deadline passed) is
        accepted and counted as late.  Raises: ProtocolError
        ("not_registered", or "unknown_trim" for an id not sent to this app)."""
        app = self._app_of(session, "trimmed")
        pending = self._pending.get(trim_id)
        if pending is not None and pending.app is app and not pending.event.is_set():
            pending.claimed_kib = freed_kib
            pending.event.set()
        elif trim_id in app.expired:
            app.expired.remove(trim_id)
            app.compliance.late += 1
        else:
            raise ProtocolError("unknown_trim", "trimmed: trim_id %d was not sent to this "
                                "app, or was already answered" % trim_id, "trim_id")

    # -- views -------------------------------------------------------------------------

    def apps(self) -> "List[App]":
        """Return: the registered apps, oldest first."""
        return sorted((s.app for s in self._sessions if s.app is not None),
                      key=lambda app: app.app_id)

    def snapshot(self) -> "Dict[str, Any]":
        """Return: the registry for ``status``, JSON-ready."""
        return {"max_apps": self.max_apps, "ui_uid": self.ui_uid,
                "connections": len(self._sessions),
                "subscribers": sum(1 for s in self._sessions
                                   if s.levels is not None and not s.dropped),
                "subscribers_dropped": self.subscribers_dropped,
                "events_sent": self.events_sent, "trims": self.trims,
                "trims_in_flight": len(self._pending),
                "apps": [app.as_dict() for app in self.apps()]}

    # -- agent -> apps ------------------------------------------------------------------

    def broadcast_level(self, note: "Any") -> int:
        """Send a ``level`` event for ``note`` (a levels.Notification) to
        the subscribers of its level, without waiting; a subscriber that
        cannot take it is dropped.  Returns: how many were sent."""
        name = LEVEL_NAMES[note.level]
        try:
            line = level_event(name, min(note.avail_kib, MAX_INT), min(note.total_kib, MAX_INT))
        except ProtocolError as e:
            log.error("level event not sent: %s", e)
            return 0
        sent = 0
        for session in list(self._sessions):
            if session.dropped or session.levels is None or name not in session.levels:
                continue
            if session.send(line):
                sent += 1
            else:
                self.subscribers_dropped += 1
                log.warning("dropped a subscriber (pid %s) that does not read its events",
                            session.peer.pid if session.peer else "?")
        self.events_sent += sent
        return sent

    def _measure(self, app: App) -> "Optional[int]":
        """Return: the app's footprint now (``measure``), None without one."""
        return None if self.measure is None else self.measure(app.pid, app.started)

    def _new_trim_id(self) -> int:
        trim_id = self._next_trim_id
        self._next_trim_id = trim_id + 1 if trim_id < MAX_INT else 1
        return trim_id

    async def trim(self, app: App, level: "Union[int, str]", target_kib: int,
                   deadline_ms: int) -> TrimResult:
        """Ask ``app`` to free ``target_kib`` within ``deadline_ms`` and audit it.

        Returns: a TrimResult with what the app claimed and what its
        footprint says it freed; a client that vanishes or stalls gives a
        result, never an exception.  Raises: ProtocolError for arguments
        out of the protocol's range (a caller's bug).
        """
        trim_id = self._new_trim_id()
        line = trim_request(trim_id, level, target_kib, deadline_ms)
        level_text = level if isinstance(level, str) else LEVEL_NAMES[level]
        t0_ms = aio.ticks_ms()
        result = TrimResult(app, trim_id, level_text.upper(), target_kib, deadline_ms,
                            self._measure(app))
        self.trims += 1
        if app.session.app is not app:
            result.outcome = "gone"
        elif app.session.send(line):
            await self._await_answer(app, trim_id, deadline_ms, result)
        result.finish(self._measure(app),
                      aio.ticks_ms() - t0_ms)
        app.record(result)
        return result

    async def _await_answer(self, app: App, trim_id: int, deadline_ms: int,
                            result: TrimResult) -> None:
        """Wait for the ``trimmed`` of ``trim_id``; set the result's outcome
        and claim."""
        pending = self._pending[trim_id] = _Pending(app)
        try:
            await aio.wait_for_ms(pending.event.wait(), deadline_ms)
        except aio.TimeoutError:
            result.outcome = "timeout"
            app.expired = (app.expired + [trim_id])[-RECENT_TRIM_IDS:]
            return
        finally:
            del self._pending[trim_id]
        result.outcome = "gone" if pending.gone else "answered"
        result.claimed_kib = None if pending.gone else pending.claimed_kib
