"""The control socket: a Unix stream socket speaking the apps protocol.

Every line goes through :func:`protocol.parse_request`; replies are built by
``protocol.reply_ok``/``reply_error`` (docs/protocol.md).  ``ping`` and
``status`` read the agent's state and never feed the sensing path; the app
requests (register, set_class, trimmed, foreground, subscribe, unregister)
go to the :class:`~memagent.ipc.registry.AppRegistry` with the connection's
identity, bound once when it is accepted (SO_PEERCRED and a pidfd:
:mod:`memagent.ipc.session`).

Bounds: lines up to ``MAX_LINE_BYTES`` (a longer one is answered
``too_long`` and the connection closed), a read timeout per request line,
and a connection closed after ``MAX_ERRORS`` failed requests.  Connections:
at most ``max_clients``, of which the last ``reserved_clients`` only for
trusted peers (root, the UI shell), and at most ``max_per_uid`` per
untrusted uid; a refused one is told "busy", and at most MAX_LINGERING
refused ones linger at once to read it.  A registered app may idle between
lines for as long as it likes (it waits for trims); a subscriber that did
not register must send something (``ping``) every ``subscriber_idle_ms``,
as an MQTT client keeps its session alive; others are closed after
``read_timeout_ms`` of silence.  The ``status`` reply always fits one line
(:mod:`.statuspage`).  Nothing a client sends can raise out of here.
"""

import json

from .. import aio
from ..aio import unix
from ..core.logs import get_logger
from ..core.protocol import (
    MAX_ERRORS,
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    parse_request,
    reply_error,
    reply_ok,
)
from .registry import AppRegistry
from .session import Peer, Session, peer_of
from .statuspage import bound_status

try:
    from typing import Any, Callable, Dict, List, Optional, Set, Tuple

    # (after seq, at most) -> (the event log's entries numbered above it,
    # the newest number it gave)
    Events = Callable[[int, int], Tuple[List[Dict[str, Any]], int]]
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.control")

CLOSE_WAIT_MS = 1000  # for the connection handlers to see EOF at close()
LINGER_MS = 200  # a refused client's time to read the reply and close
MAX_LINGERING = 8  # refused connections lingering at once; the others close at once
BUSY = "busy: too many clients"

__all__ = ["MAX_ERRORS", "MAX_LINE_BYTES", "PROTOCOL_VERSION", "ControlServer", "answer",
           "handle_request", "query"]

def _status_fields(req: "Dict[str, Any]", status: "Callable[[], Dict[str, Any]]",
                   registry: "Optional[AppRegistry]") -> "Dict[str, Any]":
    """Return: the ``status`` reply's fields, the apps snapshot included and
    paged from the request's ``apps_after`` (at most ``apps_max`` apps), so
    that the reply fits one line (:func:`.statuspage.bound_status`)."""
    st = status()
    if registry is not None and "apps" not in st:
        st = dict(st, apps=registry.snapshot())
    return {"status": bound_status(st, req.get("apps_after") or 0, req.get("apps_max"))}


def _events_fields(req: "Dict[str, Any]", events: "Optional[Events]") -> "Dict[str, Any]":
    """Return: the ``events`` reply's fields: the entries numbered above the
    request's ``after`` (at most ``limit``, and what fits one line),
    ``next``, the ``after`` of the following request, and ``last``, the
    newest number given (below ``after``: the agent restarted).  Raises:
    ProtocolError when this server keeps no event log."""
    if events is None:
        raise ProtocolError("unknown_cmd", "events: not served here (no event log)")
    after = req.get("after") or 0
    got, last = events(after, req.get("limit") or 1 << 30)
    fit, used_bytes = [], 0
    for entry in got:
        used_bytes += len(json.dumps(entry)) + 2
        if used_bytes > MAX_LINE_BYTES - 1024:
            break
        fit.append(entry)
    return {"events": fit, "next": fit[-1]["seq"] if fit else after, "last": last}


