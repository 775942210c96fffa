"""The watermark boost: the system reading reports it (Reading.boost_kib)
beside MemAvailable, on a real boosted capture from the 64 MB ARM guest, on
this machine's kernel, and on hostile files."""

import os
import shutil
from typing import Any

from memagent.core import memstate, procfs
from memagent.core.reading import reading_from_dict
from memagent.sense.domains import SystemDomain

DATA = os.path.join(os.path.dirname(__file__), "data")
BOOSTED = os.path.join(DATA, "qemu-arm", "%s.64m-boosted")
HOSTILE = os.path.join(DATA, "hostile")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def tree(tmp: str, factor: "str | None" = "15000", zoneinfo: str = BOOSTED % "zoneinfo") -> str:
    """A /proc root: the boosted guest's meminfo and ``zoneinfo``, and
    sys/vm/watermark_boost_factor holding ``factor`` (None: no such file,
    as before Linux 5.0)."""
    root = os.path.join(tmp, "proc")
    os.makedirs(os.path.join(root, "sys", "vm"))
    shutil.copy(BOOSTED % "meminfo", os.path.join(root, "meminfo"))
    shutil.copy(zoneinfo, os.path.join(root, "zoneinfo"))
    if factor is not None:
        with open(os.path.join(root, "sys", "vm", "watermark_boost_factor"), "w") as f:
            f.write(factor + "\n")
    return root


def test_the_boosted_capture_parses() -> None:
    zones = procfs.parse_zoneinfo(read(BOOSTED % "zoneinfo"))
    # Debian's armmp kernel: 8 MiB pageblocks, so one boost is 2,048 pages
    assert memstate.zone_boost_pages(zones) == 2048
    idle = procfs.parse_zoneinfo(read(os.path.join(DATA, "qemu-arm", "zoneinfo.64m-idle")))
    assert memstate.zone_boost_pages(idle) == 0


def test_a_boosting_kernel_s_reading_carries_the_boost(tmp_path: Any) -> None:
    root = tree(str(tmp_path))
    meminfo = procfs.parse_meminfo(read(BOOSTED % "meminfo"))
    reading = SystemDomain(root).read(7, "poll")
    assert reading.boost_kib == 8192
    assert reading.avail_kib == meminfo["MemAvailable"]
    line = reading.to_dict()
    assert line["boost_kib"] == 8192  # in traces and status
    assert reading_from_dict(line).boost_kib == 8192


def test_no_boosting_no_zoneinfo_read(tmp_path: Any) -> None:
    meminfo = procfs.parse_meminfo(read(BOOSTED % "meminfo"))
    for factor in ("0", None):  # switched off, or a kernel before 5.0
        root = tree(os.path.join(str(tmp_path), str(factor)), factor,
                    zoneinfo=os.path.join(HOSTILE, "garbage.txt"))
        reading = SystemDomain(root).read(7, "poll")
        assert reading.avail_kib == meminfo["MemAvailable"]
        assert reading.boost_kib is None and "boost_kib" not in reading.to_dict()


def test_hostile_boost_files_never_hurt_the_reading(tmp_path: Any) -> None:
    plain = procfs.parse_meminfo(read(BOOSTED % "meminfo"))["MemAvailable"]
    cases = [("garbage factor", "many", BOOSTED % "zoneinfo", None),
             ("garbage zoneinfo", "15000", os.path.join(HOSTILE, "garbage.txt"), None),
             ("empty zoneinfo", "15000", os.path.join(HOSTILE, "empty"), None),
             ("bad zoneinfo", "15000", os.path.join(HOSTILE, "zoneinfo.bad"), "any"),
             ("truncated zoneinfo", "15000", os.path.join(HOSTILE, "zoneinfo.truncated"),
              "any")]
    for i, (what, factor, zoneinfo, want_boost) in enumerate(cases):
        root = tree(os.path.join(str(tmp_path), str(i)), factor, zoneinfo)
        reading = SystemDomain(root).read(7, "poll")
        assert reading.avail_kib == plain, what
        if want_boost is None:
            assert reading.boost_kib is None, what
        else:
            assert reading.boost_kib is None or reading.boost_kib >= 0, what
    text = read(BOOSTED % "zoneinfo")
    for i, (word, want) in enumerate((("-5", 0), ("999999999", 999999999 * 4), ("x", 0))):
        path = os.path.join(str(tmp_path), "boost%d" % i)
        with open(path, "w") as f:
            f.write(text.replace("boost    2048", "boost    " + word))
        reading = SystemDomain(tree(os.path.join(str(tmp_path), "b%d" % i), "15000",
                                    path)).read(7)
        assert reading.boost_kib == want and reading.avail_kib == plain, word


def test_this_kernel_s_reading() -> None:
    """The real /proc: a kernel that boosts gives boost_kib (0 while calm);
    the reading is never above MemAvailable by more than the noise."""
    factor_path = "/proc/sys/vm/watermark_boost_factor"
    domain = SystemDomain("/proc")
    reading = domain.read(1)
    boosts = os.path.exists(factor_path) and int(read(factor_path)) > 0
    assert domain.boosts() is boosts
    if boosts:
        assert isinstance(reading.boost_kib, int) and reading.boost_kib >= 0
        assert reading.boost_kib % (os.sysconf("SC_PAGE_SIZE") // 1024) == 0
    else:
        assert reading.boost_kib is None


def test_the_kernel_page_size_from_smaps() -> None:
    # the page size comes from our own smaps (no ctypes, no asyncio: status
    # reads through here); a hostile or missing line is no page size
    with open("/proc/self/smaps") as f:
        assert procfs.parse_kernel_page_kib(f.read(4096)) == os.sysconf("SC_PAGE_SIZE") // 1024
    for text, want in (("KernelPageSize:       64 kB\nMMUPageSize: 4 kB\n", 64),
                       ("Rss: 4 kB\nKernelPageSize:        4 kB\n", 4),
                       ("KernelPageSize:        x kB\n", None),
                       ("KernelPageSize:        4\n", None),
                       ("KernelPageSize:       -4 kB\n", None),
                       ("KernelPageSize:        0 kB\n", None),
                       ("", None), ("\x00" * 64, None)):
        assert procfs.parse_kernel_page_kib(text) == want, text
