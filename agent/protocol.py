"""The apps protocol, version 1: the pure message layer of the control socket.

One JSON object per line, both ways.  Clients send requests (``ping``,
``status``, ``register``, ``set_class``, ``trimmed``, ``foreground``,
``subscribe``, ``unregister``); the agent sends replies (``{"ok": ...}``)
and events (``{"cmd": "trim"}``, ``{"cmd": "level"}``).  This module parses
and validates lines and builds them; it does no I/O and holds no policy
beyond the pure helpers :func:`may_set_class` and :func:`may_register_as`.

Identity is the socket's SO_PEERCRED, never a claimed pid: a ``pid``,
``uid`` or ``gid`` field is refused with the code "forbidden" (except the
target ``pid`` of ``foreground``, which only trusted clients may send).

Nothing a client sends raises anything but :class:`ProtocolError` out of
:func:`parse_request`.  MicroPython-clean; see docs/protocol.md.
"""

import json

from .levels import LEVEL_NAMES

try:
    from typing import Any, Dict, List, Optional, Tuple, Union
except ImportError:  # MicroPython
    pass

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 65536  # one line, newline included
MAX_ERRORS = 3  # malformed requests before the agent closes the connection
MAX_DEPTH = 32  # nesting of arrays/objects in one message
MAX_NAME_CHARS = 64
MAX_ID_CHARS = 64
MAX_MESSAGE_CHARS = 200  # error messages are cut here
MAX_INT = (1 << 30) - 1  # a MicroPython small int on 32-bit ARM; 1 TiB in KiB
MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT
MAX_LEVELS = 8  # entries in a subscribe list

# Android's oom_adj ladder, kept longest first: a higher rank is killed earlier.
CLASSES = ("foreground", "visible", "perceptible", "service", "cached")
PROTECTED_CLASSES = ("foreground", "visible", "perceptible")

# Fields that would claim an identity; the agent takes it from SO_PEERCRED.
IDENTITY_CLAIMS = ("pid", "uid", "gid")


