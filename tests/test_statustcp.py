"""The read-only TCP status listener, on a real agent process and real TCP
sockets on loopback: off by default, the token, read-only, loopback by
default, a bad token file, and the hostile battery pointed at it.
The client's error mapping (:func:`memagent.ipc.statustcp.fetch`) against
the real agent, and against small real servers in this process that answer
as a broken or older device would."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from memagent import aio
from memagent.ipc.control import query
from memagent.ipc.statustcp import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_GARBAGE,
    EXIT_TOO_LARGE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_VERSION,
    READ_ONLY,
    TcpStatusError,
    TokenFileError,
    fetch,
    parse_hostport,
    read_token,
    same_token,
)
from support import agent_command, stop_agent

TOKEN = "s3cret-token-for-the-tests-0123456789"
DEFAULT_PORT = 7767


def free_port() -> int:
    """Return: a TCP port free on loopback just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_file(tmp: str, mode: int = 0o600, text: str = TOKEN + "\n") -> str:
    path = os.path.join(tmp, "status.token")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class Agent:
    """A ``memagent run --source poll`` process with a config file; its
    control socket ``sock`` and, when enabled, its TCP ``port``."""

    def __init__(self, tmp: str, section: str = "", interpreter: str = "cpython") -> None:
        self.tmp = tmp
        self.sock = os.path.join(tmp, "ctl.sock")
        self.port = free_port()
        conf = os.path.join(tmp, "memagent.conf")
        with open(conf, "w") as f:
            f.write("[plugins]\nenable = release_caches\n")
            if section:
                f.write("[status_tcp]\nport = %d\n%s\n" % (self.port, section))
        head, env = agent_command(interpreter)
        self.proc = subprocess.Popen(head + ["run", "--source", "poll", "--socket", self.sock,
                                             "--config", conf],
                                     stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.05)
        time.sleep(0.2)  # the TCP listener starts just after the control socket

    def status(self) -> "Dict[str, Any]":
        """Return: the status over the control socket."""
        reply = aio.run(query(self.sock))
        assert reply["ok"], reply
        st: "Dict[str, Any]" = reply["status"]
        return st

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s

    def stop(self) -> str:
        return stop_agent(self.proc)


@pytest.fixture
def agent(tmp_path: Any) -> "Iterator[Agent]":
    """An agent with the listener on, the token file 0600."""
    tmp = str(tmp_path)
    a = Agent(tmp, "enabled = yes\ntoken_file = %s\nread_timeout_ms = 1000\n"
              % token_file(tmp))
    try:
        yield a
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.communicate()


def listening(pid: int) -> "List[Tuple[str, int]]":
    """Return: the (address, port) of every TCP socket ``pid`` listens on
    (its fds' socket inodes in /proc/net/tcp and tcp6, state LISTEN)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in list(f)[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    addr, port = cols[1].split(":")
                    out.append((addr, int(port, 16)))
    return out


def ask(s: socket.socket, obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Send ``obj`` as a line.  Returns: the reply line as an object."""
    s.sendall((json.dumps(obj) + "\n").encode())
    return json.loads(read_line(s))


def read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        assert chunk, "closed before a whole line: %r" % buf[:200]
        buf += chunk
    return buf


