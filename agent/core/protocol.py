"""The apps protocol, version 1: the messages of the control socket.

One JSON object per line, both ways (the line format: :mod:`memagent.core.wire`).
Clients send requests (``ping``, ``status``, ``register``, ``set_class``,
``trimmed``, ``foreground``, ``subscribe``, ``unregister``); the agent sends
replies (``{"ok": ...}``) and events (``{"cmd": "trim"}``, ``{"cmd":
"level"}``).  This module parses, validates and builds them; it does no I/O
and holds no policy (who may take which class: :mod:`memagent.core.classes`).
The agent's control server and the app vendors' client library both use it:
it is the contract between them, so it lives in the core.

Identity is the socket's SO_PEERCRED, never a claimed pid: a ``pid``,
``uid`` or ``gid`` field is refused with the code "forbidden" (except the
target ``pid`` of ``foreground``, which only trusted clients may send).

Nothing a client sends raises anything but :class:`ProtocolError` out of
:func:`parse_request`.  MicroPython-clean; see docs/protocol.md.
"""

from .classes import CLASSES, PROTECTED_CLASSES
from .levels import LEVEL_NAMES
from .wire import MAX_DEPTH, MAX_LINE_BYTES, ProtocolError, check_value, dump_line, load_line, show

try:
    from typing import Any, Dict, List, Tuple, Union
except ImportError:  # MicroPython
    pass

__all__ = ["CLASSES", "IDENTITY_CLAIMS", "MAX_DEPTH", "MAX_ERRORS", "MAX_INT",
           "MAX_LINE_BYTES", "MAX_NAME_BYTES", "PROTECTED_CLASSES", "PROTOCOL_VERSION",
           "ProtocolError", "check_name", "level_event", "parse_request", "parse_server_message",
           "reply_error", "reply_ok", "trim_request"]

PROTOCOL_VERSION = 1
MAX_ERRORS = 3  # malformed requests before the agent closes the connection
MAX_NAME_BYTES = 64  # an app's name, in UTF-8 bytes (64 ASCII characters, 16 emoji)
MAX_ID_CHARS = 64
MAX_MESSAGE_CHARS = 200  # error messages are cut here
MAX_INT = (1 << 30) - 1  # a MicroPython small int on 32-bit ARM; 1 TiB in KiB
MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT
MAX_LEVELS = 8  # entries in a subscribe list

# Fields that would claim an identity; the agent takes it from SO_PEERCRED.
IDENTITY_CLAIMS = ("pid", "uid", "gid")


def _bad(cmd: str, field: str, what: str) -> ProtocolError:
    """Return: a "bad_field" error saying ``cmd``'s ``field`` must be ``what``."""
    return ProtocolError("bad_field", "%s: %r must be %s" % (cmd, field, what), field)


# -- field checks: each returns the normalized value or raises ProtocolError --

def _int_in(cmd: str, field: str, value: "Any", low: int, high: int) -> int:
    """Return: ``value`` if an int (not a bool) in low..high.  Raises: ProtocolError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(cmd, field, "an integer in %d..%d" % (low, high))
    return value


# Code points that would let a name rewrite the line it is shown on: the
# line and paragraph separators, and the bidi embeddings, overrides,
# isolates and marks (U+202E turns "exe.txt" around).  C0, DEL, C1 and
# surrogates are refused by range in _printable.
_HOSTILE_CODES = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A, 0x202B, 0x202C, 0x202D,
                  0x202E, 0x2066, 0x2067, 0x2068, 0x2069)


def _printable(text: str, showable: bool = False) -> bool:
    """Return: True if ``text`` has no control characters (C0, DEL, C1) nor
    surrogates, and with ``showable`` (names, shown to others) no line or
    paragraph separators and no bidi controls either."""
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF:
            return False
        if showable and code >= 0x61C and code in _HOSTILE_CODES:
            return False
    return True


def _short_text(cmd: str, field: str, value: "Any", limit: int) -> str:
    """Return: ``value`` if 1..limit printable characters, without leading or
    trailing blanks.  Raises: ProtocolError."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or \
            value.strip() != value or not _printable(value):
        raise _bad(cmd, field, "1-%d printable characters" % limit)
    return value