def _route(req: "Dict[str, Any]", status: "Callable[[], Dict[str, Any]]",
           registry: "Optional[AppRegistry]", session: "Optional[Session]",
           events: "Optional[Events]" = None) -> "Dict[str, Any]":
    """Return: the reply fields for a parsed request.  Raises: ProtocolError
    (the registry's refusals)."""
    cmd = req["cmd"]
    if cmd == "ping":
        return {}
    if cmd == "status":
        return _status_fields(req, status, registry)
    if cmd == "events":
        return _events_fields(req, events)
    if registry is None or session is None:
        raise ProtocolError("unknown_cmd", "%s: not served here (no app registry)" % cmd)
    if cmd == "register":
        registry.register(session, req["name"], req["class"], req["estimate_kib"])
    elif cmd == "set_class":
        registry.set_class(session, req["class"])
    elif cmd == "trimmed":
        registry.answer(session, req["trim_id"], req["freed_kib"])
    elif cmd == "foreground":
        registry.foreground(session, req["pid"])
    elif cmd == "subscribe":
        registry.subscribe(session, req["levels"])
    else:  # "unregister": parse_request admits no other cmd
        registry.unregister(session)
    return {}


def answer(line: bytes, status: "Callable[[], Dict[str, Any]]",
           registry: "Optional[AppRegistry]" = None,
           session: "Optional[Session]" = None,
           events: "Optional[Events]" = None) -> "Tuple[bytes, Optional[str]]":
    """Answer one request line.

    Returns: ``(reply line, None)`` on success, ``(error reply line, code)``
    on failure; never raises for bad input.
    """
    try:
        req = parse_request(line)
    except ProtocolError as err:
        return reply_error(err.id, err.code, err.message), err.code
    try:
        return reply_ok(req["id"], **_route(req, status, registry, session, events)), None
    except ProtocolError as err:
        return reply_error(req["id"], err.code, err.message), err.code


def handle_request(line: bytes, status: "Callable[[], Dict[str, Any]]",
                   registry: "Optional[AppRegistry]" = None,
                   session: "Optional[Session]" = None) -> "Dict[str, Any]":
    """Answer one request line.

    Returns: the reply object (as :func:`answer` puts it on the wire);
    ``{"ok": false, "code": ..., "error": ...}`` for anything malformed
    (never raises for bad input).
    """
    reply: "Dict[str, Any]" = json.loads(answer(line, status, registry, session)[0])
    return reply


class Lingering:
    """How many refused connections linger now, reading their "busy"."""

    def __init__(self) -> None:
        self.now = 0


async def close_writer(writer: "Any") -> None:
    """Close a connection's ``writer`` and wait for it; errors ignored."""
    try:
        writer.close()
        await writer.wait_closed()
    except OSError:
        pass


async def refuse(reader: "Any", writer: "Any", why: str, lingering: Lingering) -> None:
    """Say "busy" (``why``) and hang up without losing the reply:
    half-close, then read and drop what the client sent (at most
    MAX_LINE_BYTES, for at most LINGER_MS).  A socket closed with unread
    data makes the kernel reset the connection, and the client's read of
    the reply then fails with ECONNRESET instead (seen on every run once the
    reply went out faster).  Only MAX_LINGERING refused connections linger
    at once (``lingering`` counts them): under a flood the others are
    closed at once, their reply queued (a client that sent nothing yet
    still reads it)."""
    try:
        writer.write(reply_error(None, "busy", why))
        if writer.can_write_eof():
            writer.write_eof()
        if lingering.now < MAX_LINGERING:
            lingering.now += 1
            try:
                await aio.wait_for_ms(writer.drain(), LINGER_MS)
                await aio.wait_for_ms(reader.read(MAX_LINE_BYTES), LINGER_MS)
            finally:
                lingering.now -= 1
    except (OSError, ValueError, aio.TimeoutError):
        pass
    await close_writer(writer)


