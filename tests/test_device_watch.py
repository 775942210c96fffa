"""The device_watch plugin on the host: which events lead to which action,
the unavailable path, source switching through its real services on the
test's own memcg, the events it publishes to the other plugins, and real
kernel uevents through pyudev.

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
from plugrig import Rig, wait_until

from conftest import ALLOC
from memagent import aio
from memagent.core.config import parse_config
from memagent.demo.memcg import Memcg
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
from memagent.runtime.hooks import validate
from memagent.runtime.pluginload import load_plugins
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


# -- through its services, on the test's memcg ---------------------------------------


def source_actions(rig: Rig) -> "List[Tuple[Any, Any]]":
    return [(a["was"], a["source"]) for a in rig.actions("source")]


@pytest.mark.memcg
def test_without_pyudev_the_agent_runs_on(memcg: Memcg, monkeypatch: Any, tmp_path: Any,
                                          caplog: Any) -> None:
    monkeypatch.setitem(sys.modules, "pyudev", None)  # import pyudev raises ImportError
    plugin = DeviceWatch()
    rig = Rig(str(tmp_path), memcg=memcg.path, plugins=[plugin])

    async def main() -> "Dict[str, Any]":
        await rig.start()
        reading = rig.services(plugin).remeasure("test")
        state = plugin.status()
        await rig.close()
        assert reading is not None and reading.total_kib == memcg.limit_kib()
        return state

    state = aio.run(main())
    assert plugin.unavailable == MISSING
    assert state["monitor"] is None and state["events"] == 0 and not plugin.running
    assert [r.getMessage() for r in caplog.records if MISSING in r.getMessage()] == [
        "plugin device_watch unavailable: " + MISSING]  # logged once


@pytest.mark.memcg
def test_switches_to_mem_notify_and_back_without_missing_pressure(
        memcg: Memcg, tmp_path: Any) -> None:
    fifo = os.path.join(str(tmp_path), "mem_notify")
    plugin = DeviceWatch(node_wait_ms=500)
    rig = Rig(str(tmp_path), "[sources]\ndevice_path = %s\n" % fifo, memcg=memcg.path,
              plugins=[plugin])
    services = rig.services(plugin)
    hog: Any = None

    async def main() -> "Dict[str, Any]":
        nonlocal hog
        out: Dict[str, Any] = {}
        await rig.start()
        out["first"] = services.source
        # "add" before the node opens: bounded wait, then nothing is done
        out["add_no_node"] = await plugin.handle_event("add", "cuse", "mem_notify")
        os.mkfifo(fifo)
        writer = os.open(fifo, os.O_RDWR)  # holds the FIFO open like a live device
        out["add"] = await plugin.handle_event("add", "cuse", "mem_notify")
        out["after_add"] = services.source
        out["add_again"] = await plugin.handle_event("add", "cuse", "mem_notify")
        # the device signals: the agent wakes on it
        monitor = rig.sensor.monitor
        assert monitor is not None
        before = monitor.readings
        os.write(writer, b"x")
        await wait_until(lambda: monitor.readings > before, 2000)
        out["woke_on"] = services.reading.event if services.reading else None
        os.unlink(fifo)
        out["remove"] = await plugin.handle_event("remove", "cuse", "mem_notify")
        os.close(writer)
        out["after_remove"] = services.source
        out["remove_again"] = await plugin.handle_event("remove", "cuse", "mem_notify")
        # real pressure after the switch: a ramp in the memcg
        hog = memcg.spawn(ALLOC + ["--rate", "20", "--max-mb", "60", "--hold", "30"])
        lows = lambda: [n for n in rig.events.recent if n["level"] == "LOW"]  # noqa: E731
        await wait_until(lambda: bool(lows()), 20000)
        out["low"] = lows()[0] if lows() else None
        out["state"] = plugin.status()
        hog.kill()
        await rig.close()
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
    assert source_actions(rig) == [("cgroup1", "mem_notify"), ("mem_notify", "cgroup1")]
    assert out["low"] is not None and out["low"]["t_ms"] > rig.events.actions[-1]["t_ms"]
    state = out["state"]
    assert state["events"] == 5 and state["by_kind"] == {MEM_NOTIFY_ADD: 3,
                                                         MEM_NOTIFY_REMOVE: 2}
    assert [s["to"] for s in state["switches"]] == ["mem_notify", "cgroup1"]


@pytest.mark.memcg
def test_remove_of_another_device_is_ignored(memcg: Memcg, tmp_path: Any) -> None:
    # /dev/ptmx as the device: a real, pollable character device that stays
    # quiet (each open makes a pty pair of its own).  /dev/null would not
    # do: epoll refuses it (EPERM), and the agent falls back at once.
    ptmx_rdev = os.stat("/dev/ptmx").st_rdev
    plugin = DeviceWatch()
    rig = Rig(str(tmp_path), "source = mem_notify\n[sources]\ndevice_path = /dev/ptmx\n",
              memcg=memcg.path, plugins=[plugin])
    services = rig.services(plugin)

    async def main() -> "List[Any]":
        await rig.start()
        seen: List[Any] = [services.source, services.source_devnum() == ptmx_rdev]
        # a provider restarted: the node removed is not the one the agent runs on
        seen.append(await plugin.handle_event("remove", "cuse", "ptmx", os.makedev(5, 3)))
        seen.append(services.source)
        # forced mem_notify and its own device goes: "auto", never deaf
        seen.append(await plugin.handle_event("remove", "mem", "ptmx", ptmx_rdev))
        seen.append(services.source)
        await rig.close()
        return seen

    seen = aio.run(main())
    assert seen == ["mem_notify", True, None, "mem_notify", "switched to cgroup1", "cgroup1"]
    assert source_actions(rig) == [("mem_notify", "cgroup1")]


def test_device_events_reach_every_plugin(tmp_path: Any) -> None:
    # Cooperation through the dispatcher: device_watch publishes, any plugin
    # with on_device hears it (user_activity rescans on input event nodes).
    class Listener:
        name = "listener"

        def __init__(self) -> None:
            self.heard: List[Tuple[str, str, str, int]] = []

        async def on_device(self, action: str, subsystem: str, devnode: str, devnum: int,
                            **kwargs: Any) -> None:
            self.heard.append((action, subsystem, devnode, devnum))

    plugin, listener = DeviceWatch(), Listener()
    rig = Rig(str(tmp_path), plugins=[plugin, listener])

    async def main() -> "List[Any]":
        await plugin.on_start(services=rig.services(plugin))  # no on_start for all: no pyudev
        rig.sensor.open()
        task = aio.create_task(rig.dispatcher.run())
        done = [await plugin.handle_event("add", "input", "/dev/input/event3", 3),
                await plugin.handle_event("change", "input", "input/mouse0")]
        await wait_until(lambda: len(listener.heard) == 2)
        await aio.cancel_and_wait(task)
        await plugin.on_stop()
        rig.sensor.close()
        return done

    assert aio.run(main()) == [None, None]
    assert listener.heard == [("add", "input", "input/event3", 3),
                              ("change", "input", "input/mouse0", 0)]
    assert plugin.status()["published"] == 2
    assert plugin.status()["by_kind"] == {INPUT_CHANGE: 1, IGNORED: 1}


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
        await block.on_start()
        await default.on_start()
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
        running = block.running
        await block.on_stop()
        await default.on_stop()
        seen.append(running and not block.running)
        return seen

    added, removed, default_events, stopped = aio.run(main())
    assert added is not None and (added["action"], added["subsystem"], added["kind"]) == (
        "add", "block", IGNORED)
    assert removed is not None and (removed["action"], removed["devname"]) == (
        "remove", added["devname"])
    assert default_events == 0 and stopped is True and block.monitor is None