class ProtocolError(ValueError):
    """A line that is not a valid message.

    ``code``: a short machine code ("malformed", "too_long", "bad_version",
    "unknown_cmd", "bad_field", "forbidden").  ``field``: the offending field,
    if any.  ``id``: the request's id when it could be read, for the reply.
    ``str(err)``: a human message naming the field.
    """

    def __init__(self, code: str, message: str, field: "Optional[str]" = None,
                 id: "Union[int, str, None]" = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.id = id


def _show(value: "Any") -> str:
    """Return: a short repr of a client's value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bad(cmd: str, field: str, what: str) -> ProtocolError:
    """Return: a "bad_field" error saying ``cmd``'s ``field`` must be ``what``."""
    return ProtocolError("bad_field", "%s: %r must be %s" % (cmd, field, what), field)


# -- decoding ----------------------------------------------------------------

def _reject_constant(name: str) -> "Any":
    """Raises: ProtocolError, always (NaN and Infinity are not JSON)."""
    raise ProtocolError("malformed", "%s is not a JSON number" % name)


def _unique_pairs(pairs: "List[Tuple[str, Any]]") -> "Dict[str, Any]":
    """Return: the object of ``pairs``.  Raises: ProtocolError on a repeated key."""
    obj: "Dict[str, Any]" = {}
    for key, value in pairs:
        if key in obj:
            raise ProtocolError("malformed", "duplicate key %s" % _show(key), key)
        obj[key] = value
    return obj


try:  # CPython's json takes hooks (duplicate keys, NaN); MicroPython's does not
    _HOOKS = bool(json.loads("{}", object_pairs_hook=_unique_pairs) == {})
except TypeError:
    _HOOKS = False
try:  # CPython refuses encoded surrogates; MicroPython decodes them
    _STRICT_UTF8 = not b"\xed\xa0\x80".decode("utf-8")
except UnicodeError:
    _STRICT_UTF8 = True
# Lead bytes after which the next byte must lie in a range (overlongs,
# surrogates, beyond U+10FFFF), checked where the decoder is lax.
_LEAD_RANGES = ((0xE0, 0xA0, 0xBF), (0xED, 0x80, 0x9F), (0xF0, 0x90, 0xBF), (0xF4, 0x80, 0x8F))


def _lax_utf8_ok(line: bytes) -> bool:
    """Return: False for what a lax decoder (MicroPython's) lets through:
    overlong forms, encoded surrogates, code points beyond U+10FFFF."""
    for bad in (0xC0, 0xC1, 0xF5, 0xF6, 0xF7):
        if bytes((bad,)) in line:
            return False
    for lead, low, high in _LEAD_RANGES:
        at = line.find(bytes((lead,)))
        while at >= 0:
            if at + 1 < len(line) and not low <= line[at + 1] <= high:
                return False
            at = line.find(bytes((lead,)), at + 1)
    return True


def _check_depth(line: bytes) -> None:
    """Raises: ProtocolError if arrays/objects nest deeper than MAX_DEPTH
    (the parsers recurse or allocate per level)."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5B or byte == 0x7B:
            depth += 1
            if depth > MAX_DEPTH:
                raise ProtocolError("malformed", "nested deeper than %d" % MAX_DEPTH)
        elif byte == 0x5D or byte == 0x7D:
            depth -= 1


def _decode_text(line: bytes) -> str:
    """Return: one line as text, without its newline.  Raises: ProtocolError
    ("too_long", or "malformed" for an empty line, several lines, bad UTF-8)."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("too_long", "line longer than %d bytes" % MAX_LINE_BYTES)
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\n" in line or b"\r" in line:
        raise ProtocolError("malformed", "one message per line")
    if not line.strip():
        raise ProtocolError("malformed", "empty line")
    try:
        text = line.decode("utf-8")
    except UnicodeError:
        raise ProtocolError("malformed", "not UTF-8")
    if not _STRICT_UTF8 and not _lax_utf8_ok(line):
        raise ProtocolError("malformed", "not UTF-8")
    _check_depth(line)
    return text


def _load_object(line: bytes) -> "Dict[str, Any]":
    """Return: the one JSON object on ``line``.  Raises: ProtocolError for
    anything else (NaN, duplicate keys: where the runtime lets us see them)."""
    text = _decode_text(line)
    try:
        if _HOOKS:
            obj = json.loads(text, object_pairs_hook=_unique_pairs,
                             parse_constant=_reject_constant)
        else:
            obj = json.loads(text)
    except ProtocolError:
        raise
    except (ValueError, TypeError, RuntimeError, MemoryError):
        raise ProtocolError("malformed", "not a JSON object on one line")
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", "a message is a JSON object")
    return obj


# -- field checks: each returns the normalized value or raises ProtocolError --

def _int_in(cmd: str, field: str, value: "Any", low: int, high: int) -> int:
    """Return: ``value`` if an int (not a bool) in low..high.  Raises: ProtocolError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(cmd, field, "an integer in %d..%d" % (low, high))
    return value


def _printable(text: str) -> bool:
    """Return: True if ``text`` has no control characters nor surrogates."""
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF:
            return False
    return True


def _short_text(cmd: str, field: str, value: "Any", limit: int) -> str:
    """Return: ``value`` if 1..limit printable characters, without leading or
    trailing blanks.  Raises: ProtocolError."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or \
            value.strip() != value or not _printable(value):
        raise _bad(cmd, field, "1-%d printable characters" % limit)
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
               "deadline_ms": (1, MAX_INT), "pid": (2, MAX_PID)}


def _field(cmd: str, field: str, value: "Any") -> "Any":
    """Return: the normalized value of one schema field.  Raises: ProtocolError."""
    if field in _INT_RANGES:
        low, high = _INT_RANGES[field]
        return _int_in(cmd, field, value, low, high)
    if field == "name":
        return _short_text(cmd, field, value, MAX_NAME_CHARS)
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
    "status": ((), ()),
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
                            "this agent speaks %d" % (_show(v), PROTOCOL_VERSION), "v")


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
                            % (_show(cmd), ", ".join(sorted(_SCHEMAS))), "cmd")
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
        raise ProtocolError("bad_field", "%s: unknown field %s" % (cmd, _show(key)), key)
    out: "Dict[str, Any]" = {}
    for field in required:
        if field not in obj:
            raise ProtocolError("bad_field", "%s: %r is required" % (cmd, field), field)
        out[field] = _field(cmd, field, obj[field])
    for field in optional:
        out[field] = _field(cmd, field, obj[field]) if field in obj else None
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
    obj = _load_object(line)
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


