"""The agent process under hostile clients: it stays up, keeps answering, and
its memory stays bounded.  Real agent, real Unix socket."""

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, List

from memagent import aio
from memagent.ipc.control import query


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


def hostile(path: str, i: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        kind = i % 5
        if kind == 0:
            s.sendall(b"\x00\xff garbage\n{]\n")
        elif kind == 1:
            s.sendall(b"x" * 70000)  # longer than a line may be, no newline
        elif kind == 2:
            s.sendall(b'{"cmd": "regis')  # half a line, then vanish
        elif kind == 3:
            s.sendall(b'{"cmd": "register", "name": "a", "class": "cached", "pid": 1}\n')
        else:
            s.sendall(b'{"cmd": "register", "name": "x%d", "class": "cached"}\n' % i)
            s.sendall(b'{"cmd": "subscribe"}\n')
    except OSError:
        pass  # the agent may refuse or close us: that is its right
    finally:
        s.close()


def test_a_thousand_hostile_connections(tmp_path: Any) -> None:
    sock = os.path.join(str(tmp_path), "ctl.sock")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--source", "poll",
                              "--socket", sock], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for i in range(100):  # warm up: allocator arenas, code paths
            hostile(sock, i)
        time.sleep(0.5)
        before_kib = rss_kib(agent.pid)
        for i in range(1000):
            hostile(sock, i)
        time.sleep(1.0)
        replies: List[Any] = [aio.run(query(sock)) for _ in range(3)]
        after_kib = rss_kib(agent.pid)
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=15)
    assert all(r["ok"] for r in replies)
    assert replies[-1]["status"]["apps"]["apps"] == []  # every vanished app unregistered
    assert after_kib - before_kib < 4096, (before_kib, after_kib)
    at = err.find("Traceback")
    assert agent.returncode == 0 and at < 0, (agent.returncode, err[max(at - 300, 0):][:5000])
