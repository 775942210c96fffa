"""Thin readers: open the /proc and cgroup files of one memory domain and turn
them into a :class:`~memagent.core.reading.Reading`.

A domain is the whole system (``/proc``, under a ``proc_root`` tests can
point elsewhere) or one memcg (cgroup v1 or v2 directory).  All parsing is in
:mod:`memagent.core.procfs` and :mod:`memagent.core.memstate`.
"""

try:
    from typing import Dict, List, Optional, Tuple, Union

    from ..core.procfs import Zone
except ImportError:  # MicroPython
    pass

from ..core import memstate, procfs
from ..core.reading import Reading


def read_text(path: str) -> str:
    """Return: the whole file as text.  Raises: OSError if it cannot be read."""
    with open(path) as f:
        return f.read()


def _psi_avgs(path: str) -> "Tuple[Optional[float], Optional[float]]":
    """Return: (some avg10, full avg10) of a PSI file, Nones if unreadable."""
    try:
        psi = procfs.parse_pressure(read_text(path))
    except (OSError, ValueError):
        return None, None
    full = psi.get("full")
    return psi["some"]["avg10"], (full["avg10"] if full else None)


class SystemDomain:
    """The whole machine, read from ``proc_root`` (default ``/proc``)."""

    kind = "system"

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root.rstrip("/") or "/"
        self._zones: "Optional[List[Zone]]" = None
        self._boosts: "Optional[bool]" = None  # decided at the first read
        self._page_kib: "Optional[int]" = None  # the kernel's, at the first boost read
        self.name = "system"

    def boosts(self) -> bool:
        """Return: True if the kernel may boost its watermarks: it has
        ``vm/watermark_boost_factor`` (5.0+) and the factor is not 0.  Read
        once: then every reading reads zoneinfo too (about 1 KiB per zone)."""
        if self._boosts is None:
            try:
                factor = int(read_text(self.proc_root + "/sys/vm/watermark_boost_factor"))
            except (OSError, ValueError):
                factor = 0
            self._boosts = factor > 0
        return self._boosts

    def _kernel_page_kib(self) -> int:
        """Return: the kernel's page size in KiB, from the first mapping of
        our own smaps (its first 4 KiB; no asyncio, no ctypes: ``memagent
        status`` reads through here too), or 4 if it cannot be read."""
        try:
            with open(self.proc_root + "/self/smaps") as f:
                text = f.read(4096)
        except OSError:
            return 4
        return procfs.parse_kernel_page_kib(text) or 4

    def _boost_kib(self) -> "Optional[int]":
        """Return: the zones' watermark boost in KiB now, or None if the
        kernel does not boost or zoneinfo cannot be read or parsed."""
        if not self.boosts():
            return None
        try:
            zones = procfs.parse_zoneinfo(read_text(self.proc_root + "/zoneinfo"))
        except (OSError, ValueError):
            return None
        if self._page_kib is None:
            self._page_kib = self._kernel_page_kib()
        return memstate.zone_boost_pages(zones) * self._page_kib

    def _zones_once(self) -> "Optional[List[Zone]]":
        # Watermarks only change with min_free_kbytes or hotplug: read once.
        if self._zones is None:
            try:
                self._zones = procfs.parse_zoneinfo(read_text(self.proc_root + "/zoneinfo"))
            except (OSError, ValueError):
                self._zones = []
        return self._zones

    def read(self, t_ms: int, event: str = "poll") -> Reading:
        """Return: a reading of /proc/meminfo (and zoneinfo on kernels
        without MemAvailable, or that boost their watermarks: the boost is
        reported beside the available memory, see Reading.boost_kib).
        Raises: OSError if meminfo cannot be read, procfs.ParseError if it
        is not meminfo."""
        meminfo = procfs.parse_meminfo(read_text(self.proc_root + "/meminfo"))
        zones = None if "MemAvailable" in meminfo else self._zones_once()
        some, full = _psi_avgs(self.proc_root + "/pressure/memory")
        reading = Reading(t_ms, meminfo["MemTotal"],
                          memstate.estimate_available_kib(meminfo, zones),
                          free_kib=meminfo.get("MemFree"),
                          file_kib=memstate.page_cache_kib(meminfo),
                          anon_kib=meminfo.get("AnonPages"),
                          psi_some_avg10=some, psi_full_avg10=full, event=event)
        reading.boost_kib = self._boost_kib()
        return reading


class MemcgDomain:
    """One memory cgroup, v1 (``memory.limit_in_bytes``) or v2 (``memory.max``).

    A memcg without a limit is bounded by the machine: its total is MemTotal.
    """

    def __init__(self, path: str, proc_root: str = "/proc") -> None:
        self.path = path.rstrip("/")
        self.proc_root = proc_root
        self.name = self.path
        try:
            read_text(self.path + "/memory.max")
            self.kind = "memcg-v2"
        except OSError:
            read_text(self.path + "/memory.limit_in_bytes")  # raises if no memcg here
            self.kind = "memcg-v1"

    def _files(self) -> "Tuple[str, str, Optional[str]]":
        if self.kind == "memcg-v2":
            return ("memory.max", "memory.current", "memory.pressure")
        return ("memory.limit_in_bytes", "memory.usage_in_bytes", None)

    def limit_kib(self) -> int:
        """Return: the memcg's limit in KiB, or MemTotal if it has none (or a
        v1 'unlimited' that exceeds RAM).  Raises: OSError, ParseError."""
        ram_kib = procfs.parse_meminfo(read_text(self.proc_root + "/meminfo"))["MemTotal"]
        limit = procfs.parse_limit(read_text(self.path + "/" + self._files()[0]))
        if limit is None or limit // 1024 > ram_kib:
            return ram_kib
        return limit // 1024

    def read(self, t_ms: int, event: str = "poll") -> Reading:
        """Return: a reading of the memcg.  Raises: OSError if the group is
        gone, procfs.ParseError if its files are not what they should be."""
        limit_file, usage_file, psi_file = self._files()
        limit_kib = self.limit_kib()
        usage = procfs.parse_limit(read_text(self.path + "/" + usage_file))
        if usage is None:
            raise procfs.ParseError(usage_file + ": 'max' is not a usage")
        stat = procfs.parse_flat_keyed(read_text(self.path + "/memory.stat"), "memory.stat")
        file_kib = memstate.memcg_file_kib(stat)
        some = full = None
        if psi_file:
            some, full = _psi_avgs(self.path + "/" + psi_file)
        return Reading(t_ms, limit_kib,
                       memstate.memcg_available_kib(limit_kib, usage // 1024, file_kib),
                       free_kib=max(limit_kib - usage // 1024, 0), file_kib=file_kib,
                       anon_kib=memstate.memcg_anon_kib(stat),
                       psi_some_avg10=some, psi_full_avg10=full, event=event)


def open_domain(memcg: "Optional[str]" = None,
                proc_root: str = "/proc") -> "Union[SystemDomain, MemcgDomain]":
    """Return: the domain to watch: ``memcg`` if given, else the system.
    Raises: OSError if ``memcg`` is not a memory cgroup directory."""
    if memcg:
        return MemcgDomain(memcg, proc_root)
    return SystemDomain(proc_root)


def read_events(path: str) -> "Dict[str, int]":
    """Return: a cgroup v2 ``memory.events`` file as a dict.
    Raises: OSError, procfs.ParseError."""
    return procfs.parse_flat_keyed(read_text(path), "memory.events")
