"""memagent.client on real Unix sockets: a threaded in-test agent that speaks
the protocol with memagent.core.protocol, the example app as a child process, and
end to end against ``memagent run``."""

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from memagent import aio
from memagent.client import AsyncClient, Backoff, Client, ClientError
from memagent.core.protocol import (
    ProtocolError,
    level_event,
    parse_request,
    reply_error,
    reply_ok,
    trim_request,
)
from memagent.demo.memcg import Memcg
from support import stop_agent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_APP = os.path.join(ROOT, "examples", "cache_app.py")


class FakeAgent:
    """A real Unix socket server: validates every request with
    ``parse_request``, records it with the peer's SO_PEERCRED, answers."""

    def __init__(self, path: str, register_error: "Optional[str]" = None) -> None:
        self.path = path
        self.register_error = register_error
        self.requests: "List[Dict[str, Any]]" = []
        self.bad: "List[bytes]" = []
        self.peers: "List[Tuple[int, int, int]]" = []
        self.conns: "List[socket.socket]" = []
        self.cond = threading.Condition()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                   struct.calcsize("3i"))
            with self.cond:
                self.peers.append(struct.unpack("3i", cred))
                self.conns.append(conn)
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            for line in conn.makefile("rb"):
                conn.sendall(self._answer(line))
        except OSError:
            pass

    def _answer(self, line: bytes) -> bytes:
        try:
            req = parse_request(line)
        except ProtocolError as err:
            with self.cond:
                self.bad.append(line)
                self.cond.notify_all()
            return reply_error(err.id, err.code, err.message)
        with self.cond:
            self.requests.append(req)
            self.cond.notify_all()
        if req["cmd"] == "register" and self.register_error:
            return reply_error(req["id"], self.register_error, "register: refused")
        if req["cmd"] == "status":
            return reply_ok(req["id"], status={"level": "NORMAL"})
        return reply_ok(req["id"])

    def send(self, data: bytes) -> None:
        """Send raw bytes to the newest connection."""
        self.conns[-1].sendall(data)

    def wait(self, pred: "Callable[[], Any]", timeout_s: float = 5.0) -> Any:
        """Return: pred()'s first truthy value.  Raises: AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                assert left > 0, "timed out; requests: %r" % self.requests
                self.cond.wait(left)
            return pred()

    def of(self, cmd: str) -> "List[Dict[str, Any]]":
        return [r for r in self.requests if r["cmd"] == cmd]

    def close(self) -> None:
        """Remove the socket file, stop listening, drop every client.  (In this
        order: a thread blocked in accept() keeps a closed listener alive.)"""
        if os.path.exists(self.path):
            os.unlink(self.path)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        except OSError:
            pass
        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


@pytest.fixture
def sock_path(tmp_path: Any) -> str:
    return str(tmp_path / "s.sock")


@pytest.fixture
def agent(sock_path: str) -> Iterator[FakeAgent]:
    fake = FakeAgent(sock_path)
    yield fake
    fake.close()


def serve_in_thread(client: Client) -> threading.Thread:
    thread = threading.Thread(target=client.run_forever, daemon=True)
    thread.start()
    return thread


def stop_thread(client: Client, thread: threading.Thread) -> None:
    client.stop()
    thread.join(5)
    assert not thread.is_alive()
    client.close()


# -- unit ------------------------------------------------------------------------

def test_backoff_doubles_and_is_bounded() -> None:
    b = Backoff(100, 5000)
    assert [b.next_ms() for _ in range(9)] == [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
    b.reset()
    assert b.next_ms() == 100


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Client("", on_trim=lambda level, kib: 0)
    with pytest.raises(ValueError):
        Client("app", cls="superuser")


# -- sync client ------------------------------------------------------------------

def test_register_identity_is_peercred(agent: FakeAgent, sock_path: str) -> None:
    client = Client("Photos", cls="cached", estimate_kib=12000, socket_path=sock_path)
    client.connect()
    reg = agent.of("register")[0]
    assert (reg["name"], reg["class"], reg["estimate_kib"]) == ("Photos", "cached", 12000)
    assert agent.peers[0][0] == os.getpid() and not agent.bad  # no pid field: refused if sent
    assert client.status() == {"level": "NORMAL"}
    client.set_class("cached")
    assert agent.of("set_class")[0]["class"] == "cached"
    client.close()


def test_trim_answered_with_what_the_callback_freed(agent: FakeAgent, sock_path: str) -> None:
    calls: "List[Tuple[str, int]]" = []

    def on_trim(level: str, target_kib: int) -> int:
        calls.append((level, target_kib))
        return 1234

    client = Client("app", on_trim=on_trim, socket_path=sock_path)
    thread = serve_in_thread(client)
    agent.wait(lambda: agent.of("register"))
    agent.send(trim_request(5, "LOW", 4096, 500))
    answer = agent.wait(lambda: agent.of("trimmed"))[0]
    assert (answer["trim_id"], answer["freed_kib"]) == (5, 1234)
    assert calls == [("LOW", 4096)]
    stop_thread(client, thread)


def test_set_estimate_from_on_trim_reaches_the_agent_before_the_answer(
        agent: FakeAgent, sock_path: str) -> None:
    # An app that says what it has left before answering: the agent's next
    # round sees the new estimate (the demo's apps were asked with 0 left).
    holder: "List[Client]" = []

    def on_trim(level: str, target_kib: int) -> int:
        holder[0].set_estimate(0)
        return 4096

    client = Client("app", cls="cached", estimate_kib=4096, on_trim=on_trim,
                    socket_path=sock_path)
    holder.append(client)
    thread = serve_in_thread(client)
    agent.wait(lambda: agent.of("register"))
    agent.send(trim_request(5, "LOW", 4096, 500))
    agent.wait(lambda: agent.of("trimmed"))
    cmds = [(r["cmd"], r.get("estimate_kib")) for r in agent.requests]
    assert cmds == [("register", 4096), ("register", 0), ("trimmed", None)], cmds
    assert client.estimate_kib == 0  # kept for a re-registration
    stop_thread(client, thread)


def test_callback_raising_answers_zero_and_client_survives(agent: FakeAgent,
                                                           sock_path: str) -> None:
    results: "List[Any]" = [RuntimeError("app bug"), None, -5, 7]

    def on_trim(level: str, target_kib: int) -> Any:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    client = Client("app", on_trim=on_trim, socket_path=sock_path)
    thread = serve_in_thread(client)
    agent.wait(lambda: agent.of("register"))
    for trim_id in range(1, 5):
        agent.send(trim_request(trim_id, "CRITICAL", 100, 500))
    answers = agent.wait(lambda: len(agent.of("trimmed")) == 4 and agent.of("trimmed"))
    assert [(a["trim_id"], a["freed_kib"]) for a in answers] == [(1, 0), (2, 0), (3, 0), (4, 7)]
    assert thread.is_alive() and len(agent.of("register")) == 1
    stop_thread(client, thread)


def test_bad_server_input_is_ignored(agent: FakeAgent, sock_path: str) -> None:
    client = Client("app", on_trim=lambda level, kib: 9, socket_path=sock_path)
    thread = serve_in_thread(client)
    agent.wait(lambda: agent.of("register"))
    agent.send(b"garbage\n\xff\xfe\n[1]\n{\"cmd\": \"party\", \"v\": 1}\n"
               b"{\"ok\": true, \"v\": 1, \"id\": 99}\n{\"cmd\": \"trim\", \"trim_id\": -1}\n"
               b"{\"a\": NaN}\n{\"cmd\": \"trim\", \"v\": 2, \"trim_id\": 3}\n\n")
    agent.send(b'{"cmd": "trim", "v": 1, "trim_id": 8, "level": "LOW", "target_kib": 1, '
               b'"deadline_ms": 500, "future_field": [1, 2]}\n')
    answer = agent.wait(lambda: agent.of("trimmed"))[0]
    assert (answer["trim_id"], answer["freed_kib"]) == (8, 9)
    assert len(agent.of("register")) == 1 and not agent.bad
    stop_thread(client, thread)


def test_poll_from_the_apps_own_main_loop(agent: FakeAgent, sock_path: str) -> None:
    client = Client("app", on_trim=lambda level, kib: kib, socket_path=sock_path)
    client.connect()
    assert client.poll(0) == 0
    other_r, other_w = os.pipe()  # the app's own event source
    poller = select.poll()
    poller.register(client.fileno(), select.POLLIN)
    poller.register(other_r, select.POLLIN)
    agent.send(trim_request(11, "LOW", 256, 500) + level_event("LOW", 1, 2))
    os.write(other_w, b"!")
    seen: "Dict[str, int]" = {"app": 0, "client": 0}
    deadline = time.monotonic() + 5
    while seen["client"] < 2 and time.monotonic() < deadline:
        for fd, _ in poller.poll(1000):
            if fd == other_r:
                seen["app"] += len(os.read(other_r, 64))
            else:
                seen["client"] += client.poll(0)
    assert seen == {"app": 1, "client": 2}  # the level event is ignored: not subscribed
    answer = agent.wait(lambda: agent.of("trimmed"))[0]
    assert (answer["trim_id"], answer["freed_kib"]) == (11, 256)
    start = time.monotonic()
    assert client.poll(200) == 1  # the reply to trimmed
    assert client.poll(200) == 0 and time.monotonic() - start >= 0.15
    client.close()
    os.close(other_r)
    os.close(other_w)


def test_level_events_with_on_level(agent: FakeAgent, sock_path: str) -> None:
    seen: "List[Tuple[str, int, int]]" = []
    client = Client("app", socket_path=sock_path, levels=["low", "CRITICAL"],
                    on_level=lambda level, avail, total: seen.append((level, avail, total)))
    client.connect()
    assert agent.of("subscribe")[0]["levels"] == ["LOW", "CRITICAL"]
    agent.send(level_event("CRITICAL", 5800, 65536))
    client.poll(2000)
    assert seen == [("CRITICAL", 5800, 65536)]
    client.close()


def test_reconnects_and_reregisters_after_agent_restart(sock_path: str) -> None:
    first = FakeAgent(sock_path)
    client = Client("app", cls="service", on_trim=lambda level, kib: 1, socket_path=sock_path)
    client.connect()
    client.set_class("cached")
    thread = serve_in_thread(client)
    first.close()
    time.sleep(0.5)  # the socket is missing for a while
    second = FakeAgent(sock_path)
    try:
        reg = second.wait(lambda: second.of("register"))[0]
        assert reg["class"] == "cached" and second.peers[0][0] == os.getpid()
        second.send(trim_request(1, "LOW", 1, 500))
        second.wait(lambda: second.of("trimmed"))
        # The trim may be answered inside connect(), before it counts the
        # registration (seen once in a full run): wait for the count.
        deadline = time.monotonic() + 5
        while client.registrations < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.registrations == 2
    finally:
        stop_thread(client, thread)
        second.close()


def test_reconnect_backoff_is_bounded_not_busy(sock_path: str) -> None:
    client = Client("app", socket_path=sock_path)  # 0.1 s doubling: ~5 tries in 2 s
    cpu_start = time.process_time()
    thread = serve_in_thread(client)
    time.sleep(2.0)
    stop_thread(client, thread)
    assert 4 <= client.connect_attempts <= 6, client.connect_attempts
    assert time.process_time() - cpu_start < 0.5


def test_max_retries_then_raises(sock_path: str) -> None:
    client = Client("app", socket_path=sock_path, max_retries=2, backoff_min_ms=10)
    with pytest.raises(OSError):
        client.run_forever()
    assert client.connect_attempts == 3
    client.close()


def test_permanent_refusal_raises(sock_path: str) -> None:
    fake = FakeAgent(sock_path, register_error="forbidden")
    try:
        client = Client("app", socket_path=sock_path)
        with pytest.raises(ClientError) as err:
            client.connect()
        assert err.value.code == "forbidden" and not client.connected
        with pytest.raises(ClientError):
            client.run_forever()
        client.close()
    finally:
        fake.close()


# -- async client -----------------------------------------------------------------

async def until(pred: "Callable[[], Any]", timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await aio.sleep_ms(10)
    return pred()


def test_async_client_serves_sync_and_async_callbacks(agent: FakeAgent,
                                                       sock_path: str) -> None:
    async def on_trim(level: str, target_kib: int) -> int:
        await aio.sleep_ms(10)
        if target_kib == 13:
            raise RuntimeError("app bug")
        return target_kib * 2

    async def main() -> None:
        client = AsyncClient("app", cls="cached", on_trim=on_trim, socket_path=sock_path)
        task = aio.create_task(client.run())
        await until(lambda: agent.of("register"))
        assert agent.peers[0][0] == os.getpid()
        assert (await client.status()) == {"level": "NORMAL"}
        agent.send(trim_request(1, "LOW", 13, 500) + trim_request(2, "LOW", 50, 500))
        answers = await until(lambda: len(agent.of("trimmed")) == 2 and agent.of("trimmed"))
        assert sorted((a["trim_id"], a["freed_kib"]) for a in answers) == [(1, 0), (2, 100)]
        client.on_trim = lambda level, kib: 3
        agent.send(b"junk\n" + trim_request(3, "LOW", 1, 500))
        answer = (await until(lambda: len(agent.of("trimmed")) == 3 and agent.of("trimmed")))[2]
        assert answer["freed_kib"] == 3
        client.stop()
        await aio.wait_for_ms(task, 2000)

    aio.run(main())


def test_async_backoff_then_reconnects(sock_path: str) -> None:
    async def main() -> None:
        client = AsyncClient("app", socket_path=sock_path)
        cpu_start = time.process_time()
        task = aio.create_task(client.run())
        await aio.sleep_ms(2000)
        assert 4 <= client.connect_attempts <= 6, client.connect_attempts
        assert time.process_time() - cpu_start < 0.5
        fake = FakeAgent(sock_path)
        try:
            await until(lambda: fake.of("register"))
            await until(lambda: client.registrations == 1)
            fake.close()  # the agent restarts
            fake = FakeAgent(sock_path)
            await until(lambda: fake.of("register"))
            await until(lambda: client.registrations == 2)
        finally:
            client.stop()
            await aio.wait_for_ms(task, 2000)
            fake.close()

    aio.run(main())


# -- the example app ----------------------------------------------------------------

def test_cache_app_frees_entries_on_trim(agent: FakeAgent, sock_path: str) -> None:
    app = subprocess.Popen([sys.executable, CACHE_APP, "--socket", sock_path, "--cache-mib",
                            "4", "--class", "service"], stdout=subprocess.PIPE, text=True)
    try:
        reg = agent.wait(lambda: agent.of("register"), 15)[0]
        assert (reg["class"], reg["estimate_kib"]) == ("service", 4096)
        assert agent.peers[0][0] == app.pid
        agent.send(trim_request(1, "LOW", 1000, 500))
        assert agent.wait(lambda: agent.of("trimmed"))[0]["freed_kib"] == 1024  # 4 entries
        agent.send(trim_request(2, "CRITICAL", 0, 500))  # 0: a quarter of what is left
        assert agent.wait(lambda: len(agent.of("trimmed")) == 2 and
                          agent.of("trimmed"))[1]["freed_kib"] == 768
    finally:
        app.send_signal(signal.SIGTERM)
        out, _ = app.communicate(timeout=10)
    assert app.returncode == 0
    assert "freed 1024 KiB" in out and "stopped, cache 2304 KiB" in out


# -- end to end: memagent run ---------------------------------------------------------

def start_agent(group: Memcg, path: str) -> "subprocess.Popen[str]":
    proc = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", group.path,
                             "--socket", path], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return proc


def apps_in_status(path: str) -> "List[Dict[str, Any]]":
    out = subprocess.run([sys.executable, "-m", "memagent", "status", "--json", "--socket",
                          path], capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(out.stdout).get("apps", {}).get("apps", []))


def wait_for_app(path: str, pid: int, timeout_s: float = 15) -> "Dict[str, Any]":
    deadline = time.monotonic() + timeout_s
    while True:
        found = [a for a in apps_in_status(path) if a.get("pid") == pid]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "app %d never registered" % pid
        time.sleep(0.2)


@pytest.mark.memcg
@pytest.mark.slow
def test_end_to_end_with_memagent_run(memcg: Memcg, tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    agent = start_agent(memcg, path)
    app = memcg.spawn([sys.executable, CACHE_APP, "--socket", path, "--cache-mib", "8",
                       "--class", "cached", "--name", "e2e_cache"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        entry = wait_for_app(path, app.pid)
        assert (entry["name"], entry["class"], entry["estimate_kib"]) == ("e2e_cache", "cached",
                                                                         8192)
        stop_agent(agent)  # the agent restarts; the app must come back by itself
        time.sleep(0.5)
        agent = start_agent(memcg, path)
        entry = wait_for_app(path, app.pid)
        assert entry["name"] == "e2e_cache"
        assert app.poll() is None
    finally:
        app.send_signal(signal.SIGTERM)
        out, err = app.communicate(timeout=10)
        stop_agent(agent)
    assert app.returncode == 0, err
    assert err.count("registered with the agent") == 2
