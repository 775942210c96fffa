"""The user_activity plugin on the host: the unavailable path, the Activity
states on real clocks, expand_star on a real tree, and the plugin's reading
and device bookkeeping inside a real Agent.

This host has neither python-evdev nor /dev/uinput, so the reading test feeds
the plugin through a stand-in device: a real FIFO read non-blocking, carrying
real ``struct input_event`` records, which hangs up like an unplugged evdev
node.  The real devices are tested in the ARM guest (test_guest_input.py).
"""

import errno
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import pytest
from plugrig import Rig

from memagent import aio
from memagent.core.levels import LOW, NORMAL, Notification
from memagent.ipc.control import query
from memagent.plugins.user_activity import (
    EV_ABS,
    EV_KEY,
    EV_MSC,
    EV_SYN,
    MISSING,
    UserActivity,
    drain,
    quiet_ms_for,
)
from memagent.sense.presence import ACTIVE, IDLE, SCREEN_OFF, UNKNOWN, Activity, expand_star

EVENT = struct.Struct("llHHi")  # struct input_event on this host: timeval, type, code, value
KEY_A = 30


class Event(NamedTuple):
    type: int
    code: int
    value: int


class FifoDevice:
    """Stand-in for evdev.InputDevice on a FIFO: ``read()`` is a generator
    that reads up to 64 events non-blocking (BlockingIOError when empty, as
    evdev) and raises ENODEV once the writer has gone (the FIFO hangs up, as
    a removed evdev device does).  A FIFO no writer has opened yet reads as
    EOF; that counts as empty."""

    opened: "List[FifoDevice]" = []

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = "fifo " + os.path.basename(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.closed = False
        FifoDevice.opened.append(self)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> "Iterator[Event]":
        data = os.read(self.fd, 64 * EVENT.size)
        if not data:  # EOF: no writer; gone only if one was there (POLLHUP)
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if any(mask & select.POLLHUP for _fd, mask in poller.poll(0)):
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        for _sec, _usec, type_, code, value in EVENT.iter_unpack(data):
            yield Event(type_, code, value)

    def close(self) -> None:
        os.close(self.fd)
        self.closed = True


def pack(*events: "tuple[int, int, int]") -> bytes:
    return b"".join(EVENT.pack(0, 0, t, c, v) for t, c, v in events)


KEY_RELEASE = pack((EV_KEY, KEY_A, 0), (EV_SYN, 0, 0))
NOT_INPUT = pack((EV_MSC, 4, 0x70004), (EV_SYN, 0, 0))


def writer(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_NONBLOCK)


def unix_socket_file(path: str) -> socket.socket:
    """A socket file: open(2) on it fails with ENXIO, like a dead device node."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    return s


def rig_with(plugin: UserActivity, tmp: str, idle_after_ms: int) -> Rig:
    return Rig(tmp, "[user_activity]\ndevices = %s/event*\nidle_after_ms = %d\n"
               "backlight = %s/backlight/*/bl_power\n" % (tmp, idle_after_ms, tmp),
               plugins=[plugin])


async def until(cond: "Any", timeout_ms: int = 3000) -> int:
    """Wait for ``cond()``.  Returns: the ms it took.  Fails on timeout."""
    start = aio.ticks_ms()
    while not cond():
        assert aio.ticks_ms() - start < timeout_ms, "condition not met in %d ms" % timeout_ms
        await aio.sleep_ms(5)
    return aio.ticks_ms() - start


# -- pure parts -----------------------------------------------------------------


def test_quiet_period_is_a_tenth_of_idle_at_most_a_second() -> None:
    assert quiet_ms_for(60000) == 1000
    assert quiet_ms_for(1500) == 150
    assert quiet_ms_for(0) == 0


def test_expand_star_on_a_real_tree(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    os.makedirs(tmp + "/input/by-id")
    for name in ("event10", "event0", "event1", "mouse0", "mice"):
        open(tmp + "/input/" + name, "w").close()
    for name, power in (("a", True), ("b", False), ("c", True)):
        os.makedirs(tmp + "/backlight/" + name)
        if power:
            open(tmp + "/backlight/%s/bl_power" % name, "w").close()
    assert expand_star(tmp + "/input/event*") == [tmp + "/input/event%s" % n
                                                  for n in ("0", "1", "10")]
    assert expand_star(tmp + "/backlight/*/bl_power") == [tmp + "/backlight/a/bl_power",
                                                          tmp + "/backlight/c/bl_power"]
    assert expand_star(tmp + "/input/mice") == [tmp + "/input/mice"]
    assert expand_star(tmp + "/input/nope") == []
    assert expand_star(tmp + "/missing/event*") == []


def test_activity_states_on_a_real_clock(tmp_path: Any) -> None:
    bl_dir = os.path.join(str(tmp_path), "backlight", "panel")
    activity = Activity(idle_after_ms=200, backlight=str(tmp_path) + "/backlight/*/bl_power")
    now = aio.ticks_ms
    assert activity.state(now()) == UNKNOWN and not activity.user_away(now())
    activity.start_feeding("evdev", now())
    assert activity.state(now()) == ACTIVE  # the idle time counts from the start
    t0 = time.monotonic()
    while activity.state(now()) == ACTIVE:
        time.sleep(0.005)
    waited_s = time.monotonic() - t0
    assert activity.state(now()) == IDLE and activity.user_away(now())
    assert 0.15 <= waited_s < 2.0
    activity.note_input(now())
    assert activity.state(now()) == ACTIVE and activity.inputs == 1
    idle = activity.idle_ms(now())
    assert idle is not None and 0 <= idle < 200
    os.makedirs(bl_dir)
    with open(bl_dir + "/bl_power", "w") as f:
        f.write("4\n")  # FB_BLANK_POWERDOWN
    assert activity.state(now()) == SCREEN_OFF and activity.user_away(now())
    with open(bl_dir + "/bl_power", "w") as f:
        f.write("0\n")
    assert activity.state(now()) == ACTIVE
    activity.stop_feeding()
    assert activity.state(now()) == UNKNOWN


def test_drain_is_bounded_and_reports_a_dead_device(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "event0")
    os.mkfifo(path)
    dev = FifoDevice(path)
    try:
        assert drain(dev) == (0, 0)  # empty: BlockingIOError ends it
        w = writer(path)
        os.write(w, pack(*[(EV_ABS, 0, i) for i in range(300)]) + NOT_INPUT)
        assert drain(dev, reads=4) == (256, 256)  # 4 reads of 64 events
        assert drain(dev, reads=4) == (46, 44)
        os.close(w)
        with pytest.raises(OSError) as info:
            drain(dev)
        assert info.value.errno == errno.ENODEV
    finally:
        dev.close()


# -- the unavailable path ---------------------------------------------------------


def test_without_evdev_the_agent_runs_and_says_why(tmp_path: Any) -> None:
    # A real `memagent run` with the built-in plugins, evdev's import made to
    # fail (sys.modules[name] = None is how CPython blocks an import).
    tmp = str(tmp_path)
    sock = os.path.join(tmp, "ctl.sock")
    conf = os.path.join(tmp, "memagent.conf")
    with open(conf, "w") as f:
        # Only this plugin: the others would reach for the system bus and /proc.
        f.write("[agent]\nsocket = %s\noom_score_adj = 0\n[plugins]\nenable = user_activity\n"
                "[user_activity]\nbacklight = %s/none/*/bl_power\n" % (sock, tmp))
    code = ("import sys; sys.modules['evdev'] = None; from memagent.cli import main; "
            "sys.exit(main())")
    agent = subprocess.Popen([sys.executable, "-c", code, "run", "-c", conf, "--source", "poll"],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        status: Dict[str, Any] = aio.run(query(sock))["status"]
        time.sleep(0.3)
        assert agent.poll() is None  # still running
    finally:
        agent.send_signal(signal.SIGTERM)
        err = agent.communicate(timeout=15)[1]
    assert agent.returncode == 0, err
    plugins = {p["name"]: p for p in status["plugins"]}
    assert list(plugins) == ["user_activity"]  # loaded from BUILTIN by the real loader
    assert plugins["user_activity"]["unavailable"] == MISSING
    assert plugins["user_activity"]["state"]["devices"] == []
    assert status["activity"]["state"] == UNKNOWN and status["activity"]["feeder"] is None
    assert err.count("plugin user_activity unavailable: " + MISSING) == 1, err


# -- reading and bookkeeping inside a real Agent ------------------------------------


def test_reads_input_goes_idle_follows_devices(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    ev0, ev1, ev2 = (os.path.join(tmp, "event%d" % i) for i in (0, 1, 2))
    os.mkfifo(ev0)
    dead = unix_socket_file(os.path.join(tmp, "event9"))
    FifoDevice.opened = []
    plugin = UserActivity(opener=FifoDevice)
    rig = rig_with(plugin, tmp, idle_after_ms=400)  # quiet period 40 ms
    facts: Dict[str, Any] = {}

    async def main() -> None:
        await rig.start()
        act = rig.services(plugin).presence
        assert act is rig.presence and act.idle_after_ms == 400  # set up from the config
        now = aio.ticks_ms
        st = plugin.status()
        assert st["devices"] == [{"path": ev0, "name": "fifo event0"}]
        assert st["failed"] == {dead.getsockname(): "No such device or address"}
        assert plugin.unavailable is None and act.feeder == "evdev"
        assert act.state(now()) == ACTIVE
        facts["to_idle_ms"] = await until(lambda: act.state(now()) == IDLE)

        w = writer(ev0)
        os.write(w, NOT_INPUT)  # scan code and sync only: not the user
        await until(lambda: plugin.events == 2)
        assert act.state(now()) == IDLE and plugin.inputs == 0
        os.write(w, KEY_RELEASE)  # a key release is the user
        facts["input_to_active_ms"] = await until(lambda: act.state(now()) == ACTIVE)
        assert plugin.inputs == 1 and act.inputs == 1

        # A flood: 3 events every 2 ms for 1 s; the quiet period bounds the wakes.
        await aio.sleep_ms(100)
        wakes, events = plugin.wakes, plugin.events
        t0 = now()
        writes = 0
        while now() - t0 < 1000:
            os.write(w, pack((EV_ABS, 0, writes), (EV_ABS, 1, writes), (EV_SYN, 0, 0)))
            writes += 1
            await aio.sleep_ms(2)
        await aio.sleep_ms(100)
        facts["flood_writes"] = writes
        facts["flood_events"] = plugin.events - events
        facts["flood_wakes"] = plugin.wakes - wakes

        # Unplugged: the writer goes, the node goes; the plugin drops it by itself.
        os.close(w)
        os.unlink(ev0)
        await until(lambda: not plugin.devices)
        assert plugin.dropped == 1 and FifoDevice.opened[0].closed
        assert act.feeder is None and act.state(now()) == UNKNOWN
        assert plugin.unavailable == "no input device readable: %s: %s" % (
            dead.getsockname(), "No such device or address")

        # A new device: its uevent (published by device_watch) opens it.
        os.mkfifo(ev1)
        rig.services(plugin).device_event("add", "input", "input/event1", 0)
        await rig.flush()
        assert plugin.rescans == 1 and sorted(plugin.devices) == [ev1]
        assert act.feeder == "evdev" and plugin.unavailable is None
        w1 = writer(ev1)
        inputs = act.inputs
        os.write(w1, KEY_RELEASE)
        await until(lambda: act.inputs == inputs + 1)

        # Replaced under the same name before the task saw the hang-up: the
        # rescan finds the old one hung up, drops it and opens the new one.
        os.close(w1)
        assert plugin.rescan() == ([ev1], [ev1])
        assert FifoDevice.opened[-1].path == ev1 and not FifoDevice.opened[-1].closed

        # Without pyudev: on_pressure rescans, through the real dispatcher.
        os.mkfifo(ev2)
        await rig.dispatcher.dispatch(Notification(now(), LOW, NORMAL, "avail", 1, 100, None))
        assert sorted(plugin.devices) == [ev1, ev2]
        assert rig.dispatcher.hook_errors == 0
        await rig.close()

    try:
        aio.run(main())
    finally:
        dead.close()
    assert all(dev.closed for dev in FifoDevice.opened)
    assert rig.presence.feeder is None and plugin.devices == {}
    print("facts:", facts)
    assert 300 <= facts["to_idle_ms"] < 2000
    assert facts["input_to_active_ms"] < 500
    # 1 s of flood, 40 ms quiet: about 25 wakes, whatever the event rate.
    assert facts["flood_writes"] > 100 and facts["flood_events"] == 3 * facts["flood_writes"]
    assert 5 <= facts["flood_wakes"] <= 30


def test_a_device_that_raises_is_dropped_and_the_agent_runs_on(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    os.mkfifo(os.path.join(tmp, "event0"))

    class Hostile(FifoDevice):
        def read(self) -> "Iterator[Event]":
            raise ValueError("garbage from the driver")
            yield  # a generator, like evdev's

    plugin = UserActivity(opener=Hostile)
    rig = rig_with(plugin, tmp, idle_after_ms=400)
    w: "Optional[int]" = None

    async def main() -> None:
        nonlocal w
        await rig.start()
        w = writer(os.path.join(tmp, "event0"))
        os.write(w, KEY_RELEASE)
        await until(lambda: plugin.dropped == 1)
        assert rig.presence.feeder is None and rig.sensor.task is not None
        assert plugin.unavailable == "no input device open (dropped %s/event0: %s)" % (
            tmp, "ValueError: garbage from the driver")
        await rig.close()

    try:
        aio.run(main())
    finally:
        if w is not None:
            os.close(w)
