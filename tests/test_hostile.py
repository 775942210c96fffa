"""Hostile plugins and clients against a real agent (issue: hardening).

Each test reproduces one defect found from outside, with the docs only, as
an app vendor or an attacker would; every one failed on the code before
its fix.  Everything acted on is started here: the agent, its memcg, the
loads and the users made for a test (removed after).
"""

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

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


# -- defect 5: smaller ones ---------------------------------------------------------------


def events_of(tmp: str) -> "List[Dict[str, Any]]":
    """Return: the notifications in tmp/events.jsonl (actions left out)."""
    path = os.path.join(tmp, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [obj for obj in map(json.loads, f) if "action" not in obj]


@pytest.mark.memcg
def test_status_rereads_a_stale_reading(memcg: Memcg, tmp_path: Any) -> None:
    # A calm event-driven source does not read: status showed the same
    # avail_kib and t_ms 6 s after the memcg had changed by 60 MiB (memory
    # given back crosses no threshold the kernel watches).
    tmp = str(tmp_path)
    agent = start_agent(memcg, tmp)
    try:
        hog = memcg.spawn(ALLOC + ["--rate", "200", "--max-mb", "30", "--hold", "60"],
                          stdout=subprocess.PIPE, text=True)
        assert hog.stdout is not None
        while "done" not in hog.stdout.readline():
            pass
        time.sleep(4.0)  # calm again: no timer
        before = agent_status(tmp)["reading"]
        hog.kill()
        hog.wait()
        time.sleep(2.0)
        after = agent_status(tmp)["reading"]
    finally:
        stop_agent(agent)
    assert after["t_ms"] - before["t_ms"] >= 2000, (before, after)
    assert after["avail_kib"] >= before["avail_kib"] + 25 * 1024, (before, after)


@pytest.mark.memcg
def test_a_held_level_is_reminded_every_remind_ms(memcg: Memcg, tmp_path: Any) -> None:
    # LOW held ~11 s of unchanging memory (cgroup1) with no reminder at all:
    # memory sat between LOW and its recover threshold (the hysteresis).
    # Here one hog holds 20 MB; another brings LOW and leaves.
    tmp = str(tmp_path)
    agent = start_agent(memcg, tmp, "[levels]\nlow_pct = 40\n")
    try:
        holder = memcg.spawn(ALLOC + ["--rate", "100", "--max-mb", "20", "--hold", "60"],
                             stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        while "done" not in holder.stdout.readline():
            pass
        spike = memcg.spawn(ALLOC + ["--rate", "100", "--max-mb", "16", "--hold", "1"],
                            stdout=subprocess.DEVNULL)
        spike.wait(timeout=30)
        left = time.time()
        time.sleep(12)
        st = agent_status(tmp)
        holder.kill()
        holder.wait()
    finally:
        stop_agent(agent)
    assert st["level"] == "LOW", st["reading"]  # held: inside the hysteresis band
    held = [e for e in events_of(tmp) if e["wall"] > left + 1]
    assert len(held) >= 2 and all(e["reason"] == "still" for e in held), held
    walls = [left + 1] + [e["wall"] for e in held]
    gaps = [b - a for a, b in zip(walls, walls[1:])]
    assert max(gaps) <= 6.5, gaps  # remind_ms 5 s, read at least every second


GROWS = """
import mmap, sys
from memagent.client import Client
held = []
def on_trim(level, target_kib):
    for _ in range(8):  # allocates instead of freeing: 4 MiB
        m = mmap.mmap(-1, 512 * 1024)
        m.write(b"x" * (512 * 1024))
        held.append(m)
    return 0
client = Client("grower", cls="cached", estimate_kib=8192, on_trim=on_trim,
                socket_path=sys.argv[1])
print("ready", flush=True)
while True:
    client.poll(1000)
"""


@pytest.mark.memcg
def test_a_trim_that_grows_the_app_is_measured_as_zero(memcg: Memcg, tmp_path: Any) -> None:
    # The log showed a trim's measured amount as (2, 8686, -4).
    tmp = str(tmp_path)
    conf = "[release_caches]\n[plugins]\nenable = release_caches\n"
    agent = start_agent(memcg, tmp, conf)
    app = memcg.spawn([sys.executable, "-c", GROWS, os.path.join(tmp, "ctl.sock")],
                      stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        hog = memcg.spawn(ALLOC + ["--rate", "10", "--max-mb", "48", "--hold", "3"],
                          stdout=subprocess.DEVNULL)
        hog.wait(timeout=60)
        apps = agent_status(tmp)["apps"]["apps"]
    finally:
        app.kill()
        app.wait()
        err = stop_agent(agent)
    grower = [a for a in apps if a["name"] == "grower"][0]
    assert grower["compliance"]["asked"] >= 1, grower
    assert grower["compliance"]["measured_kib"] == 0, grower
    events = [line for line in err.splitlines() if "trim event:" in line]
    assert events and not any(", -" in line for line in events), events


ORDER_SLOW = """
from memagent import aio
name = "slow"
calls = []
async def on_pressure(level, **kw):
    calls.append(level)
    if len(calls) == 1:
        await aio.sleep_ms(9000)  # the agent moves on meanwhile
"""

ORDER_WATCH = """
name = "watch"
LOG = %r
services = None
async def on_start(services, **kw):
    globals()["services"] = services
def note(*words):
    with open(LOG, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")
async def on_level_change(level, prev_level, **kw):
    note("change", prev_level, level, services.level)
async def on_pressure(level, **kw):
    note("pressure", level, services.level)
"""


@pytest.mark.memcg
def test_each_plugin_sees_a_consistent_level_sequence(memcg: Memcg, tmp_path: Any) -> None:
    # Plugins saw LOW->CRITICAL, then LOW->NORMAL, and a stale CRITICAL
    # on_pressure after the agent had logged NORMAL (coalescing behind a
    # slow plugin).
    tmp = str(tmp_path)
    log = os.path.join(tmp, "watch.log")
    conf = dropins(tmp, {"slow": ORDER_SLOW, "watch": ORDER_WATCH % log})
    agent = start_agent(memcg, tmp, conf + "hook_timeout_ms = 15000\n")
    try:
        for wait_s in (11, 7):  # past the slow first call; back to NORMAL (quiet_ms 5 s)
            hog = memcg.spawn(ALLOC + ["--rate", "20"], stdout=subprocess.DEVNULL)
            hog.wait(timeout=60)
            time.sleep(wait_s)
    finally:
        stop_agent(agent)
    with open(log) as f:
        calls = [line.split() for line in f]
    changes = [(int(c[1]), int(c[2])) for c in calls if c[0] == "change"]
    assert changes and changes[0][0] == 0, calls
    for (_, last), (prev, _) in zip(changes, changes[1:]):
        assert prev == last, calls  # prev_level is the level it was last given
    stale = [c for c in calls if c[0] == "pressure" and int(c[2]) < int(c[1])]
    assert not stale, calls
