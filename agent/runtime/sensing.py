"""The sensing loop: one domain, one running source, one monitor.

:class:`Sensor` waits for the kernel (no timer while calm with an
event-driven source), reads the domain, feeds the monitor and hands each
notification to ``on_note`` (the dispatcher's :meth:`submit`) without
waiting for anyone.  It also owns the source's life: a source whose wait
fails (a vanished ``/dev/mem_notify``) falls back to the configured one,
else to the best other that opens, and :meth:`Sensor.switch_source`
replaces it on request.
"""

import errno
import json

from .. import aio
from ..core.config import Config, thresholds_from_config
from ..core.history import History
from ..core.levels import Monitor
from ..core.logs import get_logger
from ..core.reading import Reading
from ..sense import domains, sources

try:
    from typing import IO, Any, Callable, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

log = get_logger("memagent")

# Kernel events that report reclaim, not shortage.  While they come faster
# than one per event_gap_ms and find the domain calm, they are coalesced into
# one read per event_gap_ms.  Measured on the dev machine: page-cache churn in
# a 128 MB memcg fires vmpressure low ~145 times a second (8,700 wakeups a
# minute before this rule, 175 after); a lone event still costs one wakeup.
NOISY_EVENTS = ("vmpressure:low", "vmpressure:medium")
READ_ERROR_BACKOFF_MS = 1000


