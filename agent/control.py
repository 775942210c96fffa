"""The control socket: a Unix stream socket speaking newline-delimited JSON.

It is a *view* of the monitor, not a second pipeline: requests read the
agent's state and never feed the sensing path.  Version 1 answers
``{"cmd": "status"}`` and ``{"cmd": "ping"}``; the apps protocol extends it.

Bounds: lines up to ``MAX_LINE_BYTES``, at most ``max_clients`` connections,
a read timeout per request, and a connection closed after ``MAX_ERRORS``
malformed requests.  Malformed input gets an error reply; nothing a client
sends can raise out of here.
"""

import json
import logging
import os

from . import aio
from .protocol import MAX_ERRORS, MAX_LINE_BYTES, PROTOCOL_VERSION

try:
    from typing import Any, Callable, Dict, Optional, Set
except ImportError:  # MicroPython
    pass

log = logging.getLogger("memagent.control")


def handle_request(line: bytes, status: "Callable[[], Dict[str, Any]]") -> "Dict[str, Any]":
    """Answer one request line.

    Returns: the reply object; ``{"ok": false, "error": ...}`` for anything
    malformed (never raises for bad input).
    """
    try:
        req = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "malformed: not a JSON object on one line"}
    if not isinstance(req, dict):
        return {"ok": False, "error": "malformed: a request is a JSON object"}
    cmd = req.get("cmd")
    if cmd == "ping":
        return {"ok": True, "v": PROTOCOL_VERSION}
    if cmd == "status":
        return {"ok": True, "v": PROTOCOL_VERSION, "status": status()}
    return {"ok": False, "error": "unknown cmd %r" % (cmd,)}


class ControlServer:
    """Serves status to local clients; ``start()``, then ``close()``."""

    def __init__(self, path: str, status: "Callable[[], Dict[str, Any]]",
                 max_clients: int = 32, read_timeout_ms: int = 10000) -> None:
        self.path = path
        self.status = status
        self.max_clients = max_clients
        self.read_timeout_ms = read_timeout_ms
        self._server: "Optional[Any]" = None
        self._clients: "Set[Any]" = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one).  Raises: OSError."""
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self._server = await aio.start_unix_server(self._client, self.path,
                                                   limit=MAX_LINE_BYTES)
        os.chmod(self.path, 0o666)  # anyone may ask for status; identity is SO_PEERCRED

    async def _client(self, reader: "Any", writer: "Any") -> None:
        if len(self._clients) >= self.max_clients:
            try:
                await self._send(writer, {"ok": False, "error": "busy: too many clients"})
            except (OSError, aio.TimeoutError):
                pass
            await self._close(writer)
            return
        self._clients.add(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, aio.TimeoutError):
            pass  # the client went away or stalled: drop it, carry on
        finally:
            self._clients.discard(writer)
            await self._close(writer)

    async def _serve(self, reader: "Any", writer: "Any") -> None:
        errors = 0
        while errors < MAX_ERRORS:
            try:
                line = await aio.wait_for_ms(reader.readline(), self.read_timeout_ms)
            except ValueError:  # longer than the reader's limit
                await self._send(writer, {"ok": False, "error": "request too long"})
                return
            if not line:
                return
            reply = handle_request(line, self.status)
            if not reply.get("ok"):
                errors += 1
            await self._send(writer, reply)

    async def _send(self, writer: "Any", obj: "Dict[str, Any]") -> None:
        writer.write((json.dumps(obj) + "\n").encode())
        await aio.wait_for_ms(writer.drain(), self.read_timeout_ms)

    async def _close(self, writer: "Any") -> None:
        try:
            writer.close()
            await writer.wait_closed()
        except OSError:
            pass

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
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
