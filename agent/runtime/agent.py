"""The running agent: the wiring of the parts, and nothing else.

sources -> monitor (:mod:`.sensing`) -> dispatcher (:mod:`.dispatch`) ->
views (:mod:`.eventlog`, the apps' level events) and plugins -> apps
(:mod:`memagent.ipc.registry`).  The runtime calls back in two places:
the registry tells it of apps that come and go (``on_app_registered``,
``on_app_gone``), and plugins ask through their :class:`~.services.Services`
(re-measure, trim, record an action, switch the source, publish a device
event).  :class:`Agent` builds the parts from a Config, starts them in
order (sensing first, then the plugins) and stops them in reverse.
"""

from .. import aio
from ..aio import unix
from ..core.config import Config, ConfigError, load_config
from ..core.logs import get_logger
from ..core.reading import Reading
from ..ipc.control import ControlServer
from ..ipc.registry import App, AppRegistry
from ..sense.footprint import footprint_kib
from ..sense.presence import Activity
from . import selfprotect
from .dispatch import Dispatcher
from .eventlog import EventLog
from .hooks import DEFAULT_HOOK_TIMEOUT_MS, config_schemas, plugin_name
from .sensing import Sensor
from .services import AppView, Deprecated, Services
from .status import status_view

try:
    from typing import IO, Any, Callable, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

log = get_logger("memagent")

SPARE_CLIENTS = 8  # connections beyond [apps] max_apps, for root and the UI shell only
# A status request older than this re-reads the domain (at most once per
# STATUS_STALE_MS, however often status is asked).
STATUS_STALE_MS = 1000


