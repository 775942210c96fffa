"""Pure estimates of available memory, from parsed /proc and cgroup files.

These mirror the kernel's ``si_mem_available()``: free pages above the
reserves, plus the page cache and reclaimable slab that reclaim can take
back, less a part of each that reclaim cannot take cheaply.  Page cache counts
as available, which is what keeps page-cache reclaim alone from looking like
pressure (Daniel Spang's report in the mem_notify thread).

MicroPython-clean.
"""

try:
    from typing import Dict, List, Optional

    from .procfs import Zone
except ImportError:  # MicroPython
    pass


def _zone_int(zone: "Zone", key: str) -> int:
    value = zone.get(key, 0)
    return value if isinstance(value, int) else 0


def zone_reserve_pages(zones: "List[Zone]") -> int:
    """Return: the kernel's totalreserve_pages: per zone, high + largest protection."""
    total = 0
    for zone in zones:
        reserve = zone.get("lowmem_reserve") or [0]
        largest = max(reserve) if isinstance(reserve, list) else 0
        total += _zone_int(zone, "high") + largest
    return total


def zone_low_pages(zones: "List[Zone]") -> int:
    """Return: the sum of the zones' low watermarks, in pages."""
    return sum(_zone_int(z, "low") for z in zones)


def zone_boost_pages(zones: "List[Zone]") -> int:
    """Return: the sum of the zones' watermark boosts (zoneinfo ``boost``,
    Linux 5.0+), in pages; 0 when the kernel shows none.

    Why it matters: while a zone's watermarks are boosted (a fragmentation
    event; ``vm.watermark_boost_factor``), the allocator's min watermark is
    ``min + boost``, and reclaim that cannot reach it ends in the OOM killer,
    while MemAvailable counts only the unboosted reserve.  The boost is at
    least one pageblock: 8 MiB on Debian's armmp kernel.  In the 64 MB ARM
    guest (46,308 KiB managed, min 804 KiB) every kernel OOM kill of the
    handset day came with ``boost:8192kB min:8996kB``, one with 4,836 KiB
    free (2026-12-07, board/qemu-arm/scenarios/handset_day.py)."""
    return sum(max(_zone_int(z, "boost"), 0) for z in zones)


def page_cache_kib(meminfo: "Dict[str, int]") -> int:
    """Return: file-backed page cache in KiB (Active(file)+Inactive(file), or
    Cached+Buffers on 2.6 kernels that do not split the LRU)."""
    if "Active(file)" in meminfo or "Inactive(file)" in meminfo:
        return meminfo.get("Active(file)", 0) + meminfo.get("Inactive(file)", 0)
    return meminfo.get("Cached", 0) + meminfo.get("Buffers", 0)


def estimate_available_kib(meminfo: "Dict[str, int]",
                           zones: "Optional[List[Zone]]" = None,
                           page_kib: int = 4) -> int:
    """Estimate available memory like MemAvailable, on any kernel.

    Uses MemAvailable when the kernel has it (3.14+).  Otherwise, with
    zoneinfo: free - totalreserve + cache - min(cache/2, low watermarks) +
    reclaimable slab likewise.  Without zoneinfo the reserve is taken as 0.
    Returns: KiB, never negative.
    """
    if "MemAvailable" in meminfo:
        return meminfo["MemAvailable"]
    reserve_kib = low_kib = 0
    if zones:
        reserve_kib = zone_reserve_pages(zones) * page_kib
        low_kib = zone_low_pages(zones) * page_kib
    avail = meminfo.get("MemFree", 0) - reserve_kib
    cache = page_cache_kib(meminfo)
    avail += cache - min(cache // 2, low_kib)
    slab = meminfo.get("SReclaimable", 0)
    avail += slab - min(slab // 2, low_kib)
    return max(avail, 0)


def memcg_file_kib(stat: "Dict[str, int]") -> int:
    """Return: the memcg's file LRU pages in KiB, from v1 (total_*) or v2 memory.stat."""
    if "total_inactive_file" in stat:  # cgroup v1, hierarchical, bytes
        return (stat["total_inactive_file"] + stat.get("total_active_file", 0)) // 1024
    if "inactive_file" in stat:  # cgroup v2 (or v1 local), bytes
        return (stat["inactive_file"] + stat.get("active_file", 0)) // 1024
    return stat.get("file", stat.get("cache", 0)) // 1024


def memcg_anon_kib(stat: "Dict[str, int]") -> int:
    """Return: the memcg's anonymous memory in KiB (v1 total_rss or v2 anon)."""
    for key in ("total_rss", "anon", "rss"):
        if key in stat:
            return stat[key] // 1024
    return 0


def memcg_available_kib(limit_kib: int, usage_kib: int, file_kib: int) -> int:
    """Estimate what a memcg can still allocate before its limit: the room
    below the limit plus its page cache, less what reclaim cannot take cheaply.

    A memcg has no watermarks; we hold back the smaller of half the cache and
    1/64 of the limit (about what min_free_kbytes is on a 128 MB board) as the
    part of the cache that is hot.  Returns: KiB, never negative.
    """
    room = max(limit_kib - usage_kib, 0)
    hot = min(file_kib // 2, limit_kib // 64)
    return max(room + file_kib - hot, 0)
