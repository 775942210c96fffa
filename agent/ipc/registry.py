"""The app registry: who is connected, who they are, and what they really free.

Identity is bound when the connection is accepted (:mod:`memagent.ipc.session`):
SO_PEERCRED (pid, uid, gid) and a pidfd of that process; nothing in a
message can change it.  A request that needs an identity (``register``,
``set_class``, ``foreground``) is refused with ``peer_changed`` once that
process has exited or its start time or effective uid differ from accept
time (a forked child holding the socket of a parent whose pid was reused);
an app whose process exited is unregistered when next seen
(:meth:`AppRegistry.apps`).  One app per connection; closing the
connection unregisters it.
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
from ..core.pidref import ProcessRef
from ..core.protocol import MAX_INT, ProtocolError, level_event, trim_request
from .app import App, Compliance, TrimResult
from .session import Peer, Session, identify

try:
    from typing import Any, Callable, Dict, List, Optional, Union

    # the bound process -> its footprint in KiB, None if it is gone
    Measure = Callable[[ProcessRef], Optional[int]]
    Listener = Callable[[str, "App"], None]
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.apps")

__all__ = ["App", "AppRegistry", "Compliance", "TrimResult", "NO_UID"]

NO_UID = -1  # [apps] ui_uid when no UI shell is trusted
RECENT_TRIM_IDS = 8  # expired trim ids kept per app, so late answers are known


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
    "peer_changed", "not_registered", "busy" or "unknown_trim") for the
    server to reply with.
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
        self.peers_changed = 0  # requests refused: the process changed since connect
        self.foreground_pid: "Optional[int]" = None  # the last `foreground` pid, registered or not

    # -- connections ---------------------------------------------------------------

    def open_session(self, writer: "Any") -> Session:
        """Return: a new session for a connection, its identity bound now
        (:func:`memagent.ipc.session.identify`); a peer that cannot be bound
        (gone, another uid, the agent out of fds) gets a session whose
        ``changed`` says why, and no app.  Never raises."""
        try:
            peer, process, why = identify(writer.get_extra_info("socket"))
        except OSError as e:  # EMFILE from pidfd_open: no identity, no app
            peer, process, why = None, None, "cannot pin the peer: %s" % e
        if why:
            log.warning("pid %d (uid %d) changed before its connection was accepted: %s",
                        peer.pid if peer else -1, peer.uid if peer else -1, why)
        session = Session(peer, writer, process, why)
        self._sessions.append(session)
        return session

    def close_session(self, session: Session) -> None:
        """Forget a connection: unregister its app, end its subscription,
        close the pidfd of its process."""
        if session.app is not None:
            self._remove(session.app)
        session.levels = None
        session.close()
        if session in self._sessions:
            self._sessions.remove(session)

    def trusted(self, peer: "Optional[Peer]") -> bool:
        """Return: True for root and the configured UI shell uid."""
        return peer is not None and (peer.uid == 0 or
                                     (self.ui_uid != NO_UID and peer.uid == self.ui_uid))

    def _bound(self, session: Session, cmd: str) -> "ProcessRef":
        """Return: the session's process, checked to be still the one bound
        at accept.  Raises: ProtocolError "forbidden" without credentials,
        "peer_changed" if it exited or its start time or uid changed."""
        if session.peer is None:
            raise _forbidden("%s: the agent cannot read this socket's credentials" % cmd)
        process = session.process
        why = session.changed or (process.changed() if process is not None else "exited")
        if why or process is None:
            session.changed = why or "exited"
            self.peers_changed += 1
            raise ProtocolError("peer_changed", "%s: the process that connected (pid %d) "
                                "is not this one any more: %s; connect again" %
                                (cmd, session.peer.pid, why))
        return process

    # -- requests --------------------------------------------------------------------

    def register(self, session: Session, name: str, cls: str,
                 estimate_kib: "Optional[int]") -> App:
        """Register the connection's app, or update it (within policy) if it
        already registered.  Returns: the app.  Raises: ProtocolError."""
        process = self._bound(session, "register")
        peer, trusted = session.peer, self.trusted(session.peer)
        assert peer is not None  # _bound checked it
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
        app = App(self._next_app_id, session, peer, process, name, cls, estimate_kib)
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
        self._bound(session, "set_class")
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
        self._bound(session, "foreground")
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
        """Return: the registered apps whose process is still the one bound
        at connect, oldest first.  An app whose process exited (its
        connection held on by another process) is unregistered here."""
        out = []
        for session in list(self._sessions):
            app = session.app
            if app is None:
                continue
            if not app.process.alive():
                log.info("app %d %r: process %d exited; unregistered", app.app_id,
                         app.name, app.pid)
                session.changed = session.changed or "exited"
                self._remove(app)
                continue
            out.append(app)
        return sorted(out, key=lambda app: app.app_id)

    def snapshot(self) -> "Dict[str, Any]":
        """Return: the registry for ``status``, JSON-ready."""
        return {"max_apps": self.max_apps, "ui_uid": self.ui_uid,
                "connections": len(self._sessions),
                "subscribers": sum(1 for s in self._sessions
                                   if s.levels is not None and not s.dropped),
                "subscribers_dropped": self.subscribers_dropped,
                "peers_changed": self.peers_changed,
                "events_sent": self.events_sent, "trims": self.trims,
                "trims_in_flight": len(self._pending),
                "apps": [dict(app.as_dict(), rss_kib=self._measure(app))
                         for app in self.apps()]}

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
        return None if self.measure is None else self.measure(app.process)

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
        if app.session.app is not app or not app.process.alive():
            result.outcome = "gone"  # never a trim for a connection outliving its process
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
