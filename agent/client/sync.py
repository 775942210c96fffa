"""The synchronous app client: :class:`Client`, on the ``socket`` module.

``connect()`` then ``run_forever()``, or ``poll(timeout_ms)`` from an app's
own main loop.  For each ``trim`` from the agent it calls ``on_trim(level,
target_kib)`` and answers ``trimmed`` with the KiB it returns (0 if it
raises or returns nonsense).  When the agent restarts, or its socket is
missing, it reconnects with a bounded exponential backoff and registers
again.  Identity is the socket's SO_PEERCRED: the client never sends a pid.
"""

import os
import select
import socket

from ..core.protocol import MAX_LINE_BYTES
from .base import CALL_TIMEOUT_MS, ClientError, Disconnected, _Core, _now_ms, log

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass


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

    def set_estimate(self, estimate_kib: "Optional[int]",
                     timeout_ms: int = CALL_TIMEOUT_MS) -> None:
        """Report what the app can free now (None: unknown), as a register
        update; kept for re-registering.  The agent asks for no more, and not
        at all under its minimum ask (256 KiB).  Call it from ``on_trim``
        to have it reach the agent before the answer.  Raises: ClientError
        if refused, OSError if disconnected."""
        self._call("register", {"name": self.name, "class": self.cls,
                                "estimate_kib": estimate_kib}, timeout_ms)
        self.estimate_kib = estimate_kib

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
