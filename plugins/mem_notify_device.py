"""The built-in plugin ``mem_notify_device``: serve /dev/mem_notify.

No mainline kernel has the 2008 patch's device; this plugin makes it, with
CUSE, from the agent's own monitor, so that a program written for it works
unchanged::

    fd = open("/dev/mem_notify", O_RDONLY); poll({fd, POLLIN}, -1)

It is a view of the monitor, like the control socket: the dispatcher's
``on_pressure`` (LOW or CRITICAL, changes and reminders) are the events
that choose files to wake; ``on_level_change`` to NORMAL clears them.  The
policy (N files per event in fair rotation, a rate limit, all at
CRITICAL, a late opener ready at once, per-file thresholds) is
:mod:`memagent.core.waiters`; the device's answers are
:mod:`memagent.core.memnotify`; the I/O is :mod:`memagent.ipc.cuse`.
docs/cuse.md documents the interface for app vendors.

Off unless ``[mem_notify_device] enabled = yes`` (or ``memagent cuse``).
It needs root and /dev/cuse (``modprobe cuse``).  Where a kernel's own
/dev/mem_notify exists it stays off and says why: the agent reads that
device instead.  Files with their own thresholds are checked at every
event and, while such a file is open, every ``threshold_poll_ms`` (the
agent re-measures; with none open, no timer runs).
"""

try:
    from typing import Any, Dict, Optional
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.aio import unix
from memagent.core.config import Key
from memagent.core.levels import LOW, NORMAL, level_name
from memagent.core.logs import get_logger
from memagent.runtime.services import CuseError, Services

log = get_logger("memagent.plugin.mem_notify_device")

OFF = "off ([mem_notify_device] enabled = no)"


def _mode(text: str) -> int:
    """Return: an octal mode string as an int.  Raises: ValueError."""
    mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError("mode %r is not 000..777" % text)
    return mode


