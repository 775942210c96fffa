#!/usr/bin/env python3
"""Memory pressure generator for tests, the demo and the bench.

Anonymous mode (default): allocate ``--rate`` MB/s in ``--chunk`` MB pieces,
touching every page (one byte written per 4096) so that each chunk is really
charged, and print one progress line per chunk::

    ready pid=1234
    anon_mb=12 t_ms=1203
    done anon_mb=64 t_ms=6410        (only with --max-mb; then --hold applies)

Cache mode (``--cache FILE``): drop FILE's cached pages (fadvise DONTNEED,
this file only), then read it at the same rate, so that the page cache it
fills is charged to this process's memcg; then hold.  ``--hold S`` keeps the
memory for S seconds after the end (-1: until killed).  Exit 0 at the end;
an OOM kill shows as SIGKILL.  Python 3.9+, stdlib only.
"""

import argparse
import os
import sys
import time
from typing import List, Optional

PAGE_BYTES = 4096
MB = 1 << 20


def say(line: str) -> None:
    """Print a progress line at once (the reader is a test, not a terminal)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pace(start_s: float, done_mb: float, rate_mb_s: float) -> None:
    """Sleep until ``done_mb`` is on schedule at ``rate_mb_s`` (0: no pacing)."""
    if rate_mb_s > 0:
        delay_s = start_s + done_mb / rate_mb_s - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)


def touched_chunk(size_bytes: int) -> bytearray:
    """Return: a bytearray of ``size_bytes`` with every page written."""
    chunk = bytearray(size_bytes)
    for offset in range(0, size_bytes, PAGE_BYTES):
        chunk[offset] = 1
    return chunk


def alloc_anon(rate_mb_s: float, chunk_mb: float, max_mb: Optional[float]) -> List[bytearray]:
    """Allocate until ``max_mb`` (None: forever).  Returns: the chunks."""
    kept: List[bytearray] = []
    start_s = time.monotonic()
    done_mb = 0.0
    while max_mb is None or done_mb < max_mb:
        step_mb = chunk_mb if max_mb is None else min(chunk_mb, max_mb - done_mb)
        kept.append(touched_chunk(int(step_mb * MB)))
        done_mb += step_mb
        say("anon_mb=%g t_ms=%d" % (done_mb, (time.monotonic() - start_s) * 1000))
        pace(start_s, done_mb, rate_mb_s)
    return kept


def fill_cache(path: str, rate_mb_s: float, chunk_mb: float, max_mb: Optional[float]) -> None:
    """Read ``path`` (up to ``max_mb``) at ``rate_mb_s`` into the page cache."""
    start_s = time.monotonic()
    done_mb = 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        # Pages cached by whoever wrote the file stay charged to their memcg.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while max_mb is None or done_mb < max_mb:
            data = os.read(fd, int(chunk_mb * MB))
            if not data:
                break
            done_mb += len(data) / MB
            say("cache_mb=%g t_ms=%d" % (done_mb, (time.monotonic() - start_s) * 1000))
            pace(start_s, done_mb, rate_mb_s)
    finally:
        os.close(fd)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the generator.  Returns: the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="MB/s (0: as fast as possible)")
    parser.add_argument("--chunk", type=float, default=1.0, help="MB per step")
    parser.add_argument("--max-mb", type=float, default=None, help="stop after this much")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to hold (-1: forever)")
    parser.add_argument("--cache", metavar="FILE", help="fill the page cache from FILE")
    args = parser.parse_args(argv)
    say("ready pid=%d" % os.getpid())
    start_s = time.monotonic()
    if args.cache:
        fill_cache(args.cache, args.rate, args.chunk, args.max_mb)
        kept: List[bytearray] = []
    else:
        kept = alloc_anon(args.rate, args.chunk, args.max_mb)
    say("done mb=%g t_ms=%d" % (sum(len(c) for c in kept) / MB,
                                (time.monotonic() - start_s) * 1000))
    if args.hold < 0:
        while True:
            time.sleep(3600)
    time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
