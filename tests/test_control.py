"""The control socket on a real Unix socket: status, and hostile clients."""

import os
import socket
import time
from typing import Any, Callable, Dict

import pytest

from memagent import aio
from memagent.ipc.control import MAX_LINE_BYTES, ControlServer, handle_request, query
from support import exchange


def status() -> "Dict[str, Any]":
    return {"level": "NORMAL"}


def with_server(fn: "Callable[[str], Any]", tmp: str, **kw: Any) -> Any:
    """Run ``fn(path)`` in a thread-free way: start the server, run the
    blocking client in the default executor, stop the server."""
    import asyncio  # the test drives the loop; the package itself uses memagent.aio

    path = os.path.join(tmp, "ctl.sock")

    async def main() -> Any:
        server = ControlServer(path, status, **kw)
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, path)
        finally:
            await server.close()
            assert not os.path.exists(path)

    return aio.run(main())


def talk(path: str, data: bytes, timeout_s: float = 5.0) -> "list[dict]":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    s.connect(path)
    return exchange(s, data)


def test_handle_request_never_raises() -> None:
    for line in (b"", b"\xff\xfe", b"[]", b"1", b'{"cmd": 5}', b"{" * 1000):
        reply = handle_request(line, status)
        assert reply["ok"] is False and reply["error"]
    assert handle_request(b'{"cmd": "status"}', status)["status"] == {"level": "NORMAL"}


def test_status_roundtrip(tmp_path: Any) -> None:
    def client(path: str) -> Any:
        return aio.run(query(path, "status"))

    reply = with_server(client, str(tmp_path))
    assert reply["ok"] and reply["status"]["level"] == "NORMAL" and reply["v"] == 1


def test_garbage_then_closed_after_repeated_errors(tmp_path: Any) -> None:
    def client(path: str) -> Any:
        return talk(path, b"garbage\n\x00\x01\n{]\nstill here\n" + b'{"cmd":"ping"}\n')

    replies = with_server(client, str(tmp_path))
    assert [r["ok"] for r in replies] == [False, False, False]  # closed after 3 errors


def test_oversized_line(tmp_path: Any) -> None:
    def client(path: str) -> Any:
        return talk(path, b"x" * (MAX_LINE_BYTES + 10) + b"\n")

    replies = with_server(client, str(tmp_path))
    assert [(r["ok"], r["code"]) for r in replies] == [(False, "too_long")]


def test_stalled_half_line_times_out(tmp_path: Any) -> None:
    def client(path: str) -> Any:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        s.sendall(b'{"cmd": "sta')  # and stall
        t0 = time.monotonic()
        data = s.recv(100)  # the server closes us after its read timeout
        s.close()
        return data, time.monotonic() - t0

    data, waited_s = with_server(client, str(tmp_path), read_timeout_ms=300)
    assert data == b"" and 0.2 < waited_s < 5


def test_connection_cap(tmp_path: Any) -> None:
    def client(path: str) -> Any:
        held = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        time.sleep(0.2)
        extra = talk(path, b'{"cmd":"ping"}\n')
        for s in held:
            s.close()
        time.sleep(0.2)
        after = talk(path, b'{"cmd":"ping"}\n')
        return extra, after

    extra, after = with_server(client, str(tmp_path), max_clients=4)
    assert extra == [{"ok": False, "v": 1, "code": "busy", "error": "busy: too many clients"}]
    assert after[0]["ok"] is True


def test_vanishing_clients(tmp_path: Any) -> None:
    def client(path: str) -> Any:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            try:
                s.sendall(b'{"cmd": "status"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass  # over the client cap: the server said busy and hung up first (seen in CI)
            s.close()  # before reading the reply
        time.sleep(0.5)  # let the server reap the dead connections
        return talk(path, b'{"cmd":"ping"}\n')

    assert with_server(client, str(tmp_path))[0]["ok"] is True


def test_query_without_agent(tmp_path: Any) -> None:
    with pytest.raises(OSError):
        aio.run(query(str(tmp_path) + "/none.sock"))


def test_status_page_never_passes_the_line() -> None:
    from memagent.core.protocol import reply_ok
    from memagent.ipc.statuspage import bound_status, page_apps

    apps = [{"app_id": i, "name": "\U0001F600" * 16, "pad": "x" * 900} for i in range(1, 201)]
    st = {"level": "LOW", "actions": [{"action": "kill", "note": "y" * 50000}],
          "recent": [{"z": "z" * 30000}], "apps": {"max_apps": 200, "apps": apps}}
    seen = []
    after = 0
    for _ in range(50):
        page = bound_status(st, after)
        assert len(reply_ok("x" * 64, status=page)) <= MAX_LINE_BYTES
        assert page["truncated"] == ["actions"] and page["level"] == "LOW"
        seen += [a["app_id"] for a in page["apps"]["apps"]]
        if page["apps"]["apps_next"] is None:
            break
        after = page["apps"]["apps_next"]
    assert seen == list(range(1, 201))
    assert page_apps(apps, 0, 0, 10000) == ([], 0)  # apps_max 0: the summary only
    assert page_apps(apps, 195, None, 100000) == (apps[195:], None)
    assert bound_status({"level": "NORMAL"}) == {"level": "NORMAL"}  # no registry: as it was
