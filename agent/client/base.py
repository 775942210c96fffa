"""What both app clients share: the request lines, the handling of the
agent's messages, the reconnect backoff and the errors.  The synchronous
client is :mod:`memagent.client.sync`, the asyncio one
:mod:`memagent.client.async_client`; see docs/protocol.md.
"""

import json
import time

from ..core.classes import CLASSES
from ..core.logs import get_logger
from ..core.protocol import PROTOCOL_VERSION, ProtocolError, check_name, parse_server_message

try:
    from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

    TrimCallback = Callable[[str, int], Union[int, Awaitable[int]]]
    LevelCallback = Callable[[str, int, int], None]
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.client")

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
        """Raises: ValueError for a name the agent would refuse (empty, over
        MAX_NAME_BYTES of UTF-8, control or bidi characters) or an unknown class."""
        check_name(name, "name")  # a ProtocolError is a ValueError
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