def closed(s: socket.socket) -> bool:
    """Return: True if the peer closed ``s`` (EOF, or a reset)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


# -- off, on, token ----------------------------------------------------------------------


def test_off_by_default_nothing_listens(tmp_path: Any) -> None:
    a = Agent(str(tmp_path))
    try:
        assert a.status()["status_tcp"] == {"enabled": False}
        # no TCP socket of the agent's listens, on 7767 or any other port (a
        # connection to 7767 would prove nothing: another program may hold it)
        assert listening(a.proc.pid) == []
    finally:
        a.stop()


def test_status_with_the_token_on_loopback(agent: Agent) -> None:
    assert listening(agent.proc.pid) == [("0100007F", agent.port)]  # 127.0.0.1
    s = agent.connect()
    assert s.getpeername()[0] == "127.0.0.1"
    assert ask(s, {"cmd": "ping", "id": 7, "token": TOKEN}) == {"ok": True, "v": 1, "id": 7}
    reply = ask(s, {"cmd": "status", "token": TOKEN, "apps_max": 5})
    assert reply["ok"] and reply["status"]["pid"] == agent.proc.pid
    tcp = reply["status"]["status_tcp"]
    assert tcp["listening"] and tcp["off"] is None and tcp["bind"] == "127.0.0.1"
    assert tcp["port"] == agent.port and tcp["connections"] == 1 and tcp["max_clients"] == 4
    assert "apps_total" in reply["status"]["apps"]  # paged as on the control socket
    s.close()
    assert fetch("127.0.0.1", agent.port, TOKEN, {"cmd": "ping"}) == {"ok": True, "v": 1}
    if isinstance(reply["status"].get("schema"), int):
        assert fetch("127.0.0.1", agent.port, TOKEN, {"cmd": "status"})["ok"]
    else:  # this agent's status has no schema yet: the reader says version mismatch
        with pytest.raises(TcpStatusError) as err:
            fetch("127.0.0.1", agent.port, TOKEN, {"cmd": "status"})
        assert err.value.exit_code == EXIT_VERSION
    agent.stop()


def test_no_token_is_refused_and_closed(agent: Agent) -> None:
    s = agent.connect()
    reply = ask(s, {"cmd": "status", "id": "a"})
    assert reply["ok"] is False and reply["code"] == "token_required" and reply["id"] == "a"
    assert "token" in reply["error"] and "status" not in reply
    assert closed(s)
    with pytest.raises(TcpStatusError) as err:
        fetch("127.0.0.1", agent.port, "", {"cmd": "ping"})
    assert err.value.exit_code == EXIT_AUTH
    agent.stop()


def test_a_wrong_token_is_refused_closed_counted_and_logged_once(agent: Agent) -> None:
    for _ in range(5):
        s = agent.connect()
        reply = ask(s, {"cmd": "status", "token": TOKEN[:-1] + "x"})
        assert reply == {"ok": False, "v": 1, "code": "bad_token", "error": "wrong token"}
        assert closed(s)
        s.close()
    with pytest.raises(TcpStatusError) as err:
        fetch("127.0.0.1", agent.port, "x" * 40, {"cmd": "ping"})
    assert err.value.exit_code == EXIT_AUTH and "bad_token" in str(err.value)
    assert agent.status()["status_tcp"]["bad_tokens"] == 6
    log = agent.stop()
    assert log.count("with a wrong token") == 1, log  # at most once a minute


def test_control_requests_are_refused_and_change_nothing(agent: Agent) -> None:
    s = agent.connect()
    requests = ({"cmd": "register", "name": "evil", "class": "foreground"},
                {"cmd": "set_class", "class": "perceptible"},
                {"cmd": "trimmed", "trim_id": 1, "freed_kib": 1000},
                {"cmd": "foreground", "pid": os.getpid()},
                {"cmd": "subscribe"}, {"cmd": "unregister"})
    for i, req in enumerate(requests):
        reply = ask(s, dict(req, token=TOKEN))
        assert reply["ok"] is False and reply["code"] == "read_only", reply
        assert reply["error"] == READ_ONLY
        if i % 3 == 2:  # MAX_ERRORS refusals close the connection
            assert closed(s)
            s = agent.connect()
    with pytest.raises(TcpStatusError):
        fetch("127.0.0.1", agent.port, TOKEN, {"cmd": "register", "name": "x",
                                               "class": "cached"})
    st = agent.status()
    assert st["apps"]["apps"] == [] and st["apps"]["apps_total"] == 0
    agent.stop()


def test_events_after_a_seq(agent: Agent) -> None:
    s = agent.connect()
    reply = ask(s, {"cmd": "events", "after": 0, "token": TOKEN})
    assert reply["ok"], reply
    assert isinstance(reply["events"], list) and isinstance(reply["next"], int)
    assert [e["seq"] for e in reply["events"]] == sorted(e["seq"] for e in reply["events"])
    later = ask(s, {"cmd": "events", "after": reply["next"], "token": TOKEN})
    assert later["ok"] and all(e["seq"] > reply["next"] for e in later["events"])
    agent.stop()


# -- the token file ----------------------------------------------------------------------


def test_a_token_file_others_may_read_keeps_it_off(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    path = token_file(tmp, 0o644)
    a = Agent(tmp, "enabled = yes\ntoken_file = %s\n" % path)
    try:
        tcp = a.status()["status_tcp"]
        assert tcp["enabled"] and not tcp["listening"]
        assert "mode 0644" in tcp["off"] and path in tcp["off"], tcp
        assert listening(a.proc.pid) == []
        with pytest.raises(TcpStatusError) as err:
            fetch("127.0.0.1", a.port, TOKEN, {"cmd": "ping"})
        assert err.value.exit_code == EXIT_UNREACHABLE
    finally:
        log = a.stop()
    assert "status TCP listener off: token file %s: mode 0644" % path in log


def test_read_token_refuses_unsafe_files(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    path = token_file(tmp, 0o600, "  %s  \nsecond line\n" % TOKEN)
    assert read_token(path) == TOKEN
    os.chmod(path, 0o400)
    assert read_token(path) == TOKEN
    cases: "List[Tuple[Callable[[], None], str]]" = [
        (lambda: os.chmod(path, 0o640), "mode 0640 lets others read it; chmod 600"),
        (lambda: os.chmod(path, 0o604), "mode 0604"),
        (lambda: (os.chmod(path, 0o600), os.unlink(path)) and None, "No such file"),
        (lambda: os.mkdir(path, 0o700), "not a regular file"),
        (lambda: (os.rmdir(path), token_file(tmp, 0o600, "short\n")) and None,
         "has 5 characters, fewer than 16")]
    if os.geteuid() == 0:
        cases.append((lambda: (token_file(tmp), os.chown(path, 65534, 65534)) and None,
                      "owned by uid 65534, not by root"))
    for make, said in cases:
        make()
        with pytest.raises(TokenFileError) as err:
            read_token(path)
        assert said in str(err.value) and path in str(err.value)
        assert err.value.exit_code == EXIT_AUTH


def test_no_token_file_given_is_a_usage_error() -> None:
    for path in (None, ""):
        with pytest.raises(TokenFileError) as err:
            read_token(path)
        assert err.value.exit_code == EXIT_USAGE and "--token-file" in str(err.value)


def test_parse_hostport() -> None:
    assert parse_hostport("handset:9000") == ("handset", 9000)
    assert parse_hostport("10.0.0.2") == ("10.0.0.2", DEFAULT_PORT)
    assert parse_hostport("[::1]:7000") == ("::1", 7000)
    assert parse_hostport("[fe80::1]") == ("fe80::1", DEFAULT_PORT)
    for bad in (None, "", ":80", "host:", "host:x", "host:0", "host:65536", "[::1", "[::1]x"):
        with pytest.raises(TcpStatusError) as err:
            parse_hostport(bad)
        assert err.value.exit_code == EXIT_USAGE, bad


def test_same_token_with_and_without_hmac(monkeypatch: Any) -> None:
    from memagent.ipc import statustcp

    for compare in (statustcp._compare_digest, None):  # None: MicroPython's loop
        monkeypatch.setattr(statustcp, "_compare_digest", compare)
        assert same_token(TOKEN, TOKEN)
        for other in ("", TOKEN[:-1], TOKEN + "x", "x" + TOKEN[1:], TOKEN.upper(), "\u00e9" * 9):
            assert not same_token(other, TOKEN), (compare, other)


def test_bad_addresses_keep_it_off(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    path = token_file(tmp)
    for bind, said in (("", "bind is empty"), ("192.0.2.1", "cannot listen on 192.0.2.1")):
        a = Agent(tmp, "enabled = yes\ntoken_file = %s\nbind = %s\n" % (path, bind))
        try:
            tcp = a.status()["status_tcp"]
            assert not tcp["listening"] and said in tcp["off"], tcp
            assert listening(a.proc.pid) == []
        finally:
            a.stop()


def test_a_bad_value_is_a_config_error(tmp_path: Any) -> None:
    conf = os.path.join(str(tmp_path), "bad.conf")
    for line, said in (("port = 70000", "bad.conf:2: must be <= 65535, got 70000"),
                       ("enabled = maybe", "expected yes or no"),
                       ("max_clients = 0", "must be >= 1"),
                       ("colour = red", "unknown setting 'colour' in [status_tcp]")):
        with open(conf, "w") as f:
            f.write("[status_tcp]\n%s\n" % line)
        run = subprocess.run([sys.executable, "-m", "memagent", "run", "--source", "poll",
                              "--config", conf, "--socket", ""], capture_output=True,
                             text=True, timeout=30)
        assert run.returncode != 0 and said in run.stderr, (line, run.stderr[-2000:])


# -- bounds ------------------------------------------------------------------------------


def test_busy_past_max_clients(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    a = Agent(tmp, "enabled = yes\ntoken_file = %s\nmax_clients = 2\n" % token_file(tmp))
    try:
        held = [a.connect() for _ in range(2)]
        for s in held:
            assert ask(s, {"cmd": "ping", "token": TOKEN})["ok"]
        s = a.connect()
        reply = json.loads(read_line(s))
        assert reply["code"] == "busy" and reply["ok"] is False and closed(s)
        with pytest.raises(TcpStatusError) as err:
            fetch("127.0.0.1", a.port, TOKEN, {"cmd": "ping"})
        assert err.value.exit_code == EXIT_BUSY
        for s in held:
            s.close()
        time.sleep(0.3)
        tcp = a.status()["status_tcp"]
        assert tcp["refused"] == 2 and tcp["connections"] == 0
        assert fetch("127.0.0.1", a.port, TOKEN, {"cmd": "ping"})["ok"]
    finally:
        a.stop()


def test_idle_and_slow_clients_are_closed_after_read_timeout(agent: Agent) -> None:
    idle, slow = agent.connect(), agent.connect()
    t0 = time.monotonic()
    for ch in b'{"cmd": "ping", "tok':  # a byte every 100 ms: the line is due in 1 s
        try:
            slow.send(bytes([ch]))
        except OSError:
            break
        time.sleep(0.1)
    assert closed(idle) and closed(slow)
    assert 0.8 < time.monotonic() - t0 < 4
    agent.stop()


def test_a_line_too_long_is_refused_and_closed(agent: Agent) -> None:
    s = agent.connect()
    try:
        s.sendall(b"x" * 70000)
    except OSError:
        pass
    reply = json.loads(read_line(s))
    assert reply["code"] == "too_long" and closed(s)
    agent.stop()


# -- the client's errors -----------------------------------------------------------------


def serve_once(answer: "Callable[[socket.socket], None]") -> int:
    """Start a one-connection server on loopback that reads a request line
    and runs ``answer`` on the connection (as a broken or older device
    would reply).  Returns: its port."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            buf = b""
            while not buf.endswith(b"\n"):
                buf += conn.recv(65536)
            assert json.loads(buf)["token"] == TOKEN
            try:
                answer(conn)
            except OSError:
                pass
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return int(srv.getsockname()[1])


