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
    deadline = time.monotonic() + timeout_ms / 1000.0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_ms / 1000.0)
        sock.connect(path)
        request = dict(fields or {}, cmd=cmd)
        try:
            sock.sendall(dump_line(request))
        except (BrokenPipeError, ConnectionResetError):
            pass  # a busy agent may hang up first: its "busy" is still there to read
        return load_line(_read_line(sock, deadline))
    finally:
        sock.close()


def _read_line(sock: "socket.socket", deadline: float) -> bytes:
    """Return: bytes up to and including the first newline.  Raises:
    TimeoutError past ``deadline``, ConnectionError if the agent hangs up
    first, ValueError past MAX_LINE_BYTES."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            raise TimeoutError("no reply within the timeout")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the agent closed the connection without a reply")
        buf += chunk
        if len(buf) > MAX_LINE_BYTES and b"\n" not in buf[:MAX_LINE_BYTES + 1]:
            raise ReplyTooLarge("reply longer than %d bytes" % MAX_LINE_BYTES)
    return buf[:buf.index(b"\n") + 1]
