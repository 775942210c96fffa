"""The wire format of the control socket: one strict JSON object per line.

Decoding refuses what a lenient parser would let through and a peer could
abuse: a line over MAX_LINE_BYTES, bad or overlong UTF-8, NaN and Infinity,
duplicate keys (where the runtime's json lets us see them), nesting deeper
than MAX_DEPTH.  Encoding refuses values that do not round-trip.  Every
refusal is a :class:`ProtocolError` with a short machine code.  The messages
themselves (requests, replies, events) are :mod:`memagent.core.protocol`.

Pure and MicroPython-clean: MicroPython's json takes no hooks and its
decoder is lax about UTF-8, so both are checked by hand there.
"""

import json

try:
    from typing import Any, Dict, List, Optional, Tuple, Union
except ImportError:  # MicroPython
    pass

MAX_LINE_BYTES = 65536  # one line, newline included
MAX_DEPTH = 32  # nesting of arrays/objects in one message


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


def show(value: "Any") -> str:
    """Return: a short repr of a client's value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- decoding ----------------------------------------------------------------

def _reject_constant(name: str) -> "Any":
    """Raises: ProtocolError, always (NaN and Infinity are not JSON)."""
    raise ProtocolError("malformed", "%s is not a JSON number" % name)


def _unique_pairs(pairs: "List[Tuple[str, Any]]") -> "Dict[str, Any]":
    """Return: the object of ``pairs``.  Raises: ProtocolError on a repeated key."""
    obj: "Dict[str, Any]" = {}
    for key, value in pairs:
        if key in obj:
            raise ProtocolError("malformed", "duplicate key %s" % show(key), key)
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


def load_line(line: bytes) -> "Dict[str, Any]":
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
    if b"\\ud" in line or b"\\uD" in line:
        joined: "Dict[str, Any]" = _joined(obj)
        return joined
    return obj


def _join_pairs(text: str) -> str:
    """Return: ``text`` with each UTF-16 surrogate pair as the one character
    it encodes.  MicroPython's json leaves "\\ud83d\\ude00" (how CPython's
    json.dumps sends an emoji) as two lone surrogates, which the name check
    then refused; CPython's json joins them itself, and a lone one stays."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = ord(text[i])
        if 0xD800 <= c <= 0xDBFF and i + 1 < n and 0xDC00 <= ord(text[i + 1]) <= 0xDFFF:
            out.append(chr(0x10000 + ((c - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _joined(value: "Any") -> "Any":
    """Return: ``value`` with :func:`_join_pairs` applied to every string
    (keys too); nesting is bounded by the line's depth check."""
    if isinstance(value, str):
        return _join_pairs(value)
    if isinstance(value, list):
        return [_joined(v) for v in value]
    if isinstance(value, dict):
        return {_join_pairs(k): _joined(v) for k, v in value.items()}
    return value


# -- encoding ----------------------------------------------------------------

def check_value(value: "Any", depth: int) -> None:
    """Raises: ProtocolError unless ``value`` is plain JSON that round-trips:
    finite floats, bounded ints, str keys, nesting within MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise ProtocolError("bad_field", "reply nested deeper than %d" % MAX_DEPTH)
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise ProtocolError("bad_field", "integer %s out of range" % show(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ProtocolError("bad_field", "%s is not a JSON number" % value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_value(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError("bad_field", "key %s is not a string" % show(key))
            check_value(item, depth + 1)
    else:
        raise ProtocolError("bad_field", "%s is not JSON" % show(value))


def dump_line(obj: "Dict[str, Any]") -> bytes:
    """Return: ``obj`` as one "\\n"-terminated line.  Raises: ProtocolError
    ("too_long") past MAX_LINE_BYTES."""
    data = (json.dumps(obj) + "\n").encode("utf-8")
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError("too_long", "message longer than %d bytes" % MAX_LINE_BYTES)
    return data