def fetch_error(answer: "Callable[[socket.socket], None]",
                request: "Optional[Dict[str, Any]]" = None) -> TcpStatusError:
    port = serve_once(answer)
    with pytest.raises(TcpStatusError) as err:
        fetch("127.0.0.1", port, TOKEN, request or {"cmd": "status"}, timeout_ms=500)
    return err.value


def test_fetch_classifies_what_comes_back() -> None:
    cases: "List[Tuple[Callable[[socket.socket], None], int, str]]" = [
        (lambda c: c.sendall(b"\x00\xffgarbage\n"), EXIT_GARBAGE, "not JSON"),
        (lambda c: c.sendall(b"[1, 2]\n"), EXIT_GARBAGE, "not a JSON object"),
        (lambda c: c.sendall(b'{"ok": true, "v": 1, "st'), EXIT_GARBAGE, "without a whole"),
        (lambda c: None, EXIT_GARBAGE, "closed without a reply"),
        (lambda c: c.sendall(b"a" * 70000), EXIT_TOO_LARGE, "longer than 65536"),
        (lambda c: time.sleep(1.5), EXIT_UNREACHABLE, "no answer in time"),
        (lambda c: c.sendall(b'{"ok": true, "v": 1, "status": {"pid": 1}}\n'), EXIT_VERSION,
         "no schema"),
        (lambda c: c.sendall(b'{"ok": false, "code": "unknown_cmd", "error": "no"}\n'),
         EXIT_VERSION, "older"),
        (lambda c: c.sendall(b'{"ok": false, "code": "too_long", "error": "x"}\n'),
         EXIT_TOO_LARGE, "too_long"),
        (lambda c: c.sendall(b'{"ok": false, "code": "busy", "error": "busy: too many"}\n'),
         EXIT_BUSY, "busy"),
        (lambda c: c.sendall(b'{"ok": false, "code": "bad_token", "error": "wrong"}\n'),
         EXIT_AUTH, "--token-file")]
    for answer, code, said in cases:
        err = fetch_error(answer)
        assert err.exit_code == code and said in str(err), (said, str(err))
    port = serve_once(lambda c: c.sendall(b'{"ok": true, "v": 1, "status": {"schema": 1}}\n'))
    assert fetch("127.0.0.1", port, TOKEN, {"cmd": "status"})["status"] == {"schema": 1}
    with pytest.raises(TcpStatusError) as err:  # nobody listens
        fetch("127.0.0.1", free_port(), TOKEN, {"cmd": "ping"})
    assert err.value.exit_code == EXIT_UNREACHABLE and "Connection refused" in str(err.value)


