"""The read-only TCP status listener, and its client (docs/status-tcp.md).

Off by default (``[status_tcp] enabled = no``).  When on, it listens on
``bind`` (loopback unless configured otherwise) and ``port``, and speaks the
control socket's JSON lines (docs/protocol.md), each request carrying
``"token"``, the first line of ``token_file`` (:func:`read_token`: a bad
file keeps the listener off, and ``status_tcp`` in the status says why).
``ping``, ``status`` and ``events`` are answered by the control socket's
:func:`~memagent.ipc.control.answer`; any other request is refused
``read_only``.  A missing token (``token_required``), a wrong one
(``bad_token``) or a line that is not JSON closes the connection after the
reply.  Bounds: lines up to ``MAX_LINE_BYTES``, each within
``read_timeout_ms``, at most ``max_clients`` connections (others told
"busy"), ``MAX_ERRORS`` refused requests, every connection closed at stop.
:func:`fetch` is the blocking client of ``memagent status --connect``; its
failures are :class:`TcpStatusError` with the CLI's exit code.
"""

from .. import aio
from ..core.logs import get_logger
from ..core.protocol import MAX_ERRORS, MAX_LINE_BYTES, ProtocolError, reply_error
from ..core.wire import dump_line, load_line
from .control import BUSY, CLOSE_WAIT_MS, Lingering, answer, close_writer, refuse
from .tcpfetch import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_GARBAGE,
    EXIT_TOO_LARGE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_VERSION,
    MIN_TOKEN_CHARS,
    TcpStatusError,
    TokenFileError,
    fetch,
    parse_hostport,
    read_token,
)

try:
    from hmac import compare_digest as _compare_digest
except ImportError:  # MicroPython
    _compare_digest = None  # type: ignore[assignment]

try:
    from typing import Any, Callable, Dict, Optional, Set, Tuple

    from .control import Events
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.status_tcp")

SECTION = "status_tcp"
READ_ONLY_CMDS = ("ping", "status", "events")
READ_ONLY = "this listener answers status and events only; use the control socket"
TOKEN_REQUIRED = ('this listener needs "token": the first line of the agent\'s '
                  '[status_tcp] token_file')
BAD_TOKEN_LOG_MS = 60000  # bad tokens are logged at most once per this
# The client's names, here for the CLI (memagent.fetchcli): .tcpfetch
__all__ = ["EXIT_AUTH", "EXIT_BUSY", "EXIT_GARBAGE", "EXIT_TOO_LARGE", "EXIT_UNREACHABLE",
           "EXIT_USAGE", "EXIT_VERSION", "MIN_TOKEN_CHARS", "READ_ONLY", "StatusTcpServer",
           "TcpStatusError", "TokenFileError", "fetch", "parse_hostport", "read_token",
           "same_token"]

def same_token(given: str, expected: str) -> bool:
    """Return: True if ``given`` is ``expected``, compared in a time that
    does not depend on where they differ (hmac.compare_digest on CPython;
    on MicroPython a loop over every byte of ``expected``)."""
    a, b = given.encode("utf-8"), expected.encode("utf-8")
    if _compare_digest is not None:
        return bool(_compare_digest(a, b))
    diff = len(a) ^ len(b)
    for i in range(len(b)):
        diff |= (a[i] if i < len(a) else 0) ^ b[i]
    return diff == 0


def _error(req_id: "Any", code: str, message: str) -> bytes:
    """Return: an error reply echoing ``req_id`` when it is a valid id."""
    try:
        return reply_error(req_id, code, message)
    except ProtocolError:
        return reply_error(None, code, message)


