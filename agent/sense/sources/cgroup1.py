"""cgroup v1 memcg notifications: vmpressure levels and usage thresholds.

Both are registered by writing ``"<eventfd> <fd of file> <args>"`` to the
group's ``cgroup.event_control`` (3.10+ for vmpressure):

* ``memory.pressure_level`` with ``low``, ``medium``, ``critical``: one
  eventfd per level.  A listener of a level also hears the levels above it,
  so a critical event signals all three.  Registered ``,local`` (4.11+: only
  reclaim aimed at this group, not at a child with its own limit), falling
  back to the plain form on older kernels.
* ``memory.usage_in_bytes`` with a byte count: the eventfd is signalled when
  usage crosses that value, in *either* direction.  One eventfd carries all of
  ``opts.thresholds_pct`` of the limit; :meth:`Cgroup1Source.rearm` moves
  them when the limit changes (closing an eventfd unregisters it).

Measured on this build machine (6.18, 64 MiB memcg, no swap, an anonymous
allocator at 32 MB/s): the thresholds fire one by one as usage grows, but
vmpressure stays silent until the limit is hit, then low, medium and
critical arrive together within a few ms of the OOM kill (see
tests/test_sources_cgroup1.py for the numbers).  When the group is removed
the kernel signals every eventfd once: wait() then raises FileNotFoundError.
"""

import errno

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

from ... import aio
from ...aio import unix
from .base import Domain, SourceOptions, SourceUnavailable, domain_path
from .fdsource import FdSource

LEVELS = ("low", "medium", "critical")
SEVERITY = ("vmpressure:critical", "vmpressure:medium", "vmpressure:low", "threshold")
V1_DEFAULT_ROOT = "/sys/fs/cgroup/memory"
# After the first fd fires, gather what else arrives this long: at an OOM the
# kernel signals vmpressure in a burst of ~100 events over ~7 ms (measured).
COALESCE_MS = 10


def eventfd() -> int:
    """Return: a new non-blocking, close-on-exec eventfd.
    Raises: OSError if the kernel or libc refuse."""
    return unix.eventfd(0)


def drain(efd: int) -> int:
    """Return: the eventfd's counter (0 if nothing was pending), now reset."""
    try:
        return int.from_bytes(unix.read(efd, 8), "little")
    except BlockingIOError:
        return 0


def register_event(group_dir: str, efd: int, file_name: str, args: str) -> None:
    """Ask the kernel to signal ``efd`` on events of ``group_dir/file_name``
    (``args``: a level, a threshold in bytes, or "" for memory.oom_control).
    Raises: OSError (EINVAL for bad args, ENOENT if the file is missing)."""
    file_fd = unix.open_fd(group_dir + "/" + file_name, unix.O_RDONLY)
    try:
        control_fd = unix.open_fd(group_dir + "/cgroup.event_control", unix.O_WRONLY)
        try:
            unix.write(control_fd, ("%d %d %s" % (efd, file_fd, args)).strip().encode())
        finally:
            unix.close(control_fd)
    finally:
        unix.close(file_fd)


