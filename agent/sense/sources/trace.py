"""Play a recorded trace (JSON lines of readings) as if it were the kernel.

The whole file is parsed at open (:func:`memagent.core.trace.load_trace`), so a
bad line is reported before anything runs, with its line number.  Readings
are then due at their own pace divided by ``opts.trace_speed``, counted from
the first wait(); each wait() returns the reading's recorded event (``"poll"``
for a trace of the poller) and read() returns that reading with ``t_ms``
moved to now.  After the last reading wait() raises EOFError.
"""

try:
    from typing import List, Optional
except ImportError:  # MicroPython
    pass

from ... import aio
from ...aio import unix
from ...core.reading import Reading, reading_from_dict
from ...core.trace import TraceError, load_trace
from .base import Domain, Source, SourceOptions, SourceUnavailable


class TraceSource(Source):
    """Replays ``opts.trace_path`` in real time scaled by ``opts.trace_speed``."""

    name = "trace"
    event_driven = True
    sees_fill = True  # it plays every recorded reading

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        super().__init__(domain, opts)
        self.readings: List[Reading] = []
        self.index = -1  # the reading last returned by wait()
        self._start_ms: Optional[int] = None

    def open(self) -> None:
        """Load the trace.  Raises: SourceUnavailable if there is no trace
        file, it cannot be read, a line is bad (named), or it is empty."""
        path = self.opts.trace_path
        if not path:
            raise SourceUnavailable("trace: no trace file given")
        if not self.opts.trace_speed > 0:
            raise SourceUnavailable("trace: trace_speed must be > 0, got %r"
                                    % self.opts.trace_speed)
        try:
            self.readings = load_trace(path)
        except OSError as e:
            raise SourceUnavailable("trace: cannot read %s: %s" % (path, unix.why(e))) from e
        except TraceError as e:
            raise SourceUnavailable("trace: %s: %s" % (path, e)) from e
        if not self.readings:
            raise SourceUnavailable("trace: %s has no readings" % path)

    def due_ms(self, index: int) -> int:
        """Return: the ticks_ms at which reading ``index`` is due."""
        assert self._start_ms is not None
        offset_ms = self.readings[index].t_ms - self.readings[0].t_ms
        return self._start_ms + int(offset_ms / self.opts.trace_speed)

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Sleep until the next reading is due.
        Returns: its recorded event, or None if ``timeout_ms`` passes first.
        Raises: EOFError after the last reading."""
        if self.index + 1 >= len(self.readings):
            raise EOFError("trace: end of %s" % self.opts.trace_path)
        if self._start_ms is None:
            self._start_ms = aio.ticks_ms()
        wait_ms = max(self.due_ms(self.index + 1) - aio.ticks_ms(), 0)
        if timeout_ms is not None and timeout_ms < wait_ms:
            await aio.sleep_ms(timeout_ms)
            return None
        await aio.sleep_ms(wait_ms)
        self.index += 1
        return self.readings[self.index].event

    def read(self, t_ms: int, event: str) -> Reading:
        """Return: a copy of the current reading (the first one before any
        wait) with ``t_ms`` and ``event`` set to the given ones."""
        reading = reading_from_dict(self.readings[max(self.index, 0)].to_dict())
        reading.t_ms = t_ms
        reading.event = event
        return reading
