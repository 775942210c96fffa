"""The user_activity plugin on the host: the raw evdev reader over real
captured ``struct input_event`` records (tests/data/evdev/, from the ARM
guest) and hostile variants, on CPython and on trixie's micropython; the
Activity states on real clocks; expand_star on a real tree; the plugin's
reading and device bookkeeping inside a real Agent; and ``memagent run`` on
both interpreters.

This host has no /dev/input and no /dev/uinput, so the reader reads regular
files and FIFOs (read non-blocking; a FIFO whose writer has gone hangs up
like an unplugged evdev node).  Opening a FIFO with the plugin's own opener
fails (ENOTTY: no evdev node answers EVIOCGNAME), so the tests open them with
:class:`EvdevReader` itself.  The real devices are tested in the ARM guest
(test_guest_input.py: the reader against python-evdev, ioctls included).
"""

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import pytest
from plugrig import Rig

from memagent import aio
from memagent.aio import unix
from memagent.core.levels import LOW, NORMAL, Notification
from memagent.ipc.control import query
from memagent.plugins.user_activity import UserActivity, reader
from memagent.plugins.user_activity.plugin import (
    EV_ABS,
    EV_KEY,
    EV_MSC,
    EV_SYN,
    drain,
    quiet_ms_for,
)
from memagent.plugins.user_activity.reader import ARMHF, EvdevReader, InputEvent, open_evdev
from memagent.sense.presence import ACTIVE, IDLE, SCREEN_OFF, UNKNOWN, Activity, expand_star
from support import agent_command, micropython_ffi, package_layout, stop_agent

EVENT = struct.Struct("llHHi")  # struct input_event on this host: timeval, type, code, value
KEY_A, KEY_H, KEY_I = 30, 35, 23
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "evdev")
TIOCGPTN = 0x80045430  # _IOR('T', 0x30, unsigned int): a read ioctl with bit 31 set


def capture(name: str) -> bytes:
    with open(os.path.join(DATA, "armhf-%s.bin" % name), "rb") as f:
        return f.read()


def read_all(dev: "Any") -> "List[InputEvent]":
    """Return: every event ``dev`` holds (until EOF, empty or a cut record)."""
    out: "List[InputEvent]" = []
    while True:
        try:
            batch = dev.read()
        except BlockingIOError:
            return out
        if not batch:
            return out
        out.extend(batch)


class Opened:
    """The tests' opener: :class:`EvdevReader` (no ioctl, so a FIFO opens),
    remembering every device it opened."""

    def __init__(self) -> None:
        self.devices: "List[EvdevReader]" = []

    def __call__(self, path: str) -> EvdevReader:
        dev = EvdevReader(path)
        self.devices.append(dev)
        return dev


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


# -- the reader: captures, hostile bytes, FIFOs, ioctls ------------------------------------

KEYBOARD = [(EV_MSC, 4, 0x7000B), (EV_KEY, KEY_H, 1), (EV_SYN, 0, 0),
            (EV_MSC, 4, 0x7000B), (EV_KEY, KEY_H, 0), (EV_SYN, 0, 0),
            (EV_MSC, 4, 0x7000C), (EV_KEY, KEY_I, 1), (EV_SYN, 0, 0),
            (EV_MSC, 4, 0x7000C), (EV_KEY, KEY_I, 0), (EV_SYN, 0, 0),
            (EV_KEY, KEY_A, 1), (EV_SYN, 0, 0), (EV_KEY, KEY_A, 2), (EV_SYN, 0, 0),
            (EV_KEY, KEY_A, 0), (EV_SYN, 0, 0)]


def test_the_layout_and_the_ioctl_numbers() -> None:
    # The kernel's: timeval as two native longs, u16, u16, s32; 24 bytes on
    # x86_64 and arm64, 16 on armhf (the guest checks it: FACT event_size).
    assert EVENT.size == struct.calcsize(reader.NATIVE) == 2 * struct.calcsize("l") + 8
    assert struct.calcsize(ARMHF) == 16
    assert reader.EVIOCGNAME == 0x81004506  # EVIOCGNAME(256), as in linux/input.h
    assert reader.EVIOCGPROP == 0x80044509  # EVIOCGPROP(4)
    assert reader.ior("T", 0x30, 4) == TIOCGPTN
    assert reader.prop_bits(b"\x40\0\0\0") == [6]  # INPUT_PROP_ACCELEROMETER
    assert reader.prop_bits(b"\x02\0\0\x80") == [1, 31]
    assert reader.c_string(b"memagent-kbd1\0\xff junk") == "memagent-kbd1"
    assert reader.c_string(b"caf\xc3\xa9\0") == "caf\xe9"
    assert reader.c_string(b"bad \xff\xfe name") == "bad ?? name"


