"""Test helpers shared by the test modules."""

import json
import os
import signal
import socket
import subprocess
import time
from typing import Any, Dict, List, NoReturn

import pytest


def need(reason: str) -> NoReturn:
    """A prerequisite is missing: skip with ``reason`` on a laptop, fail in CI
    (``CI=true``), where every prerequisite must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("prerequisite missing in CI: " + reason)
    pytest.skip(reason)



def stop_agent(agent: "subprocess.Popen[str]", timeout_s: float = 15) -> str:
    """SIGTERM ``agent`` (a ``memagent run`` with stderr piped) and wait.
    Returns: its stderr.  Fails if it exits non-zero, or, with its stacks
    (SIGUSR1 dumps them) and after a SIGKILL, if it is still running after
    ``timeout_s``: a failing test never leaves an agent behind."""
    agent.send_signal(signal.SIGTERM)
    try:
        err = agent.communicate(timeout=timeout_s)[1]
    except subprocess.TimeoutExpired:
        agent.send_signal(signal.SIGUSR1)
        time.sleep(1)
        agent.kill()
        pytest.fail("the agent did not stop on SIGTERM:\n" + agent.communicate()[1][-6000:])
    assert agent.returncode == 0, err[-6000:]
    return err

def exchange(s: socket.socket, data: bytes) -> "List[Dict[str, Any]]":
    """Send ``data`` on a connected control socket and close our side.
    Returns: every JSON reply line until the server closes."""
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines()]


def package_layout(tmp: str) -> str:
    """Lay the source tree out as installed, for an interpreter without the
    package-dir mapping (MicroPython, a bare ``python3 -S``): ``tmp/memagent``
    holds agent/'s entries and ``plugins`` (as memagent.plugins), and
    ``tmp/bench`` is bench/.  Returns: ``tmp``, for MICROPYPATH or PYTHONPATH."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pkg = os.path.join(tmp, "memagent")
    os.makedirs(pkg, exist_ok=True)
    agent = os.path.join(root, "agent")
    for name in os.listdir(agent):
        if name != "__pycache__" and not os.path.exists(os.path.join(pkg, name)):
            os.symlink(os.path.join(agent, name), os.path.join(pkg, name))
    if not os.path.exists(os.path.join(pkg, "plugins")):
        os.symlink(os.path.join(root, "plugins"), os.path.join(pkg, "plugins"))
    if not os.path.exists(os.path.join(tmp, "bench")):
        os.symlink(os.path.join(root, "bench"), os.path.join(tmp, "bench"))
    return tmp