class Agent:
    """One agent: build it with a Config, then ``await run()``.

    ``plugins``: plugin objects to use instead of loading them (MicroPython,
    tests).  Raises (from the constructor): ConfigError for a config section
    that no loaded plugin owns, or a bad value in one.
    """

    def __init__(self, config: Config, config_path: "Optional[str]" = None,
                 events_out: "Optional[IO[str]]" = None,
                 record_out: "Optional[IO[str]]" = None,
                 min_interval_ms: "Optional[int]" = None,
                 plugins: "Optional[List[Any]]" = None,
                 control: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.control_enabled = control
        self.events = EventLog(events_out)
        self.presence = Activity()
        self._absent: "Dict[str, str]" = {}
        self.dispatcher = self._load_plugins(plugins)
        self._schemas = config_schemas(self.dispatcher.plugins)
        for warning in config.claim(self._schemas, self._absent):
            log.warning("%s", warning)
        proc_root = config.get_str("agent", "proc_root")
        self.apps = AppRegistry(
            ui_uid=config.get_int("apps", "ui_uid"),
            max_apps=max(config.get_int("apps", "max_apps"), 1), proc_root=proc_root,
            measure=lambda process: footprint_kib(process.pid, proc_root, process=process),
            on_change=self._app_changed)
        self.sensor = Sensor(config, self.dispatcher.submit, self.events.record_action,
                             self._end, record_out, min_interval_ms)
        self.dispatcher.views = [self.events.note, self.apps.broadcast_level]
        self.dispatcher.on_error = self.events.plugin_error
        self.started_ms = aio.ticks_ms()
        self._stop: "Optional[Any]" = None
        self._exit_code = 0
        self.status_tcp: "Optional[Any]" = None  # a StatusTcpServer, [status_tcp] enabled

    def _load_plugins(self, plugins: "Optional[List[Any]]") -> Dispatcher:
        if plugins is not None:  # as pluginload would, without importing it
            timeout_ms = self.config.get_int("plugins", "hook_timeout_ms")
            return Dispatcher(plugins, timeout_ms if timeout_ms > 0 else DEFAULT_HOOK_TIMEOUT_MS)
        from . import pluginload  # CPython only: finding and importing plugins

        result = pluginload.load_plugins(self.config)
        result.log(log)
        self._absent = result.absent
        return result.dispatcher()

    def _app_changed(self, what: str, app: App) -> None:
        """The registry's listener: an app came or went, for the plugins."""
        hook = "on_app_registered" if what == "registered" else "on_app_gone"
        self.dispatcher.post(hook, app=AppView(app))

    def services(self, plugin: "Any") -> Services:
        """Return: the Services of ``plugin`` (bound to its name)."""
        return Services(plugin_name(plugin), lambda: self.config, self.sensor, self.apps,
                        self.presence, self.events, self.dispatcher, end=self._end)

    def _start_kwargs(self) -> "Callable[[Any], Dict[str, Any]]":
        """Return: each plugin's ``on_start`` arguments (one status view for all)."""
        status = self.status()
        return lambda plugin: {"services": self.services(plugin), "agent_status": status,
                               "agent": Deprecated(self, plugin_name(plugin))}

    # -- views and control ------------------------------------------------------------

    def _events_since(self, after_seq: int, max_count: int) -> "Tuple[List[Dict[str, Any]], int]":
        """Return: the event log's entries numbered above ``after_seq`` (at
        most ``max_count``) and its newest number (the ``events`` request)."""
        return self.events.since(after_seq, max_count), self.events.seq

    def status(self) -> "Dict[str, Any]":
        """Return: the agent's state for ``memagent status``, its reading
        taken anew when older than STATUS_STALE_MS (a calm event-driven
        source does not read: status showed the same avail_kib 6 s after a
        60 MiB change)."""
        m = self.sensor.monitor
        if m is not None and m.last is not None and \
                aio.ticks_ms() - m.last.t_ms > STATUS_STALE_MS:
            self.sensor.read_now("status")
        st = status_view(self.sensor, self.apps, self.presence, self.events,
                         self.dispatcher, self.started_ms)
        st["status_tcp"] = self.status_tcp.state() if self.status_tcp else {"enabled": False}
        return st

    def reload(self) -> None:
        """SIGHUP: re-read the config file (the command line's overrides
        kept) and apply new thresholds; a bad file is logged and the running
        config kept."""
        try:
            config = self.config.overridden(load_config(self.config_path))
            for warning in config.claim(self._schemas, self._absent):
                log.warning("%s", warning)
            self.sensor.set_config(config)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            return
        self.config = config
        log.info("config reloaded from %s", self.config_path or "defaults")

    async def _start_status_tcp(self, server: "Optional[ControlServer]") -> None:
        """Start the read-only TCP listener if [status_tcp] enables it: it
        answers what the control socket would.  Imported only then: on the
        64 MB board (MicroPython under TCG) each module read at start
        delays the agent's first answer (1,070 ms against a 1 s bound, with
        it imported always; 2026-12-07)."""
        if self.config.get("status_tcp", "enabled") is not True:
            return
        from ..ipc.statustcp import StatusTcpServer

        self.status_tcp = StatusTcpServer.from_config(
            self.config, server.full_status if server is not None else self.status,
            self._events_since)
        if self.status_tcp is not None:
            await self.status_tcp.start()

    async def _start_control(self) -> "Optional[ControlServer]":
        path = self.config.get_str("agent", "socket")
        if not self.control_enabled or not path:
            return None
        # Room for every app plus the UI shell and status queries, so that a
        # full app table never locks out `memagent status`.
        # The spare slots are kept for trusted peers (root, the UI shell), and
        # no untrusted uid may take more than [apps] max_per_uid (issue 10:
        # one local user had taken all 72 and locked root out).
        server = ControlServer(path, self.status, registry=self.apps,
                               max_clients=self.apps.max_apps + SPARE_CLIENTS,
                               reserved_clients=SPARE_CLIENTS,
                               max_per_uid=self.config.get_int("apps", "max_per_uid"),
                               subscriber_idle_ms=self.config.get_int("apps",
                                                                      "subscriber_idle_ms"),
                               events=self._events_since)
        try:
            await server.start()
        except OSError as e:
            log.warning("control socket %s not available: %s", path, e)
            return None
        log.info("status on %s", path)
        return server

    # -- run ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or the watched memcg vanishes).

        Returns: the exit code.  Raises: sources.SourceUnavailable if a forced
        source cannot open; OSError if the domain cannot be read at start.
        """
        untested = aio.untested_interpreter()
        if untested:
            log.warning("%s", untested)
        for line in selfprotect.protect(self.config.get_int("agent", "oom_score_adj"),
                                        str(self.config.get("agent", "mlockall")),
                                        self.config.get_str("agent", "proc_root")):
            log.info("%s", line)
        self._stop = aio.Event()
        try:
            self.sensor.open()
            self._signals()
            server = await self._start_control()
            await self._start_status_tcp(server)
            # Sense from the first reading on, before the plugins start:
            # their on_start may take seconds (imports on a slow board), and
            # a ramp meanwhile went unseen (the ARM guest's cgroup2 ramp: no
            # reading for ~4 s, then CRITICAL 168 ms before the OOM kill).
            # Notes made meanwhile reach the views at once and wait in the
            # dispatcher for the plugins (coalesced, an escalation kept).
            self.sensor.start()
            t0_ms = aio.ticks_ms()
            await self.dispatcher.start(self._start_kwargs())
            log.info("plugins started in %d ms", aio.ticks_ms() - t0_ms)
            dispatch_task = aio.create_task(self.dispatcher.run())
            await self._stop.wait()
            await self.sensor.stop()
            await aio.cancel_and_wait(dispatch_task)
            await self.dispatcher.stop()
            if server is not None:
                await server.close()
            if self.status_tcp is not None:
                await self.status_tcp.close()
        finally:
            self.sensor.close()
        log.info("stopped")
        return self._exit_code

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        if self._stop is not None:
            self._stop.set()

    def _end(self, code: int) -> None:
        """Sensing cannot go on (the trace ended, the memcg is gone): stop."""
        self._exit_code = self._exit_code or code
        self.stop()

    def _signals(self) -> None:
        aio.add_signal_handler(unix.SIGTERM, self.stop)
        aio.add_signal_handler(unix.SIGINT, self.stop)
        aio.add_signal_handler(unix.SIGHUP, self.reload)

    # -- what on_start(agent=...) gave plugins before the services (deprecated) -------

    @property
    def monitor(self) -> "Any":
        """The sensor's monitor (plugins: ``services.level`` and friends)."""
        return self.sensor.monitor

    @property
    def source(self) -> "Any":
        """The running source (plugins: ``services.source``)."""
        return self.sensor.source

    @property
    def activity(self) -> Activity:
        """User presence (plugins: ``services.presence``)."""
        return self.presence

    @property
    def last_action(self) -> "Optional[Dict[str, Any]]":
        """The newest event-log entry (plugins: ``services.last_action``)."""
        return self.events.last_action

    @property
    def actions(self) -> "List[Dict[str, Any]]":
        """The recent event-log entries."""
        return self.events.actions

    def record_action(self, action: str, **fields: "Any") -> "Dict[str, Any]":
        """Log an action (plugins: ``services.record_action``).  Returns: the entry."""
        return self.events.record_action(action, **fields)

    def read_now(self, why: str = "remeasure") -> "Optional[Reading]":
        """Re-measure (plugins: ``services.remeasure``).  Returns: the reading or None."""
        return self.sensor.read_now(why)

    def switch_source(self, name: str, avoid: "Optional[str]" = None) -> bool:
        """Switch the source (plugins: ``services.switch_source``).  Returns: True if it runs."""
        return self.sensor.switch_source(name, avoid)
