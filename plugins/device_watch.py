"""The built-in plugin ``device_watch``: follow device events with pyudev.

It listens to the kernel's device events (uevents) on a netlink socket
through pyudev, bridged into the agent's loop the project's way: the
monitor's fd behind :class:`memagent.aio.FdWatch`, then a bounded,
non-blocking drain with ``monitor.poll(timeout=0)``.  No thread, no timer:
while no device comes or goes it costs no wakeup.

What it acts on:

* the ``mem_notify`` device, matched by its node name (``DEVNAME``) against
  ``[sources] device_path``, whatever its subsystem (the 2008 patch made a
  "mem" class device; a CUSE provider's is class "cuse"; a module might use
  "misc").  On "add", if ``[device_watch] switch_source`` and ``[agent]
  source`` is auto or mem_notify, and the agent runs another source: wait
  until the node opens (bounded: mdev may create it after the event), then
  ``services.switch_source("mem_notify")``.  On "remove" of the device the
  agent runs on: switch back to ``[agent] source`` (if that is mem_notify
  itself, to "auto": a source on a dead device would miss all pressure).
  The agent's own fallback (its source's wait raising OSError) may come
  first; then the running source is no longer mem_notify and the event is
  a no-op, so the two never fight.
* every device event it receives (the subsystems above): it publishes it
  to all plugins (``services.device_event``, their ``on_device`` hook):
  ``user_activity`` rescans its input devices on an input event device's
  "add" or "remove".  Lost events (a socket overflow) are published as
  action "reconcile".

The monitor source is "udev" when a udev daemon runs (``/run/udev/control``
exists), else "kernel" (Buildroot images with mdev or devtmpfs only).
Without pyudev, or where netlink is refused (EPERM in some containers), the
plugin sets ``unavailable`` and logs it once; the agent runs on.

CPython only: pyudev is a ctypes binding of libudev.  On MicroPython the
module imports, and the plugin says pyudev is missing and stays out of the
way (see docs/micropython.md).  See docs/devices.md.
"""

import errno

try:
    from typing import Any, Dict, List, Optional, Tuple

    Event = Tuple[str, str, str, int]  # action, subsystem, devname, devnum
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.aio import unix
from memagent.core.config import Key
from memagent.core.logs import get_logger
from memagent.runtime.services import Services

log = get_logger("memagent.plugin.device_watch")

MISSING = "pyudev is not installed (apt install python3-pyudev, or pip install pyudev)"
UDEV_CONTROL = "/run/udev/control"  # exists while a udev daemon runs
# Filtered by libudev (in the kernel, by BPF, with source "udev"): a phone's
# battery (power_supply) sends "change" events all day that must not wake
# the agent.  mem: the 2008 patch; cuse: a CUSE provider; misc: a module.
SUBSYSTEMS = ("mem", "cuse", "misc", "input")
DRAIN_MAX = 64  # events per wake; the FdWatch wakes again at once if more wait
NODE_WAIT_MS = 2000  # for the node to appear and open after "add"
NODE_RETRY_MS = 50

# What an event means to the plugin (see classify).
MEM_NOTIFY_ADD, MEM_NOTIFY_REMOVE, INPUT_CHANGE, IGNORED = (
    "mem_notify-add", "mem_notify-remove", "input", "ignored")



def node_name(devname: Optional[str]) -> str:
    """Return: ``devname`` relative to /dev ("input/event3"): the kernel's
    uevent has it so; libudev makes it absolute (also for kernel events)."""
    name = devname or ""
    return name[5:] if name.startswith("/dev/") else name


def classify(action: str, subsystem: str, devname: Optional[str],
             device_path: str = "/dev/mem_notify") -> str:
    """Return: MEM_NOTIFY_ADD or MEM_NOTIFY_REMOVE for the node "mem_notify"
    or that of ``device_path`` (any subsystem), INPUT_CHANGE for an input event device
    added or removed, else IGNORED ("change", "bind", input/mouse0, ...)."""
    name = node_name(devname)
    if action not in ("add", "remove") or not name:
        return IGNORED
    if name in ("mem_notify", node_name(device_path)):
        return MEM_NOTIFY_ADD if action == "add" else MEM_NOTIFY_REMOVE
    if subsystem == "input" and name.startswith("input/event"):
        return INPUT_CHANGE
    return IGNORED


def decide(kind: str, running: Optional[str], configured: str,
           enabled: bool) -> Optional[str]:
    """Return: the source to switch to for an event of ``kind`` while the
    agent runs ``running`` and the config says ``configured``, or None to
    stay.  ``enabled``: ``[device_watch] switch_source``."""
    if not enabled or running is None:
        return None
    if kind == MEM_NOTIFY_ADD:
        if configured in ("auto", "mem_notify") and running != "mem_notify":
            return "mem_notify"
    elif kind == MEM_NOTIFY_REMOVE and running == "mem_notify":
        return "auto" if configured == "mem_notify" else configured
    return None