class ControlServer:
    """Serves status and the apps protocol to local clients; ``start()``,
    then ``close()``."""

    def __init__(self, path: str, status: "Callable[[], Dict[str, Any]]",
                 max_clients: int = 32, read_timeout_ms: int = 10000,
                 registry: "Optional[AppRegistry]" = None, reserved_clients: int = 0,
                 max_per_uid: "Optional[int]" = None,
                 subscriber_idle_ms: "Optional[int]" = None,
                 events: "Optional[Events]" = None) -> None:
        """``max_per_uid`` None: no cap per uid; ``subscriber_idle_ms``
        None: subscribers may stay silent for ever; ``events`` None: no
        ``events`` request (no event log)."""
        self.path = path
        self.status = status
        self.events = events
        self.max_clients = max_clients
        self.reserved_clients = min(reserved_clients, max_clients)
        self.max_per_uid = max_per_uid
        self.read_timeout_ms = read_timeout_ms
        self.subscriber_idle_ms = subscriber_idle_ms
        self.registry = registry if registry is not None else AppRegistry()
        self._server: "Optional[Any]" = None
        self._clients: "Set[Any]" = set()  # admitted connections (count toward max_clients)
        self._per_uid: "Dict[int, int]" = {}  # admitted connections of each uid
        self._capped: "Set[int]" = set()  # uids refused for max_per_uid (logged once)
        self._handlers: "Set[Any]" = set()  # every connection whose handler still runs
        self._linger = Lingering()  # refused connections reading "busy" now
        self.refused = 0  # connections refused since start (busy), for status
        self.failed = 0  # connections whose handler raised (closed), for status

    async def start(self) -> None:
        """Bind the socket (replacing a stale one).  Raises: OSError."""
        try:
            unix.unlink(self.path)
        except OSError:
            pass
        self._server = await aio.start_unix_server(self._client, self.path,
                                                   limit=MAX_LINE_BYTES)
        unix.chmod(self.path, 0o666)  # anyone may ask for status; identity is the kernel's

    async def _client(self, reader: "Any", writer: "Any") -> None:
        # Every handler is tracked until it has closed its writer, so that
        # close() can wait for them all: one still closing when the loop
        # ends is cancelled in wait_closed() and asyncio logs a traceback
        # (seen with 1,000 hostile connections, tests/test_robustness.py).
        self._handlers.add(writer)
        try:
            await self._admit(reader, writer)
        except Exception as e:  # MemoryError on MicroPython's fixed heap, a bug: drop one client
            self.failed += 1
            log.error("control socket: a connection failed (%s: %s); closed it",
                      type(e).__name__, e)
            writer.transport.abort()
        finally:
            self._handlers.discard(writer)

    def _refusal(self, peer: "Optional[Peer]") -> "Optional[str]":
        """Return: why a new connection from ``peer`` is refused ("busy"
        error text), None to admit it.  Trusted peers may take every slot;
        others neither the ``reserved_clients`` last ones nor more than
        ``max_per_uid`` at once."""
        if len(self._clients) >= self.max_clients:
            return BUSY
        if self.registry.trusted(peer):
            return None
        if len(self._clients) >= self.max_clients - self.reserved_clients:
            return BUSY
        uid = peer.uid if peer is not None else -1
        if self.max_per_uid is not None and self._per_uid.get(uid, 0) >= self.max_per_uid:
            if uid not in self._capped:  # once per uid until it drops below the cap
                self._capped.add(uid)
                log.warning("uid %d has %d connections ([apps] max_per_uid): refusing more",
                            uid, self.max_per_uid)
            return "busy: uid %d has %d connections ([apps] max_per_uid)" % (
                uid, self.max_per_uid)
        return None

    async def _admit(self, reader: "Any", writer: "Any") -> None:
        peer = peer_of(writer.get_extra_info("socket"))  # for the caps; bound in open_session
        why = self._refusal(peer)
        if why is not None:
            self.refused += 1
            await self._refuse(reader, writer, why)
            return
        uid = peer.uid if peer is not None else -1
        self._clients.add(writer)
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        session = self.registry.open_session(writer)
        try:
            await self._serve(reader, writer, session)
        except (OSError, aio.TimeoutError):
            pass  # the client went away or stalled: drop it, carry on
        finally:
            self.registry.close_session(session)
            self._clients.discard(writer)
            left = self._per_uid.pop(uid, 1) - 1
            if left > 0:
                self._per_uid[uid] = left
            self._capped.discard(uid)
            await self._close(writer)

    async def _refuse(self, reader: "Any", writer: "Any", why: str) -> None:
        """Say "busy" (``why``) and hang up: :func:`refuse`."""
        await refuse(reader, writer, why, self._linger)

    def _idle_ms(self, session: Session) -> "Optional[int]":
        """Return: how long ``session`` may be silent between lines (None:
        for ever, a registered app)."""
        if session.app is not None:
            return None
        if session.levels is not None:
            return self.subscriber_idle_ms
        return self.read_timeout_ms

    def full_status(self) -> "Dict[str, Any]":
        """Return: the agent's status with the control socket's limits and
        counters under ``control``."""
        return dict(self.status(), control={
            "connections": len(self._clients), "max_clients": self.max_clients,
            "reserved_clients": self.reserved_clients, "max_per_uid": self.max_per_uid,
            "subscriber_idle_ms": self.subscriber_idle_ms, "refused": self.refused,
            "failed": self.failed,
            "lingering": self._linger.now})

    async def _read_line(self, reader: "Any", session: Session) -> bytes:
        """Return: the next line (b"" at EOF).  Raises: TimeoutError when a
        client is silent past :meth:`_idle_ms` or a half-sent line outwaits
        read_timeout_ms; ValueError for a line over the reader's limit."""
        first = reader.read(1)
        idle_ms = self._idle_ms(session)
        if idle_ms is None:
            head: bytes = await first
        else:
            head = await aio.wait_for_ms(first, idle_ms)
        if not head or head == b"\n":
            return head
        rest: bytes = await aio.wait_for_ms(reader.readline(), self.read_timeout_ms)
        return head + rest

    async def _serve(self, reader: "Any", writer: "Any", session: Session) -> None:
        errors = 0
        while errors < MAX_ERRORS and not session.dropped:
            try:
                line = await self._read_line(reader, session)
            except ValueError:  # longer than the reader's limit
                await self._send(writer, reply_error(None, "too_long", "line longer than %d "
                                                     "bytes" % MAX_LINE_BYTES))
                return
            if not line:
                return
            reply, code = answer(line, self.full_status, self.registry, session, self.events)
            await self._send(writer, reply)
            if code == "too_long":
                return
            if code is not None:
                errors += 1

    async def _send(self, writer: "Any", data: bytes) -> None:
        writer.write(data)
        await aio.wait_for_ms(writer.drain(), self.read_timeout_ms)

    async def _close(self, writer: "Any") -> None:
        await close_writer(writer)

    async def close(self) -> None:
        """Stop listening, close the connections (waiting up to
        CLOSE_WAIT_MS for their handlers to finish), remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._handlers):
            writer.transport.abort()  # registered apps idle without a timeout
        waited_ms = 0
        while self._handlers and waited_ms < CLOSE_WAIT_MS:
            await aio.sleep_ms(10)
            waited_ms += 10
        try:
            unix.unlink(self.path)
        except OSError:
            pass


async def query(path: str, cmd: str = "status", timeout_ms: int = 3000) -> "Dict[str, Any]":
    """Ask a running agent.

    Returns: the reply object.  Raises: OSError if no agent listens at
    ``path``, TimeoutError if it does not answer, ValueError for a bad reply.
    """
    reader, writer = await aio.wait_for_ms(aio.open_unix_connection(path), timeout_ms)
    try:
        writer.write((json.dumps({"cmd": cmd}) + "\n").encode())
        line = await aio.wait_for_ms(reader.readline(), timeout_ms)
        reply = json.loads(line.decode("utf-8"))
        if not isinstance(reply, dict):
            raise ValueError("reply is not an object")
        return reply
    finally:
        writer.close()
        await writer.wait_closed()
