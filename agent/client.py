"""The app side of the apps protocol: register with memagent, free memory on request.

Two APIs over one core.  :class:`Client` is synchronous (the ``socket`` module):
``connect()`` then ``run_forever()``, or ``poll(timeout_ms)`` from an app's own
main loop.  ``memagent.aclient.AsyncClient`` is the same on ``memagent.aio``:
``await run()``.  This module holds the sync client and what both share.

For each ``trim`` from the agent the client calls ``on_trim(level, target_kib)``
and answers ``trimmed`` with the KiB it returns (0 if it raises or returns
nonsense).  When the agent restarts, or its socket is missing, the client
reconnects with a bounded exponential backoff and registers again.  Identity is
the socket's SO_PEERCRED: the client never sends a pid.  See docs/protocol.md.
"""

import json
import os
import select
import socket
import time

from .protocol import (
    CLASSES,
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    parse_server_message,
)

try:
    from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

    TrimCallback = Callable[[str, int], Union[int, Awaitable[int]]]
    LevelCallback = Callable[[str, int, int], None]
except ImportError:  # MicroPython
    pass


class _PrintLog:
    """MicroPython without micropython-lib's logging: warnings and errors to stdout."""

    def debug(self, fmt: str, *args: "Any") -> None:
        pass

    info = debug

    def warning(self, fmt: str, *args: "Any") -> None:
        print("memagent.client: " + fmt % args)

    error = exception = warning


try:
    import logging

    log: "Any" = logging.getLogger("memagent.client")
except ImportError:  # MicroPython
    log = _PrintLog()

DEFAULT_SOCKET = "/run/memagent.sock"
CALL_TIMEOUT_MS = 3000  # connect, and wait for one reply
PERMANENT_CODES = ("forbidden", "bad_field", "bad_version")  # retrying will not help