def test_the_armhf_keyboard_capture_parses() -> None:
    dev = EvdevReader(os.path.join(DATA, "armhf-keyboard.bin"), ARMHF)
    try:
        events = read_all(dev)
        assert [(e.type, e.code, e.value) for e in events] == KEYBOARD
        assert dev.pending == 0
        times = [(e.sec, e.usec) for e in events]
        assert times == sorted(times) and all(0 <= usec < 1000000 for _, usec in times)
        assert len({sec for sec, _ in times}) == 1 and times[0][0] > 1500000000
    finally:
        dev.close()
    dev = EvdevReader(os.path.join(DATA, "armhf-keyboard.bin"), ARMHF)
    try:
        # what the plugin counts: the 7 key reports; not the scan codes, not the syncs
        assert drain(dev) == (18, 7)
    finally:
        dev.close()


def test_the_armhf_touch_capture_parses() -> None:
    dev = EvdevReader(os.path.join(DATA, "armhf-touch.bin"), ARMHF)
    try:
        events = read_all(dev)
    finally:
        dev.close()
    kinds = [e.type for e in events]
    assert len(events) == 50 and kinds.count(EV_SYN) == 10 and kinds.count(EV_KEY) == 2
    assert (events[0].code, events[0].value) == (0x39, 7)  # ABS_MT_TRACKING_ID: down
    assert (events[-3].code, events[-3].value) == (0x39, -1)  # the finger up (s32)
    assert [e.value for e in events if e.type == EV_ABS and e.code == 0x35] == list(
        range(100, 421, 40))  # ABS_MT_POSITION_X along the swipe


def test_a_cut_record_is_kept_not_parsed(tmp_path: Any) -> None:
    # The capture without its last 7 bytes: 17 records, then 9 bytes that
    # are no record until the rest comes.
    path = os.path.join(str(tmp_path), "event0")
    with open(path, "wb") as f:
        f.write(capture("truncated"))
    dev = EvdevReader(path, ARMHF)
    try:
        events = read_all(dev)
        assert [(e.type, e.code, e.value) for e in events] == KEYBOARD[:17]
        assert dev.pending == 9 and dev.read() == [] and dev.pending == 9
        with open(path, "ab") as f:
            f.write(capture("keyboard")[-7:])
        assert [(e.type, e.code, e.value) for e in dev.read()] == KEYBOARD[17:]
        assert dev.pending == 0
    finally:
        dev.close()


def test_garbage_parses_as_records_and_counts_no_more_than_it_holds() -> None:
    dev = EvdevReader(os.path.join(DATA, "armhf-garbage.bin"), ARMHF)
    try:
        events = read_all(dev)
        assert len(events) == 62 and dev.pending == 5  # 997 bytes
        assert all(0 <= e.type < 65536 and -2**31 <= e.value < 2**31 for e in events)
    finally:
        dev.close()


def test_a_huge_input_is_read_a_bounded_batch_at_a_time(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "event0")
    with open(path, "wb") as f:
        f.write(capture("keyboard") * 4096)  # 73728 records, 1.2 MB
    dev = EvdevReader(path, ARMHF)
    try:
        # 256 records: 14 captures and 4 records (scan code, key, sync, scan code)
        assert drain(dev, reads=4) == (256, 14 * 7 + 1)
        sizes = []
        user = 0
        while True:
            batch = dev.read()
            if not batch:
                break
            sizes.append(len(batch))
            user += sum(1 for e in batch if e.type == EV_KEY)
        assert max(sizes) == reader.READ_EVENTS and sum(sizes) == 18 * 4096 - 256
        assert user == 7 * 4096 - (14 * 7 + 1)
        assert dev.pending == 0
    finally:
        dev.close()