class MemNotifyDevice:
    """Serves /dev/mem_notify (see the module docstring)."""

    name = "mem_notify_device"
    config_schema = {
        "enabled": Key("bool", "no", doc="serve /dev/mem_notify through CUSE"),
        "devname": Key("str", "mem_notify", doc="the node's name under /dev"),
        "mode": Key("str", "0660", doc="the node's mode (octal)"),
        "group": Key("str", "", doc="the node's group (name or gid; empty: root)"),
        "max_per_event": Key("int", "4", low=1, high=65536,
                             doc="files woken per pressure event at LOW (all at CRITICAL; "
                             "max_files or more: all at LOW too)"),
        "min_gap_ms": Key("int", "1000", low=0, high=3600000,
                          doc="a file is woken at most once per this long at LOW"),
        "max_files": Key("int", "1024", low=1, high=65536, doc="open files at most"),
        "threshold_poll_ms": Key("int", "1000", low=0, high=3600000,
                                 doc="re-measure this often while a file has its own "
                                 "thresholds (0: only at the agent's events)"),
        "cuse_path": Key("str", "/dev/cuse"),
        "required": Key("bool", "no", doc="stop the agent when the device cannot be "
                        "served (memagent cuse sets it: the device is its whole job)"),
    }

    def __init__(self) -> None:
        self.unavailable: "Optional[str]" = None
        self.services: "Optional[Services]" = None
        self.server: "Optional[Any]" = None
        self._task: "Optional[Any]" = None
        self._poll_task: "Optional[Any]" = None
        self.events = 0
        self.woken_per_event: "Dict[str, int]" = {}
        self.ended: "Optional[str]" = None

    # -- lifecycle ---------------------------------------------------------------

    async def on_start(self, services: "Optional[Services]" = None, **kwargs: "Any") -> None:
        """Make the device (in a task: the kernel's handshake), or set
        ``unavailable`` saying why not."""
        self.services = services
        if services is None or not services.config.get_bool("enabled"):
            self.unavailable = OFF
            return
        try:
            self.server = self._server(services)
        except (ValueError, CuseError) as e:
            self._off("%s" % e)
            return
        why = self.server.kernel_device()
        if why is not None:
            self.server = None
            self._off(why)
            return
        services.serve_device(self.server.node)
        self.server.on_thresholds = self._poll_thresholds
        self._task = aio.create_task(self._run())

    def _server(self, services: Services) -> "Any":
        """Return: a CUSE server from the plugin's section.  Raises:
        ValueError (a bad mode), CuseError (an unknown group)."""
        from memagent.core.memnotify import Device
        from memagent.core.waiters import Waiters

        config = services.config
        waiters = Waiters(config.get_int("max_per_event"), config.get_int("min_gap_ms"),
                          config.get_int("max_files"))
        return services.cuse_device(Device(waiters), config.get_str("devname"),
                                    _mode(config.get_str("mode")), config.get_str("group"),
                                    config.get_str("cuse_path"))

    def _off(self, why: str) -> None:
        self.unavailable = why
        services = self.services
        if services is not None and services.config.get_bool("required"):
            services.end_agent(1, why)
        else:
            log.warning("plugin %s unavailable: %s", self.name, why)

    async def _run(self) -> None:
        """Handshake, then serve until the connection ends or on_stop."""
        server = self.server
        assert server is not None and self.services is not None
        try:
            await server.start()
        except CuseError as e:
            self.services.unserve_device(server.node)
            self._off(str(e))
            return
        log.info("serving %s (%s, mode %o, N=%d per event)", server.node, server.devnum,
                 server.mode, server.device.waiters.max_per_event)
        try:
            self._from_reading(pressure=False)
            await server.serve()
            self.ended = server.last_error or "the CUSE connection ended"
        except OSError as e:
            self.ended = "/dev/cuse failed: %s" % unix.why(e)
        except Exception as e:  # a bug: say it, and take the device away
            self.ended = "the server failed: %s: %s" % (type(e).__name__, e)
        server.close()
        self.services.unserve_device(server.node)
        self._off("%s; %s is gone" % (self.ended, server.node))

    async def on_stop(self, **kwargs: "Any") -> None:
        """Remove the device (its pollers wake with an error) and stop."""
        for task in (self._poll_task, self._task):
            await aio.cancel_and_wait(task)
        self._poll_task = self._task = None
        if self.server is not None:
            self.server.close()
            if self.services is not None:
                self.services.unserve_device(self.server.node)

    # -- the agent's events ----------------------------------------------------------

    async def on_pressure(self, level: int = LOW, notification: "Any" = None,
                          **kwargs: "Any") -> None:
        """A pressure event (LOW or CRITICAL): wake the chosen files."""
        if notification is not None:
            self._tell(notification, level, True)

    async def on_level_change(self, level: int = NORMAL, notification: "Any" = None,
                              **kwargs: "Any") -> None:
        """Back to NORMAL: clear what the pressure left."""
        if level == NORMAL and notification is not None:
            self._tell(notification, level, False)

    def _tell(self, n: "Any", level: int, pressure: bool) -> None:
        server = self.server
        if server is None or server.fd is None:
            return
        self.events += 1
        woken = server.event(level, n.avail_kib, n.total_kib, n.eta_ms, n.deficit_kib,
                             _monotonic_of(n.t_ms), pressure)
        if pressure:  # how many files each event woke, by level: {"LOW 1": 50}
            key = "%s %d" % (level_name(level), min(len(woken), 100))
            self.woken_per_event[key] = self.woken_per_event.get(key, 0) + 1
        self._poll_thresholds()

    def _from_reading(self, pressure: bool) -> None:
        """Feed the device the agent's newest reading (at start, and for
        files with their own thresholds)."""
        services, server = self.services, self.server
        if services is None or server is None or server.fd is None:
            return
        reading = services.reading
        if reading is None:
            return
        level = services.level
        thresholds = services.thresholds
        low_kib = thresholds.low_kib if thresholds is not None else 0
        server.event(level, reading.avail_kib, reading.total_kib, None,
                     max(0, low_kib - reading.avail_kib) if level else 0,
                     _monotonic_of(reading.t_ms), pressure)

    def _poll_thresholds(self) -> None:
        """Start the re-measure task while a file has its own thresholds."""
        server, services = self.server, self.services
        if server is None or services is None or self._poll_task is not None:
            return
        if not services.config.get_int("threshold_poll_ms"):
            return
        if server.device.status().get("own_thresholds"):
            self._poll_task = aio.create_task(self._poll())

    async def _poll(self) -> None:
        """Re-measure every threshold_poll_ms while a file has thresholds."""
        try:
            while self.server is not None and self.services is not None and \
                    self.server.device.status().get("own_thresholds"):
                await aio.sleep_ms(self.services.config.get_int("threshold_poll_ms"))
                self.services.remeasure("mem_notify_device")
                self._from_reading(pressure=False)
        finally:
            self._poll_task = None

    # -- view ------------------------------------------------------------------------

    def status(self) -> "Dict[str, Any]":
        """Return: the device's node, counters and state (empty when off)."""
        if self.server is None:
            return {}
        st: "Dict[str, Any]" = dict(self.server.status())
        st["events"] = self.events
        st["woken_per_event"] = dict(self.woken_per_event)
        return st


def _monotonic_of(t_ms: int) -> int:
    """Return: the agent's clock reading ``t_ms`` on CLOCK_MONOTONIC, the
    clock clients read (the same on CPython; MicroPython's wraps)."""
    try:
        now = unix.monotonic_ms()
    except OSError:
        return t_ms
    return now - max(0, aio.ticks_ms() - t_ms)
