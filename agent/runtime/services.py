"""What the agent offers a plugin: :class:`Services`, handed to ``on_start``.

The plugin API is this object and the hook spec (:mod:`memagent.runtime.hooks`):
a plugin imports nothing else of the runtime, never the agent, and never
another plugin (plugins cooperate through the dispatcher's ``results`` and
``on_device``).  One Services per plugin, bound to its name: ``config`` is
that plugin's own section.  Everything here is a read-only view or a request
that cannot block the sensing loop; docs/plugins.md documents each, and
tests/test_services.py calls each.
"""


from ..aio import unix
from ..core.config import Config, Section
from ..core.levels import NORMAL, Thresholds
from ..core.logs import get_logger
from ..core.reading import Reading
from ..ipc.cuse import CuseError, CuseServer
from ..ipc.registry import App, AppRegistry, TrimResult
from ..sense.presence import Activity
from .dispatch import Dispatcher
from .eventlog import EventLog
from .sensing import Sensor

try:
    from typing import Any, Callable, Dict, List, Optional, Union
except ImportError:  # MicroPython
    pass

__all__ = ["Activity", "AppView", "CuseError", "CuseServer", "Services", "TrimResult"]

log = get_logger("memagent")


class AppView:
    """A registered app as a plugin sees it: a snapshot, read-only.

    ``app_id``, ``pid``, ``uid`` (SO_PEERCRED), ``name``, ``cls`` (its class),
    ``estimate_kib`` (what it says it can free, or None), ``started`` (its
    start time in clock ticks: with the pid it names one process),
    ``process`` (the :class:`~memagent.core.pidref.ProcessRef` bound when
    the app connected: act on the app only through it, ``alive()`` before a
    /proc read is trusted, ``dup()`` for a pidfd to signal; the agent owns
    and closes it), ``registered_ms`` and ``last_active_ms`` (the agent's
    monotonic clock).
    """

    __slots__ = ("app_id", "pid", "uid", "name", "cls", "estimate_kib", "started",
                 "process", "registered_ms", "last_active_ms", "_app")

    def __init__(self, app: App) -> None:
        self.app_id, self.pid, self.uid, self.name = app.app_id, app.pid, app.uid, app.name
        self.cls, self.estimate_kib, self.started = app.cls, app.estimate_kib, app.started
        self.process = app.process
        self.registered_ms, self.last_active_ms = app.registered_ms, app.last_active_ms
        self._app = app

    def __repr__(self) -> str:
        return "AppView(%d %r pid %d %s)" % (self.app_id, self.name, self.pid, self.cls)


