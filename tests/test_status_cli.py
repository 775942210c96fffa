"""``memagent status`` as a user runs it against a real agent: the screen
in a pipe (plain: ASCII, no escapes), on a real pseudo-terminal (colour,
refreshed in place with --watch), with TERM=dumb (plain again), --events N,
and the screen when no agent runs.

The agent watches the test's own memcg; nothing else is touched.
"""

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from memagent.demo.memcg import Memcg
from support import agent_command, stop_agent


def start_agent(group: Memcg, tmp: str) -> "Tuple[subprocess.Popen[str], str]":
    sock = os.path.join(tmp, "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", group.path,
                             "--socket", sock], stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return proc, sock


@pytest.fixture
def agent(memcg: Memcg, tmp_path: Any) -> "Iterator[Tuple[subprocess.Popen[str], str]]":
    proc, sock = start_agent(memcg, str(tmp_path))
    try:
        yield proc, sock
    finally:
        stop_agent(proc)


def on_pty(argv: "list[str]", term: Optional[str], timeout_s: float = 30) -> "Tuple[str, int]":
    """Return: (what ``argv`` wrote to a real pseudo-terminal, its exit code)."""
    env: Dict[str, str] = dict(os.environ)
    env.pop("TERM", None)
    if term is not None:
        env["TERM"] = term
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=10)
    return b"".join(chunks).decode("utf-8", "replace"), code


STATUS = [sys.executable, "-m", "memagent", "status"]


@pytest.mark.memcg
def test_a_pipe_gets_the_plain_screen(agent: "Tuple[subprocess.Popen[str], str]") -> None:
    proc, sock = agent
    out = subprocess.run(STATUS + ["--socket", sock], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode("ascii")  # plain: ASCII only
    assert "\x1b" not in text
    assert "agent pid %d" % proc.pid in text
    for section in ("MEMORY", "PRESSURE NORMAL", "HISTORY", "APPS", "EVENTS", "PLUGINS"):
        assert section in text, text
    assert "kill_background     DRY RUN" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.memcg
def test_a_terminal_gets_colour_and_dumb_gets_plain(
        agent: "Tuple[subprocess.Popen[str], str]") -> None:
    _, sock = agent
    colour, code = on_pty(STATUS + ["--socket", sock], "xterm-256color")
    assert code == 0 and "\x1b[" in colour and "PRESSURE" in colour, colour
    dumb, code = on_pty(STATUS + ["--socket", sock], "dumb")
    assert code == 0 and "\x1b" not in dumb and "PRESSURE NORMAL" in dumb, dumb
    unset, code = on_pty(STATUS + ["--socket", sock], None)
    assert code == 0 and "\x1b" not in unset
    forced = subprocess.run(STATUS + ["--socket", sock, "--color"], capture_output=True,
                            timeout=60)
    assert b"\x1b[" in forced.stdout


@pytest.mark.memcg
def test_watch_refreshes_in_place(agent: "Tuple[subprocess.Popen[str], str]") -> None:
    proc, sock = agent
    screen, code = on_pty(STATUS + ["--socket", sock, "--watch", "0.3", "--count", "3"],
                          "xterm")
    assert code == 0
    assert screen.count("\x1b[H\x1b[2J") == 3, screen  # cleared and drawn 3 times
    piped = subprocess.run(STATUS + ["--socket", sock, "--watch", "0.3", "--count", "2"],
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout.count("agent pid %d" % proc.pid) == 2
    assert "\x1b" not in piped.stdout  # a log of screens, not escape codes


@pytest.mark.memcg
def test_events_n_and_json(agent: "Tuple[subprocess.Popen[str], str]", memcg: Memcg) -> None:
    from conftest import ALLOC

    _, sock = agent
    hog = memcg.spawn(ALLOC + ["--rate", "10", "--max-mb", "56", "--hold", "1"],
                      stdout=subprocess.DEVNULL)
    hog.wait(timeout=60)
    doc = json.loads(subprocess.run(STATUS + ["--socket", sock, "--json"], capture_output=True,
                                    text=True, timeout=60).stdout)
    assert len(doc["events"]) >= 2, doc["events"]
    one = subprocess.run(STATUS + ["--socket", sock, "--events", "1"], capture_output=True,
                         text=True, timeout=60).stdout
    events = one[one.index("EVENTS"):one.index("PLUGINS")].splitlines()
    assert len(events) == 2, one  # the title and one event


@pytest.mark.parametrize("interpreter", ["cpython", "micropython"])
def test_no_agent_shows_proc_and_says_why(tmp_path: Any, interpreter: str) -> None:
    # On MicroPython too: the 64 MB board's shell (its os has no environ:
    # the screen once failed there on os.environ, in the guest's boot test)
    sock = os.path.join(str(tmp_path), "none.sock")
    cmd, env = agent_command(interpreter)
    out = subprocess.run(cmd + ["status", "--socket", sock], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 3, out.stderr
    assert "not running at %s" % sock in out.stderr
    assert "NOT RUNNING" in out.stdout and "MEMORY" in out.stdout, out.stdout
