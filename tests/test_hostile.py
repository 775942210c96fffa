"""Issue 10: memagent against hostile clients, each case on a real agent
process watching a real memcg.  Each section reproduces one defect and
failed on the code before its fix (commit 0210b1e)."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from memagent.demo.memcg import Memcg
from support import stop_agent

# -- defects 3 and 4: helpers (a real agent and its control socket) -------------------

@pytest.fixture
def ipc_user() -> Iterator[pwd.struct_passwd]:
    """Yield an unprivileged system user made for the test; removed after."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    name = "memagent-hostile-%s" % uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def ipc_open_dir() -> Iterator[str]:
    """Yield a directory every user may reach (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="memagent-hostile-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ipc_agent(group: Memcg, tmp: str, conf: str = "") -> "subprocess.Popen[str]":
    """Return: a running ``memagent run`` on ``tmp``/ctl.sock with ``conf``
    as its config file (after the defaults)."""
    config = os.path.join(tmp, "memagent.conf")
    with open(config, "w") as f:
        f.write("[plugins]\ndisable = notify_ui, device_watch, user_activity\n" + conf)
    sock = os.path.join(tmp, "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-m", "memagent", "run", "-c", config, "--memcg",
                             group.path, "--socket", sock], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("agent did not start: " + proc.communicate()[1][-3000:])
        time.sleep(0.05)
    return proc


def ipc_request(sock: socket.socket, obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Send one request on an open connection.  Returns: the next line, parsed."""
    sock.sendall((json.dumps(obj) + "\n").encode())
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return {"closed": True}
        buf += chunk
    reply: Dict[str, Any] = json.loads(buf.split(b"\n")[0])
    return reply


def ipc_connect(path: str, timeout_s: float = 5) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    s.connect(path)
    return s