def source_options(config: Config, served: "Tuple[str, ...]" = ()) -> "sources.SourceOptions":
    """Return: the sources' options from the [sources] and [agent] sections;
    ``served``: device paths this agent serves itself (never its source)."""
    trace = config.get("agent", "trace")
    return sources.SourceOptions(
        served_paths=served,
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


def source_why(configured: str, source: "Any", skipped: "List[Tuple[str, str]]") -> str:
    """Return: in words, why ``source`` runs: forced by the config, or the
    first of the auto order that opened (and how it senses)."""
    how = "event-driven" if source.event_driven else "polling"
    if configured != "auto":
        return "%s: set by [agent] source" % how
    if not skipped:
        return "%s: the first in the auto order" % how
    return "%s: the first in the auto order that opened (%s could not)" % (
        how, ", ".join(name for name, _ in skipped))


class Sensor:
    """Senses one domain.  ``open()`` (the first reading), ``start()`` (the
    loop), then ``stop()`` and ``close()``.  ``on_note`` gets every notification;
    ``on_action`` records a source switch in the event log; ``on_end(code)``
    is called when sensing cannot go on (the trace ended: 0; the watched
    memcg is gone: 1)."""

    def __init__(self, config: Config, on_note: "Callable[[Any], None]",
                 on_action: "Callable[..., Any]", on_end: "Callable[[int], None]",
                 record_out: "Optional[IO[str]]" = None,
                 min_interval_ms: "Optional[int]" = None) -> None:
        self.config = config
        self.on_note, self.on_action, self.on_end = on_note, on_action, on_end
        self.record_out = record_out
        self.min_interval_ms = min_interval_ms
        self.monitor: "Optional[Monitor]" = None
        self.source: "Optional[Any]" = None
        self.skipped: "List[Tuple[str, str]]" = []
        self.served: "List[str]" = []  # device paths this agent serves (mem_notify_device)
        self.read_errors = 0
        self.history = History()  # status's sparklines: ten minutes, about 12 KiB
        self.level_since_ms: "Optional[int]" = None  # t_ms of the last level change (or start)
        self.source_why = ""  # why the running source was chosen, for status
        self._task: "Optional[Any]" = None
        self._last_noisy_ms: "Optional[int]" = None

    def _domain(self) -> "Any":
        memcg = self.config.get("agent", "memcg")
        return domains.open_domain(str(memcg) if memcg else None,
                                   self.config.get_str("agent", "proc_root"))

    def open(self) -> Reading:
        """Open the domain and the configured source, take the first reading
        and start the monitor on it.  Returns: that reading.  Raises:
        sources.SourceUnavailable if a forced source cannot open; OSError
        or ValueError if the domain cannot be read."""
        domain = self._domain()
        source, skipped = sources.choose(self.config.get_str("agent", "source"), domain,
                                         source_options(self.config, tuple(self.served)))
        for name, reason in skipped:
            log.info("source %s unavailable: %s", name, reason)
        log.info("source: %s (%s) on %s", source.name,
                 "event-driven" if source.event_driven else "polling", domain.name)
        self.source, self.skipped = source, skipped
        self.source_why = source_why(self.config.get_str("agent", "source"), source, skipped)
        first = source.read(aio.ticks_ms(), "start")
        th = thresholds_from_config(self.config, first.total_kib)
        log.info("levels: LOW <= %d KiB, CRITICAL <= %d KiB, recover >= %d KiB, of %d KiB",
                 th.low_kib, th.critical_kib, th.recover_kib, first.total_kib)
        self.monitor = Monitor(th)
        self._take(first)
        return first

    @property
    def task(self) -> "Optional[Any]":
        """The running sensing task (a switch replaces it), or None."""
        return self._task

    def start(self) -> None:
        """Start the sensing loop on the open source."""
        if self.source is not None and self._task is None:
            self._task = aio.create_task(self._sense(self.source))

    async def stop(self) -> None:
        """Stop the loop (the source stays open: plugins may still re-measure)."""
        task, self._task = self._task, None
        await aio.cancel_and_wait(task)

    def close(self) -> None:
        """Close the source.  Idempotent."""
        if self.source is not None:
            self.source.close()

    def set_config(self, config: Config) -> None:
        """A reloaded config: new thresholds for the running monitor.
        Raises: ConfigError if they are inconsistent."""
        if self.monitor is not None and self.monitor.last is not None:
            self.monitor.thresholds = thresholds_from_config(config,
                                                             self.monitor.last.total_kib)
        self.config = config

    # -- the loop --------------------------------------------------------------------

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

    async def _sense(self, source: "Any") -> None:
        monitor = self.monitor
        assert monitor is not None
        while True:
            try:
                event = await source.wait(self._timeout_ms(monitor, source))
            except EOFError:  # a trace source played its last reading
                log.info("the trace has ended")
                self.on_end(0)
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
            self._take(reading)
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
        memcg = self.config.get("agent", "memcg")
        if isinstance(e, OSError) and e.errno == errno.ENOENT and memcg:
            log.error("memcg %s is gone (%s): stopping", memcg, e)
            self.on_end(1)
            return True
        return False

    def _take(self, reading: Reading) -> None:
        if self.record_out is not None:
            self.record_out.write(json.dumps(reading.to_dict()) + "\n")
            self.record_out.flush()
        assert self.monitor is not None
        note = self.monitor.update(reading)
        if self.level_since_ms is None or (note is not None and note.level != note.prev_level):
            self.level_since_ms = reading.t_ms
        self.history.add(reading.t_ms, reading.avail_kib, self.monitor.level)
        if note is not None:
            self.on_note(note)

    # -- on request --------------------------------------------------------------------

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
        self._take(reading)
        return reading

    def serve_device(self, path: str) -> None:
        """Never consume ``path``: this agent serves it.  If the running
        source reads it, switch to the best other source."""
        if path not in self.served:
            self.served.append(path)
        source = self.source
        if source is not None and source.name == "mem_notify" and \
                getattr(source, "opts", None) is not None and source.opts.device_path == path:
            self.switch_source("auto", avoid="mem_notify")

    def unserve_device(self, path: str) -> None:
        """``path`` is no longer served by this agent."""
        if path in self.served:
            self.served.remove(path)

    def switch_source(self, name: str, avoid: "Optional[str]" = None) -> bool:
        """Replace the running source with ``name`` (or "auto": the first of
        sources.AUTO_ORDER that opens, except ``avoid``) on the same domain,
        and read the domain at once so no pressure is missed.  Switching to
        the source that runs already is a no-op (unless it is ``avoid``: the
        one that just failed).

        Returns: True if ``name`` (or what "auto" picks) runs now; False if
        nothing could open (logged, the running source stays)."""
        if self.monitor is None or self._task is None:
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
        self._task.cancel()
        self.source = new
        self.source_why = "switched from %s (asked: %s)" % (
            old.name if old is not None else "none", name)
        self._task = aio.create_task(self._sense(new))
        if old is not None:
            old.close()
        self.on_action("source", source=new.name,
                       was=old.name if old is not None else None, asked=name)
        self.read_now("switch")
        return True

    def _open_named(self, name: str, avoid: "Optional[str]") -> "Optional[Any]":
        """Open source ``name`` (or the first of AUTO_ORDER but ``avoid``).
        Returns: the open source, or None (logged)."""
        names = [n for n in sources.AUTO_ORDER if n != avoid] if name == "auto" else [name]
        reasons = []
        try:
            domain = self._domain()
        except OSError as e:
            log.warning("cannot switch to source %s: %s", name, e)
            return None
        for candidate in names:
            try:
                new, _ = sources.choose(candidate, domain,
                                        source_options(self.config, tuple(self.served)))
            except sources.SourceUnavailable as e:
                reasons.append(str(e))
                continue
            self.skipped = [(n, r) for n, r in self.skipped if n != new.name]
            return new
        log.warning("cannot switch to source %s: %s", name, "; ".join(reasons))
        return None
