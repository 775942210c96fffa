"""capture_boost.py: hand back /proc/zoneinfo, meminfo and vmstat at the
first moment a zone's watermarks are boosted (zoneinfo ``boost`` above 0),
as ``<file>.<RAM>m-boosted`` (the fixtures in tests/data/qemu-arm/).

How it gets there: a reader streams a file of 1.25 x RAM through the page
cache while a child process takes anonymous memory 1 MiB at a time, up to
70% of MemAvailable, so that movable and unmovable allocations mix and the
kernel steals a pageblock (the fragmentation event that boosts).  Zoneinfo is
read every 20 ms; the first boosted copy is kept, with meminfo and vmstat read
right after it.  Every process here is the scenario's own.

    board/qemu-arm/run --mem 64 board/qemu-arm/scenarios/capture_boost.py
"""
import os
import signal
import subprocess
import sys
import time

import rigguest

FILE = "/boost-thrash"


def boost_pages(text: str) -> int:
    """Return: the sum of the zones' ``boost`` lines in zoneinfo text."""
    total = 0
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "boost" and words[1].isdigit():
            total += int(words[1])
    return total


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def main() -> int:
    """Returns: 0; the verdict is the RESULT line."""
    rigguest.thrash_file(FILE)
    avail_kib = int(read("/proc/meminfo").split("MemAvailable:")[1].split()[0])
    reader = rigguest.start_reader(FILE)
    grow_mib = avail_kib * 7 // 10 // 1024
    grower = subprocess.Popen([sys.executable, "-c", (
        "import mmap, time\nheld = []\nfor _ in range(%d):\n"
        "    m = mmap.mmap(-1, 1 << 20)\n    m.write(b'x' * (1 << 20))\n"
        "    held.append(m)\n    time.sleep(0.1)\ntime.sleep(60)\n") % grow_mib])
    deadline = time.monotonic() + 60
    found = None
    try:
        while time.monotonic() < deadline and found is None:
            text = read("/proc/zoneinfo")
            if boost_pages(text) > 0:
                found = (text, read("/proc/meminfo"), read("/proc/vmstat"))
            time.sleep(0.02)
    finally:
        for proc in (grower, reader):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        os.unlink(FILE)
    if found is None:
        rigguest.result(False, "no boost in 60 s")
        return 0
    tag = "%sm-boosted" % os.environ.get("RIG_MEM_MB", "?")
    for name, text in zip(("zoneinfo", "meminfo", "vmstat"), found):
        rigguest.handback("%s.%s" % (name, tag), data=text)
    rigguest.fact("boost_pages", boost_pages(found[0]))
    rigguest.result(True, "boosted: %d pages" % boost_pages(found[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