def monitor_source(udev_control: str = UDEV_CONTROL) -> str:
    """Return: "udev" if a udev daemon runs (its control socket exists),
    else "kernel"."""
    return "udev" if unix.exists(udev_control) else "kernel"


def node_opens(path: str) -> bool:
    """Return: True if ``path`` is a character device (or a FIFO, the
    tests' stand-in) that opens for reading now."""
    try:
        kind = unix.file_mode(path) & 0o170000
        if kind not in (0o020000, 0o010000):  # S_IFCHR, S_IFIFO
            return False
        unix.close(unix.open_fd(path, unix.O_RDONLY | unix.O_NONBLOCK))
    except OSError:
        return False
    return True


def event_of(device: Any) -> Event:
    """Return: (action, subsystem, devname, devnum) of a pyudev Device."""
    return (str(device.action or ""), str(device.subsystem or ""),
            str(device.properties.get("DEVNAME") or ""), int(device.device_number or 0))


class DeviceWatch:
    """Follows device events (see the module docstring)."""

    name = "device_watch"
    config_schema = {
        "switch_source": Key("bool", "yes", doc="switch to /dev/mem_notify when it "
                             "appears, and back when it goes"),
    }

    def __init__(self, subsystems: Tuple[str, ...] = SUBSYSTEMS,
                 udev_control: str = UDEV_CONTROL, node_wait_ms: int = NODE_WAIT_MS) -> None:
        self.subsystems = subsystems
        self.udev_control = udev_control
        self.node_wait_ms = node_wait_ms
        self.unavailable: Optional[str] = None
        self.services: Optional[Services] = None
        self.monitor: Optional[Any] = None
        self.source: Optional[str] = None  # "udev" or "kernel" once the monitor runs
        self._task: Optional[Any] = None
        self.events = 0
        self.by_kind: Dict[str, int] = {}
        self.last_event: Optional[Dict[str, Any]] = None
        self.switches: List[Dict[str, Any]] = []
        self.published = 0
        self.overflows = 0

    # -- lifecycle -------------------------------------------------------------

    async def on_start(self, services: Optional[Services] = None, **kwargs: Any) -> None:
        """Open the netlink monitor and start following it; or set
        ``unavailable`` (logged once) and do nothing more."""
        self.services = services
        self.unavailable = self._open_monitor()
        if self.unavailable is not None:
            log.warning("plugin %s unavailable: %s", self.name, self.unavailable)
            return
        log.info("watching %s device events (%s)", self.source, ", ".join(self.subsystems))
        self._task = aio.create_task(self._watch())

    @property
    def running(self) -> bool:
        """True while the watch task runs."""
        return self._task is not None and not self._task.done()

    async def on_stop(self, **kwargs: Any) -> None:
        """Cancel the watch and wait for it; release the monitor."""
        task, self._task = self._task, None
        await aio.cancel_and_wait(task)
        self.monitor = None  # pyudev unrefs the libudev monitor (closes its fd)

    def _open_monitor(self) -> Optional[str]:
        """Returns: None with ``self.monitor`` started, or why it cannot be."""
        try:
            import pyudev
        except ImportError:
            return MISSING
        source = monitor_source(self.udev_control)
        try:
            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
            for subsystem in self.subsystems:
                monitor.filter_by(subsystem)
            monitor.start()
        except ImportError as e:  # pyudev without libudev
            return "libudev cannot be loaded: %s" % e
        except OSError as e:
            # from_netlink raises without errno; libudev left it in errno.
            import ctypes

            code = e.errno or ctypes.get_errno()
            return "the %s netlink monitor was refused: %s%s" % (
                source, unix.why(e), " (%s)" % unix.strerror(code) if code else "")
        self.monitor, self.source = monitor, source
        return None

    # -- the watch ---------------------------------------------------------------

    async def _watch(self) -> None:
        """Wait on the monitor's fd; hand each event to :meth:`handle_event`."""
        assert self.monitor is not None
        watch = aio.FdWatch(self.monitor.fileno())
        try:
            while True:
                await watch.wait(None)
                for event in self._drain():
                    try:
                        await self.handle_event(*event)
                    except Exception as e:  # bad input never kills the agent
                        log.error("device event %s: %s: %s", event, type(e).__name__, e)
        except OSError as e:
            self.unavailable = "the udev monitor failed: %s" % e
            log.error("plugin %s: %s", self.name, self.unavailable)
        finally:
            watch.close()

    def _drain(self) -> List[Event]:
        """Returns: up to DRAIN_MAX pending events, without blocking.  A lost
        event (ENOBUFS: the socket buffer overflowed) becomes a "reconcile"."""
        events: List[Event] = []
        for _ in range(DRAIN_MAX):
            try:
                device = self.monitor.poll(timeout=0) if self.monitor is not None else None
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    events.append(("reconcile", "", "", 0))
                    continue
                log.warning("udev monitor: %s", e)
                break
            if device is None:
                break
            try:
                events.append(event_of(device))
            except Exception as e:  # a malformed event: skip it
                log.warning("unreadable device event: %s: %s", type(e).__name__, e)
        return events

    async def handle_event(self, action: str, subsystem: str, devname: str,
                           devnum: int = 0) -> Optional[str]:
        """Act on one device event (the watch calls it; so may tests):
        publish it to the plugins (their ``on_device``), and switch the
        source when it is the mem_notify device.  Returns: "switched to X",
        or None."""
        if action == "reconcile":
            return await self._reconcile()
        device_path = self._device_path()
        kind = classify(action, subsystem, devname, device_path)
        self.events += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.last_event = {"action": action, "subsystem": subsystem, "devname": node_name(devname),
                           "kind": kind, "t_ms": aio.ticks_ms()}
        log.debug("device event %s %s %s: %s", action, subsystem, devname, kind)
        self._publish(action, subsystem, node_name(devname), devnum)
        if kind in (MEM_NOTIFY_ADD, MEM_NOTIFY_REMOVE):
            return await self._mem_notify(kind, device_path, devnum)
        return None

    # -- acting ------------------------------------------------------------------

    def _device_path(self) -> str:
        return self.services.device_path if self.services is not None else "/dev/mem_notify"

    def _publish(self, action: str, subsystem: str, devnode: str, devnum: int) -> None:
        """Hand the event to every plugin's ``on_device``."""
        if self.services is not None:
            self.services.device_event(action, subsystem, devnode, devnum)
            self.published += 1

    def _running(self) -> Optional[str]:
        return self.services.source if self.services is not None else None

    async def _mem_notify(self, kind: str, device_path: str, devnum: int) -> Optional[str]:
        services = self.services
        if services is None:
            return None
        target = decide(kind, self._running(), services.configured_source,
                        services.config.get_bool("switch_source"))
        if target is None:
            return None
        if kind == MEM_NOTIFY_ADD and services.serves_device(device_path):
            log.info("%s is this agent's own device (mem_notify_device): not reading it",
                     device_path)
            return None
        if kind == MEM_NOTIFY_REMOVE:
            if not self._runs_on(devnum):
                log.info("%s removed, but the agent runs on another device", device_path)
                return None
            # avoid: "auto" must not pick the dead device again (a provider
            # that restarted has a new node; its own "add" follows).
            return self._switch(target, "device removed", avoid="mem_notify") or (
                self._switch("auto", "device removed", avoid="mem_notify")
                if target != "auto" else None)
        if not await self._wait_node(device_path):
            log.warning("%s was added but does not open after %d ms", device_path,
                        self.node_wait_ms)
            return None
        if self._running() == "mem_notify":  # switched meanwhile
            return None
        return self._switch(target, "device added")

    def _runs_on(self, devnum: int) -> bool:
        """Return: False only if the running source's fd is provably another
        device than ``devnum`` (a provider restarted: the new node is up)."""
        rdev = self.services.source_devnum() if self.services is not None else None
        return not devnum or rdev is None or rdev in (0, devnum)

    async def _wait_node(self, path: str) -> bool:
        """Returns: True once ``path`` opens, False after node_wait_ms."""
        deadline_ms = aio.ticks_ms() + self.node_wait_ms
        while not node_opens(path):
            if aio.ticks_ms() >= deadline_ms:
                return False
            await aio.sleep_ms(NODE_RETRY_MS)
        return True

    def _switch(self, target: str, why: str, avoid: Optional[str] = None) -> Optional[str]:
        """Ask the agent to run ``target`` (with "auto": not ``avoid``).
        Returns: "switched to X" if the agent now runs another source X,
        else None (logged if it could not)."""
        services = self.services
        was = self._running()
        if services is None or not services.switch_source(target, avoid=avoid):
            log.warning("could not switch the source to %s (%s)", target, why)
            return None
        now = self._running()
        if now == was:  # the agent ran it already: a no-op
            return None
        self.switches.append({"to": now, "asked": target, "was": was, "why": why,
                              "t_ms": aio.ticks_ms()})
        del self.switches[:-8]
        return "switched to %s" % now

    async def _reconcile(self) -> Optional[str]:
        """Events were lost: act on what exists now, and tell the plugins."""
        log.warning("device events were lost (socket overflow); checking the devices now")
        path = self._device_path()
        action = "add" if node_opens(path) else "remove"
        done = await self._mem_notify(MEM_NOTIFY_ADD if action == "add" else MEM_NOTIFY_REMOVE,
                                      path, 0)
        self._publish("reconcile", "", "", 0)
        return done

    # -- view ---------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        """Return: the monitor's source, the events seen (by kind), the last
        event, the source switches made, the events published to the plugins
        and the overflows."""
        return {"monitor": self.source, "events": self.events, "by_kind": dict(self.by_kind),
                "last_event": self.last_event, "switches": list(self.switches),
                "published": self.published, "overflows": self.overflows}