# -- class policy helpers (the server applies them) ---------------------------

def class_rank(cls: str) -> int:
    """Return: 0 for "foreground" up to 4 for "cached": the higher, the
    earlier killed.  Raises: ProtocolError ("bad_field") for other names."""
    if not isinstance(cls, str) or cls not in CLASSES:
        raise _bad("class_rank", "class", "one of " + ", ".join(CLASSES))
    return CLASSES.index(cls)


def may_set_class(current: str, wanted: str, trusted: bool) -> bool:
    """Return: True if a client in ``current`` may move to ``wanted``.

    Trusted clients (the UI shell) may set any class.  Others may only keep
    or lower their standing (towards "cached"), and never enter a protected
    class (foreground, visible, perceptible).  Raises: ProtocolError for an
    unknown class.
    """
    rank_now, rank_wanted = class_rank(current), class_rank(wanted)
    if trusted:
        return True
    return wanted not in PROTECTED_CLASSES and rank_wanted >= rank_now


def may_register_as(cls: str, trusted: bool) -> bool:
    """Return: True if a client may register in ``cls``: protected classes
    need trust.  Raises: ProtocolError for an unknown class."""
    class_rank(cls)
    return trusted or cls not in PROTECTED_CLASSES


# -- server -> client ------------------------------------------------------------

def _check_value(value: "Any", depth: int) -> None:
    """Raises: ProtocolError unless ``value`` is plain JSON that round-trips:
    finite floats, bounded ints, str keys, nesting within MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise ProtocolError("bad_field", "reply nested deeper than %d" % MAX_DEPTH)
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise ProtocolError("bad_field", "integer %s out of range" % _show(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ProtocolError("bad_field", "%s is not a JSON number" % value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError("bad_field", "key %s is not a string" % _show(key))
            _check_value(item, depth + 1)
    else:
        raise ProtocolError("bad_field", "%s is not JSON" % _show(value))


def _line(obj: "Dict[str, Any]") -> bytes:
    """Return: ``obj`` as one "\\n"-terminated line.  Raises: ProtocolError
    ("too_long") past MAX_LINE_BYTES."""
    data = (json.dumps(obj) + "\n").encode("utf-8")
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError("too_long", "message longer than %d bytes" % MAX_LINE_BYTES)
    return data


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
        _check_value(value, 1)
        obj[key] = value
    return _line(obj)


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
    return _line(obj)


def trim_request(trim_id: int, level: "Union[int, str]", target_kib: int,
                 deadline_ms: int) -> bytes:
    """Return: a ``{"cmd": "trim"}`` line asking to free ``target_kib``
    within ``deadline_ms``; answered by ``trimmed`` with the same trim_id.
    Raises: ProtocolError for a value out of range."""
    return _line({"cmd": "trim", "v": PROTOCOL_VERSION,
                  "trim_id": _field("trim", "trim_id", trim_id),
                  "level": _level("trim", "level", level),
                  "target_kib": _field("trim", "target_kib", target_kib),
                  "deadline_ms": _field("trim", "deadline_ms", deadline_ms)})


def level_event(level: "Union[int, str]", avail_kib: int, total_kib: int) -> bytes:
    """Return: a ``{"cmd": "level"}`` line for subscribers.
    Raises: ProtocolError for a value out of range."""
    return _line({"cmd": "level", "v": PROTOCOL_VERSION,
                  "level": _level("level", "level", level),
                  "avail_kib": _field("level", "avail_kib", avail_kib),
                  "total_kib": _field("level", "total_kib", total_kib)})


def _check_event(obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Return: a trim or level event, its fields checked (extra fields kept).
    Raises: ProtocolError."""
    cmd = obj["cmd"]
    if not isinstance(cmd, str) or cmd not in _EVENTS:
        raise ProtocolError("unknown_cmd", "'cmd': unknown event %s" % _show(cmd), "cmd")
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
    obj = _load_object(line)
    _check_version(obj)
    obj["v"] = PROTOCOL_VERSION
    return _check_event(obj) if "cmd" in obj else _check_reply(obj)
