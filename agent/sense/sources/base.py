"""The base of every source: what a source is, its options, and why one
cannot run.  The registry of sources and the ``auto`` choice are the
package's (:mod:`memagent.sense.sources`).

A source opens the kernel's notification files for one domain (the system or
a memcg), sleeps until the kernel reports something, and then reads the
domain.  MicroPython-clean (the typing names are for the type checker only).
"""

from ...core.reading import Reading

try:
    from typing import Optional, Protocol, Tuple

    class Domain(Protocol):
        """What a source needs of a domain (:mod:`memagent.sense.domains`)."""

        kind: str  # "system", "memcg-v1" or "memcg-v2"
        name: str

        def read(self, t_ms: int, event: str = "poll") -> Reading: ...
except ImportError:  # MicroPython: no typing; any object with kind, name, read()
    Domain = object  # type: ignore[assignment,misc]


class SourceUnavailable(Exception):
    """A source cannot run here; str() is the human reason, starting with
    the source's name (``psi: kernel rejected trigger (EINVAL) ...``)."""


class SourceOptions:
    """Settings of the sources (the ``[sources]`` section of the config).

    ``device_path``: the mem_notify device.  ``psi_stall_us`` /
    ``psi_window_us``: the PSI trigger (stall time per window).
    ``thresholds_pct``: cgroup1 usage thresholds, percent of the limit.
    ``calm_interval_ms``: the poller's period when no timeout is given.
    ``proc_root``: where /proc is.  ``trace_path`` / ``trace_speed``: the
    trace source's file and playback speed (2.0 = twice as fast).
    ``served_paths``: devices this agent serves itself (its own CUSE
    /dev/mem_notify): never opened as a source.
    """

    def __init__(self, device_path: str = "/dev/mem_notify", psi_stall_us: int = 150000,
                 psi_window_us: int = 1000000,
                 thresholds_pct: Tuple[int, ...] = (50, 60, 70, 75, 80, 85, 90, 95),
                 calm_interval_ms: int = 10000, proc_root: str = "/proc",
                 trace_path: Optional[str] = None, trace_speed: float = 1.0,
                 served_paths: Tuple[str, ...] = ()) -> None:
        self.device_path = device_path
        self.psi_stall_us = psi_stall_us
        self.psi_window_us = psi_window_us
        self.thresholds_pct = tuple(thresholds_pct)
        self.calm_interval_ms = calm_interval_ms
        self.proc_root = proc_root
        self.trace_path = trace_path
        self.trace_speed = trace_speed
        self.served_paths = tuple(served_paths)


class Source:
    """Base class: a way to sleep until the kernel reports memory activity.

    ``event_driven`` is True when the source sleeps in the kernel;
    ``sees_fill`` when, besides, a calm system then causes no wakeups at all.
    Lifecycle: ``open()``, then ``wait()``/``read()`` in a loop, ``close()``.
    """

    name = "base"
    event_driven = False
    # True when the kernel also reports memory *filling up* before reclaim
    # starts (v1 usage thresholds).  PSI, memory.events and mem_notify only
    # speak once reclaim stalls: measured in the ARM guest, a 10 MB/s
    # anonymous ramp with no swap can reach the OOM kill before any PSI
    # trigger fires, so the agent keeps a watermark check beside them.
    sees_fill = False

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        self.domain = domain
        self.opts = opts

    def open(self) -> None:
        """Set up fds and kernel registrations.
        Raises: SourceUnavailable with the reason this source cannot run."""

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Sleep until the kernel reports memory activity; everything that
        is pending is drained so that a storm of events is one wake.

        Returns: the event name (``"vmpressure:critical"``, ``"threshold"``,
        ``"psi"``, ``"mem_notify"``, ``"events:max"``...), or None when
        ``timeout_ms`` passed (None: wait forever; the poller then uses its
        calm interval).  Raises: OSError if the source's files went away
        (FileNotFoundError: the watched memcg was removed); EOFError after
        the last reading of a trace.
        """
        raise NotImplementedError

    def read(self, t_ms: int, event: str) -> Reading:
        """Return: the domain's reading, tagged with ``event``.
        Raises: OSError or ValueError from the domain's files."""
        return self.domain.read(t_ms, event)

    def close(self) -> None:
        """Release fds and registrations.  Idempotent."""

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def domain_path(domain: Domain, attr: str = "path") -> str:
    """Return: the domain's directory (``path`` of a memcg, ``proc_root`` of
    the system).  Raises: SourceUnavailable if the domain has none."""
    value = getattr(domain, attr, None)
    if not isinstance(value, str):
        raise SourceUnavailable("domain %s has no %s" % (domain.name, attr))
    return value.rstrip("/") or "/"
