"""cgroup v2 ``memory.events`` (Linux 4.5+).

kernfs notifies a change of ``memory.events`` as POLLPRI|POLLERR on every
open fd of the file, until that fd reads the file again.  After each wake the
source re-reads it (seek 0) and reports the most severe counter that grew:
``oom_kill`` > ``oom`` > ``max`` > ``high`` > ``low``, as ``"events:<name>"``.
A wake where nothing it knows grew is not reported (it waits again).
"""

try:
    from typing import Dict, Optional
except ImportError:  # MicroPython
    pass

from ...aio import unix
from ...core import procfs
from .base import Domain, SourceOptions, SourceUnavailable, domain_path
from .fdsource import FdSource

SEVERITY = ("oom_kill", "oom_group_kill", "oom", "max", "high", "low")


def grown_event(before: Dict[str, int], after: Dict[str, int]) -> Optional[str]:
    """Return: "events:<counter>" for the most severe counter that grew, else None."""
    for counter in SEVERITY:
        if after.get(counter, 0) > before.get(counter, 0):
            return "events:" + counter
    return None


class Cgroup2Source(FdSource):
    """Wakes when a v2 memcg's memory.events changes; events "events:<name>"."""

    name = "cgroup2"
    event_driven = True
    urgent = True  # kernfs reports POLLPRI|POLLERR

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        super().__init__(domain, opts)
        self.counters: Dict[str, int] = {}

    def _read_counters(self) -> Dict[str, int]:
        """Return: memory.events re-read through the open fd (this re-arms kernfs).
        Raises: OSError if the group is gone, procfs.ParseError if garbled."""
        assert self.fd is not None
        unix.lseek(self.fd, 0, unix.SEEK_SET)
        text = unix.read(self.fd, 4096).decode("ascii", "replace")
        return procfs.parse_flat_keyed(text, "memory.events")

    def open(self) -> None:
        """Open memory.events and take the first counts.
        Raises: SourceUnavailable unless the domain is a cgroup v2 memcg."""
        if self.domain.kind != "memcg-v2":
            raise SourceUnavailable("cgroup2: needs a cgroup v2 memcg domain, not %s"
                                    % self.domain.kind)
        path = domain_path(self.domain) + "/memory.events"
        try:
            self.fd = unix.open_fd(path, unix.O_RDONLY)
            self.counters = self._read_counters()
        except (OSError, ValueError) as e:
            self.close()
            raise SourceUnavailable("cgroup2: cannot read %s: %s" % (path, e)) from e

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Returns: "events:<counter>" for the most severe counter that grew,
        None on timeout.  Raises: OSError if the group was removed."""
        return await self._wait_until(timeout_ms)

    async def _on_ready(self) -> Optional[str]:
        before, self.counters = self.counters, self._read_counters()
        return grown_event(before, self.counters)