class StatusTcpServer:
    """Serves ``ping``, ``status`` and ``events`` over TCP to clients that
    hold the token; ``start()``, then ``close()``; ``state()`` for status."""

    def __init__(self, status: "Callable[[], Dict[str, Any]]", bind: str, port: int,
                 token_file: str, max_clients: int = 4, read_timeout_ms: int = 5000,
                 events: "Optional[Events]" = None) -> None:
        """``status`` and ``events`` as for :class:`~.control.ControlServer`."""
        self.status = status
        self.events = events
        self.bind = bind
        self.port = port
        self.token_file = token_file
        self.max_clients = max_clients
        self.read_timeout_ms = read_timeout_ms
        self.off: "Optional[str]" = "not started"  # why it does not listen (None: it does)
        self._token = ""
        self._server: "Optional[Any]" = None
        self._clients: "Set[Any]" = set()  # admitted connections
        self._handlers: "Set[Any]" = set()  # every connection whose handler runs
        self._linger = Lingering()
        self.refused = 0  # connections told "busy"
        self.failed = 0  # connections whose handler raised
        self.bad_tokens = 0  # requests with a wrong token
        self._unlogged = 0  # bad tokens not logged yet
        self._logged_ms: "Optional[int]" = None

    @classmethod
    def from_config(cls, config: "Any", status: "Callable[[], Dict[str, Any]]",
                    events: "Optional[Events]" = None) -> "Optional[StatusTcpServer]":
        """Return: the listener ``config``'s [status_tcp] describes, None
        when it is not enabled.  Raises: ConfigError for a bad value."""
        if config.get(SECTION, "enabled") is not True:
            return None
        return cls(status, config.get_str(SECTION, "bind"), config.get_int(SECTION, "port"),
                   config.get_str(SECTION, "token_file"),
                   config.get_int(SECTION, "max_clients"),
                   config.get_int(SECTION, "read_timeout_ms"), events)

    def state(self) -> "Dict[str, Any]":
        """Return: the listener's settings and counters, for status."""
        return {"enabled": True, "listening": self.off is None, "off": self.off,
                "bind": self.bind, "port": self.port, "connections": len(self._clients),
                "max_clients": self.max_clients, "refused": self.refused,
                "bad_tokens": self.bad_tokens, "failed": self.failed}

    async def start(self) -> bool:
        """Read the token and listen.  Returns: True if listening; False
        (logged, and said in ``off``) for a bad token file or address."""
        if not self.bind.strip():
            self.off = ("[status_tcp] bind is empty: give an address (127.0.0.1, or 0.0.0.0 "
                        "for every interface)")
        else:
            try:
                self._token = read_token(self.token_file)
                self._server = await aio.start_tcp_server(self._client, self.bind, self.port,
                                                          limit=MAX_LINE_BYTES)
                self.off = None
            except TokenFileError as e:
                self.off = str(e)
            except OSError as e:
                self.off = "cannot listen on %s:%d: %s" % (self.bind, self.port, e)
        if self.off is not None:
            log.error("status TCP listener off: %s", self.off)
            return False
        log.info("status over TCP on %s:%d (read-only, token from %s)", self.bind, self.port,
                 self.token_file)
        if not self.bind.startswith("127.") and self.bind not in ("::1", "localhost"):
            log.warning("status TCP listener on %s: plain TCP, readable by anyone on that "
                        "network who holds the token (docs/status-tcp.md)", self.bind)
        return True

    async def _client(self, reader: "Any", writer: "Any") -> None:
        self._handlers.add(writer)
        try:
            if len(self._clients) >= self.max_clients:
                self.refused += 1
                await refuse(reader, writer, BUSY, self._linger)
                return
            self._clients.add(writer)
            try:
                await self._serve(reader, writer)
            except (OSError, aio.TimeoutError):
                pass  # gone or stalled: drop it
            finally:
                self._clients.discard(writer)
                await self._close(writer)
        except Exception as e:  # MemoryError on MicroPython's heap, a bug: drop one client
            self.failed += 1
            log.error("status TCP: a connection failed (%s: %s); closed it",
                      type(e).__name__, e)
            writer.transport.abort()
        finally:
            self._handlers.discard(writer)

    async def _serve(self, reader: "Any", writer: "Any") -> None:
        errors = 0
        while errors < MAX_ERRORS:
            try:
                line = await aio.wait_for_ms(reader.readline(), self.read_timeout_ms)
            except ValueError:  # longer than the reader's limit
                await self._send(writer, reply_error(None, "too_long", "line longer than %d "
                                                     "bytes" % MAX_LINE_BYTES))
                return
            if not line:
                return
            reply, code, authenticated = self.respond(line, writer)
            await self._send(writer, reply)
            if not authenticated or code == "too_long":
                return
            if code is not None:
                errors += 1

    def respond(self, line: bytes,
                writer: "Optional[Any]" = None) -> "Tuple[bytes, Optional[str], bool]":
        """Answer one request line (``writer``: its connection, for the log).

        Returns: (the reply line, its error code or None, whether the
        request carried the right token).  Never raises for bad input.
        """
        try:
            obj = load_line(line)
        except ProtocolError as err:
            return reply_error(None, err.code, err.message), err.code, False
        req_id = obj.get("id")
        token = obj.pop("token", None)
        if not isinstance(token, str) or not token:
            return _error(req_id, "token_required", TOKEN_REQUIRED), "token_required", False
        if not same_token(token, self._token):
            self._bad_token(writer)
            return _error(req_id, "bad_token", "wrong token"), "bad_token", False
        if obj.get("cmd") not in READ_ONLY_CMDS:
            return _error(req_id, "read_only", READ_ONLY), "read_only", True
        try:
            stripped = dump_line(obj)
        except ProtocolError as err:
            return _error(req_id, err.code, err.message), err.code, True
        reply, code = answer(stripped, self.status, None, None, self.events)
        return reply, code, True

    def _bad_token(self, writer: "Optional[Any]") -> None:
        """Count a wrong token; log them at most once per BAD_TOKEN_LOG_MS."""
        self.bad_tokens += 1
        self._unlogged += 1
        now_ms = aio.ticks_ms()
        if self._logged_ms is not None and 0 <= now_ms - self._logged_ms < BAD_TOKEN_LOG_MS:
            return
        peer = writer.get_extra_info("peername") if writer is not None else None
        log.warning("status TCP: %d request(s) with a wrong token (the last from %s; "
                    "%d since start)", self._unlogged, peer or "?", self.bad_tokens)
        self._unlogged = 0
        self._logged_ms = now_ms

    async def _send(self, writer: "Any", data: bytes) -> None:
        writer.write(data)
        await aio.wait_for_ms(writer.drain(), self.read_timeout_ms)

    async def _close(self, writer: "Any") -> None:
        await close_writer(writer)

    async def close(self) -> None:
        """Stop listening and close every connection (waiting up to
        CLOSE_WAIT_MS for their handlers to end)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._handlers):
            writer.transport.abort()
        waited_ms = 0
        while self._handlers and waited_ms < CLOSE_WAIT_MS:
            await aio.sleep_ms(10)
            waited_ms += 10
        self.off = "stopped"