# -- the hostile battery -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


def holder_battery(port: int) -> None:
    """What a token holder (or a broken tool) may do: floods of long lines,
    pipelined status it never reads, clients that vanish mid-reply."""
    addr = ("127.0.0.1", port)
    pad = "A" * 60000
    for _ in range(20):  # long lines with the token (a bad field), then overlong ones
        with socket.create_connection(addr, timeout=5) as s:
            try:
                for _ in range(4):
                    s.sendall((json.dumps({"cmd": "ping", "token": TOKEN, "pad": pad})
                               + "\n").encode())
                s.sendall(b"x" * 70000)
            except OSError:
                pass
    for _ in range(20):  # status asked 100 times, never read
        with socket.create_connection(addr, timeout=5) as s:
            try:
                s.sendall((json.dumps({"cmd": "status", "token": TOKEN}) + "\n").encode() * 100)
            except OSError:
                pass
    for _ in range(100):  # gone mid-reply, with a reset
        s = socket.create_connection(addr, timeout=5)
        try:
            s.sendall((json.dumps({"cmd": "status", "token": TOKEN}) + "\n").encode())
            s.recv(100)
        except OSError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def test_the_hostile_battery_against_the_tcp_listener(tmp_path: Any) -> None:
    from bench.hostile import PHASES, attack

    tmp = str(tmp_path)
    a = Agent(tmp, "enabled = yes\ntoken_file = %s\nread_timeout_ms = 2000\n"
              % token_file(tmp))
    try:
        target = ("127.0.0.1", a.port)
        for _ in range(50):  # warm up: allocator arenas, code paths
            assert fetch(target[0], a.port, TOKEN, {"cmd": "ping"})["ok"]
            aio.run(query(a.sock))
        time.sleep(0.5)
        before_kib = rss_kib(a.proc.pid)
        held: "List[socket.socket]" = []
        for phase in PHASES:  # as an attacker without the token would
            attack(target, phase, held, quick=False)
            for s in held:
                s.close()
            held.clear()
        idle = [socket.create_connection(target, timeout=5) for _ in range(50)]
        holder_battery(a.port)
        for s in idle:
            s.close()
        time.sleep(2.5)  # the last slow ones time out
        assert a.proc.poll() is None
        assert fetch("127.0.0.1", a.port, TOKEN, {"cmd": "ping"})["ok"]
        st = a.status()
        after_kib = rss_kib(a.proc.pid)
        tcp = st["status_tcp"]
        assert tcp["listening"] and tcp["connections"] == 0 and tcp["failed"] == 0, tcp
        assert tcp["refused"] > 0 and tcp["bad_tokens"] == 0, tcp
        kept = [a.connect() for _ in range(3)]  # open at SIGTERM: closed, and no wait
        for s in kept:
            assert ask(s, {"cmd": "ping", "token": TOKEN})["ok"]
        t0 = time.monotonic()
        log = a.stop()
        stop_s = time.monotonic() - t0
        assert all(closed(s) for s in kept)
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.communicate()
    assert after_kib - before_kib < 8192, (before_kib, after_kib)
    assert stop_s < 5, stop_s
    assert "Traceback" not in log, log[-5000:]
    print("RSS %d -> %d KiB, stopped in %.2f s" % (before_kib, after_kib, stop_s))


