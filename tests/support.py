"""Test helpers shared by the test modules."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, NoReturn, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Debian trixie's micropython 1.25 (asyncio and ffi: the whole agent runs
# on it), installed by .ci/setup --test (.ci/micropython-trixie).
TRIXIE_MICROPYTHON = os.path.join(ROOT, ".ci", "cache", "micropython-trixie", "micropython")
LAUNCHER = os.path.join(ROOT, "board", "common", "micropython", "memagent")
MPY_HEAP = "2M"  # the launcher's default: the agent's whole Python heap
_LAYOUT: List[str] = []


def need(reason: str) -> NoReturn:
    """A prerequisite is missing: skip with ``reason`` on a laptop, fail in CI
    (``CI=true``), where every prerequisite must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("prerequisite missing in CI: " + reason)
    pytest.skip(reason)



def micropython_ffi() -> str:
    """Return: trixie's micropython (skips, or fails in CI, without it)."""
    if not os.access(TRIXIE_MICROPYTHON, os.X_OK):
        need("trixie's micropython is not installed (sh .ci/micropython-trixie)")
    return TRIXIE_MICROPYTHON


def micropython_layout() -> str:
    """Return: a directory holding the package as MicroPython imports it
    (made once per test session)."""
    if not _LAYOUT:
        _LAYOUT.append(package_layout(tempfile.mkdtemp(prefix="memagent-mpy-")))
    return _LAYOUT[0]


def agent_command(interpreter: str, prelude: str = "") -> Tuple[List[str], Dict[str, str]]:
    """Return: (the command that runs ``memagent`` on ``interpreter``,
    "cpython" or "micropython", its environment).  MicroPython runs through
    the board's launcher (board/common/micropython/memagent), with its
    default heap; ``prelude`` (Python run before the CLI, to turn a module
    flag) runs it with ``-c`` instead.  Skips without trixie's micropython."""
    env = dict(os.environ)
    if interpreter == "cpython":
        if not prelude:
            return [sys.executable, "-m", "memagent"], env
        return [sys.executable, "-c", prelude + "; import sys; from memagent.cli import main; "
                "sys.exit(main(sys.argv[1:]))"], env
    exe = micropython_ffi()
    layout = micropython_layout()
    env.update(MEMAGENT_MICROPYTHON=exe, MEMAGENT_MPY_LIB=layout,
               MICROPYPATH=".frozen:" + layout)
    if not prelude:
        return ["sh", LAUNCHER], env
    return [exe, "-X", "heapsize=" + MPY_HEAP, "-c", prelude + "\nimport sys\n"
            "from memagent.cli import main\nsys.exit(main(sys.argv[1:]))"], env


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
