"""The 2008 ``/dev/mem_notify`` device (KOSAKI Motohiro's patch set).

The device becomes readable (POLLIN) when the kernel decides memory is low;
it has no read() method (read returns EINVAL, or EAGAIN with O_NONBLOCK on
some versions), so a wake carries no data.  It is level-triggered while
memory stays low, so after each wake the source waits at least
:data:`MIN_GAP_MS` before polling again: at most ten wakes a second.

Host tests use a FIFO as a stand-in for the device (same poll semantics,
but it does have data: the drain reads it).  No kernel we run carries the
patch; memagent itself serves one through CUSE (the ``mem_notify_device``
plugin, ``memagent cuse``), which another agent can read: its read()
returns a line, and reading acknowledges the wakeup.  An agent never
reads the device it serves itself (``SourceOptions.served_paths``).  A
device that goes away makes :meth:`wait` raise OSError, and the agent
falls back.
"""

import errno

try:
    from typing import Optional
except ImportError:  # MicroPython
    pass

from ... import aio
from ...aio import unix
from .base import Domain, SourceOptions, SourceUnavailable
from .fdsource import FdSource

MIN_GAP_MS = 100
# File types of st_mode (MicroPython has no stat module): the device, or a FIFO.
S_IFMT, S_IFCHR, S_IFIFO = 0o170000, 0o020000, 0o010000
_DRAIN_READS = 64  # bound the drain of a stand-in FIFO that someone keeps filling


class MemNotifySource(FdSource):
    """Wakes on POLLIN of ``opts.device_path``; event "mem_notify"."""

    name = "mem_notify"
    event_driven = True

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        super().__init__(domain, opts)
        self._last_wake_ms: Optional[int] = None

    def open(self) -> None:
        """Open the device non-blocking.
        Raises: SourceUnavailable if it is missing or not a device."""
        path = self.opts.device_path
        if path in self.opts.served_paths:
            raise SourceUnavailable("mem_notify: %s is served by this agent (mem_notify_device);"
                                    " it never reads its own device" % path)
        try:
            mode = unix.file_mode(path)
        except OSError as e:
            if not unix.is_missing(e):
                raise SourceUnavailable("mem_notify: cannot stat %s: %s"
                                        % (path, e.args[-1])) from e
            raise SourceUnavailable("mem_notify: %s does not exist (kernel without the "
                                    "mem_notify patch)" % path) from None
        if (mode & S_IFMT) not in (S_IFCHR, S_IFIFO):
            raise SourceUnavailable("mem_notify: %s is not a character device" % path)
        try:
            self.fd = unix.open_fd(path, unix.O_RDONLY | unix.O_NONBLOCK)
        except OSError as e:
            raise SourceUnavailable("mem_notify: cannot open %s: %s" % (path, e.args[-1])) from e

    def _drain(self) -> None:
        """Consume whatever a read returns: the 2008 device has no data; a
        memagent CUSE device returns one line (which acknowledges the wake)
        and would return it again, so one line ends the drain."""
        assert self.fd is not None
        for _ in range(_DRAIN_READS):
            try:
                data = unix.read(self.fd, 4096)
                if not data or data.endswith(b"\n"):
                    return  # a FIFO without writers (EOF), or a served line
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINVAL):
                    return
                raise

    async def _respect_gap(self, timeout_ms: Optional[int]) -> Optional[int]:
        """Sleep out the rest of MIN_GAP_MS after the last wake.
        Returns: what is left of ``timeout_ms`` (None: no timeout)."""
        if self._last_wake_ms is None:
            return timeout_ms
        gap_ms = MIN_GAP_MS - (aio.ticks_ms() - self._last_wake_ms)
        if gap_ms <= 0:
            return timeout_ms
        if timeout_ms is not None and timeout_ms < gap_ms:
            await aio.sleep_ms(timeout_ms)
            return 0
        await aio.sleep_ms(gap_ms)
        return None if timeout_ms is None else timeout_ms - gap_ms

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Returns: "mem_notify" when the device became readable, None on
        timeout.  Raises: OSError if the fd fails."""
        watch = self._watch_fd()
        left_ms = await self._respect_gap(timeout_ms)
        if left_ms == 0:
            return None
        if not await watch.wait(left_ms):
            return None
        self._last_wake_ms = aio.ticks_ms()
        self._drain()
        return "mem_notify"