def ipc_hog(user: pwd.struct_passwd, path: str,
            count: int) -> "Tuple[subprocess.Popen[str], Dict[str, int]]":
    """Start ``count`` subscribed, idle connections as ``user``.  Returns:
    the process holding them (close its stdin to let go) and its counts."""
    proc = subprocess.Popen(["/usr/bin/python3", "-c", HOG, path, str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the hog process failed"
    return proc, json.loads(line)


def ipc_status_cli(path: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "memagent", "status", "--json", "--socket",
                           path], capture_output=True, text=True, timeout=60)


def ipc_root_gets_in(path: str) -> None:
    """Assert that root's `memagent status` and `register` are served."""
    out = ipc_status_cli(path)
    assert out.returncode == 0, out.stderr
    assert "not running" not in json.loads(out.stdout).get("agent", "")
    s = ipc_connect(path)
    try:
        reply = ipc_request(s, {"cmd": "register", "name": "root-app", "class": "service"})
        assert reply.get("ok") is True, reply
    finally:
        s.close()



# -- defect 3: one local user takes every control-socket slot ---------------------------
#
# 200 connections from one unprivileged uid, each subscribed to CRITICAL and
# idle, had taken all 72 slots (max_apps 64 + 8 spare) and locked root's
# `memagent status` and `register` out.  Now: at most [apps] max_per_uid
# (default 32) per untrusted uid, 8 slots only root and the UI uid may take,
# and a subscriber that did not register is closed after
# [apps] subscriber_idle_ms of silence.

HOG = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held, admitted, busy, other = [], 0, 0, 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b'{"cmd": "subscribe", "levels": ["CRITICAL"], "id": 1}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        reply = json.loads(buf.split(b"\n")[0]) if b"\n" in buf else {}
    except OSError:
        reply = {}
    if reply.get("ok"):
        admitted += 1
        held.append(s)
    else:
        busy += reply.get("code") == "busy"
        other += reply.get("code") != "busy"
        s.close()
print(json.dumps({"admitted": admitted, "busy": busy, "other": other}), flush=True)
sys.stdin.read()  # hold the connections until the test closes our stdin
"""


@pytest.mark.memcg
def test_one_uid_gets_max_per_uid_and_root_still_gets_in(
        memcg: Memcg, ipc_open_dir: str, ipc_user: pwd.struct_passwd) -> None:
    agent = ipc_agent(memcg, ipc_open_dir)
    path = os.path.join(ipc_open_dir, "ctl.sock")
    held: "Optional[subprocess.Popen[str]]" = None
    try:
        held, counts = ipc_hog(ipc_user, path, 200)
        # before: 72 admitted, 0 refused, root locked out
        assert counts == {"admitted": 32, "busy": 168, "other": 0}, counts
        ipc_root_gets_in(path)
        control = json.loads(ipc_status_cli(path).stdout)["control"]
        assert control["refused"] == 168 and control["max_per_uid"] == 32, control
    finally:
        if held is not None:
            held.communicate("", timeout=30)
        stop_agent(agent)


@pytest.mark.memcg
def test_slots_reserved_for_root_when_untrusted_fill_the_rest(
        memcg: Memcg, ipc_open_dir: str, ipc_user: pwd.struct_passwd) -> None:
    agent = ipc_agent(memcg, ipc_open_dir, "[apps]\nmax_per_uid = 4096\n")
    path = os.path.join(ipc_open_dir, "ctl.sock")
    held: "Optional[subprocess.Popen[str]]" = None
    try:
        held, counts = ipc_hog(ipc_user, path, 200)
        # every slot but the 8 kept for root and the UI shell
        assert counts["admitted"] == 64 and counts["busy"] == 136, counts
        ipc_root_gets_in(path)
    finally:
        if held is not None:
            held.communicate("", timeout=30)
        stop_agent(agent)


@pytest.mark.memcg
def test_silent_subscriber_is_closed_and_a_pinging_one_kept(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    agent = ipc_agent(memcg, tmp, "[apps]\nsubscriber_idle_ms = 1000\n")
    path = os.path.join(tmp, "ctl.sock")
    try:
        silent, pinging, app = (ipc_connect(path, 10) for _ in range(3))
        for s in (silent, pinging):
            assert ipc_request(s, {"cmd": "subscribe", "levels": ["CRITICAL"]})["ok"] is True
        assert ipc_request(app, {"cmd": "register", "name": "idle-app", "class": "cached"})["ok"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            assert ipc_request(pinging, {"cmd": "ping"})["ok"] is True
            time.sleep(0.4)
        silent.settimeout(0.5)
        try:
            assert silent.recv(100) == b""
        except socket.timeout:
            pytest.fail("a subscriber silent for 3 s (subscriber_idle_ms 1 s) is still connected")
        assert ipc_request(app, {"cmd": "ping"})["ok"] is True  # registered apps may idle
        for s in (silent, pinging, app):
            s.close()
    finally:
        stop_agent(agent)



@pytest.mark.memcg
def test_refused_flood_lingers_at_most_a_few(memcg: Memcg, tmp_path: Any) -> None:
    # A refused connection lingered 200 ms (half-closed, to let the client
    # read "busy"), each of them, with no cap: a flood held a socket and a
    # task per refused connection.  Now at most 8 linger at once and the
    # others are closed at once, their "busy" still delivered.
    tmp = str(tmp_path)
    path = os.path.join(tmp, "ctl.sock")
    agent = ipc_agent(memcg, tmp)
    fd_dir = "/proc/%d/fd" % agent.pid
    held, flood = [], []
    try:
        for _ in range(72):  # every slot (root may take the reserved ones)
            s = ipc_connect(path)
            assert ipc_request(s, {"cmd": "ping"})["ok"] is True
            held.append(s)
        fds_full = len(os.listdir(fd_dir))
        t0 = time.monotonic()
        for _ in range(100):
            flood.append(ipc_connect(path))  # and send nothing
        replies = []
        for s in flood:  # "busy", then EOF (the agent's half-close)
            buf = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            replies.append(json.loads(buf) if buf else None)
        # the fewest the agent holds while a refused one may still linger (200 ms)
        fds_flood = len(os.listdir(fd_dir))
        while time.monotonic() - t0 < 0.15:
            time.sleep(0.01)
            fds_flood = min(fds_flood, len(os.listdir(fd_dir)))
    finally:
        for s in held + flood:
            s.close()
        stop_agent(agent)
    assert all(r is not None and r["code"] == "busy" for r in replies), replies[:3]
    # before: about 100 more (every refused connection still open)
    assert fds_flood - fds_full <= 30, (fds_full, fds_flood)


# -- defect 4: status breaks with many apps ----------------------------------------------
#
# 64 registered apps, each named with 64 emoji (64 characters, 256 bytes of
# UTF-8, 768 bytes of escaped JSON), made the status reply longer than the
# 64 KiB line; the agent refused its own reply and `memagent status` said
# "not running".  Now names are at most 64 bytes of UTF-8 without control,
# line-separator or bidi characters, the status reply pages its app list and
# always fits one line, and the CLI tells busy (exit 4), reply too large (5)
# and not running (3) apart.

EMOJI = "\U0001F600"


def _register_all(path: str, names: "List[str]") -> "Tuple[List[socket.socket], List[Any]]":
    """Connect and register one app per name.  Returns: the connections
    (left open) and the replies."""
    conns, replies = [], []
    for name in names:
        s = ipc_connect(path)
        conns.append(s)
        replies.append(ipc_request(s, {"cmd": "register", "name": name, "class": "cached"}))
    return conns, replies


def _raw_status(path: str, **fields: "Any") -> "Tuple[int, Dict[str, Any]]":
    """Returns: (the status reply line's length in bytes, the reply)."""
    s = ipc_connect(path)
    try:
        s.sendall((json.dumps(dict(fields, cmd="status")) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    line = buf.split(b"\n")[0] + b"\n"
    return len(line), json.loads(line)


NAMES = [  # (name, accepted)
    (EMOJI * 16, True),  # 64 bytes: the most
    ("x" * 64, True),
    ("Photos \u2013 viewer", True),
    (EMOJI * 17, False),  # 68 bytes
    (EMOJI * 64, False),  # 256 bytes (accepted before: 64 characters)
    ("x" * 65, False),
    ("photos\u2028viewer", False),  # line separator
    ("photos\u2029viewer", False),  # paragraph separator
    ("gpj.\u202eexe", False),  # right-to-left override
    ("a\u202ab\u202c", False),  # embedding, pop
    ("a\u2066b\u2069", False),  # isolates
    ("a\u0085b", False),  # C1 next line
    ("a\x7fb", False),
    ("a\x1bb", False),
]


@pytest.mark.memcg
def test_names_bounded_in_bytes_without_controls(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    agent = ipc_agent(memcg, tmp)
    wrong = []
    try:
        for name, accepted in NAMES:
            s = ipc_connect(os.path.join(tmp, "ctl.sock"))
            reply = ipc_request(s, {"cmd": "register", "name": name, "class": "cached",
                                    "id": 1})
            s.close()
            if accepted:
                ok = reply["ok"] is True
            else:
                ok = (reply["ok"], reply.get("code"), reply.get("id")) == \
                    (False, "bad_field", 1) and "'name' must be" in reply["error"]
            if not ok:
                wrong.append((name, reply))
    finally:
        stop_agent(agent)
    assert not wrong, wrong


def _fill(path: str, count: int) -> "List[socket.socket]":
    """Register ``count`` apps with the longest names: 64 characters of
    emoji as before, else (refused now) the most that 64 bytes hold.
    Returns: their connections."""
    conns, replies = _register_all(path, ["%02x%s" % (i, EMOJI * 62) for i in range(count)])
    if not all(r["ok"] for r in replies):
        for s in conns:
            s.close()
        conns, replies = _register_all(path, ["%02x%s" % (i, EMOJI * 15)
                                              for i in range(count)])
    assert all(r["ok"] for r in replies), replies[:2]
    return conns


@pytest.mark.memcg
@pytest.mark.parametrize("count", [64, 160])
def test_status_with_maximum_apps_fits_and_pages(memcg: Memcg, tmp_path: Any,
                                                 count: int) -> None:
    tmp = str(tmp_path)
    path = os.path.join(tmp, "ctl.sock")
    agent = ipc_agent(memcg, tmp, "[apps]\nmax_apps = %d\n" % count)
    conns: "List[socket.socket]" = []
    try:
        conns = _fill(path, count)
        size, reply = _raw_status(path)
        assert reply["ok"] is True and size <= 65536, (size, reply.get("code"))
        apps = reply["status"]["apps"]
        assert apps["apps_total"] == count
        print("%d apps: status reply %d bytes, %d apps in it, apps_next %s"
              % (count, size, len(apps["apps"]), apps["apps_next"]))
        # a page of at most 5, from a cursor
        size, reply = _raw_status(path, apps_after=apps["apps"][0]["app_id"], apps_max=5)
        page = reply["status"]["apps"]
        assert [a["app_id"] for a in page["apps"]] == [a["app_id"] for a in apps["apps"][1:6]]
        assert page["apps_next"] == page["apps"][-1]["app_id"]
        out = ipc_status_cli(path)  # every page, merged
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        names = sorted(app["name"][:2] for app in st["apps"]["apps"])
        assert names == ["%02x" % i for i in range(count)]
    finally:
        for s in conns:
            s.close()
        stop_agent(agent)


@pytest.mark.memcg
def test_status_cli_says_busy_then_not_running(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    path = os.path.join(tmp, "ctl.sock")
    agent = ipc_agent(memcg, tmp)
    held = []
    try:
        for _ in range(72):  # root may take every slot, the 8 kept for it too
            s = ipc_connect(path)
            assert ipc_request(s, {"cmd": "ping"})["ok"] is True
            held.append(s)
        busy = ipc_status_cli(path)
    finally:
        for s in held:
            s.close()
        stop_agent(agent)
    gone = ipc_status_cli(path)
    assert busy.returncode == 4 and "busy" in busy.stderr, (busy.returncode, busy.stderr)
    assert "not running" not in busy.stderr + busy.stdout
    assert json.loads(busy.stdout)["level"] in ("NORMAL", "LOW", "CRITICAL")  # from /proc
    assert gone.returncode == 3 and "not running" in gone.stderr, (gone.returncode, gone.stderr)


def test_status_cli_says_reply_too_large(tmp_path: Any) -> None:
    # The agent's status now fits one line by construction; an older agent's
    # did not.  A socket that answers with a 70,000-byte line stands for it.
    path = os.path.join(str(tmp_path), "old.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        big = {"ok": True, "v": 1, "status": {"apps": {"apps": ["x" * 70000]}}}
        try:
            conn.sendall((json.dumps(big) + "\n").encode())
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    out = ipc_status_cli(path)
    thread.join(5)
    server.close()
    assert out.returncode == 5 and "too large" in out.stderr, (out.returncode, out.stderr)
    assert "not running" not in out.stderr + out.stdout