def test_on_micropython(tmp_path: Any) -> None:
    """The listener on the board's interpreter (the shim's TCP server)."""
    from bench.hostile import PHASES, attack

    tmp = str(tmp_path)
    a = Agent(tmp, "enabled = yes\ntoken_file = %s\nread_timeout_ms = 1000\nmax_clients = 2\n"
              % token_file(tmp), interpreter="micropython")
    try:
        deadline = time.monotonic() + 10
        while not listening(a.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening(a.proc.pid) == [("0100007F", a.port)]
        assert fetch("127.0.0.1", a.port, TOKEN, {"cmd": "ping"})["ok"]
        s = a.connect()
        reply = ask(s, {"cmd": "status", "token": TOKEN})
        assert reply["ok"] and reply["status"]["status_tcp"]["listening"]
        assert ask(s, {"cmd": "register", "name": "x", "class": "cached",
                       "token": TOKEN})["code"] == "read_only"
        s.close()
        for token, code in (("", EXIT_AUTH), ("y" * 30, EXIT_AUTH)):
            with pytest.raises(TcpStatusError) as err:
                fetch("127.0.0.1", a.port, token, {"cmd": "ping"})
            assert err.value.exit_code == code
        held = [a.connect() for _ in range(2)]
        for h in held:
            assert ask(h, {"cmd": "ping", "token": TOKEN})["ok"]
        busy = a.connect()
        assert json.loads(read_line(busy))["code"] == "busy"
        assert all(closed(h) for h in held)  # read_timeout_ms
        time.sleep(0.5)
        before_kib = rss_kib(a.proc.pid)
        for phase in PHASES:  # the battery, quick (a tenth of the connections and fuzz)
            held: "List[socket.socket]" = []
            attack(("127.0.0.1", a.port), phase, held, quick=True)
            for h in held:
                h.close()
        holder_battery(a.port)
        time.sleep(1.5)
        assert fetch("127.0.0.1", a.port, TOKEN, {"cmd": "ping"})["ok"]
        tcp = a.status()["status_tcp"]
        assert tcp["bad_tokens"] == 1 and tcp["failed"] == 0 and tcp["connections"] == 0, tcp
        after_kib = rss_kib(a.proc.pid)
    finally:
        log = a.stop()
    assert "Traceback" not in log, log[-5000:]
    assert after_kib - before_kib < 4096, (before_kib, after_kib)
    print("MicroPython RSS %d -> %d KiB" % (before_kib, after_kib))


def test_memagent_status_connect(agent: Agent, tmp_path: Any) -> None:
    """The CLI on the listener: ``memagent status --connect`` and
    ``memagent events --connect`` (agent/fetchcli.py, the lead's)."""
    try:
        import memagent.remote  # noqa: F401  (fetchcli imports it for every remote)
    except ImportError:
        from support import need

        need("memagent.remote (the ssh/adb transports) is not in this tree yet")
    tok = os.path.join(str(tmp_path), "client.token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(tok, 0o600)
    other = os.path.join(str(tmp_path), "other")
    os.makedirs(other)
    wrong = token_file(other, 0o600, "z" * 20 + "\n")

    def cli(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-m", "memagent", *args], capture_output=True,
                              text=True, timeout=60)

    where = "127.0.0.1:%d" % agent.port
    run = cli("status", "--connect", where, "--token-file", tok, "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] >= 1 and doc["pid"] == agent.proc.pid
    run = cli("events", "--connect", where, "--token-file", tok)
    assert run.returncode == 0, run.stderr
    for args, code, said in (
            (("--token-file", wrong), EXIT_AUTH, "wrong token"),
            (("--token-file", agent.tmp + "/status.token"), 0, ""),
            ((), EXIT_USAGE, "--token-file"),
            (("--token-file", tok, "--connect", "127.0.0.1:%d" % free_port()),
             EXIT_UNREACHABLE, "Connection refused")):
        run = cli("status", "--connect", where, *args, "--json")
        assert run.returncode == code and said in run.stderr, (args, run.stderr)
    os.chmod(tok, 0o644)
    run = cli("status", "--connect", where, "--token-file", tok, "--json")
    assert run.returncode == EXIT_AUTH and "chmod 600" in run.stderr, run.stderr
    agent.stop()
