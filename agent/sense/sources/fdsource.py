"""The base of the sources that sleep on one fd of their own.

:class:`FdSource` holds the fd, the :class:`memagent.aio.FdWatch` on it
(made at the first wait, inside the running loop) and the idempotent close.
A subclass opens ``self.fd`` in ``open()``, waits on ``self._watch_fd()`` and
sets ``urgent`` when the kernel reports with POLLPRI (PSI triggers, kernfs).
"""

import errno

try:
    from typing import Optional
except ImportError:  # MicroPython
    pass

from ... import aio
from ...aio import unix
from .base import Domain, Source, SourceOptions


class FdSource(Source):
    """A source that waits on ``self.fd`` (None while closed)."""

    urgent = False  # True: wait for POLLPRI rather than POLLIN

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        super().__init__(domain, opts)
        self.fd: Optional[int] = None
        self._watch: Optional[aio.FdWatch] = None

    def _watch_fd(self) -> aio.FdWatch:
        """Return: the watch on the open fd, made on first use.
        Raises: OSError (EBADF) if the source is not open."""
        if self.fd is None:
            raise OSError(errno.EBADF, "%s: source is not open" % self.name)
        if self._watch is None:
            self._watch = aio.FdWatch(self.fd, urgent=self.urgent)
        return self._watch

    async def _wait_until(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Wait on the fd until :meth:`_on_ready` names an event.

        Returns: that event, or None once ``timeout_ms`` has passed (None:
        no limit).  Raises: what ``_on_ready`` raises; OSError if not open.
        """
        watch = self._watch_fd()
        deadline_ms = None if timeout_ms is None else aio.ticks_ms() + timeout_ms
        while True:
            left_ms = None if deadline_ms is None else max(deadline_ms - aio.ticks_ms(), 0)
            if not await watch.wait(left_ms):
                return None
            event = await self._on_ready()
            if event is not None:
                return event

    async def _on_ready(self) -> Optional[str]:
        """The fd is ready: consume what it reports.
        Returns: the event name, or None if it was nothing (wait on)."""
        raise NotImplementedError

    def _close_fd(self, fd: int) -> None:
        """Release ``fd`` when the source closes (here: close(2))."""
        unix.close(fd)

    def close(self) -> None:
        """Drop the watch and release the fd.  Idempotent."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self._close_fd(fd)
