"""The built-in plugin ``user_activity``: is the user there?  Reads the input
devices (:mod:`.reader`: struct input_event straight from the evdev nodes)
and records the last user input time in the agent's user presence
(``services.presence``), which ``kill_background`` consults.  It also sets
that presence up from ``[user_activity] idle_after_ms`` and ``backlight``.

The same on CPython and MicroPython: open, read and the two ioctls (name,
input properties) go through :mod:`memagent.aio.unix`, the devices are
multiplexed with its epoll.  No python-evdev.

How it reads, in one place: every matched device (``[user_activity] devices``,
default ``/dev/input/event*``) is registered in one epoll object, and one task
waits on that epoll fd through :class:`memagent.aio.FdWatch`.  No timer: while
nobody touches the device the agent makes no wakeup at all.  On a wake it
drains each ready device with ``device.read()`` (non-blocking; a bounded number
of reads per wake), and EV_KEY (press, release, repeat), EV_REL or EV_ABS counts
as user input; batches holding only EV_SYN/EV_MSC (sync reports, scan codes
without a key) do not.  After a wake that read events it stops watching for
``quiet_ms = min(idle_after_ms / 10, 1000)`` ms: the policy needs the last input
time to about a second, and a finger on a touch screen reports hundreds of
events a second.  The first input after a calm is noted at once; under
continuous input the last input time lags by at most ``quiet_ms``.

Devices come and go: a device whose read fails (ENODEV when unplugged) or
which hangs up is closed and dropped (logged once at info).  :meth:`rescan`
re-matches the pattern; ``on_device`` calls it for an input event device
added or removed (published by ``device_watch`` from uevents), and
``on_pressure`` calls it too (a listdir and a zero-timeout poll per device,
no timer).  Accelerometers (INPUT_PROP_ACCELEROMETER) are skipped:
they report EV_ABS all the time without a user.  A matched node that is no
evdev node (``/dev/input/mouse0`` under ``devices = /dev/input/*``) fails to
open (ENOTTY) and is never read.
"""

import select

try:
    from typing import Any, Callable, Dict, List, Optional, Tuple

    Opener = Callable[[str], Any]
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.aio import unix
from memagent.core.config import Key
from memagent.core.logs import get_logger
from memagent.runtime.services import Activity, Services

from . import reader

log = get_logger("memagent.plugin.user_activity")

FEEDER = "evdev"
# Event types from linux/input-event-codes.h (kernel ABI).
EV_SYN, EV_KEY, EV_REL, EV_ABS, EV_MSC = 0, 1, 2, 3, 4
USER_EVENTS = (EV_KEY, EV_REL, EV_ABS)
INPUT_PROP_ACCELEROMETER = 6
# A read() returns at most 64 events (reader.READ_EVENTS); 4 reads cover a
# keyboard's whole kernel buffer (64 events) and most of a touch screen's.  What is
# left keeps the epoll fd readable and is read on the next wake.
READS_PER_WAKE = 4
QUIET_MAX_MS = 1000
HANGUP = unix.EPOLLHUP | unix.EPOLLERR
POLLNVAL = 32


