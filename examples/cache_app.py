#!/usr/bin/env python3
"""An app that holds a real cache and frees it when memagent asks.

The cache is an LRU of 256 KiB bytearrays (``--cache-mib`` of them, filled so
the pages are really resident).  On a ``trim`` the oldest entries are dropped
until ``target_kib`` is met (a quarter of the cache when the target is 0), and
the KiB dropped are reported back.  Run it against an agent::

    memagent run --socket /tmp/m.sock &
    python3 examples/cache_app.py --socket /tmp/m.sock --cache-mib 16 --class cached
    memagent status --socket /tmp/m.sock --json   # the app, under "apps"

Stop it with Ctrl-C or SIGTERM.  It reconnects by itself when the agent restarts.
"""

import argparse
import logging
import mmap
import signal
import sys
from collections import OrderedDict
from typing import Any, List, Optional

from memagent.client import DEFAULT_SOCKET, Client

ENTRY_KIB = 256
# Each entry is its own anonymous mmap, unmapped when evicted, so what is freed
# really goes back to the kernel.  Plain bytearrays do not guarantee that:
# glibc raises its mmap threshold after the first large free, later entries
# come from the heap, and freeing them returned nothing (measured: a trim
# audited at 0 KiB freed in CI).


class LruCache:
    """An LRU of fixed-size byte buffers, keyed by int."""

    def __init__(self, entry_kib: int = ENTRY_KIB) -> None:
        self.entry_kib = entry_kib
        self.entries: "OrderedDict[int, mmap.mmap]" = OrderedDict()
        self._next_key = 0
        self._pattern = b"\x5a" * (entry_kib * 1024)

    @property
    def size_kib(self) -> int:
        """Return: the KiB the cache holds."""
        return len(self.entries) * self.entry_kib

    def fill(self, size_kib: int) -> None:
        """Add entries (written, so resident) until the cache holds ``size_kib``."""
        while self.size_kib + self.entry_kib <= size_kib:
            entry = mmap.mmap(-1, len(self._pattern), flags=mmap.MAP_PRIVATE)  # anonymous
            entry.write(self._pattern)  # written: resident, charged to our memcg
            self.entries[self._next_key] = entry
            self._next_key += 1

    def get(self, key: int) -> "Optional[mmap.mmap]":
        """Return: the entry (now the most recently used), or None."""
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def evict(self, target_kib: int) -> int:
        """Drop least recently used entries until ``target_kib`` is freed (or
        the cache is empty).  Returns: the KiB dropped."""
        freed_kib = 0
        while self.entries and freed_kib < target_kib:
            _key, entry = self.entries.popitem(last=False)
            entry.close()  # munmap: the pages go back to the kernel now
            freed_kib += self.entry_kib
        return freed_kib


def on_trim_for(cache: LruCache) -> "Any":
    """Return: an ``on_trim(level, target_kib) -> freed_kib`` callback for ``cache``."""

    def on_trim(level: str, target_kib: int) -> int:
        wanted_kib = target_kib if target_kib > 0 else cache.size_kib // 4
        freed_kib = cache.evict(wanted_kib)
        print("trim %s: asked %d KiB, freed %d KiB, cache now %d KiB"
              % (level, target_kib, freed_kib, cache.size_kib), flush=True)
        return freed_kib

    return on_trim


def main(argv: "Optional[List[str]]" = None) -> int:
    """Run the app until SIGTERM/SIGINT.  Returns: the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's socket")
    p.add_argument("--name", default="cache_app", help="the app's name in the agent")
    p.add_argument("--class", dest="cls", default="cached", choices=("cached", "service"))
    p.add_argument("--cache-mib", type=int, default=16, help="cache size to hold, MiB")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="cache_app: %(levelname)s %(message)s")
    cache = LruCache()
    cache.fill(args.cache_mib * 1024)
    print("cache filled: %d KiB" % cache.size_kib, flush=True)
    client = Client(args.name, cls=args.cls, estimate_kib=cache.size_kib,
                    on_trim=on_trim_for(cache), socket_path=args.socket)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: client.stop())
    try:
        client.run_forever()
    finally:
        client.close()
    print("stopped, cache %d KiB" % cache.size_kib, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
