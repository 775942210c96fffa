"""The cache app of the demo and the tests: an app that holds real cache and
gives it back when the agent asks.  ``python3 -m memagent.demo.cacheapp
--socket S --name N --cache-mib M``.
"""

import argparse
import mmap
import signal
import sys
from typing import List, Optional

from .. import aio
from ..client import Client, ClientError


def cache_app_main(argv: Optional[List[str]] = None) -> int:
    """A minimal cooperative app for the demo: hold ``--cache-mib`` of real
    cache (256 KiB anonymous mmaps, written so they are resident, unmapped
    when dropped so the memory really goes back), register with
    the agent at ``--socket`` as ``--name`` (class "cached"), and on each trim
    drop the oldest entries until the target is met.  Prints ``ready
    cache_kib=N`` once filled, then per trim ``trim LEVEL TARGET_KIB FREED_KIB
    LEFT_KIB MONO_MS``, MONO_MS the monotonic ms when the request came (before
    anything was freed, so that the demo shows it before the recovery it
    brought).  Runs until SIGTERM/SIGINT.

    Run it as ``python3 -m memagent.demo.cacheapp --socket S --name N --cache-mib M``.  Returns: 0.
    """
    p = argparse.ArgumentParser(prog="memagent-demo-cache-app")
    p.add_argument("--socket", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--cache-mib", type=int, default=16)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    entry_kib = 256
    pattern = b"\x5a" * (entry_kib * 1024)
    cache = []
    for _ in range(args.cache_mib * 1024 // entry_kib):
        # Own mmaps: a freed bytearray may stay in glibc's heap (its mmap
        # threshold rises after the first large free) and return nothing.
        entry = mmap.mmap(-1, len(pattern), flags=mmap.MAP_PRIVATE)  # anon, not shmem
        entry.write(pattern)
        cache.append(entry)
    print("ready cache_kib=%d" % (len(cache) * entry_kib), flush=True)

    def on_trim(level: str, target_kib: int) -> int:
        asked_ms = aio.ticks_ms()
        wanted = target_kib if target_kib > 0 else len(cache) * entry_kib // 4
        freed = 0
        while cache and freed < wanted:
            cache.pop(0).close()  # the oldest entry: munmap, back to the kernel now
            freed += entry_kib
        print("trim %s %d %d %d %d" % (level, target_kib, freed, len(cache) * entry_kib,
                                       asked_ms), flush=True)
        # Say what is left before answering: the agent asks no app for more
        # than its estimate, and none holding under 256 KiB (an empty app was
        # asked again and again: its estimate stayed what it registered).
        try:
            client.set_estimate(len(cache) * entry_kib)
        except (OSError, ClientError):
            pass  # the answer goes out anyway; a reconnect registers the new estimate
        return freed

    client = Client(args.name, cls="cached", estimate_kib=len(cache) * entry_kib,
                    on_trim=on_trim, socket_path=args.socket)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: client.stop())
    try:
        client.run_forever()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(cache_app_main())