def quiet_ms_for(idle_after_ms: int) -> int:
    """Return: how long to stop watching after a wake that read events:
    a tenth of ``idle_after_ms``, at most 1000 ms, at least 0."""
    return max(min(idle_after_ms // 10, QUIET_MAX_MS), 0)


def drain(device: Any, reads: int = READS_PER_WAKE) -> Tuple[int, int]:
    """Read what ``device`` holds, at most ``reads`` times.

    Returns: (events read, of which user input).  Raises: OSError from the
    read (ENODEV: the device is gone); BlockingIOError (nothing left) and an
    empty batch (EOF, or part of a record) only end the drain.
    """
    total = user = 0
    for _ in range(reads):
        try:
            batch = list(device.read())
        except BlockingIOError:
            break
        if not batch:
            break
        total += len(batch)
        user += sum(1 for event in batch if event.type in USER_EVENTS)
    return total, user


def expand_star(pattern: str) -> "List[str]":
    """Return: the paths matching ``pattern``, whose last component may
    hold one ``*`` (``/dev/input/event*``), sorted; no glob module
    (MicroPython has none)."""
    parent, _, name = pattern.rpartition("/")
    if "*" not in name:
        return [pattern] if unix.exists(pattern) else []
    prefix, _, suffix = name.partition("*")
    try:
        names = unix.listdir(parent or "/")
    except OSError:
        return []
    return sorted(parent + "/" + n for n in names
                  if n.startswith(prefix) and n.endswith(suffix) and
                  len(n) >= len(prefix) + len(suffix))


def is_accelerometer(device: Any) -> bool:
    """Return: True if ``device`` says it is an accelerometer (input property)."""
    try:
        return INPUT_PROP_ACCELEROMETER in device.input_props()
    except Exception:  # no input_props (a stand-in), or the ioctl failed (a FIFO, Linux < 3.7)
        return False


def _why(e: BaseException) -> str:
    """Return: an OSError's message, else "Type: message"."""
    if isinstance(e, OSError):
        return unix.why(e)
    return "%s: %s" % (type(e).__name__, e)


class UserActivity:
    """Feeds the agent's Activity from evdev input (see the module docstring).

    ``opener`` (path -> device with ``fileno()``, ``read()``, ``close()`` and
    ``name``; ``input_props()`` if it can tell) defaults to
    :func:`.reader.open_evdev`, looked up at start.
    """

    name = "user_activity"
    # The user counts as idle after idle_after_ms without input, or while
    # every backlight matched by `backlight` reports bl_power != 0.
    config_schema = {
        "devices": Key("str", "/dev/input/event*", doc="the input devices to read"),
        "idle_after_ms": Key("int", "60000", low=0, doc="no input for this long: idle"),
        "backlight": Key("str", "/sys/class/backlight/*/bl_power",
                         doc="backlights whose bl_power says the screen is off"),
    }

    def __init__(self, opener: Optional[Opener] = None) -> None:
        self.opener = opener
        self.unavailable: Optional[str] = None
        self.presence: Optional[Activity] = None
        self.pattern = "/dev/input/event*"
        self.quiet_ms = QUIET_MAX_MS
        self.devices: Dict[str, Any] = {}  # path -> open device
        self._paths: Dict[int, str] = {}  # fd -> path
        self._failed: Dict[str, str] = {}  # path -> why it did not open (retried)
        self._ignored: Dict[str, str] = {}  # path -> why it is not input (not retried)
        self._last_drop: Optional[str] = None  # "path: why"
        self._epoll: Optional[Any] = None
        self._watch: Optional[aio.FdWatch] = None
        self._task: Optional[Any] = None
        self.wakes = 0
        self.events = 0
        self.inputs = 0
        self.dropped = 0
        self.rescans = 0  # asked by on_device

    # -- hooks ---------------------------------------------------------------

    async def on_start(self, services: Optional[Services] = None, **kwargs: Any) -> None:
        """Set the user presence up from the config, open the matching
        devices and start the reading task."""
        if services is None:
            return
        config = services.config
        self.presence = services.presence
        self.presence.configure(config.get_int("idle_after_ms"), config.get_str("backlight"))
        self.pattern = config.get_str("devices")
        self.quiet_ms = quiet_ms_for(self.presence.idle_after_ms)
        if self.opener is None:
            self.opener = reader.open_evdev
        self._epoll = unix.epoll()
        self._watch = aio.FdWatch(self._epoll.fileno())
        self.rescan()
        self._task = aio.create_task(self._run())

    async def on_stop(self, **kwargs: Any) -> None:
        """Stop the task, close every device, stop feeding the Activity."""
        task, self._task = self._task, None
        await aio.cancel_and_wait(task)
        for path in list(self.devices):
            self._drop(path, None)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._update_feeding()

    async def on_pressure(self, **kwargs: Any) -> None:
        """Follow devices even without pyudev: rescan (no timer needed)."""
        self.rescan()

    async def on_device(self, action: str, subsystem: str, devnode: str,
                        **kwargs: Any) -> None:
        """An input event device came or went, or events were lost: rescan."""
        if action == "reconcile" or (subsystem == "input" and action in ("add", "remove")
                                     and devnode.startswith("input/event")):
            self.rescans += 1
            log.info("input devices changed; rescan: %s", self.rescan())

    # -- devices -------------------------------------------------------------

    def rescan(self) -> Tuple[List[str], List[str]]:
        """Re-match ``[user_activity] devices``: drop the open devices that
        are no longer there or have hung up, open the new ones.

        Returns: (paths opened, paths dropped); ([], []) before start.
        """
        if self._epoll is None:
            return [], []
        matched = expand_star(self.pattern)
        dropped = []
        for path in sorted(self.devices):
            why = "removed" if path not in matched else self._hung_up(path)
            if why is not None:
                self._drop(path, why)
                dropped.append(path)
        for path in list(self._ignored):
            if path not in matched:
                del self._ignored[path]
        opened = [path for path in matched
                  if path not in self.devices and path not in self._ignored and self._open(path)]
        for path in list(self._failed):
            if path not in matched:
                del self._failed[path]
        self._update_feeding()
        return opened, dropped

    def _hung_up(self, path: str) -> Optional[str]:
        """Return: "hung up" if the device's fd reports POLLHUP/POLLERR (an
        unplugged evdev device does), else None."""
        poller = select.poll()
        poller.register(self.devices[path].fileno(), select.POLLIN)
        for _fd, mask in poller.poll(0):
            if mask & (select.POLLHUP | select.POLLERR | POLLNVAL):
                return "hung up"
        return None

    def _open(self, path: str) -> bool:
        """Open ``path`` and watch it.  Returns: True if it is now watched."""
        assert self.opener is not None and self._epoll is not None
        try:
            device = self.opener(path)
        except Exception as e:  # EACCES, ENODEV, ENOTTY (no evdev node): retried at rescans
            why = _why(e)
            if self._failed.get(path) != why:
                log.info("user_activity: cannot open %s: %s", path, why)
            self._failed[path] = why
            return False
        self._failed.pop(path, None)
        name = str(getattr(device, "name", ""))
        if is_accelerometer(device):
            self._ignored[path] = "accelerometer"
            log.info("user_activity: %s (%s) is an accelerometer, not user input", path, name)
            self._close(device)
            return False
        try:
            fd = device.fileno()
            self._epoll.register(fd, unix.EPOLLIN)
        except (OSError, ValueError) as e:
            log.info("user_activity: cannot watch %s: %s", path, _why(e))
            self._close(device)
            return False
        self.devices[path] = device
        self._paths[fd] = path
        log.info("user_activity: watching %s (%s)", path, name)
        return True

    def _drop(self, path: str, why: Optional[str]) -> None:
        """Stop watching ``path`` and close it; ``why`` None: quietly (on stop)."""
        device = self.devices.pop(path)
        for fd in [fd for fd, p in self._paths.items() if p == path]:
            del self._paths[fd]
            if self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
        self._close(device)
        if why is not None:
            self.dropped += 1
            self._last_drop = "%s: %s" % (path, why)
            log.info("user_activity: dropped %s (%s): %s", path,
                     getattr(device, "name", ""), why)

    @staticmethod
    def _close(device: Any) -> None:
        try:
            device.close()
        except Exception as e:  # closing a dead device must not stop the agent
            log.debug("user_activity: close failed: %s", e)

    def _update_feeding(self) -> None:
        """Feed the Activity while a device is open; else say why not."""
        activity = self.presence
        if activity is None:
            return
        if self.devices and self._epoll is not None:
            self.unavailable = None
            if activity.feeder != FEEDER:
                activity.start_feeding(FEEDER, aio.ticks_ms())
            return
        if activity.feeder == FEEDER:
            activity.stop_feeding()
        if self._epoll is None:
            return
        if self._failed:
            self.unavailable = "no input device readable: " + "; ".join(
                "%s: %s" % item for item in sorted(self._failed.items()))
        elif self._last_drop is not None:
            self.unavailable = "no input device open (dropped %s)" % self._last_drop
        else:
            self.unavailable = "no input device matches %s" % self.pattern

    # -- reading -------------------------------------------------------------

    async def _run(self) -> None:
        """Wait on the epoll fd, read, and rest ``quiet_ms`` after events.
        Runs until cancelled."""
        assert self._watch is not None
        while True:
            await self._watch.wait()
            self.wakes += 1
            if self._service() and self.quiet_ms > 0:
                await aio.sleep_ms(self.quiet_ms)

    def _service(self) -> int:
        """Drain every ready device, note user input, drop dead devices.
        Returns: the number of events read."""
        assert self._epoll is not None and self.presence is not None
        total = user = 0
        gone = False
        for fd, mask in self._epoll.poll(0):
            path = self._paths.get(fd)
            if path is None:
                continue
            try:
                n, u = drain(self.devices[path])
            except Exception as e:  # ENODEV (unplugged) or a bad device: never fatal
                self._drop(path, _why(e))
                gone = True
                continue
            if n == 0 and mask & HANGUP:
                self._drop(path, "hung up")
                gone = True
                continue
            total += n
            user += u
        self.events += total
        if user:
            self.inputs += user
            self.presence.note_input(aio.ticks_ms())
        if gone:
            self._update_feeding()
        return total

    # -- view ----------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        """Return: the open devices (path, name), the counts (wakes, events
        read, user input events, devices dropped), devices that failed to
        open and why, and the activity state."""
        state = self.presence.state(aio.ticks_ms()) if self.presence is not None else None
        return {"devices": [{"path": path, "name": str(getattr(dev, "name", ""))}
                            for path, dev in sorted(self.devices.items())],
                "state": state, "inputs": self.inputs, "events": self.events,
                "wakes": self.wakes, "dropped": self.dropped, "quiet_ms": self.quiet_ms,
                "rescans": self.rescans,
                "failed": dict(self._failed), "ignored": dict(self._ignored)}
