"""Hostile plugins and clients against a real agent (issue: hardening).

Each test reproduces one defect found from outside, with the docs only, as
an app vendor or an attacker would; every one failed on the code before
its fix.  Everything acted on is started here: the agent, its memcg, the
loads and the users made for a test (removed after).
"""

import os
import subprocess
import sys
import time
from typing import Any, Dict

import pytest

from conftest import ALLOC
from memagent import aio
from memagent.demo.memcg import Memcg
from memagent.ipc.control import query
from support import stop_agent

# -- shared: an agent in the test's memcg, with drop-in plugins --------------------------


def start_agent(group: Memcg, tmp: str, conf: str = "", *extra: str) -> "subprocess.Popen[str]":
    """Return: ``memagent run`` watching ``group``, its socket tmp/ctl.sock,
    its events tmp/events.jsonl, with ``conf`` as its config file's text."""
    path = os.path.join(tmp, "m.conf")
    with open(path, "w") as f:
        f.write(conf)
    cmd = [sys.executable, "-m", "memagent", "run", "--memcg", group.path, "--config", path,
           "--socket", os.path.join(tmp, "ctl.sock"), "--events-json",
           os.path.join(tmp, "events.jsonl"), *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(os.path.join(tmp, "ctl.sock")):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return proc


def dropins(tmp: str, sources: "Dict[str, str]") -> str:
    """Write each plugin source to tmp/plugins.d/NAME.py.  Returns: the
    [plugins] section enabling exactly them, in this order."""
    where = os.path.join(tmp, "plugins.d")
    os.makedirs(where, exist_ok=True)
    for name, source in sources.items():
        with open(os.path.join(where, name + ".py"), "w") as f:
            f.write(source)
    names = ", ".join(sources)
    return "[plugins]\nenable = %s\norder = %s\ndir = %s\n" % (names, names, where)


def agent_status(tmp: str) -> "Dict[str, Any]":
    """Return: the running agent's status (fails the test if it does not answer)."""
    reply = aio.run(query(os.path.join(tmp, "ctl.sock")))
    assert reply["ok"], reply
    st: Dict[str, Any] = reply["status"]
    return st


def timed_stop(agent: "subprocess.Popen[str]") -> "tuple[float, str]":
    """SIGTERM the agent.  Returns: (seconds until it exited, its stderr)."""
    t0 = time.monotonic()
    err = stop_agent(agent, timeout_s=10)
    return time.monotonic() - t0, err


# -- defect 1: a hook that swallows its cancellation ------------------------------------

SWALLOW = """
from memagent import aio
name = "swallow"
async def on_level_change(level, **kw):
    pass
async def on_pressure(level, **kw):
    while True:
        try:
            await aio.sleep_ms(3600 * 1000)
        except BaseException:
            pass
async def on_stop(**kw):
    while True:
        try:
            await aio.sleep_ms(3600 * 1000)
        except BaseException:
            pass
"""

AFTER = """
name = "after"
LOG = %r
async def on_pressure(level, **kw):
    with open(LOG, "a") as f:
        f.write("%%d\\n" %% level)
"""


@pytest.mark.memcg
def test_a_hook_that_swallows_its_cancellation_is_abandoned(memcg: Memcg,
                                                            tmp_path: Any) -> None:
    # Before: wait_for waited on the cancelled hook for good: no "timed out"
    # line, the plugin after it never called again, and the agent hung after
    # SIGTERM until SIGKILL.
    tmp = str(tmp_path)
    log = os.path.join(tmp, "after.log")
    conf = dropins(tmp, {"swallow": SWALLOW, "after": AFTER % log})
    agent = start_agent(memcg, tmp, conf + "hook_timeout_ms = 100\n")
    try:
        hog = memcg.spawn(ALLOC + ["--rate", "10"], stdout=subprocess.DEVNULL)
        hog.wait(timeout=60)
        time.sleep(1.0)
        plugins = {p["name"]: p for p in agent_status(tmp)["plugins"]}
    finally:
        stop_s, err = timed_stop(agent)
    assert "plugin swallow: on_pressure timed out after 100 ms, abandoned" in err, err[-3000:]
    with open(log) as f:
        levels = [int(line) for line in f]
    assert 1 in levels and 2 in levels, levels  # LOW and CRITICAL reached the next plugin
    assert "ignored its cancellation" in plugins["swallow"].get("disabled", ""), plugins
    assert "plugin swallow disabled" in err
    assert "disabled" not in plugins["after"]
    assert stop_s < 2.0, "stopped %.1f s after SIGTERM" % stop_s
