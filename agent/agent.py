"""The running agent: sources -> monitor -> dispatcher, plus the status view.

:class:`Agent` owns one sensing loop.  It waits for the kernel (no timer
while calm with an event-driven source), reads the domain, feeds the
monitor, logs and records what the monitor says, and hands notifications to
the dispatcher without waiting for it.
"""

import errno
import json
import logging
import os
import signal
import time

from . import __version__, aio, pluginload, readers, selfprotect, sources
from .activity import Activity
from .apps import AppRegistry, registry_from_config
from .config import Config, ConfigError, load_config, thresholds_from_config
from .control import ControlServer
from .dispatch import Dispatcher
from .levels import Monitor, Notification, level_name
from .reading import Reading

try:
    from typing import IO, Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

log = logging.getLogger("memagent")

RECENT_NOTES = 16
RECENT_ACTIONS = 16
SPARE_CLIENTS = 8  # connections beyond [apps] max_apps, for the shell and status
# Kernel events that report reclaim, not shortage.  While they come faster
# than one per event_gap_ms and find the domain calm, they are coalesced into
# one read per event_gap_ms.  Measured on the dev machine: page-cache churn in
# a 128 MB memcg fires vmpressure low ~145 times a second (8,700 wakeups a
# minute before this rule, 175 after); a lone event still costs one wakeup.
NOISY_EVENTS = ("vmpressure:low", "vmpressure:medium")
READ_ERROR_BACKOFF_MS = 1000


def source_options(config: Config) -> "sources.SourceOptions":
    """Return: the sources' options from the [sources] and [agent] sections."""
    trace = config.get("agent", "trace")
    return sources.SourceOptions(
        device_path=config.get_str("sources", "device_path"),
        psi_stall_us=config.get_int("sources", "psi_stall_us"),
        psi_window_us=config.get_int("sources", "psi_window_us"),
        calm_interval_ms=config.get_int("sources", "calm_interval_ms"),
        proc_root=config.get_str("agent", "proc_root"),
        trace_path=str(trace) if trace else None,
        trace_speed=config.get_float("agent", "trace_speed"),
    )


