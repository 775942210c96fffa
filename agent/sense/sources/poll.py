"""The watermark poller: no kernel events, just a timer.

Works on every kernel from 2.6.24 on, since it only reads the domain's
files.  ``wait()`` always returns None ("woke on the timer"); the caller
reads the domain and tags the reading ``"poll"``.  Not event-driven: it wakes
every ``calm_interval_ms`` (or the timeout it is given) even when calm.
"""

try:
    from typing import Optional
except ImportError:  # MicroPython
    pass

from ... import aio
from .base import Source, SourceUnavailable


class PollSource(Source):
    """Wakes on a timer only; wait() returns None."""

    name = "poll"
    event_driven = False

    def open(self) -> None:
        """Read the domain once to check it is readable.
        Raises: SourceUnavailable if it is not."""
        try:
            self.domain.read(aio.ticks_ms(), "poll")
        except (OSError, ValueError) as e:
            raise SourceUnavailable("poll: cannot read %s: %s" % (self.domain.name, e)) from e

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Sleep ``timeout_ms``, or ``opts.calm_interval_ms`` if None.
        Returns: None, always (a timer wake)."""
        await aio.sleep_ms(self.opts.calm_interval_ms if timeout_ms is None else timeout_ms)
        return None
