"""The device_watch plugin on the host: which events lead to which action,
the unavailable path, source switching in a real Agent on the test's own
memcg, and real kernel uevents through pyudev.

This host has no udev daemon, no /dev/cuse and no mem_notify kernel: the
switching test calls the plugin's handler with the event the kernel would
send and gives the agent a FIFO as the device (the mem_notify source
accepts one as a stand-in).  The real device, its kernel uevents and the
agent's own fallback are tested in the ARM guest (test_guest_devices.py).
"""

import fcntl
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import pytest

from conftest import ALLOC
from memagent import aio
from memagent.agent import Agent
from memagent.config import parse_config
from memagent.memcg import Memcg
from memagent.pluginload import load_plugins, validate
from memagent.plugins.device_watch import (
    IGNORED,
    INPUT_CHANGE,
    MEM_NOTIFY_ADD,
    MEM_NOTIFY_REMOVE,
    MISSING,
    DeviceWatch,
    classify,
    decide,
    monitor_source,
    node_name,
    node_opens,
)
from support import need


@pytest.mark.parametrize("action, subsystem, devname, kind", [
    ("add", "mem", "mem_notify", MEM_NOTIFY_ADD),            # the 2008 patch
    ("add", "cuse", "mem_notify", MEM_NOTIFY_ADD),           # a CUSE provider
    ("remove", "misc", "/dev/mem_notify", MEM_NOTIFY_REMOVE),  # udev's absolute DEVNAME
    ("change", "mem", "mem_notify", IGNORED),
    ("bind", "cuse", "mem_notify", IGNORED),
    ("add", "mem", "null", IGNORED),
    ("add", "input", "input/event3", INPUT_CHANGE),
    ("remove", "input", "/dev/input/event12", INPUT_CHANGE),
    ("add", "input", "input/mouse0", IGNORED),
    ("add", "input", "", IGNORED),                            # input/input5: no node
    ("change", "input", "input/event3", IGNORED),
    ("add", "block", "loop7", IGNORED),
    ("add", "misc", "uinput", IGNORED),
])
def test_classify(action: str, subsystem: str, devname: str, kind: str) -> None:
    assert classify(action, subsystem, devname) == kind


def test_classify_follows_the_configured_device_path() -> None:
    assert classify("add", "cuse", "memnotify0", "/dev/memnotify0") == MEM_NOTIFY_ADD
    assert classify("add", "cuse", "memnotify0") == IGNORED
    assert node_name("/dev/input/event1") == "input/event1" and node_name(None) == ""


@pytest.mark.parametrize("kind, running, configured, enabled, target", [
    (MEM_NOTIFY_ADD, "psi", "auto", True, "mem_notify"),
    (MEM_NOTIFY_ADD, "cgroup1", "mem_notify", True, "mem_notify"),
    (MEM_NOTIFY_ADD, "mem_notify", "auto", True, None),     # runs already
    (MEM_NOTIFY_ADD, "psi", "psi", True, None),             # the config forces psi
    (MEM_NOTIFY_ADD, "psi", "auto", False, None),           # switch_source = no
    (MEM_NOTIFY_ADD, None, "auto", True, None),             # the agent has no source yet
    (MEM_NOTIFY_REMOVE, "mem_notify", "auto", True, "auto"),
    (MEM_NOTIFY_REMOVE, "mem_notify", "cgroup1", True, "cgroup1"),
    (MEM_NOTIFY_REMOVE, "mem_notify", "mem_notify", True, "auto"),  # never deaf
    (MEM_NOTIFY_REMOVE, "psi", "auto", True, None),         # the agent fell back first
    (MEM_NOTIFY_REMOVE, "mem_notify", "auto", False, None),
    (INPUT_CHANGE, "mem_notify", "auto", True, None),
    (IGNORED, "psi", "auto", True, None),
])
def test_decide(kind: str, running: Optional[str], configured: str, enabled: bool,
                target: Optional[str]) -> None:
    assert decide(kind, running, configured, enabled) == target


