"""The control socket: a Unix stream socket speaking the apps protocol.

Every line goes through :func:`protocol.parse_request`; replies are built by
``protocol.reply_ok``/``reply_error`` (docs/protocol.md).  ``ping`` and
``status`` read the agent's state and never feed the sensing path; the app
requests (register, set_class, trimmed, foreground, subscribe, unregister)
go to the :class:`~memagent.ipc.registry.AppRegistry` with the connection's
identity, bound once when it is accepted (SO_PEERCRED and a pidfd:
:mod:`memagent.ipc.session`).

Bounds: lines up to ``MAX_LINE_BYTES`` (a longer one is answered
``too_long`` and the connection closed), at most ``max_clients``
connections, a read timeout per request line, and a connection closed after
``MAX_ERRORS`` failed requests.  A connection that registered or subscribed
may idle between lines for as long as it likes (it waits for trims and
events); others are closed after ``read_timeout_ms`` of silence.  Nothing a
client sends can raise out of here.
"""

import json
import os

from .. import aio
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
from .session import Session

try:
    from typing import Any, Callable, Dict, Optional, Set, Tuple
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.control")

CLOSE_WAIT_MS = 1000  # for the connection handlers to see EOF at close()
LINGER_MS = 200  # a refused client's time to read the reply and close

__all__ = ["MAX_ERRORS", "MAX_LINE_BYTES", "PROTOCOL_VERSION", "ControlServer", "answer",
           "handle_request", "query"]

def _status_fields(status: "Callable[[], Dict[str, Any]]",
                   registry: "Optional[AppRegistry]") -> "Dict[str, Any]":
    """Return: the ``status`` reply's fields, the apps snapshot included."""
    st = status()
    if registry is not None and "apps" not in st:
        st = dict(st, apps=registry.snapshot())
    return {"status": st}


def _route(req: "Dict[str, Any]", status: "Callable[[], Dict[str, Any]]",
           registry: "Optional[AppRegistry]", session: "Optional[Session]") -> "Dict[str, Any]":
    """Return: the reply fields for a parsed request.  Raises: ProtocolError
    (the registry's refusals)."""
    cmd = req["cmd"]
    if cmd == "ping":
        return {}
    if cmd == "status":
        return _status_fields(status, registry)
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
           session: "Optional[Session]" = None) -> "Tuple[bytes, Optional[str]]":
    """Answer one request line.

    Returns: ``(reply line, None)`` on success, ``(error reply line, code)``
    on failure; never raises for bad input.
    """
    try:
        req = parse_request(line)
    except ProtocolError as err:
        return reply_error(err.id, err.code, err.message), err.code
    try:
        return reply_ok(req["id"], **_route(req, status, registry, session)), None
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


class ControlServer:
    """Serves status and the apps protocol to local clients; ``start()``,
    then ``close()``."""

    def __init__(self, path: str, status: "Callable[[], Dict[str, Any]]",
                 max_clients: int = 32, read_timeout_ms: int = 10000,
                 registry: "Optional[AppRegistry]" = None) -> None:
        self.path = path
        self.status = status
        self.max_clients = max_clients
        self.read_timeout_ms = read_timeout_ms
        self.registry = registry if registry is not None else AppRegistry()
        self._server: "Optional[Any]" = None
        self._clients: "Set[Any]" = set()  # admitted connections (count toward max_clients)
        self._handlers: "Set[Any]" = set()  # every connection whose handler still runs

    async def start(self) -> None:
        """Bind the socket (replacing a stale one).  Raises: OSError."""
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self._server = await aio.start_unix_server(self._client, self.path,
                                                   limit=MAX_LINE_BYTES)
        os.chmod(self.path, 0o666)  # anyone may ask for status; identity is the kernel's

    async def _client(self, reader: "Any", writer: "Any") -> None:
        # Every handler is tracked until it has closed its writer, so that
        # close() can wait for them all: one still closing when the loop
        # ends is cancelled in wait_closed() and asyncio logs a traceback
        # (seen with 1,000 hostile connections, tests/test_robustness.py).
        self._handlers.add(writer)
        try:
            await self._admit(reader, writer)
        finally:
            self._handlers.discard(writer)

    async def _admit(self, reader: "Any", writer: "Any") -> None:
        if len(self._clients) >= self.max_clients:
            await self._refuse(reader, writer)
            return
        self._clients.add(writer)
        session = self.registry.open_session(writer)
        try:
            await self._serve(reader, writer, session)
        except (OSError, aio.TimeoutError):
            pass  # the client went away or stalled: drop it, carry on
        finally:
            self.registry.close_session(session)
            self._clients.discard(writer)
            await self._close(writer)

    async def _refuse(self, reader: "Any", writer: "Any") -> None:
        """Say "busy" and hang up without losing the reply: half-close, then
        read and drop what the client sent (at most MAX_LINE_BYTES, for at
        most LINGER_MS).  A socket closed with unread data makes the kernel
        reset the connection, and the client's read of the reply then fails
        with ECONNRESET instead (seen on every run once the reply went out
        faster)."""
        try:
            await self._send(writer, reply_error(None, "busy", "busy: too many clients"))
            if writer.can_write_eof():
                writer.write_eof()
            await aio.wait_for_ms(reader.read(MAX_LINE_BYTES), LINGER_MS)
        except (OSError, ValueError, aio.TimeoutError):
            pass
        await self._close(writer)

    async def _read_line(self, reader: "Any", session: Session) -> bytes:
        """Return: the next line (b"" at EOF).  Raises: TimeoutError when an
        idle unattached client or a half-sent line outwaits read_timeout_ms;
        ValueError for a line over the reader's limit."""
        first = reader.read(1)
        if session.attached():
            head: bytes = await first
        else:
            head = await aio.wait_for_ms(first, self.read_timeout_ms)
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
            reply, code = answer(line, self.status, self.registry, session)
            await self._send(writer, reply)
            if code == "too_long":
                return
            if code is not None:
                errors += 1

    async def _send(self, writer: "Any", data: bytes) -> None:
        writer.write(data)
        await aio.wait_for_ms(writer.drain(), self.read_timeout_ms)

    async def _close(self, writer: "Any") -> None:
        try:
            writer.close()
            await writer.wait_closed()
        except OSError:
            pass

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
            os.unlink(self.path)
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