def v1_root(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Return: the mount point of the cgroup v1 memory hierarchy, or None."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) >= 5 and len(tail) >= 3 and tail[0] == "cgroup" \
                        and "memory" in tail[2].split(","):
                    return fields[4]
    except OSError:
        pass
    return None


class Cgroup1Source(FdSource):
    """Wakes on vmpressure or usage-threshold eventfds of a v1 memcg, gathered
    in one epoll object whose fd is ``self.fd``."""

    name = "cgroup1"
    event_driven = True
    sees_fill = True  # the usage thresholds

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        super().__init__(domain, opts)
        self.path = ""
        self.thresholds_bytes: List[int] = []
        self._events: Dict[int, str] = {}  # eventfd -> event name
        self._threshold_fd: Optional[int] = None
        self._epoll: "Optional[Any]" = None
        self.last_fired: Tuple[str, ...] = ()  # every event drained at the last wake

    def _group_dir(self) -> str:
        """Return: the v1 memcg directory to watch.  Raises: SourceUnavailable."""
        if self.domain.kind == "memcg-v1":
            return domain_path(self.domain)
        if self.domain.kind == "system":
            root = v1_root()
            if root is not None:
                return root
            raise SourceUnavailable("cgroup1: no cgroup v1 memory hierarchy is mounted")
        raise SourceUnavailable("cgroup1: needs a cgroup v1 memcg or the system, not %s"
                                % self.domain.kind)

    def open(self) -> None:
        """Register the vmpressure levels and the usage thresholds.
        Raises: SourceUnavailable if the group lacks the files or the kernel refuses."""
        self.path = self._group_dir()
        self._epoll = unix.epoll()
        self.fd = self._epoll.fileno()
        try:
            for level in LEVELS:
                self._register_level(level)
            self.rearm()
        except (OSError, ValueError) as e:
            self.close()
            raise SourceUnavailable("cgroup1: cannot register events in %s: %s"
                                    % (self.path, e)) from e

    def _add_fd(self, efd: int, event: str) -> None:
        assert self._epoll is not None
        self._events[efd] = event
        self._epoll.register(efd, unix.EPOLLIN)

    def _remove_fd(self, efd: int) -> None:
        if self._epoll is not None:
            self._epoll.unregister(efd)
        del self._events[efd]
        unix.close(efd)

    def _register_level(self, level: str) -> None:
        efd = eventfd()
        try:
            try:
                register_event(self.path, efd, "memory.pressure_level", level + ",local")
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                register_event(self.path, efd, "memory.pressure_level", level)  # < 4.11
        except OSError:
            unix.close(efd)
            raise
        self._add_fd(efd, "vmpressure:" + level)

    def rearm(self) -> List[int]:
        """(Re-)register the usage thresholds at ``opts.thresholds_pct`` of
        the domain's current total (the limit, or RAM if it has none).
        Returns: the thresholds in bytes.  Raises: OSError, ValueError."""
        if self._threshold_fd is not None:
            self._remove_fd(self._threshold_fd)
            self._threshold_fd = None
        total_bytes = self.domain.read(aio.ticks_ms(), "poll").total_kib * 1024
        thresholds = sorted({total_bytes * pct // 100 for pct in self.opts.thresholds_pct})
        efd = eventfd()
        try:
            for value in thresholds:
                register_event(self.path, efd, "memory.usage_in_bytes", str(value))
        except OSError:
            unix.close(efd)
            raise
        self._add_fd(efd, "threshold")
        self._threshold_fd = efd
        self.thresholds_bytes = thresholds
        return thresholds

    def _drain_all(self) -> Optional[str]:
        """Return: the most severe event pending on any eventfd (all are reset)."""
        fired = {name for efd, name in self._events.items() if drain(efd)}
        self.last_fired = tuple(name for name in SEVERITY if name in fired)
        return self.last_fired[0] if self.last_fired else None

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Returns: "vmpressure:critical" > "vmpressure:medium" >
        "vmpressure:low" > "threshold" (the most severe that fired), or None
        on timeout.  Raises: FileNotFoundError if the group was removed."""
        return await self._wait_until(timeout_ms)

    async def _on_ready(self) -> Optional[str]:
        event = self._drain_all()
        if event is not None and event != "threshold":
            # vmpressure comes in bursts: gather the rest as one wake.  A lone
            # usage threshold does not, and an idle memcg whose cache the
            # kernel trims crosses them one by one (measured: 8 a minute
            # here), so it costs one wakeup, not two.
            fired = set(self.last_fired)
            await aio.sleep_ms(COALESCE_MS)
            self._drain_all()
            fired |= set(self.last_fired)
            self.last_fired = tuple(n for n in SEVERITY if n in fired)
            event = self.last_fired[0]
        if not unix.isdir(self.path):
            raise FileNotFoundError(errno.ENOENT, "cgroup1: memcg removed", self.path)
        return event

    def _close_fd(self, fd: int) -> None:
        """Close every eventfd (which unregisters it), then the epoll object
        (whose fd is ``fd``)."""
        for efd in list(self._events):
            self._remove_fd(efd)
        self._threshold_fd = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
