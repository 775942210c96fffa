"""The cgroup1 source against the real kernel: a real allocator in a real
64 MiB v1 memcg (no swap on the build machine, memsw limited too).

Measured on the build machine (6.18 in a VM, 2 CPUs), times from the
allocator's start, through this source (10 ms coalescing) and a separate
eventfd on memory.oom_control for the OOM instant:

* anonymous memory only, 32 MB/s: one "threshold" wake per crossed
  threshold (50% at ~800 ms ... 95% at ~1680 ms), no vmpressure at all
  before the OOM at ~1796 ms; then ONE wake at ~1806 ms with critical,
  medium and low all fired (and the thresholds again, as usage falls back
  to ~240 KiB).  This confirms the issue: with nothing to reclaim,
  vmpressure says nothing until the OOM kill and then says everything.
* 40 MB of clean page cache first, then anonymous memory at 32 MB/s:
  "vmpressure:low" every ~62 ms (one per 2 MB vmpressure window of
  reclaim) from ~520 ms, about 1.27 s before the OOM at ~1797 ms;
  critical+medium+low together ~25 ms before the OOM, then once more
  right after it.  At 8 MB/s, low every 250 ms for ~4.9 s and critical
  ~125 ms before the OOM kill.  No lone "medium" in any run.
"""

import os
import subprocess
from typing import List, Optional, Tuple

import pytest

from conftest import ALLOC, CACHE_FILL, MEMCG_LIMIT_KIB
from memagent import aio
from memagent.demo.memcg import Memcg, available
from memagent.sense.domains import MemcgDomain, SystemDomain
from memagent.sense.sources import SourceOptions, SourceUnavailable, choose
from memagent.sense.sources.cgroup1 import Cgroup1Source, drain, eventfd, register_event, v1_root
from support import need

pytestmark = pytest.mark.memcg

Wake = Tuple[int, Tuple[str, ...]]  # (ms since the allocator started, events fired)


def open_source(group: Memcg, pcts: Tuple[int, ...] = (50, 60, 70, 75, 80, 85, 90, 95)
                ) -> Cgroup1Source:
    source = Cgroup1Source(MemcgDomain(group.path), SourceOptions(thresholds_pct=pcts))
    source.open()
    return source


async def collect(source: Cgroup1Source, t0_ms: int, quiet_ms: int) -> List[Wake]:
    """Return: every wake until ``quiet_ms`` pass without one."""
    wakes: List[Wake] = []
    while await source.wait(quiet_ms) is not None:
        wakes.append((aio.ticks_ms() - t0_ms, source.last_fired))
    return wakes


async def oom_instant(group: Memcg, t0_ms: int, timeout_ms: int) -> Optional[int]:
    """Return: ms since t0 when the kernel reported an OOM in the group, or None."""
    efd = eventfd()
    register_event(group.path, efd, "memory.oom_control", "")
    watch = aio.FdWatch(efd)
    try:
        if not await watch.wait(timeout_ms):
            return None
        drain(efd)
        return aio.ticks_ms() - t0_ms
    finally:
        watch.close()
        os.close(efd)


async def run_until_oom(group: Memcg, source: Cgroup1Source,
                        alloc_args: List[str]) -> Tuple[List[Wake], Optional[int]]:
    t0_ms = aio.ticks_ms()
    group.spawn(ALLOC + alloc_args, stdout=subprocess.DEVNULL)
    wakes, oom_ms = await aio.gather(collect(source, t0_ms, 1500),
                                     oom_instant(group, t0_ms, 10000))
    return wakes, oom_ms


def test_thresholds_fire_as_usage_grows_then_calm_is_silent(memcg: Memcg) -> None:
    source = open_source(memcg, pcts=(30, 45, 60, 90))
    try:
        assert len(source.thresholds_bytes) == 4

        async def scenario() -> Tuple[List[Wake], Optional[str], int]:
            t0_ms = aio.ticks_ms()
            memcg.spawn(ALLOC + ["--rate", "64", "--max-mb", "40", "--hold", "-1"],
                        stdout=subprocess.DEVNULL)
            wakes = await collect(source, t0_ms, 1500)
            calm_start_ms = aio.ticks_ms()
            calm = await source.wait(2000)  # usage is flat: no event may come
            return wakes, calm, aio.ticks_ms() - calm_start_ms

        wakes, calm, calm_ms = aio.run(scenario())
    finally:
        source.close()
    # ~7 MB interpreter + 40 MB = ~73% of 64 MiB: 30, 45 and 60% are crossed.
    assert [fired for _, fired in wakes] == [("threshold",)] * 3, wakes
    assert calm is None and calm_ms >= 1900


