"""Ask a running agent one question on its control socket, without asyncio.

For ``memagent status``: a support engineer's shell on a 64 MB handset,
often at the very moment memory runs out.  Without asyncio the command costs
4.4 MB of MemAvailable instead of 7.8 MB (the ARM guest at 64 MB, kernel
6.1.0-57-armmp, 2026-12-07), where the asyncio one had the kernel OOM-kill
beside it.  :func:`memagent.ipc.control.query` is the same question for code
that runs in an event loop.  Imports only ``core``.
"""

import select
import socket
import struct
import time

from ..core.wire import MAX_LINE_BYTES, dump_line, load_line

try:
    from typing import Any, Dict, Optional
except ImportError:  # MicroPython
    pass


class ReplyTooLarge(ValueError):
    """The agent's reply is longer than MAX_LINE_BYTES (an agent from before
    the status reply was bounded, with many apps)."""


def ask(path: str, cmd: str = "status", timeout_ms: int = 3000,
        fields: "Optional[Dict[str, Any]]" = None) -> "Dict[str, Any]":
    """Send ``{"cmd": cmd, **fields}`` to the agent at ``path`` and read one
    reply line (at most MAX_LINE_BYTES), all within ``timeout_ms``.

    Returns: the reply object (a refusal too: ``{"ok": false, "code":
    "busy", ...}`` when the agent has no room for another client).
    Raises: FileNotFoundError or ConnectionRefusedError if no agent listens
    at ``path``; another OSError if it does not answer in time
    (TimeoutError) or hangs up (ConnectionError); ReplyTooLarge for a reply
    over MAX_LINE_BYTES; ValueError (ProtocolError) for a reply that is not
    one JSON object on one line.
    """
    deadline = _now_s() + timeout_ms / 1000.0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_ms / 1000.0)
        _connect(sock, path)
        try:
            _send_all(sock, dump_line(dict(fields or {}, cmd=cmd)))
        except OSError as e:
            if not e.args or e.args[0] not in (EPIPE, ECONNRESET):
                raise  # a busy agent may hang up first: its "busy" is still there to read
        return load_line(_read_line(sock, deadline))
    finally:
        sock.close()


# Where the two interpreters differ, ask() tests for the feature: it must not
# import memagent.aio (asyncio) for a status on a handset at pressure.
EPIPE, ECONNRESET, EINVAL, ETIMEDOUT = 32, 104, 22, 110


def _error(kind: str, errno_value: int, text: str) -> OSError:
    """Return: the builtin OSError subclass ``kind`` (TimeoutError,
    ConnectionError), or a plain OSError with ``errno_value`` where the
    interpreter has none (MicroPython without the shim loaded)."""
    import builtins

    cls = getattr(builtins, kind, None)
    return cls(text) if cls is not None else OSError(errno_value, text)


def _now_s() -> float:
    """Return: a monotonic clock in seconds (MicroPython's time has ticks_ms)."""
    monotonic = getattr(time, "monotonic", None)
    if monotonic is not None:
        return float(monotonic())
    return time.ticks_ms() / 1000.0  # type: ignore[attr-defined,no-any-return]


def _connect(sock: "Any", path: str) -> None:
    """connect() to the Unix socket ``path``: MicroPython's takes only a
    packed sockaddr_un (a path: EINVAL).  Raises: OSError."""
    try:
        sock.connect(path)
    except OSError as e:
        if not e.args or e.args[0] != EINVAL:
            raise
        sock.connect(struct.pack("H", socket.AF_UNIX) + path.encode() + b"\0")


def _send_all(sock: "Any", data: bytes) -> None:
    """Send all of ``data`` (MicroPython's sockets have no sendall)."""
    while data:
        data = data[sock.send(data):]


def _read_line(sock: "socket.socket", deadline: float) -> bytes:
    """Return: bytes up to and including the first newline.  Raises:
    TimeoutError past ``deadline``, ConnectionError if the agent hangs up
    first, ValueError past MAX_LINE_BYTES."""
    buf = b""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while b"\n" not in buf:
        left = deadline - _now_s()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            raise _error("TimeoutError", ETIMEDOUT, "no reply within the timeout")
        chunk = sock.recv(65536)
        if not chunk:
            raise _error("ConnectionError", ECONNRESET,
                         "the agent closed the connection without a reply")
        buf += chunk
        if len(buf) > MAX_LINE_BYTES and b"\n" not in buf[:MAX_LINE_BYTES + 1]:
            raise ReplyTooLarge("reply longer than %d bytes" % MAX_LINE_BYTES)
    return buf[:buf.index(b"\n") + 1]