def poll_interval_ms(avail_kib: int, low_kib: int, max_fill_kib_s: int, max_ms: int) -> int:
    """Return: how long a source that cannot see memory fill (poll, psi,
    cgroup2, mem_notify) may sleep while calm: half the time the fastest
    expected fill (``max_fill_kib_s``) takes to reach LOW, within
    100 ms..``max_ms``.  A full board is checked often, an empty one rarely;
    0 KiB/s means "never" for the event-driven ones (trust the kernel)."""
    headroom_kib = max(avail_kib - low_kib, 0)
    return min(max(headroom_kib * 1000 // max(max_fill_kib_s, 1) // 2, 100), max_ms)


class Agent:
    """One agent: build it with a Config, then ``await run()``."""

    def __init__(self, config: Config, config_path: "Optional[str]" = None,
                 events_out: "Optional[IO[str]]" = None,
                 record_out: "Optional[IO[str]]" = None,
                 min_interval_ms: "Optional[int]" = None,
                 plugins: "Optional[List[Any]]" = None,
                 control: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.events_out = events_out
        self.record_out = record_out
        self.min_interval_ms = min_interval_ms
        self.dispatcher = Dispatcher(plugins) if plugins is not None else self._load_plugins()
        self.control_enabled = control
        self.apps: AppRegistry = registry_from_config(config)  # plugins trim through it
        self.monitor: "Optional[Monitor]" = None
        self.source: "Optional[Any]" = None
        self.skipped: "List[Tuple[str, str]]" = []
        self.recent: "List[Dict[str, Any]]" = []
        self.actions: "List[Dict[str, Any]]" = []  # kills, switches: see record_action
        self.activity = Activity(config.get_int("user_activity", "idle_after_ms"),
                                 config.get_str("user_activity", "backlight"))
        self._sense_task: "Optional[Any]" = None
        self.started_ms = aio.ticks_ms()
        self.read_errors = 0
        self._stop: "Optional[Any]" = None
        self._exit_code = 0
        self._last_noisy_ms: "Optional[int]" = None

    # -- setup ---------------------------------------------------------------

    def _load_plugins(self) -> Dispatcher:
        result = pluginload.load_plugins(self.config)
        result.log(log)
        return result.dispatcher()

    def _open_source(self) -> "Any":
        config = self.config
        memcg = config.get("agent", "memcg")
        domain = readers.open_domain(str(memcg) if memcg else None,
                                     config.get_str("agent", "proc_root"))
        source, skipped = sources.choose(config.get_str("agent", "source"), domain,
                                         source_options(config))
        for name, reason in skipped:
            log.info("source %s unavailable: %s", name, reason)
        log.info("source: %s (%s) on %s", source.name,
                 "event-driven" if source.event_driven else "polling", domain.name)
        self.skipped = skipped
        return source

    def _start_monitor(self, first: Reading) -> Monitor:
        th = thresholds_from_config(self.config, first.total_kib)
        log.info("levels: LOW <= %d KiB, CRITICAL <= %d KiB, recover >= %d KiB, of %d KiB",
                 th.low_kib, th.critical_kib, th.recover_kib, first.total_kib)
        return Monitor(th)

    # -- the sensing loop -----------------------------------------------------

    def _timeout_ms(self, monitor: Monitor, source: "Any") -> "Optional[int]":
        timeout = monitor.next_sample_ms(aio.ticks_ms())
        max_fill_kib_s = self.config.get_int("sources", "max_fill_kib_s")
        net = not source.sees_fill and (max_fill_kib_s > 0 or not source.event_driven)
        if timeout is None and net and monitor.last is not None:
            timeout = poll_interval_ms(
                monitor.last.avail_kib, monitor.thresholds.low_kib, max_fill_kib_s,
                self.config.get_int("sources", "calm_interval_ms"))
        if self.min_interval_ms is not None:
            timeout = self.min_interval_ms if timeout is None else min(timeout,
                                                                       self.min_interval_ms)
        return timeout

    async def _sense(self, source: "Any", monitor: Monitor) -> None:
        while True:
            try:
                event = await source.wait(self._timeout_ms(monitor, source))
            except EOFError:  # a trace source played its last reading
                log.info("the trace has ended")
                self.stop()
                return
            except OSError as e:  # a device that went away (mem_notify)
                failed: str = source.name
                log.error("source %s failed: %s; falling back", failed, e)
                if source is self.source and self._fall_back(failed):
                    return  # a new sensing task runs the new source
                await aio.sleep_ms(READ_ERROR_BACKOFF_MS)
                continue
            try:
                reading = source.read(aio.ticks_ms(), event or "poll")
            except (OSError, ValueError) as e:
                if self._domain_gone(e):
                    return
                self.read_errors += 1
                log.warning("reading failed (%s); retrying in %d ms", e, READ_ERROR_BACKOFF_MS)
                await aio.sleep_ms(READ_ERROR_BACKOFF_MS)
                continue
            self._take(monitor, reading)
            if event in NOISY_EVENTS:
                await self._coalesce(monitor, reading.t_ms)

    def _fall_back(self, failed: str) -> bool:
        """Source ``failed`` broke: switch to the configured source, or to
        the best other one that opens.  Returns: True if another source runs."""
        configured = self.config.get_str("agent", "source")
        if configured not in ("auto", failed) and self.switch_source(configured):
            return True
        return self.switch_source("auto", avoid=failed)

    async def _coalesce(self, monitor: Monitor, now_ms: int) -> None:
        """After a reclaim event: if another came within event_gap_ms and
        the domain is calm, let the next ones pile up for event_gap_ms (the
        source drains them as one wake)."""
        gap_ms = self.config.get_int("sources", "event_gap_ms")
        last = self._last_noisy_ms
        self._last_noisy_ms = now_ms
        if last is not None and now_ms - last < gap_ms and \
                monitor.next_sample_ms(now_ms) is None:
            await aio.sleep_ms(gap_ms)

    def _domain_gone(self, e: Exception) -> bool:
        if isinstance(e, OSError) and e.errno == errno.ENOENT and \
                self.config.get("agent", "memcg"):
            log.error("memcg %s is gone (%s): stopping", self.config.get("agent", "memcg"), e)
            self._exit_code = 1
            if self._stop is not None:
                self._stop.set()
            return True
        return False

    def _take(self, monitor: Monitor, reading: Reading) -> None:
        if self.record_out is not None:
            self.record_out.write(json.dumps(reading.to_dict()) + "\n")
            self.record_out.flush()
        note = monitor.update(reading)
        if note is not None:
            self._announce(note)

    def _announce(self, note: Notification) -> None:
        obj = note.as_dict()
        obj["wall"] = round(time.time(), 3)
        self.recent.append(obj)
        del self.recent[:-RECENT_NOTES]
        if note.level != note.prev_level:
            log.warning("level %s (was %s): %s, available %d KiB of %d KiB, eta %s",
                        level_name(note.level), level_name(note.prev_level), note.reason,
                        note.avail_kib, note.total_kib,
                        "-" if note.eta_ms is None else "%d ms" % note.eta_ms)
        if self.events_out is not None:
            self.events_out.write(json.dumps(obj) + "\n")
            self.events_out.flush()
        self.dispatcher.submit(note)
        self.apps.broadcast_level(note)

    # -- what plugins use ----------------------------------------------------------

    def record_action(self, action: str, **fields: "Any") -> "Dict[str, Any]":
        """Log what was done about memory (a kill, a source switch...) in the
        event log: the status's ``actions`` (the last RECENT_ACTIONS), the
        ``--events-json`` file and the log.  Returns: the entry, a dict with
        ``action``, ``t_ms``, ``wall`` and ``fields``."""
        obj: "Dict[str, Any]" = {"action": action, "t_ms": aio.ticks_ms(),
                                 "wall": round(time.time(), 3)}
        obj.update(fields)
        self.actions.append(obj)
        del self.actions[:-RECENT_ACTIONS]
        log.warning("action %s: %s", action,
                    ", ".join("%s=%s" % (k, fields[k]) for k in sorted(fields)))
        if self.events_out is not None:
            self.events_out.write(json.dumps(obj) + "\n")
            self.events_out.flush()
        return obj

    @property
    def last_action(self) -> "Optional[Dict[str, Any]]":
        """Return: the newest :meth:`record_action` entry, or None."""
        return self.actions[-1] if self.actions else None

    def read_now(self, why: str = "remeasure") -> "Optional[Reading]":
        """Read the domain now and feed the monitor (a plugin re-measuring
        after a kill).  Returns: the reading, or None if there is no source
        yet or the read failed (logged)."""
        if self.source is None or self.monitor is None:
            return None
        try:
            reading: Reading = self.source.read(aio.ticks_ms(), why)
        except (OSError, ValueError) as e:
            log.warning("re-measure failed: %s", e)
            return None
        self._take(self.monitor, reading)
        return reading

    def switch_source(self, name: str, avoid: "Optional[str]" = None) -> bool:
        """Replace the running source with ``name`` (or "auto": the first of
        sources.AUTO_ORDER that opens, except ``avoid``) on the same domain,
        and read the domain at once so no pressure is missed.  Switching to
        the source that runs already is a no-op (unless it is ``avoid``: the
        one that just failed).

        Returns: True if ``name`` (or what "auto" picks) runs now; False if
        nothing could open (logged, the running source stays)."""
        if self.monitor is None or self._sense_task is None:
            return False
        old = self.source
        if old is not None and avoid is None and name == old.name:
            return True
        new = self._open_named(name, avoid)
        if new is None:
            return False
        if old is not None and avoid is None and new.name == old.name:
            new.close()  # "auto" picked what runs
            return True
        self._sense_task.cancel()
        self.source = new
        self._sense_task = aio.create_task(self._sense(new, self.monitor))
        if old is not None:
            old.close()
        self.record_action("source", source=new.name,
                           was=old.name if old is not None else None, asked=name)
        self.read_now("switch")
        return True

    def _open_named(self, name: str, avoid: "Optional[str]") -> "Optional[Any]":
        """Open source ``name`` (or the first of AUTO_ORDER but ``avoid``).
        Returns: the open source, or None (logged)."""
        memcg = self.config.get("agent", "memcg")
        names = [n for n in sources.AUTO_ORDER if n != avoid] if name == "auto" else [name]
        reasons = []
        try:
            domain = readers.open_domain(str(memcg) if memcg else None,
                                         self.config.get_str("agent", "proc_root"))
        except OSError as e:
            log.warning("cannot switch to source %s: %s", name, e)
            return None
        for candidate in names:
            try:
                new, _ = sources.choose(candidate, domain, source_options(self.config))
            except sources.SourceUnavailable as e:
                reasons.append(str(e))
                continue
            self.skipped = [(n, r) for n, r in self.skipped if n != new.name]
            return new
        log.warning("cannot switch to source %s: %s", name, "; ".join(reasons))
        return None

    # -- views and control ------------------------------------------------------

    def status(self) -> "Dict[str, Any]":
        """Return: the agent's state for ``memagent status``."""
        m = self.monitor
        out: "Dict[str, Any]" = {"version": __version__, "pid": os.getpid(),
               "uptime_s": (aio.ticks_ms() - self.started_ms) // 1000,
               "source": self.source.name if self.source else None,
               "unavailable": dict(self.skipped), "read_errors": self.read_errors,
               "recent": list(self.recent), "actions": list(self.actions),
               "apps": self.apps.snapshot(),
               "activity": self.activity.as_dict(aio.ticks_ms()),
               "plugins": self.dispatcher.describe()}
        if m is not None:
            out.update({"level": level_name(m.level), "thresholds": m.thresholds.as_dict(),
                        "reading": m.last.to_dict() if m.last else None,
                        "eta_ms": m.eta_ms, "fill_kib_s": m.rate.kib_per_s(),
                        "readings": m.readings, "notifications": m.notifications})
        return out

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply new thresholds; a bad
        file is logged and the running config kept."""
        try:
            config = load_config(self.config_path)
            if self.monitor is not None and self.monitor.last is not None:
                th = thresholds_from_config(config, self.monitor.last.total_kib)
                self.monitor.thresholds = th
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            return
        self.config = config
        log.info("config reloaded from %s", self.config_path or "defaults")

    async def _start_control(self) -> "Optional[ControlServer]":
        path = self.config.get_str("agent", "socket")
        if not self.control_enabled or not path:
            return None
        # Room for every app plus the UI shell and status queries, so that a
        # full app table never locks out `memagent status`.
        server = ControlServer(path, self.status, registry=self.apps,
                               max_clients=self.apps.max_apps + SPARE_CLIENTS)
        try:
            await server.start()
        except OSError as e:
            log.warning("control socket %s not available: %s", path, e)
            return None
        log.info("status on %s", path)
        return server

    # -- run ----------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or the watched memcg vanishes).

        Returns: the exit code.  Raises: sources.SourceUnavailable if a forced
        source cannot open; OSError if the domain cannot be read at start.
        """
        for line in selfprotect.protect(self.config.get_int("agent", "oom_score_adj"),
                                        str(self.config.get("agent", "mlockall")),
                                        self.config.get_str("agent", "proc_root")):
            log.info("%s", line)
        self._stop = aio.Event()
        source = self.source = self._open_source()
        try:
            first = source.read(aio.ticks_ms(), "start")
            monitor = self.monitor = self._start_monitor(first)
            self._take(monitor, first)
            self._signals()
            server = await self._start_control()
            # Sense from the first reading on, before the plugins start:
            # their on_start may take seconds (imports on a slow board), and
            # a ramp meanwhile went unseen (the ARM guest's cgroup2 ramp: no
            # reading for ~4 s, then CRITICAL 168 ms before the OOM kill).
            # Notes made meanwhile reach the log and subscribers at once and
            # wait in the dispatcher for the plugins (coalesced, an
            # escalation kept).
            self._sense_task = aio.create_task(self._sense(source, monitor))
            await self.dispatcher.broadcast("on_start", agent_status=self.status(), agent=self)
            dispatch_task = aio.create_task(self.dispatcher.run())
            await self._stop.wait()
            tasks = [self._sense_task, dispatch_task]
            for task in tasks:
                task.cancel()
            await aio.gather(*tasks, return_exceptions=True)
            await self.dispatcher.broadcast("on_stop")
            if server is not None:
                await server.close()
        finally:
            if self.source is not None:
                self.source.close()
        log.info("stopped")
        return self._exit_code

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        if self._stop is not None:
            self._stop.set()

    def _signals(self) -> None:
        aio.add_signal_handler(signal.SIGTERM, self.stop)
        aio.add_signal_handler(signal.SIGINT, self.stop)
        aio.add_signal_handler(signal.SIGHUP, self.reload)