def test_anon_only_vmpressure_arrives_all_at_once_with_the_oom_kill(memcg: Memcg) -> None:
    source = open_source(memcg)
    try:
        wakes, oom_ms = aio.run(run_until_oom(memcg, source, ["--rate", "32", "--max-mb", "100"]))
    finally:
        source.close()
    assert memcg.oom_kill_count() == 1
    assert oom_ms is not None
    pressure = [(t, fired) for t, fired in wakes if fired[0].startswith("vmpressure")]
    assert pressure, wakes
    first_ms, first_fired = pressure[0]
    # No warning ahead of the kill: all three levels in one wake, at the kill.
    assert set(first_fired) >= {"vmpressure:low", "vmpressure:medium", "vmpressure:critical"}
    assert abs(first_ms - oom_ms) < 300, (wakes, oom_ms)
    assert len(pressure) <= 3, wakes  # the kernel's burst of ~100 signals is coalesced
    thresholds = [t for t, fired in wakes if fired == ("threshold",) and t < oom_ms]
    assert len(thresholds) >= 6, wakes


def _fs_type(path: str) -> str:
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            words = line.split()
            if path.startswith(words[1]) and len(words[1]) > len(best):
                best, fstype = words[1], words[2]
    return fstype


def test_with_page_cache_low_warns_well_before_the_oom_kill(memcg: Memcg, tmp_path: str) -> None:
    cache_file = os.path.join(str(tmp_path), "cache")
    if _fs_type(cache_file) in ("tmpfs", "ramfs"):
        need("a disk-backed directory for reclaimable page cache (tmp_path is on tmpfs)")
    with open(cache_file, "wb") as f:
        f.write(b"\0" * (40 << 20))
        os.fsync(f.fileno())  # clean pages: reclaim drops them without writeback
    filler = memcg.spawn(CACHE_FILL + [cache_file, "--rate", "0", "--chunk", "4"],
                         stdout=subprocess.DEVNULL)
    assert filler.wait(timeout=10) == 0
    assert memcg.usage_kib() > 30 * 1024  # the cache is charged to the group
    source = open_source(memcg)
    try:
        wakes, oom_ms = aio.run(run_until_oom(memcg, source, ["--rate", "32", "--max-mb", "100"]))
    finally:
        source.close()
    assert oom_ms is not None and memcg.oom_kill_count() == 1
    lows = [t for t, fired in wakes if fired[0] == "vmpressure:low" and t < oom_ms]
    assert len(lows) >= 3, (wakes, oom_ms)
    assert oom_ms - lows[0] >= 300, (wakes, oom_ms)
    critical = [t for t, fired in wakes if fired[0] == "vmpressure:critical"]
    assert critical and abs(critical[0] - oom_ms) < 300, (wakes, oom_ms)


def test_rearm_follows_the_limit(memcg: Memcg) -> None:
    source = open_source(memcg, pcts=(50, 90))
    try:
        assert source.thresholds_bytes == [MEMCG_LIMIT_KIB * 1024 // 2,
                                           MEMCG_LIMIT_KIB * 1024 * 9 // 10]
        memcg.set_limit_kib(32 * 1024)
        assert source.rearm() == [16 << 20, (32 << 20) * 9 // 10]
    finally:
        source.close()


def test_removal_of_the_group_is_an_error_not_a_critical_event(memcg: Memcg) -> None:
    source = open_source(memcg)
    try:
        memcg.destroy()  # the kernel signals every eventfd once

        async def wait() -> Optional[str]:
            return await source.wait(2000)

        with pytest.raises(FileNotFoundError):
            aio.run(wait())
    finally:
        source.close()


def test_eventfd_fallback_for_python39(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "eventfd", raising=False)
    efd = eventfd()
    try:
        assert drain(efd) == 0
        os.write(efd, (3).to_bytes(8, "little"))
        assert drain(efd) == 3
    finally:
        os.close(efd)


def test_auto_picks_cgroup1_for_a_v1_memcg(memcg: Memcg) -> None:
    if memcg.version != "v1":
        need("a cgroup v1 memory hierarchy")
    source, skipped = choose("auto", MemcgDomain(memcg.path), SourceOptions())
    try:
        assert source.name == "cgroup1"
    finally:
        source.close()
    reasons = dict(skipped)
    assert list(reasons) == ["mem_notify", "psi", "cgroup2"]
    assert "does not exist" in reasons["mem_notify"]
    assert reasons["psi"].startswith("psi: ") and "memcg-v1" in reasons["psi"]
    assert "memcg-v1" in reasons["cgroup2"]


def test_auto_for_the_system_on_this_host_skips_psi_with_einval() -> None:
    if available() is not None or v1_root() is None:
        need("root and a cgroup v1 memory hierarchy (%s)" % available())
    opts = SourceOptions()
    try:
        psi, _ = choose("psi", SystemDomain(), opts)
    except SourceUnavailable as e:
        if "EINVAL" not in str(e):
            need("a kernel that rejects PSI triggers with EINVAL, got: %s" % e)
    else:
        psi.close()
        need("a kernel that rejects PSI triggers (this one accepts them)")
    source, skipped = choose("auto", SystemDomain(), opts)
    try:
        assert source.name == "cgroup1"
        assert isinstance(source, Cgroup1Source) and source.path == v1_root()
    finally:
        source.close()
    reasons = dict(skipped)
    assert list(reasons) == ["mem_notify", "psi", "cgroup2"]
    assert "EINVAL" in reasons["psi"] and "system" in reasons["cgroup2"]