class ClientError(Exception):
    """The agent refused a request.  ``code``: its error code; ``message``: its text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class Disconnected(OSError):
    """The connection to the agent was lost (or never made)."""


class Backoff:
    """Reconnect delays: ``min_ms`` doubling up to ``max_ms``; ``reset()`` on success."""

    def __init__(self, min_ms: int = 100, max_ms: int = 5000) -> None:
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.delay_ms = min_ms

    def next_ms(self) -> int:
        """Return: the delay to wait now, in ms; the next one doubles (bounded)."""
        delay_ms = self.delay_ms
        self.delay_ms = min(self.max_ms, self.delay_ms * 2)
        return delay_ms

    def reset(self) -> None:
        """Start again from ``min_ms``."""
        self.delay_ms = self.min_ms


def _now_ms() -> int:
    """Return: a monotonic clock in milliseconds."""
    if hasattr(time, "monotonic"):
        return int(time.monotonic() * 1000)
    return int(time.ticks_ms())  # type: ignore[attr-defined]  # MicroPython


class _Core:
    """What both clients share: identity, request lines, message handling."""

    def __init__(self, name: str, cls: str = "service", estimate_kib: "Optional[int]" = None,
                 on_trim: "Optional[TrimCallback]" = None,
                 socket_path: str = DEFAULT_SOCKET, on_level: "Optional[LevelCallback]" = None,
                 levels: "Optional[List[str]]" = None, max_retries: "Optional[int]" = None,
                 backoff_min_ms: int = 100, backoff_max_ms: int = 5000) -> None:
        """Raises: ValueError for an empty or long name or an unknown class."""
        if not isinstance(name, str) or not 0 < len(name) <= 64 or name.strip() != name:
            raise ValueError("name: 1-64 printable characters, got %r" % (name,))
        if cls not in CLASSES:
            raise ValueError("cls: one of %s, got %r" % (", ".join(CLASSES), cls))
        self.name = name
        self.cls = cls
        self.estimate_kib = estimate_kib
        self.on_trim = on_trim
        self.on_level = on_level
        self.levels = levels
        self.socket_path = socket_path
        self.max_retries = max_retries
        self.backoff = Backoff(backoff_min_ms, backoff_max_ms)
        self.connect_attempts = 0  # every try, failed or not
        self.registrations = 0  # successful registers (1 + reconnects)
        self.trims = 0
        self._failures = 0  # consecutive failed connects
        self._next_id = 0
        self._stopping = False

    def _request(self, cmd: str, fields: "Dict[str, Any]") -> "Tuple[int, bytes]":
        """Return: (id, line) for request ``cmd`` with ``fields`` (None ones left out)."""
        self._next_id = self._next_id % 1000000000 + 1
        obj: "Dict[str, Any]" = {"cmd": cmd, "v": PROTOCOL_VERSION, "id": self._next_id}
        for key, value in fields.items():
            if value is not None:
                obj[key] = value
        return self._next_id, (json.dumps(obj) + "\n").encode("utf-8")

    def _hello(self) -> "List[Tuple[str, Dict[str, Any]]]":
        """Return: the requests sent on each (re)connect: register, maybe subscribe."""
        register = {"name": self.name, "class": self.cls, "estimate_kib": self.estimate_kib}
        out: "List[Tuple[str, Dict[str, Any]]]" = [("register", register)]
        if self.on_level is not None:
            out.append(("subscribe", {"levels": self.levels}))
        return out

    def _parse(self, line: bytes) -> "Optional[Dict[str, Any]]":
        """Return: the server message, or None for one to ignore (unknown or
        malformed: logged)."""
        try:
            return parse_server_message(line)
        except ProtocolError as err:
            if err.code == "unknown_cmd":
                log.debug("ignoring unknown message: %s", err)
            else:
                log.warning("ignoring malformed message from the agent: %s", err)
            return None

    def _checked(self, cmd: str, reply: "Dict[str, Any]") -> "Dict[str, Any]":
        """Return: ``reply`` if ok.  Raises: ClientError with its code otherwise."""
        if not reply.get("ok"):
            raise ClientError(str(reply.get("code", "error")), "%s: %s"
                              % (cmd, reply.get("error", "refused")))
        return reply

    def _call_trim(self, msg: "Dict[str, Any]") -> "Any":
        """Return: what ``on_trim`` returned (maybe awaitable), 0 if it raised."""
        self.trims += 1
        if self.on_trim is None:
            return 0
        try:
            return self.on_trim(msg["level"], msg["target_kib"])
        except Exception as err:  # the app's bug must not kill the client
            log.exception("on_trim raised, answering 0: %s", err)
            return 0

    def _freed_kib(self, result: "Any") -> int:
        """Return: ``result`` as freed KiB: an int >= 0, else 0 (logged)."""
        if isinstance(result, bool) or not isinstance(result, int) or result < 0:
            log.error("on_trim must return the KiB freed (an int >= 0), got %r; answering 0",
                      result)
            return 0
        return min(result, (1 << 30) - 1)

    def _on_level(self, msg: "Dict[str, Any]") -> None:
        """Call ``on_level``; its exceptions are logged."""
        if self.on_level is not None:
            try:
                self.on_level(msg["level"], msg["avail_kib"], msg["total_kib"])
            except Exception as err:
                log.exception("on_level raised: %s", err)

    def _count_failure(self, err: Exception) -> int:
        """Return: the backoff delay (ms) after a failed connect.  Raises: ``err``
        once more than ``max_retries`` connects in a row failed, or when it is a
        permanent refusal (bad name, protected class)."""
        self._failures += 1
        if isinstance(err, ClientError) and err.code in PERMANENT_CODES:
            raise err
        if self.max_retries is not None and self._failures > self.max_retries:
            raise err
        delay_ms = self.backoff.next_ms()
        log.info("agent at %s not available (%s), retrying in %d ms",
                 self.socket_path, err, delay_ms)
        return delay_ms

    def _registered(self) -> None:
        self._failures = 0
        self.registrations += 1
        self.backoff.reset()
        log.info("registered with the agent as %r (%s)", self.name, self.cls)


class Client(_Core):
    """The synchronous client.  ``Client(name, cls, estimate_kib, on_trim,
    socket_path)``; ``on_trim(level, target_kib) -> freed_kib``.  Use it from
    one thread; only ``stop()`` may be called from another (or a signal handler)."""

    def __init__(self, *args: "Any", **kwargs: "Any") -> None:
        super().__init__(*args, **kwargs)
        self._sock: "Optional[socket.socket]" = None
        self._buf = b""
        self._lines: "List[bytes]" = []
        self._outstanding: "List[int]" = []  # ids sent, replies come in this order
        self._replies: "Dict[int, Dict[str, Any]]" = {}
        self._waiting: "List[int]" = []
        self._retry_at_ms = 0
        self._wake: "Optional[Tuple[int, int]]" = None
        try:
            self._wake = os.pipe()  # stop() from another thread wakes the wait
        except (AttributeError, OSError):
            pass

    def fileno(self) -> int:
        """Return: the socket's fd to watch for POLLIN, -1 while disconnected
        (it changes on reconnect)."""
        return self._sock.fileno() if self._sock is not None else -1

    @property
    def connected(self) -> bool:
        """True while connected and registered."""
        return self._sock is not None

    def connect(self, timeout_ms: int = CALL_TIMEOUT_MS) -> None:
        """Connect and register (and subscribe, with ``on_level``), once.

        Raises: OSError if no agent listens; ClientError if it refuses.
        """
        self._drop()
        self.connect_attempts += 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_ms / 1000.0)
            sock.connect(self.socket_path)
            sock.settimeout(0)
        except Exception:
            sock.close()
            raise
        self._sock = sock
        try:
            for cmd, fields in self._hello():
                self._call(cmd, fields, timeout_ms)
        except Exception:
            self._drop()
            raise
        self._registered()

    def set_class(self, cls: str, timeout_ms: int = CALL_TIMEOUT_MS) -> None:
        """Change class; kept for re-registering.  Raises: ClientError if
        refused, OSError if disconnected."""
        self._call("set_class", {"class": cls}, timeout_ms)
        self.cls = cls

    def status(self, timeout_ms: int = CALL_TIMEOUT_MS) -> "Dict[str, Any]":
        """Return: the agent's status object.  Raises: ClientError, OSError."""
        return dict(self._call("status", {}, timeout_ms).get("status") or {})

    def poll(self, timeout_ms: int = 0) -> int:
        """Wait up to ``timeout_ms`` for messages and handle all that came.

        While disconnected, reconnects when the backoff delay is over.
        Returns: the number of messages handled.  Raises: OSError or
        ClientError once ``max_retries`` reconnects failed, or the agent
        refuses the registration for good.
        """
        if self._sock is None:
            self._wait(-1, min(timeout_ms, max(0, self._retry_at_ms - _now_ms())))
            if self._stopping or _now_ms() < self._retry_at_ms:
                return 0
            try:
                self.connect()
            except (OSError, ClientError) as err:
                self._retry_at_ms = _now_ms() + self._count_failure(err)
                return 0
        elif not self._lines:
            self._wait(self._sock.fileno(), timeout_ms)
        try:
            self._drain()
            return self._handle_lines()
        except OSError as err:
            log.warning("lost the agent: %s", err)
            self._drop()
            return 0

    def run_forever(self) -> None:
        """Serve trims until ``stop()``.  Raises: as :meth:`poll`."""
        self._stopping = False
        while not self._stopping:
            self.poll(60000)

    def stop(self) -> None:
        """Make ``run_forever()`` return soon (callable from another thread)."""
        self._stopping = True
        if self._wake is not None:
            os.write(self._wake[1], b"x")

    def close(self) -> None:
        """Unregister (by closing) and release the socket and the wake pipe."""
        self._drop()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    # -- internals ----------------------------------------------------------------

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf, self._lines, self._outstanding = b"", [], []

    def _wait(self, fd: int, timeout_ms: int) -> bool:
        """Return: True if ``fd`` (or the wake pipe) became ready within ``timeout_ms``."""
        poller = select.poll()
        if fd >= 0:
            poller.register(fd, select.POLLIN)
        if self._wake is not None:
            poller.register(self._wake[0], select.POLLIN)
        ready = poller.poll(max(0, timeout_ms))
        for wfd, _ in ready:
            if self._wake is not None and wfd == self._wake[0]:
                os.read(wfd, 64)
        return bool(ready)

    def _drain(self) -> None:
        """Read what the socket has without blocking into complete lines.
        Raises: Disconnected at EOF or on a line over MAX_LINE_BYTES."""
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise Disconnected("the agent closed the connection")
            self._buf += data
            *lines, self._buf = self._buf.split(b"\n")
            self._lines.extend(line + b"\n" for line in lines)
            if len(self._buf) > MAX_LINE_BYTES:
                raise Disconnected("a line from the agent is over %d bytes" % MAX_LINE_BYTES)

    def _handle_lines(self) -> int:
        """Return: how many queued lines were handled (trims answered)."""
        count = 0
        while self._lines and self._sock is not None:
            msg = self._parse(self._lines.pop(0))
            count += 1
            if msg is None:
                continue
            if "ok" in msg:
                self._on_reply(msg)
            elif msg["cmd"] == "trim":
                self._answer_trim(msg)
            elif msg["cmd"] == "level":
                self._on_level(msg)
        return count

    def _on_reply(self, msg: "Dict[str, Any]") -> None:
        if not self._outstanding:
            log.warning("ignoring a reply to nothing: %r", msg)
            return
        ident = self._outstanding.pop(0)
        if msg["id"] is not None and msg["id"] != ident:
            log.warning("reply for id %r, expected %r", msg["id"], ident)
        if ident in self._waiting:
            self._replies[ident] = msg
        elif not msg["ok"]:
            log.warning("the agent refused an answer: %s", msg.get("error"))

    def _answer_trim(self, msg: "Dict[str, Any]") -> None:
        start_ms = _now_ms()
        result = self._call_trim(msg)
        if hasattr(result, "close"):  # a coroutine: Client needs a plain function
            result.close()
        freed_kib = self._freed_kib(result)
        late_ms = _now_ms() - start_ms - msg["deadline_ms"]
        if late_ms > 0:
            log.warning("on_trim took %d ms past the deadline", late_ms)
        self._send("trimmed", {"trim_id": msg["trim_id"], "freed_kib": freed_kib},
                   CALL_TIMEOUT_MS)

    def _send(self, cmd: str, fields: "Dict[str, Any]", timeout_ms: int) -> int:
        """Return: the request's id, once sent.  Raises: OSError (Disconnected)."""
        if self._sock is None:
            raise Disconnected("not connected to the agent")
        ident, data = self._request(cmd, fields)
        self._outstanding.append(ident)
        deadline_ms = _now_ms() + timeout_ms
        while data:
            try:
                data = data[self._sock.send(data):]
            except (BlockingIOError, InterruptedError):
                poller = select.poll()
                poller.register(self._sock.fileno(), select.POLLOUT)
                if not poller.poll(max(0, deadline_ms - _now_ms())):
                    raise Disconnected("the agent does not read")
        return ident

    def _call(self, cmd: str, fields: "Dict[str, Any]", timeout_ms: int) -> "Dict[str, Any]":
        """Return: the ok reply to ``cmd``, events met meanwhile handled.
        Raises: ClientError if refused; OSError if lost or timed out."""
        ident = self._send(cmd, fields, timeout_ms)
        self._waiting.append(ident)
        deadline_ms = _now_ms() + timeout_ms
        try:
            while ident not in self._replies:
                if self._sock is None:
                    raise Disconnected("lost the agent waiting for %s" % cmd)
                if not self._lines and not self._wait(self._sock.fileno(),
                                                      deadline_ms - _now_ms()):
                    raise Disconnected("no reply to %s in %d ms" % (cmd, timeout_ms))
                self._drain()
                self._handle_lines()
            return self._checked(cmd, self._replies.pop(ident))
        except OSError:
            self._drop()
            raise
        finally:
            self._waiting.remove(ident)
            self._replies.pop(ident, None)