def check_name(value: "Any", cmd: str = "register") -> str:
    """Return: ``value`` if it is a valid app name: 1-MAX_NAME_BYTES bytes
    of UTF-8, no leading or trailing blanks, no control, line-separator or
    bidi characters (:func:`_printable`).  Raises: ProtocolError
    ("bad_field", field "name") naming the rule broken."""
    if not isinstance(value, str) or not value:
        raise _bad(cmd, "name", "a non-empty string")
    too_long = _bad(cmd, "name", "at most %d bytes of UTF-8" % MAX_NAME_BYTES)
    if len(value) > MAX_NAME_BYTES:  # each character is at least one byte
        raise too_long
    if not _printable(value, True):  # first: a lone surrogate cannot be encoded
        raise _bad(cmd, "name", "free of control, line-separator and bidi characters "
                   "(C0, DEL, C1, U+2028-U+2029, U+202A-U+202E, U+2066-U+2069)")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise too_long
    if value.strip() != value:
        raise _bad(cmd, "name", "without leading or trailing blanks")
    return value


def _level(cmd: str, field: str, value: "Any") -> str:
    """Return: the canonical level name for a name (any case) or a level
    number.  Raises: ProtocolError."""
    if isinstance(value, str) and value.upper() in LEVEL_NAMES:
        return value.upper()
    if isinstance(value, int) and not isinstance(value, bool) and \
            0 <= value < len(LEVEL_NAMES):
        return LEVEL_NAMES[value]
    raise _bad(cmd, field, "one of " + ", ".join(LEVEL_NAMES))


def _levels(cmd: str, field: str, value: "Any") -> "List[str]":
    """Return: the level names asked for, in level order, without repeats.
    Raises: ProtocolError."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_LEVELS:
        raise _bad(cmd, field, "a list of 1-%d level names" % MAX_LEVELS)
    wanted = [_level(cmd, field, item) for item in value if isinstance(item, str)]
    if len(wanted) != len(value):
        raise _bad(cmd, field, "a list of level names (%s)" % ", ".join(LEVEL_NAMES))
    return [name for name in LEVEL_NAMES if name in wanted]


def _check_id(value: "Any") -> "Union[int, str]":
    """Return: a valid request id.  Raises: ProtocolError."""
    if isinstance(value, str):
        return _short_text("request", "id", value, MAX_ID_CHARS)
    return _int_in("request", "id", value, 0, MAX_INT)


_INT_RANGES = {"estimate_kib": (0, MAX_INT), "trim_id": (0, MAX_INT),
               "freed_kib": (0, MAX_INT), "target_kib": (0, MAX_INT),
               "avail_kib": (0, MAX_INT), "total_kib": (0, MAX_INT),
               "deadline_ms": (1, MAX_INT), "pid": (2, MAX_PID),
               "apps_after": (0, MAX_INT), "apps_max": (0, MAX_INT),
               "after": (0, MAX_INT), "limit": (1, MAX_INT)}


def _field(cmd: str, field: str, value: "Any") -> "Any":
    """Return: the normalized value of one schema field.  Raises: ProtocolError."""
    if field in _INT_RANGES:
        low, high = _INT_RANGES[field]
        return _int_in(cmd, field, value, low, high)
    if field == "name":
        return check_name(value, cmd)
    if field == "class":
        if not isinstance(value, str) or value not in CLASSES:
            raise _bad(cmd, field, "one of " + ", ".join(CLASSES))
        return value
    if field == "level":
        return _level(cmd, field, value)
    return _levels(cmd, field, value)


# cmd: (required fields, optional fields); optional ones default to None,
# "levels" to every level
_SCHEMAS: "Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]" = {
    "ping": ((), ()),
    "status": ((), ("apps_after", "apps_max")),  # a page of the app list
    "events": ((), ("after", "limit")),  # the event log's entries numbered above "after"
    "register": (("name", "class"), ("estimate_kib",)),
    "set_class": (("class",), ()),
    "trimmed": (("trim_id", "freed_kib"), ()),
    "foreground": (("pid",), ()),
    "subscribe": ((), ("levels",)),
    "unregister": ((), ()),
}
_EVENTS = {"trim": ("trim_id", "level", "target_kib", "deadline_ms"),
           "level": ("level", "avail_kib", "total_kib")}
_COMMON = ("cmd", "v", "id")


def _check_version(obj: "Dict[str, Any]") -> None:
    """Raises: ProtocolError("bad_version") unless ``v`` is absent or 1."""
    v = obj.get("v", PROTOCOL_VERSION)
    if isinstance(v, bool) or not isinstance(v, int) or v != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", "'v': unsupported protocol version %s, "
                            "this agent speaks %d" % (show(v), PROTOCOL_VERSION), "v")


def _check_cmd(obj: "Dict[str, Any]") -> str:
    """Return: the request's cmd.  Raises: ProtocolError if missing or unknown."""
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("bad_field", "'cmd' must be a string naming the request", "cmd")
    if cmd in _EVENTS:
        raise ProtocolError("unknown_cmd", "'cmd': %r is sent by the agent, not to it"
                            % cmd, "cmd")
    if cmd not in _SCHEMAS:
        raise ProtocolError("unknown_cmd", "'cmd': unknown request %s (%s)"
                            % (show(cmd), ", ".join(sorted(_SCHEMAS))), "cmd")
    return cmd


