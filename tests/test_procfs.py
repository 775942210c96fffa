"""The /proc parsers on real captures (this machine, the qemu ARM guest, the
2008 thread's 2.6.24 box) and on hostile variants."""

import glob
import os

import pytest

from memagent.core import memstate, pidfs, procfs

DATA = os.path.join(os.path.dirname(__file__), "data")


def data(*parts: str) -> str:
    with open(os.path.join(DATA, *parts), errors="replace") as f:
        return f.read()


def captures(pattern: str) -> "list[str]":
    """Real captures only: every data folder but hostile/."""
    found = glob.glob(os.path.join(DATA, "*", pattern))
    return sorted(p for p in found if os.sep + "hostile" + os.sep not in p)


@pytest.mark.parametrize("path", captures("meminfo*"))
def test_meminfo_captures_parse(path: str) -> None:
    with open(path) as f:
        info = procfs.parse_meminfo(f.read())
    assert info["MemTotal"] > 0
    assert 0 <= info["MemFree"] <= info["MemTotal"]
    avail = memstate.estimate_available_kib(info)
    assert info["MemFree"] // 2 <= avail <= info["MemTotal"]


def test_host_meminfo_values() -> None:
    info = procfs.parse_meminfo(data("host", "meminfo"))
    assert "MemAvailable" in info and "Active(file)" in info
    assert memstate.estimate_available_kib(info) == info["MemAvailable"]


def test_legacy_meminfo_counts_page_cache_as_available() -> None:
    # Daniel Spang's box: 111 MB free but 768 MB of clean page cache.  The
    # estimate must see most of it as available, or page-cache reclaim
    # looks like pressure (the report that started the hysteresis work).
    info = procfs.parse_meminfo(data("legacy", "meminfo.2.6.24-nohighmem-pagecache"))
    assert "MemAvailable" not in info
    assert memstate.page_cache_kib(info) == 924 + 768664
    avail = memstate.estimate_available_kib(info)
    assert avail > 500 * 1024
    assert avail < info["MemTotal"]


def test_host_zoneinfo_watermarks() -> None:
    zones = procfs.parse_zoneinfo(data("host", "zoneinfo"))
    names = [z["zone"] for z in zones]
    assert names[:3] == ["DMA", "DMA32", "Normal"]
    dma = zones[0]
    assert isinstance(dma["min"], int) and dma["min"] < dma["low"] < dma["high"]
    assert dma["lowmem_reserve"] and dma["lowmem_reserve"][0] == 0
    assert memstate.zone_reserve_pages(zones) > 0


@pytest.mark.parametrize("path", captures("zoneinfo*"))
def test_zoneinfo_captures(path: str) -> None:
    with open(path) as f:
        zones = procfs.parse_zoneinfo(f.read())
    assert any("min" in z and "free_pages" in z for z in zones)


def test_legacy_estimate_with_zoneinfo_reserves() -> None:
    info = procfs.parse_meminfo(data("legacy", "meminfo.2.6.24-nohighmem-pagecache"))
    zones = procfs.parse_zoneinfo(data("host", "zoneinfo"))
    without = memstate.estimate_available_kib(info)
    with_zones = memstate.estimate_available_kib(info, zones)
    assert with_zones < without  # the reserves are held back


@pytest.mark.parametrize("path", captures("vmstat*"))
def test_vmstat_sums(path: str) -> None:
    with open(path) as f:
        vm = procfs.parse_vmstat(f.read())
    assert "pgscan" in vm and "pgsteal" in vm and "workingset_refault" in vm
    assert vm["pgscan"] >= vm["pgsteal"] >= 0


def test_vmstat_old_kernel_names() -> None:
    text = ("pgsteal_dma 1\npgsteal_normal 10\npgscan_kswapd_dma 2\npgscan_kswapd_normal 20\n"
            "pgscan_direct_normal 5\npgscan_direct_throttle 99\n")
    vm = procfs.parse_vmstat(text)
    assert vm["pgsteal"] == 11
    assert vm["pgscan"] == 27


@pytest.mark.parametrize("path", captures("pressure*"))
def test_pressure_captures(path: str) -> None:
    with open(path) as f:
        psi = procfs.parse_pressure(f.read())
    assert psi["some"]["avg10"] >= 0 and psi["some"]["total"] >= 0


def test_pressure_some_only_kernel() -> None:
    psi = procfs.parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n")
    assert psi["some"]["avg10"] == 1.5 and "full" not in psi


def test_memory_stat_v1() -> None:
    stat = procfs.parse_flat_keyed(data("host", "cgv1-memory.stat"))
    assert "total_inactive_file" in stat and "total_rss" in stat
    assert memstate.memcg_file_kib(stat) >= 0


@pytest.mark.parametrize("path", captures("cgv2-memory.stat*"))
def test_memory_stat_v2(path: str) -> None:
    with open(path) as f:
        stat = procfs.parse_flat_keyed(f.read())
    assert "anon" in stat and "file" in stat
    assert memstate.memcg_anon_kib(stat) == stat["anon"] // 1024


def test_limits() -> None:
    assert procfs.parse_limit("max\n") is None
    assert procfs.parse_limit("134217728\n") == 134217728
    with pytest.raises(procfs.ParseError):
        procfs.parse_limit("lots")


@pytest.mark.parametrize("name", ["empty", "garbage.txt", "meminfo.truncated",
                                  "meminfo.badvalues"])
def test_hostile_meminfo_is_a_clear_error(name: str) -> None:
    text = data("hostile", name)
    if name == "meminfo.truncated":
        # A cut after MemTotal still parses what is there, never a wrong value.
        info = procfs.parse_meminfo(text)
        assert info["MemTotal"] == procfs.parse_meminfo(data("host", "meminfo"))["MemTotal"]
        return
    with pytest.raises(procfs.ParseError, match="MemTotal"):
        procfs.parse_meminfo(text)


def test_badvalues_are_skipped_not_misread() -> None:
    text = "MemTotal: 1000 kB\n" + data("hostile", "meminfo.badvalues")
    info = procfs.parse_meminfo(text)
    assert info == {"MemTotal": 1000}


@pytest.mark.parametrize("name", ["empty", "garbage.txt", "zoneinfo.truncated", "zoneinfo.bad"])
def test_hostile_zoneinfo(name: str) -> None:
    with pytest.raises(procfs.ParseError):
        procfs.parse_zoneinfo(data("hostile", name))


@pytest.mark.parametrize("name", ["empty", "garbage.txt", "pressure-memory.bad"])
def test_hostile_pressure(name: str) -> None:
    with pytest.raises(procfs.ParseError):
        procfs.parse_pressure(data("hostile", name))


def test_hostile_flat_keyed() -> None:
    with pytest.raises(procfs.ParseError):
        procfs.parse_flat_keyed(data("hostile", "empty"), "memory.stat")


def test_status_rss() -> None:
    assert pidfs.parse_kib_fields("Name:\tx\nVmRSS:\t  1234 kB\n") == {"VmRSS": 1234}
    assert pidfs.parse_kib_fields("Name:\tkthreadd\n") == {}
    assert pidfs.resident_kib(pidfs.parse_kib_fields("VmRSS:\t 900 kB\nRssAnon:\t 500 kB\n"
                                                     "RssFile:\t 300 kB\n")) == 800
    assert pidfs.resident_kib({}) is None
    assert pidfs.parse_int(" -17\n") == -17 and pidfs.parse_int("x") is None