def test_a_fifo_fed_in_pieces_reads_whole_records(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "event0")
    os.mkfifo(path)
    dev = EvdevReader(path, ARMHF)
    data = capture("keyboard")
    w = writer(path)
    try:
        with pytest.raises(BlockingIOError):
            dev.read()
        got: "List[InputEvent]" = []
        for at in range(0, len(data), 7):  # cuts records everywhere
            os.write(w, data[at:at + 7])
            got.extend(read_all(dev))
            assert dev.pending == min(at + 7, len(data)) % 16
        assert [(e.type, e.code, e.value) for e in got] == KEYBOARD
    finally:
        os.close(w)
        dev.close()


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_opener_refuses_what_is_no_evdev_node(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "event0")
    os.mkfifo(path)
    before = fds()
    for node in (path, "/dev/null"):
        with pytest.raises(OSError) as info:
            open_evdev(node)
        assert info.value.errno == errno.ENOTTY
    assert fds() == before  # the fds were closed
    with pytest.raises(FileNotFoundError):
        open_evdev(path + "-missing")
    # ioctl_read itself, on a node that answers a read ioctl with bit 31 set
    fd = unix.open_fd("/dev/ptmx", unix.O_RDWR)
    try:
        assert struct.unpack("I", unix.ioctl_read(fd, TIOCGPTN, 4))[0] >= 0
    finally:
        unix.close(fd)


# The reader's whole contract, printed as JSON lines: test_micropython's
# way (the same script on both interpreters, the same output).
READER_SCRIPT = r"""
import json
import struct
import sys

from memagent.aio import unix
from memagent.plugins.user_activity import reader
from memagent.plugins.user_activity.plugin import UserActivity, drain

data, tmp, fifo = sys.argv[1:4]


def say(key, value):
    print(json.dumps([key, value]))


def read_all(dev):
    out = []
    while True:
        try:
            batch = dev.read()
        except BlockingIOError:
            return out
        if not batch:
            return out
        out.extend(batch)


def fds():
    return len(unix.listdir("/proc/self/fd"))


say("native_size", struct.calcsize(reader.NATIVE))
say("numbers", [reader.EVIOCGNAME, reader.EVIOCGPROP, reader.prop_bits(b"\x40\0\0\x80")])
say("names", [reader.c_string(b"kbd\0x"), reader.c_string(b"caf\xc3\xa9\0"),
              reader.c_string(b"bad \xff name")])
for name in ("keyboard", "touch", "truncated", "garbage"):
    dev = reader.EvdevReader(data + "/armhf-" + name + ".bin", reader.ARMHF)
    events = [list(e) for e in read_all(dev)]
    pending = dev.pending
    dev.close()
    dev = reader.EvdevReader(data + "/armhf-" + name + ".bin", reader.ARMHF)
    say(name, {"events": events, "pending": pending, "drain": list(drain(dev, 100))})
    dev.close()

with open(data + "/armhf-keyboard.bin", "rb") as f:
    keyboard = f.read()
with open(tmp + "/huge.bin", "wb") as f:
    for _ in range(4096):
        f.write(keyboard)
dev = reader.EvdevReader(tmp + "/huge.bin", reader.ARMHF)
first = list(drain(dev, 4))
reads = most = total = keys = 0
while True:
    batch = dev.read()
    if not batch:
        break
    reads += 1
    most = max(most, len(batch))
    total += len(batch)
    keys += sum(1 for e in batch if e.type == 1)
say("huge", {"drain4": first, "reads": reads, "most": most, "total": total, "keys": keys,
             "pending": dev.pending})
dev.close()

dev = reader.EvdevReader(fifo, reader.ARMHF)
no_writer = dev.read()  # a FIFO no writer has opened yet reads as EOF
w = unix.open_fd(fifo, unix.O_WRONLY | unix.O_NONBLOCK)
try:
    dev.read()
    empty = "no error"
except BlockingIOError:
    empty = "BlockingIOError"
got, pendings = [], []
for at in range(0, len(keyboard), 7):
    unix.write(w, keyboard[at:at + 7])
    got.extend(list(e) for e in read_all(dev))
    pendings.append(dev.pending)
unix.close(w)
eof = dev.read()
dev.close()
say("fifo", {"no_writer": no_writer, "empty": empty, "events": got, "pendings": pendings,
             "eof": eof})

before = fds()
refused = []
for node in (fifo, "/dev/null"):
    try:
        reader.open_evdev(node)
        refused.append("opened")
    except OSError as e:
        refused.append([e.args[0], unix.why(e)])
say("refused", {"errors": refused, "fds_leaked": fds() - before})
fd = unix.open_fd("/dev/ptmx", unix.O_RDWR)
pty = struct.unpack("I", unix.ioctl_read(fd, 0x80045430, 4))[0]
unix.close(fd)
say("ioctl", {"via": unix.VIA, "pty_number_is_small": 0 <= pty < 65536})

# The plugin's rescan over FIFO devices (its epoll set by hand: no Agent
# here): a device whose writer has gone hangs up (select.poll) and is
# dropped, then opened again under the same name.
ua = UserActivity(opener=reader.EvdevReader)
ua._epoll = unix.epoll()
ua.pattern = tmp + "/event*"
first = ua.rescan()
w = unix.open_fd(tmp + "/event0", unix.O_WRONLY | unix.O_NONBLOCK)
unix.write(w, struct.pack(reader.NATIVE, 0, 0, 1, 30, 1) +  # KEY_A pressed, in this layout
           struct.pack(reader.NATIVE, 0, 0, 0, 0, 0))  # SYN_REPORT
n = drain(ua.devices[tmp + "/event0"], 4)
unix.close(w)
second = ua.rescan()
ua._epoll.close()


def names(paths):
    return [p.rsplit("/", 1)[1] for p in paths]


say("rescan", {"first": [names(x) for x in first], "drain": list(n),
               "after_hang_up": [names(x) for x in second], "dropped": ua.dropped})
"""