def _check_fields(cmd: str, obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Return: the schema fields of ``obj``, normalized, defaults filled in.
    Raises: ProtocolError for a claimed identity, unknown or bad fields."""
    required, optional = _SCHEMAS[cmd]
    for key in obj:
        if key in required or key in optional or key in _COMMON:
            continue
        if key in IDENTITY_CLAIMS:
            raise ProtocolError("forbidden", "%s: %r is not accepted: the agent knows "
                                "your process from the socket (SO_PEERCRED)"
                                % (cmd, key), key)
        raise ProtocolError("bad_field", "%s: unknown field %s" % (cmd, show(key)), key)
    out: "Dict[str, Any]" = {}
    for field in required:
        if field not in obj:
            raise ProtocolError("bad_field", "%s: %r is required" % (cmd, field), field)
        out[field] = _field(cmd, field, obj[field])
    for field in optional:  # null is absent
        out[field] = _field(cmd, field, obj[field]) if obj.get(field) is not None else None
    if cmd == "subscribe" and out["levels"] is None:
        out["levels"] = list(LEVEL_NAMES)
    return out


def parse_request(line: bytes) -> "Dict[str, Any]":
    """Parse one request line from a client.

    Returns: ``{"cmd", "v", "id", ...fields}``, normalized: ``v`` is 1,
    ``id`` None when absent or null, optional fields filled in (``estimate_kib``
    None, ``levels`` every level), level names upper case.
    Raises: ProtocolError, and nothing else, for any other input; its
    ``id`` carries the request's id when that much could be read.
    """
    obj = load_line(line)
    req_id = _check_id(obj["id"]) if obj.get("id") is not None else None
    try:
        _check_version(obj)
        cmd = _check_cmd(obj)
        req = _check_fields(cmd, obj)
    except ProtocolError as err:
        err.id = req_id
        raise
    req["cmd"] = cmd
    req["v"] = PROTOCOL_VERSION
    req["id"] = req_id
    return req


# -- server -> client ------------------------------------------------------------

def _head(id: "Union[int, str, None]", ok: bool) -> "Dict[str, Any]":
    head: "Dict[str, Any]" = {"ok": ok, "v": PROTOCOL_VERSION}
    if id is not None:
        head["id"] = _check_id(id)
    return head


def reply_ok(id: "Union[int, str, None]", **fields: "Any") -> bytes:
    """Return: a success reply line echoing ``id`` (omitted if None).
    Raises: ProtocolError for a bad id, a reserved field (ok, v, cmd) or a
    value that is not plain JSON."""
    obj = _head(id, True)
    for key, value in fields.items():
        if key in ("ok", "v", "cmd"):
            raise ProtocolError("bad_field", "reply: %r is reserved" % key, key)
        check_value(value, 1)
        obj[key] = value
    return dump_line(obj)


def reply_error(id: "Union[int, str, None]", code: str, message: str) -> bytes:
    """Return: an error reply line, the message cut to MAX_MESSAGE_CHARS.
    Raises: ProtocolError for a bad id or a code that is not a short token."""
    if not isinstance(code, str) or not 0 < len(code) <= 32 or \
            code.strip("abcdefghijklmnopqrstuvwxyz_") != "":
        raise ProtocolError("bad_field", "reply: 'code' must be a short lower-case token",
                            "code")
    obj = _head(id, False)
    obj["code"] = code
    obj["error"] = str(message)[:MAX_MESSAGE_CHARS]
    return dump_line(obj)


def trim_request(trim_id: int, level: "Union[int, str]", target_kib: int,
                 deadline_ms: int) -> bytes:
    """Return: a ``{"cmd": "trim"}`` line asking to free ``target_kib``
    within ``deadline_ms``; answered by ``trimmed`` with the same trim_id.
    Raises: ProtocolError for a value out of range."""
    return dump_line({"cmd": "trim", "v": PROTOCOL_VERSION,
                  "trim_id": _field("trim", "trim_id", trim_id),
                  "level": _level("trim", "level", level),
                  "target_kib": _field("trim", "target_kib", target_kib),
                  "deadline_ms": _field("trim", "deadline_ms", deadline_ms)})


def level_event(level: "Union[int, str]", avail_kib: int, total_kib: int) -> bytes:
    """Return: a ``{"cmd": "level"}`` line for subscribers.
    Raises: ProtocolError for a value out of range."""
    return dump_line({"cmd": "level", "v": PROTOCOL_VERSION,
                  "level": _level("level", "level", level),
                  "avail_kib": _field("level", "avail_kib", avail_kib),
                  "total_kib": _field("level", "total_kib", total_kib)})


def _check_event(obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Return: a trim or level event, its fields checked (extra fields kept).
    Raises: ProtocolError."""
    cmd = obj["cmd"]
    if not isinstance(cmd, str) or cmd not in _EVENTS:
        raise ProtocolError("unknown_cmd", "'cmd': unknown event %s" % show(cmd), "cmd")
    for field in _EVENTS[cmd]:
        if field not in obj:
            raise ProtocolError("bad_field", "%s: %r is required" % (cmd, field), field)
        obj[field] = _field(cmd, field, obj[field])
    return obj


def _check_reply(obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Return: a reply with ``id`` (None when absent) and, for errors, ``code``
    ("error" when absent).  Raises: ProtocolError."""
    if not isinstance(obj.get("ok"), bool):
        raise ProtocolError("malformed", "a reply has 'ok' true or false, an event 'cmd'",
                            "ok")
    obj["id"] = _check_id(obj["id"]) if obj.get("id") is not None else None
    if not obj["ok"]:
        if not isinstance(obj.get("error"), str):
            raise _bad("reply", "error", "a message")
        code = obj.setdefault("code", "error")
        if not isinstance(code, str):
            raise _bad("reply", "code", "a string")
    return obj


def parse_server_message(line: bytes) -> "Dict[str, Any]":
    """Parse one line from the agent (for the client library).

    Returns: the message with ``v`` set: an event (``cmd`` "trim" or
    "level", fields checked) or a reply (``ok``; ``id`` None when absent;
    errors with ``code`` and ``error``).  Unknown extra fields are kept.
    Raises: ProtocolError, and nothing else, for anything invalid.
    """
    obj = load_line(line)
    _check_version(obj)
    obj["v"] = PROTOCOL_VERSION
    return _check_event(obj) if "cmd" in obj else _check_reply(obj)