class Services:
    """The agent, as one plugin may use it (see the module docstring)."""

    def __init__(self, name: str, config: "Callable[[], Config]", sensor: Sensor,
                 registry: AppRegistry, presence: Activity, events: EventLog,
                 dispatcher: Dispatcher,
                 end: "Optional[Callable[[int], None]]" = None) -> None:
        self._name = name
        self._end = end
        self._config = config
        self._sensor = sensor
        self._registry = registry
        self._presence = presence
        self._events = events
        self._dispatcher = dispatcher

    # -- configuration -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The plugin's name: its section in the config."""
        return self._name

    @property
    def config(self) -> Section:
        """The plugin's own section (``[name]``), checked against its
        ``config_schema``: ``get``, ``get_int``, ``get_str``, ``get_bool``,
        ``get_float``.  Follows a reload (SIGHUP)."""
        return Section(self._config(), self._name)

    @property
    def proc_root(self) -> str:
        """Where /proc is (``[agent] proc_root``; tests point it elsewhere)."""
        return self._config().get_str("agent", "proc_root")

    @property
    def memcg(self) -> "Optional[str]":
        """The watched memory cgroup's directory, or None for the whole system."""
        memcg = self._config().get_str("agent", "memcg")
        return memcg.rstrip("/") or None

    @property
    def hook_timeout_ms(self) -> int:
        """How long each hook call may take (``[plugins] hook_timeout_ms``)."""
        return self._dispatcher.hook_timeout_ms

    # -- memory ------------------------------------------------------------------------

    @property
    def level(self) -> int:
        """The level now: 0 NORMAL, 1 LOW, 2 CRITICAL."""
        monitor = self._sensor.monitor
        return NORMAL if monitor is None else monitor.level

    @property
    def reading(self) -> "Optional[Reading]":
        """The newest reading of the domain (``avail_kib``, ``total_kib``,
        ``psi_full_avg10``, ``t_ms``...), or None before the first."""
        monitor = self._sensor.monitor
        return None if monitor is None else monitor.last

    @property
    def thresholds(self) -> "Optional[Thresholds]":
        """The levels' thresholds (``low_kib``, ``critical_kib``,
        ``renotify_ms``, ``thrash_full_pct``...), or None before the first
        reading."""
        monitor = self._sensor.monitor
        return None if monitor is None else monitor.thresholds

    def remeasure(self, why: str = "remeasure") -> "Optional[Reading]":
        """Read the domain now and feed the monitor (after acting).  A level
        change this finds reaches the plugins as a notification, later.
        Returns: the reading, or None if the read failed (logged)."""
        return self._sensor.read_now(why)

    # -- the user ----------------------------------------------------------------------

    @property
    def presence(self) -> Activity:
        """Is the user there?  ``state(now_ms)``: "active", "idle",
        "screen-off" or "unknown"; ``user_away(now_ms)``; fed by a plugin
        with ``start_feeding``, ``note_input``, ``stop_feeding`` and set up
        with ``configure`` (docs/activity.md)."""
        return self._presence

    # -- apps --------------------------------------------------------------------------

    def apps(self) -> "List[AppView]":
        """Return: the registered apps, oldest first, as read-only snapshots."""
        return [AppView(app) for app in self._registry.apps()]

    @property
    def foreground_pid(self) -> "Optional[int]":
        """The pid the UI last said is in the foreground (registered or not)."""
        return self._registry.foreground_pid

    async def trim(self, app: AppView, level: "Union[int, str]", target_kib: int,
                   deadline_ms: int) -> TrimResult:
        """Ask ``app`` to free ``target_kib`` within ``deadline_ms`` and audit
        its answer against its footprint before and after.  Returns: the
        TrimResult (``outcome``, ``claimed_kib``, ``measured_kib``...); an
        app that vanished or stalls gives a result, never an exception.
        Raises: ProtocolError for arguments out of the protocol's range."""
        return await self._registry.trim(app._app, level, target_kib, deadline_ms)

    # -- the event log -----------------------------------------------------------------

    def record_action(self, action: str, **fields: "Any") -> "Dict[str, Any]":
        """Put what was done about memory (a kill, a switch) in the event
        log: ``memagent status``, the ``--events-json`` file and the log.
        Returns: the entry (``action``, ``t_ms``, ``wall`` and the fields)."""
        return self._events.record_action(action, **fields)

    @property
    def last_action(self) -> "Optional[Dict[str, Any]]":
        """The newest event-log entry of any plugin, or None."""
        return self._events.last_action

    # -- sources and devices -----------------------------------------------------------

    @property
    def source(self) -> "Optional[str]":
        """The name of the running source ("psi", "mem_notify"...)."""
        source = self._sensor.source
        return None if source is None else str(source.name)

    @property
    def configured_source(self) -> str:
        """``[agent] source``: "auto" or the source the integrator forced."""
        return self._config().get_str("agent", "source")

    @property
    def device_path(self) -> str:
        """``[sources] device_path``: where /dev/mem_notify is."""
        return self._config().get_str("sources", "device_path")

    def source_devnum(self) -> "Optional[int]":
        """Return: the device number (st_rdev) of the running source's fd,
        0 for a file that is no device, None for a source without an fd."""
        fd = getattr(self._sensor.source, "fd", None)
        if not isinstance(fd, int):
            return None
        return unix.device_number(fd)

    def end_agent(self, code: int, why: str) -> bool:
        """Stop the agent with exit ``code``, logging ``why``: only for a
        plugin that is the agent's whole job (``mem_notify_device`` under
        ``memagent cuse``, when it cannot serve).  Returns: False if this
        agent cannot be stopped from here (a test rig)."""
        log.error("plugin %s stops the agent: %s", self._name, why)
        if self._end is None:
            return False
        self._end(code)
        return True

    def serve_device(self, path: str) -> None:
        """Say that this agent serves the device ``path`` itself (a CUSE
        /dev/mem_notify): the agent never reads it as its source, and
        device_watch does not switch to it."""
        self._sensor.serve_device(path)

    def unserve_device(self, path: str) -> None:
        """``path`` is no longer served by this agent."""
        self._sensor.unserve_device(path)

    def cuse_device(self, device: "Any", devname: str, mode: int, group: str,
                    cuse_path: str = "/dev/cuse") -> CuseServer:
        """Return: a CUSE server (not started: ``await server.start()``)
        for ``device`` (a :class:`memagent.core.memnotify.Device`), its node
        /dev/``devname`` made with ``mode`` and ``group`` (a name or gid;
        "" keeps root's).  Raises: CuseError for an unknown group."""
        from ..ipc.cuse import gid_of

        return CuseServer(device, devname, mode, gid_of(group) if group else -1,
                          cuse_path=cuse_path)

    def serves_device(self, path: str) -> bool:
        """Return: True if this agent serves the device ``path`` itself."""
        return path in self._sensor.served

    def switch_source(self, name: str, avoid: "Optional[str]" = None) -> bool:
        """Run source ``name`` (or "auto": the best that opens, except
        ``avoid``) instead of the running one, and read at once.  A no-op
        for the running one.  Returns: False, keeping the running source,
        if nothing could open."""
        return self._sensor.switch_source(name, avoid)

    def device_event(self, action: str, subsystem: str, devnode: str, devnum: int = 0) -> None:
        """Publish a device event: every plugin's ``on_device`` gets it, in
        the dispatcher's order ("add"/"remove", or "reconcile" when events
        were lost).  Never blocks."""
        self._dispatcher.post("on_device", action=action, subsystem=subsystem,
                              devnode=devnode, devnum=devnum)

    def dbus(self) -> "Any":
        """Return: the agent's D-Bus client, :mod:`memagent.ipc.dbus`
        (``bus_address()``, ``connect()``, ``DBusError``, ``IN_QUEUE``).
        Raises: ImportError without jeepney."""
        from ..ipc import dbus

        return dbus


class Deprecated:
    """The running agent as ``on_start(agent=...)`` gave it before the
    services object: every attribute still works for one release, and the
    first use logs a DeprecationWarning naming the plugin."""

    def __init__(self, target: "Any", plugin: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_plugin", plugin)
        object.__setattr__(self, "_warned", False)

    def __getattr__(self, attr: str) -> "Any":
        if not self._warned:
            object.__setattr__(self, "_warned", True)
            message = ("plugin %s: on_start(agent=...) is deprecated and goes in memagent "
                       "0.3: use on_start(services=...) (docs/plugins.md); it used agent.%s"
                       % (self._plugin, attr))
            import warnings

            warnings.warn(message, DeprecationWarning, stacklevel=2)
            log.warning("%s", message)
        return getattr(self._target, attr)

    def __setattr__(self, attr: str, value: "Any") -> None:
        setattr(self._target, attr, value)
