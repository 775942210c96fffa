"""The memagent command: record, replay, errors and exit codes."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, List

import pytest

from memagent.demo.memcg import Memcg
from memagent.ipc.ask import ask
from support import stop_agent

TRACES = os.path.join(os.path.dirname(__file__), "data", "traces")


def memagent(*args: str, timeout_s: int = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "memagent", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def test_version_and_help() -> None:
    out = memagent("--version")
    assert out.returncode == 0 and out.stdout.startswith("memagent ")
    out = memagent()
    assert out.returncode == 2 and "run" in out.stdout and "replay" in out.stdout


def test_replay_recorded_ramp() -> None:
    out = memagent("replay", os.path.join(TRACES, "ramp-128m.jsonl"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "readings over" in lines[0]
    assert any("LOW      <- NORMAL" in line for line in lines)
    out = memagent("replay", "--json", os.path.join(TRACES, "ramp-128m.jsonl"))
    notes = [json.loads(line) for line in out.stdout.splitlines()]
    assert notes[0]["level"] == "LOW"


def test_replay_bad_trace_names_the_line(tmp_path: Any) -> None:
    bad = os.path.join(str(tmp_path), "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"t_ms": 0, "total_kib": 100, "avail_kib": 50}\n{"t_ms": 1}\n')
    out = memagent("replay", bad)
    assert out.returncode == 2 and "line 2" in out.stderr and "Traceback" not in out.stderr


def test_replay_with_config_thresholds(tmp_path: Any) -> None:
    conf = os.path.join(str(tmp_path), "m.conf")
    with open(conf, "w") as f:
        f.write("[levels]\nlow_pct = 35\ncritical_pct = 5\n")
    default = memagent("replay", "--json", os.path.join(TRACES, "ramp-128m.jsonl"))
    custom = memagent("replay", "--json", "-c", conf, os.path.join(TRACES, "ramp-128m.jsonl"))
    first_default = json.loads(default.stdout.splitlines()[0])
    first_custom = json.loads(custom.stdout.splitlines()[0])
    assert first_custom["t_ms"] < first_default["t_ms"]


def test_bad_config_is_exit_2(tmp_path: Any) -> None:
    conf = os.path.join(str(tmp_path), "m.conf")
    with open(conf, "w") as f:
        f.write("[levels]\nlow_pct = many\n")
    out = memagent("status", "-c", conf, "--socket", str(tmp_path) + "/x.sock")
    assert out.returncode == 2 and "m.conf:2" in out.stderr


@pytest.mark.memcg
def test_record_then_replay(memcg: Memcg, tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "t.jsonl")
    out = memagent("record", "--memcg", memcg.path, "--duration-s", "1.5", "-o", path)
    assert out.returncode == 0, out.stderr
    with open(path) as f:
        lines: List[str] = f.read().splitlines()
    assert json.loads(lines[0])["memagent_trace"] == 1
    readings = [json.loads(line) for line in lines[1:]]
    assert len(readings) >= 8  # --interval-ms 100 over 1.5 s
    assert all(r["total_kib"] == memcg.limit_kib() for r in readings)
    out = memagent("replay", path)
    assert out.returncode == 0 and "readings over" in out.stdout


# -- memagent status: the agent asked without asyncio ------------------------------------

STATUS_IN_PROCESS = """
import sys
from memagent import cli
code = cli.main(["status", "--json", "--socket", sys.argv[1]])
print("ASYNCIO", "asyncio" in sys.modules, code)
"""


@pytest.mark.memcg
def test_status_asks_a_real_agent_without_importing_asyncio(memcg: Memcg, tmp_path: Any) -> None:
    # On a 64 MB handset the asyncio query cost 7.8 MB of MemAvailable and the
    # kernel OOM-killed beside it (the ARM guest's boot test); the answer must
    # still come from the running agent, not from /proc.
    sock = os.path.join(str(tmp_path), "ctl.sock")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", memcg.path,
                              "--socket", sock], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        out = subprocess.run([sys.executable, "-c", STATUS_IN_PROCESS, sock],
                             capture_output=True, text=True, timeout=60)
    finally:
        stop_agent(agent)
    st = json.loads(out.stdout[:out.stdout.rindex("ASYNCIO")])
    assert st["pid"] == agent.pid and st["source"] == "cgroup1", st
    assert out.stdout.split()[-3:] == ["ASYNCIO", "False", "0"], out.stderr


def hostile_agent(path: str, behaviour: str) -> "threading.Thread":
    """Serve one connection at ``path`` the way a broken agent might."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        if behaviour == "endless":
            try:
                while True:
                    conn.sendall(b"x" * 65536)
            except OSError:
                pass
        elif behaviour == "silent":
            time.sleep(2)
        elif behaviour == "garbage":
            conn.sendall(b"[1, 2]\n")
        conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("behaviour,error,text", [
    ("silent", TimeoutError, "no reply"),
    ("hangup", ConnectionError, "without a reply"),
    ("endless", ValueError, "longer than"),
    ("garbage", ValueError, "a message is a JSON object"),
])
def test_ask_bounds_a_hostile_agent(tmp_path: Any, behaviour: str, error: Any,
                                    text: str) -> None:
    path = os.path.join(str(tmp_path), "x.sock")
    thread = hostile_agent(path, behaviour)
    t0 = time.monotonic()
    with pytest.raises(error, match=text):
        ask(path, "status", timeout_ms=500)
    assert time.monotonic() - t0 < 1.5
    thread.join(5)


def test_status_without_an_agent_says_so(tmp_path: Any) -> None:
    out = memagent("status", "--socket", os.path.join(str(tmp_path), "none.sock"))
    assert out.returncode == 3 and "not running at" in out.stdout, out.stderr  # 3: not running