def run_reader_script(cmd: "List[str]", tmp: str, env: "Dict[str, str]") -> "Dict[str, Any]":
    """Run READER_SCRIPT with ``cmd`` in its own directory under ``tmp``.
    Returns: its lines by key."""
    work = os.path.join(tmp, os.path.basename(cmd[0]))
    os.makedirs(work)
    fifo = os.path.join(work, "fifo")
    os.mkfifo(fifo)
    os.mkfifo(os.path.join(work, "event0"))
    script = os.path.join(work, "reader_script.py")
    with open(script, "w") as f:
        f.write(READER_SCRIPT)
    t0 = time.monotonic()
    out = subprocess.run(cmd + [script, DATA, work, fifo], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(json.loads(line) for line in out.stdout.splitlines())
    lines["seconds"] = time.monotonic() - t0
    return lines


def test_the_reader_is_the_same_on_cpython_and_micropython(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    layout = package_layout(os.path.join(tmp, "layout"))
    cp = run_reader_script([sys.executable], tmp, dict(os.environ, PYTHONPATH=layout))
    mp = run_reader_script([micropython_ffi(), "-X", "heapsize=2M"], tmp,
                           dict(os.environ, MICROPYPATH=".frozen:" + layout))
    print("seconds: cpython %.2f, micropython %.2f" % (cp.pop("seconds"), mp.pop("seconds")))
    assert cp.pop("ioctl") == {"via": "os", "pty_number_is_small": True}
    assert mp.pop("ioctl") == {"via": "ffi", "pty_number_is_small": True}
    assert mp == cp
    assert cp["native_size"] == EVENT.size
    assert cp["numbers"] == [0x81004506, 0x80044509, [6, 31]]
    assert cp["names"] == ["kbd", "caf\xe9", "bad ? name"]
    assert [e[2:] for e in cp["keyboard"]["events"]] == [list(e) for e in KEYBOARD]
    assert cp["keyboard"]["drain"] == [18, 7] and cp["touch"]["drain"] == [50, 40]
    assert cp["truncated"]["events"] == cp["keyboard"]["events"][:17]
    assert cp["truncated"]["pending"] == 9 and cp["garbage"]["pending"] == 5
    assert len(cp["garbage"]["events"]) == 62
    huge = cp["huge"]
    assert huge["drain4"][0] == 256 and huge["most"] == 64 and huge["pending"] == 0
    assert huge["total"] == 18 * 4096 - 256 and huge["reads"] == huge["total"] // 64 + (
        huge["total"] % 64 > 0)
    fifo = cp["fifo"]
    assert fifo["no_writer"] == [] and fifo["empty"] == "BlockingIOError" and fifo["eof"] == []
    assert fifo["events"] == cp["keyboard"]["events"] and fifo["pendings"][-1] == 0
    assert cp["refused"] == {"errors": [[errno.ENOTTY, "Inappropriate ioctl for device"]] * 2,
                             "fds_leaked": 0}
    assert cp["rescan"] == {"first": [["event0"], []], "drain": [2, 1],
                            "after_hang_up": [["event0"], ["event0"]], "dropped": 1}


def test_drain_is_bounded_and_ends_at_a_hang_up(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "event0")
    os.mkfifo(path)
    dev = EvdevReader(path)
    try:
        assert drain(dev) == (0, 0)  # empty: BlockingIOError ends it
        w = writer(path)
        os.write(w, pack(*[(EV_ABS, 0, i) for i in range(300)]) + NOT_INPUT)
        assert drain(dev, reads=4) == (256, 256)  # 4 reads of 64 events
        assert drain(dev, reads=4) == (46, 44)
        os.close(w)
        assert drain(dev) == (0, 0)  # EOF: the plugin drops it on the hang-up
    finally:
        dev.close()


# -- memagent run, on CPython and on MicroPython --------------------------------------------

# The prelude that lets the agent open FIFOs (the plugin's own opener refuses
# them: no evdev node).
OPEN_FIFOS = ("from memagent.plugins.user_activity import reader; "
              "reader.open_evdev = reader.EvdevReader")


def start_agent(interp: str, tmp: str, prelude: str = "") -> "subprocess.Popen[str]":
    """Return: ``memagent run`` on ``interp`` with only user_activity, its
    devices ``tmp``/event*, its socket ``tmp``/ctl.sock, once it serves it."""
    sock = os.path.join(tmp, "ctl.sock")
    conf = os.path.join(tmp, "memagent.conf")
    with open(conf, "w") as f:
        # Only this plugin: the others would reach for the system bus and /proc.
        f.write("[agent]\nsocket = %s\noom_score_adj = 0\n[plugins]\nenable = user_activity\n"
                "[user_activity]\ndevices = %s/event*\nbacklight = %s/none/*/bl_power\n"
                % (sock, tmp, tmp))
    head, env = agent_command(interp, prelude)
    agent = subprocess.Popen(head + ["run", "-c", conf, "--source", "poll"], env=env,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if agent.poll() is not None or time.monotonic() > deadline:
            agent.kill()
            pytest.fail("agent did not start: " + agent.communicate()[1][-3000:])
        time.sleep(0.05)
    return agent


def plugin_view(tmp: str) -> "Dict[str, Any]":
    """Return: the running agent's status: its user_activity plugin entry,
    with the activity under "activity"."""
    status: Dict[str, Any] = aio.run(query(os.path.join(tmp, "ctl.sock")))["status"]
    plugins = {p["name"]: p for p in status["plugins"]}
    assert list(plugins) == ["user_activity"]  # loaded from BUILTIN by the real loader
    view: Dict[str, Any] = plugins["user_activity"]
    view["activity"] = status["activity"]
    return view


def wait_view(tmp: str, cond: "Any", timeout_s: float = 10) -> "Dict[str, Any]":
    """Return: the plugin's view once ``cond(view)``.  Fails on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = plugin_view(tmp)
        if cond(view):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_memagent_run_refuses_a_non_evdev_node_and_says_why(tmp_path: Any, interp: str) -> None:
    # The plugin's own opener, its EVIOCGNAME through fcntl or ffi: a regular
    # file answers ENOTTY, so it is never read; the agent runs on.
    tmp = str(tmp_path)
    with open(os.path.join(tmp, "event0"), "wb") as f:
        f.write(capture("keyboard"))
    agent = start_agent(interp, tmp)
    try:
        view = plugin_view(tmp)
        time.sleep(0.3)
        assert agent.poll() is None  # still running
    finally:
        err = stop_agent(agent)
    why = "Inappropriate ioctl for device"
    assert view["unavailable"] == "no input device readable: %s/event0: %s" % (tmp, why)
    assert view["state"]["devices"] == [] and view["state"]["failed"] == {tmp + "/event0": why}
    assert view["activity"]["state"] == UNKNOWN and view["activity"]["feeder"] is None
    assert err.count("cannot open %s/event0: %s" % (tmp, why)) == 1, err


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_memagent_run_reads_a_device_and_drops_it_when_it_hangs_up(
        tmp_path: Any, interp: str) -> None:
    tmp = str(tmp_path)
    path = os.path.join(tmp, "event0")
    os.mkfifo(path)
    agent = start_agent(interp, tmp, OPEN_FIFOS)
    w: "Optional[int]" = None
    try:
        view = plugin_view(tmp)
        assert view["unavailable"] is None and view["state"]["devices"] == [
            {"path": path, "name": ""}]
        assert view["activity"]["feeder"] == "evdev"
        w = writer(path)
        keys = pack((EV_KEY, KEY_A, 1), (EV_SYN, 0, 0), (EV_KEY, KEY_A, 0), (EV_SYN, 0, 0))
        t0 = time.monotonic()
        os.write(w, keys[:EVENT.size + 5])  # a record cut in two writes
        time.sleep(0.1)
        os.write(w, keys[EVENT.size + 5:])
        # the rest is read after the quiet period (idle_after_ms 60000: 1000 ms)
        view = wait_view(tmp, lambda v: v["state"]["inputs"] == 2)
        seen_s = time.monotonic() - t0
        assert view["state"]["events"] == 4 and view["activity"]["state"] == ACTIVE
        os.close(w)
        w = None
        view = wait_view(tmp, lambda v: v["state"]["dropped"] == 1)
        assert view["unavailable"] == "no input device open (dropped %s: hung up)" % path
        assert view["activity"]["feeder"] is None
    finally:
        if w is not None:
            os.close(w)
        err = stop_agent(agent)
    print("%s: keys seen in %.2f s" % (interp, seen_s))
    assert "user_activity: dropped %s" % path in err, err


# -- reading and bookkeeping inside a real Agent ------------------------------------


def test_reads_input_goes_idle_follows_devices(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    ev0, ev1, ev2 = (os.path.join(tmp, "event%d" % i) for i in (0, 1, 2))
    os.mkfifo(ev0)
    dead = unix_socket_file(os.path.join(tmp, "event9"))
    opened = Opened()
    plugin = UserActivity(opener=opened)
    rig = rig_with(plugin, tmp, idle_after_ms=400)  # quiet period 40 ms
    facts: Dict[str, Any] = {}

    async def main() -> None:
        await rig.start()
        act = rig.services(plugin).presence
        assert act is rig.presence and act.idle_after_ms == 400  # set up from the config
        now = aio.ticks_ms
        st = plugin.status()
        assert st["devices"] == [{"path": ev0, "name": ""}]  # a FIFO has no name
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
        assert plugin.dropped == 1 and opened.devices[0].fd == -1  # closed
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
        assert opened.devices[-1].path == ev1 and opened.devices[-1].fd >= 0

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
    assert all(dev.fd == -1 for dev in opened.devices)
    assert rig.presence.feeder is None and plugin.devices == {}
    print("facts:", facts)
    assert 300 <= facts["to_idle_ms"] < 2000
    assert facts["input_to_active_ms"] < 500
    # 1 s of flood, 40 ms quiet: about 25 wakes, whatever the event rate.
    assert facts["flood_writes"] > 100 and facts["flood_events"] == 3 * facts["flood_writes"]
    assert 5 <= facts["flood_wakes"] <= 30


@pytest.mark.parametrize("error, why", [
    (ValueError("garbage from the driver"), "ValueError: garbage from the driver"),
    (OSError(errno.ENODEV, os.strerror(errno.ENODEV)), "No such device")])
def test_a_device_that_raises_is_dropped_and_the_agent_runs_on(
        tmp_path: Any, error: Exception, why: str) -> None:
    tmp = str(tmp_path)
    os.mkfifo(os.path.join(tmp, "event0"))

    class Hostile(EvdevReader):
        def read(self) -> "List[InputEvent]":
            raise error

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
        assert plugin.unavailable == "no input device open (dropped %s/event0: %s)" % (tmp, why)
        await rig.close()

    try:
        aio.run(main())
    finally:
        if w is not None:
            os.close(w)