def test_monitor_source_and_node_opens(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    control = os.path.join(tmp, "control")
    assert monitor_source(control) == "kernel"
    open(control, "w").close()
    assert monitor_source(control) == "udev"
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    assert node_opens(fifo) and node_opens("/dev/null")
    assert not node_opens(control)  # a regular file is no device
    assert not node_opens(os.path.join(tmp, "missing"))


def test_builtin_and_valid() -> None:
    result = load_plugins(parse_config("[plugins]\nenable = device_watch\n"),
                          dropin_dir="/nonexistent", entry_points=[])
    assert result.errors == [] and result.names == ["device_watch"]
    assert validate(DeviceWatch()) == []


# -- in a real Agent ------------------------------------------------------------


def make_agent(group: Memcg, extra: str, plugin: DeviceWatch) -> Agent:
    text = "[agent]\nmemcg = %s\nsocket =\n%s" % (group.path, extra)
    return Agent(parse_config(text), plugins=[plugin], control=False)


async def start(agent: Agent) -> Any:
    task = aio.create_task(agent.run())
    for _ in range(500):
        if agent._sense_task is not None:  # on_start has run, the source senses
            return task
        await aio.sleep_ms(10)
    raise AssertionError("the agent did not start")


async def stop(agent: Agent, task: Any) -> int:
    agent.stop()
    code: int = await aio.wait_for_ms(task, 10000)
    return code


def source_actions(agent: Agent) -> "List[Tuple[Any, Any]]":
    return [(a["was"], a["source"]) for a in agent.actions if a["action"] == "source"]


def plugin_view(agent: Agent) -> "Dict[str, Any]":
    views = {p["name"]: p for p in agent.status()["plugins"]}
    view: Dict[str, Any] = views["device_watch"]
    return view


@pytest.mark.memcg
def test_without_pyudev_the_agent_runs_on(memcg: Memcg, monkeypatch: Any,
                                          caplog: Any) -> None:
    monkeypatch.setitem(sys.modules, "pyudev", None)  # import pyudev raises ImportError
    plugin = DeviceWatch()
    agent = make_agent(memcg, "", plugin)

    async def main() -> "Dict[str, Any]":
        task = await start(agent)
        reading = agent.read_now("test")
        view = plugin_view(agent)
        assert await stop(agent, task) == 0
        assert reading is not None and reading.total_kib == memcg.limit_kib()
        return view

    view = aio.run(main())
    assert view["unavailable"] == MISSING
    assert view["state"]["monitor"] is None and view["state"]["events"] == 0
    assert plugin._task is None
    assert [r.getMessage() for r in caplog.records if MISSING in r.getMessage()] == [
        "plugin device_watch unavailable: " + MISSING]  # logged once


@pytest.mark.memcg
def test_switches_to_mem_notify_and_back_without_missing_pressure(
        memcg: Memcg, tmp_path: Any) -> None:
    fifo = os.path.join(str(tmp_path), "mem_notify")
    plugin = DeviceWatch(node_wait_ms=500)
    agent = make_agent(memcg, "[sources]\ndevice_path = %s\n" % fifo, plugin)
    hog: Any = None

    async def wait_until(cond: Any, timeout_ms: int) -> bool:
        for _ in range(timeout_ms // 20):
            if cond():
                return True
            await aio.sleep_ms(20)
        return bool(cond())

    async def main() -> "Dict[str, Any]":
        nonlocal hog
        out: Dict[str, Any] = {}
        task = await start(agent)
        assert agent.monitor is not None
        out["first"] = agent.status()["source"]
        # "add" before the node opens: bounded wait, then nothing is done
        out["add_no_node"] = await plugin.handle_event("add", "cuse", "mem_notify")
        os.mkfifo(fifo)
        writer = os.open(fifo, os.O_RDWR)  # holds the FIFO open like a live device
        out["add"] = await plugin.handle_event("add", "cuse", "mem_notify")
        out["after_add"] = agent.status()["source"]
        out["add_again"] = await plugin.handle_event("add", "cuse", "mem_notify")
        # the device signals: the agent wakes on it
        before = agent.monitor.readings
        os.write(writer, b"x")
        await wait_until(lambda: agent.monitor.readings > before, 2000)  # type: ignore
        out["woke_on"] = agent.monitor.last.event if agent.monitor.last else None
        os.unlink(fifo)
        out["remove"] = await plugin.handle_event("remove", "cuse", "mem_notify")
        os.close(writer)
        out["after_remove"] = agent.status()["source"]
        out["remove_again"] = await plugin.handle_event("remove", "cuse", "mem_notify")
        # real pressure after the switch: a ramp in the memcg
        hog = memcg.spawn(ALLOC + ["--rate", "20", "--max-mb", "60", "--hold", "30"])
        lows = lambda: [n for n in agent.recent if n["level"] == "LOW"]  # noqa: E731
        await wait_until(lambda: bool(lows()), 20000)
        out["low"] = lows()[0] if lows() else None
        out["view"] = plugin_view(agent)
        hog.kill()
        out["code"] = await stop(agent, task)
        return out

    try:
        out = aio.run(main())
    finally:
        if hog is not None and hog.poll() is None:
            hog.kill()
        if hog is not None:
            hog.wait()
    assert out["first"] == "cgroup1" and out["add_no_node"] is None
    assert out["add"] == "switched to mem_notify" and out["after_add"] == "mem_notify"
    assert out["add_again"] is None and out["woke_on"] == "mem_notify"
    assert out["remove"] == "switched to cgroup1" and out["after_remove"] == "cgroup1"
    assert out["remove_again"] is None
    assert source_actions(agent) == [("cgroup1", "mem_notify"), ("mem_notify", "cgroup1")]
    assert out["code"] == 0
    assert out["low"] is not None and out["low"]["t_ms"] > agent.actions[-1]["t_ms"]
    state = out["view"]["state"]
    assert state["events"] == 5 and state["by_kind"] == {MEM_NOTIFY_ADD: 3,
                                                         MEM_NOTIFY_REMOVE: 2}
    assert [s["to"] for s in state["switches"]] == ["mem_notify", "cgroup1"]


@pytest.mark.memcg
def test_remove_of_another_device_is_ignored(memcg: Memcg) -> None:
    # /dev/ptmx as the device: a real, pollable character device that stays
    # quiet (each open makes a pty pair of its own).  /dev/null would not
    # do: epoll refuses it (EPERM), and the agent falls back at once.
    ptmx_rdev = os.stat("/dev/ptmx").st_rdev
    plugin = DeviceWatch()
    agent = make_agent(memcg, "source = mem_notify\n[sources]\ndevice_path = /dev/ptmx\n",
                       plugin)

    async def main() -> "List[Any]":
        task = await start(agent)
        seen: List[Any] = [agent.status()["source"]]
        # a provider restarted: the node removed is not the one the agent runs on
        seen.append(await plugin.handle_event("remove", "cuse", "ptmx", os.makedev(5, 3)))
        seen.append(agent.status()["source"])
        # forced mem_notify and its own device goes: "auto", never deaf
        seen.append(await plugin.handle_event("remove", "mem", "ptmx", ptmx_rdev))
        seen.append(agent.status()["source"])
        await stop(agent, task)
        return seen

    seen = aio.run(main())
    assert seen == ["mem_notify", None, "mem_notify", "switched to cgroup1", "cgroup1"]
    assert source_actions(agent) == [("mem_notify", "cgroup1")]


@pytest.mark.memcg
def test_input_events_ask_user_activity_to_rescan(memcg: Memcg) -> None:
    class Rescannable:
        name = "user_activity"
        calls = 0

        async def on_stop(self, **kwargs: Any) -> None:
            return None

        def rescan(self) -> "Tuple[List[str], List[str]]":
            self.calls += 1
            return ["/dev/input/event3"], []

    plugin, other = DeviceWatch(), Rescannable()
    agent = Agent(parse_config("[agent]\nmemcg = %s\nsocket =\n" % memcg.path),
                  plugins=[plugin, other], control=False)

    async def main() -> "List[Any]":
        task = await start(agent)
        done = [await plugin.handle_event("add", "input", "input/event3"),
                await plugin.handle_event("add", "input", "input/mouse0"),
                await plugin.handle_event("remove", "input", "/dev/input/event3")]
        agent.dispatcher.plugins.remove(other)  # absent: tolerated
        done.append(await plugin.handle_event("add", "input", "input/event4"))
        await stop(agent, task)
        return done

    assert aio.run(main()) == ["rescan", None, "rescan", None]
    assert other.calls == 2 and plugin.rescans == 2


# -- real uevents ----------------------------------------------------------------

LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81


def test_real_kernel_uevents_through_pyudev(tmp_path: Any) -> None:
    """A loop device this test creates and removes (LOOP_CTL_ADD/REMOVE):
    the kernel's uevents reach the plugin through netlink, FdWatch and the
    drain; a plugin with the default filter does not see them."""
    try:
        import pyudev  # noqa: F401
    except ImportError:
        need("pyudev is not installed (pip install pyudev)")
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        need("needs root and /dev/loop-control to make a device of its own")
    no_udev = os.path.join(str(tmp_path), "no-udev")
    block, default = DeviceWatch(subsystems=("block",), udev_control=no_udev), DeviceWatch()

    async def main() -> "List[Any]":
        await block.on_start(agent=None)
        await default.on_start(agent=None)
        assert block.unavailable is None and block.status()["monitor"] == "kernel"
        ctl = os.open("/dev/loop-control", os.O_RDWR)
        index = next(i for i in range(200 + os.getpid() % 500, 1000)
                     if not os.path.exists("/sys/block/loop%d" % i))
        seen = []
        try:
            fcntl.ioctl(ctl, LOOP_CTL_ADD, index)
            for _ in range(250):
                if block.last_event and block.last_event["devname"] == "loop%d" % index:
                    break
                await aio.sleep_ms(20)
            seen.append(block.last_event)
        finally:
            fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
            os.close(ctl)
        for _ in range(250):
            if block.last_event and block.last_event["action"] == "remove":
                break
            await aio.sleep_ms(20)
        seen.append(block.last_event)
        seen.append(default.events)
        task = block._task
        await block.on_stop()
        await default.on_stop()
        seen.append(task.done() if task is not None else None)
        return seen

    added, removed, default_events, stopped = aio.run(main())
    assert added is not None and (added["action"], added["subsystem"], added["kind"]) == (
        "add", "block", IGNORED)
    assert removed is not None and (removed["action"], removed["devname"]) == (
        "remove", added["devname"])
    assert default_events == 0 and stopped is True and block.monitor is None


@pytest.mark.memcg
@pytest.mark.parametrize("spins", range(6))
def test_a_switch_cancels_the_sensing_task_even_as_its_device_wakes(
        memcg: Memcg, tmp_path: Any, spins: int) -> None:
    """The device becomes readable and a switch comes in the same moment (in
    the guest: the CUSE device dies, its fd wakes, its "remove" switches).
    The old sensing task must end cancelled, not read its closed source.
    Measured on CPython 3.11 before memagent.aio stopped using wait_for in
    FdWatch: with 1-3 loop turns between the wake and the switch, the old
    task ran on and died with AssertionError (fd None) in the source."""
    fifo = os.path.join(str(tmp_path), "mem_notify")
    os.mkfifo(fifo)
    agent = make_agent(memcg, "source = mem_notify\n[sources]\ndevice_path = %s\n" % fifo,
                       DeviceWatch())

    async def main() -> "Tuple[bool, bool, Optional[str]]":
        task = await start(agent)
        await aio.sleep_ms(50)  # the sensing task waits on the FIFO
        old = agent._sense_task
        assert old is not None
        writer = os.open(fifo, os.O_RDWR)
        os.write(writer, b"x")
        for _ in range(spins):
            await aio.sleep_ms(0)
        assert agent.switch_source("cgroup1")
        await aio.sleep_ms(100)
        os.close(writer)
        await stop(agent, task)
        error = None if not old.done() or old.cancelled() else repr(old.exception())
        return old.done(), old.cancelled(), error

    assert aio.run(main()) == (True, True, None)
