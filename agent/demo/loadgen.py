"""Memory load generator for the demo, the bench, the tests and the qemu guest.

Run as ``python3 -m memagent.demo.loadgen MODE ...``, or by path (``python3 -S
.../loadgen.py``, which keeps the child's interpreter small): stdlib only,
Python 3.9+, no asyncio, no memagent imports.  MB here are MiB (1 << 20).
It imports neither typing nor argparse, whose ~2.4 MB (measured) would be
charged with the load.

``anon [--rate MB/s] [--chunk MB] [--max-mb MB] [--hold S]``
    Allocate anonymous memory at ``--rate`` (0: as fast as possible) in
    ``--chunk`` pieces, every page written so that each chunk is charged,
    until ``--max-mb`` (default: until killed), then hold it ``--hold`` s.
``cache FILE [--rate MB/s] [--chunk MB] [--max-mb MB] [--hold S]``
    Drop FILE's cached pages (fadvise DONTNEED, this file only), then read it
    (up to ``--max-mb``) at ``--rate``, so the page cache it fills is charged
    to this process's memcg; then hold.
``read FILE [--seconds S]``
    Read FILE through the page cache pass after pass until ``S`` seconds have
    passed (0: one pass).  The caller drops FILE's cache beforehand if it
    wants the first pass cold.

``--hold -1`` holds until killed.  Output, one line each, flushed at once
(``mono_ms`` is CLOCK_MONOTONIC in ms, the clock of memagent.aio.ticks_ms)::

    ready pid=1234
    anon_mb=12 mono_ms=5012345          one per chunk (cache_mb=: per chunk,
                                        passes=: per pass)
    done anon_mb=64 mono_ms=5018555     at --max-mb, the end of FILE, the last pass

Exit 0 at the end; an OOM kill shows as SIGKILL.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

PAGE_BYTES = 4096
MIB = 1 << 20
READY = "ready"
DONE = "done"
PACED = ("--rate", "--chunk", "--max-mb", "--hold")
OPTIONS = {"anon": PACED, "cache": PACED, "read": ("--seconds",)}
DEFAULTS: Dict[str, Optional[float]] = {"--rate": 10.0, "--chunk": 1.0, "--max-mb": None,
                                        "--hold": 0.0, "--seconds": 0.0}
USAGE = ("usage: python3 -m memagent.demo.loadgen anon [--rate MB/s] [--chunk MB] [--max-mb MB]"
         " [--hold S]\n       python3 -m memagent.demo.loadgen cache FILE [same options]\n"
         "       python3 -m memagent.demo.loadgen read FILE [--seconds S]")


class UsageError(ValueError):
    """The command line is wrong; str() says how."""


class ProgressLine:
    """One parsed progress line: ``what`` ("anon_mb", "cache_mb", "passes"),
    ``count`` (MiB or passes), ``mono_ms``, ``done`` (the final line)."""

    def __init__(self, what: str, count: float, mono_ms: int, done: bool) -> None:
        self.what = what
        self.count = count
        self.mono_ms = mono_ms
        self.done = done


def mono_ms() -> int:
    """Return: CLOCK_MONOTONIC in milliseconds."""
    return int(time.monotonic() * 1000)


def count_text(count: float) -> str:
    """Return: ``count`` without a trailing ".0" (12, 12.5)."""
    return ("%.3f" % count).rstrip("0").rstrip(".")


def say(line: str) -> None:
    """Print a line at once (the reader is a program, not a terminal)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def report(what: str, count: float, done: bool = False) -> None:
    """Print a progress line: ``[done ]<what>=<count> mono_ms=<ms>``."""
    say("%s%s=%s mono_ms=%d" % (DONE + " " if done else "", what, count_text(count), mono_ms()))


def parse_line(line: str) -> Optional[ProgressLine]:
    """Return: the progress line ``line`` parsed, or None if it is none
    (the ready line, a partial or foreign line)."""
    words = line.split()
    done = bool(words) and words[0] == DONE
    if done:
        words = words[1:]
    if len(words) != 2 or not words[1].startswith("mono_ms="):
        return None
    what, _, count = words[0].partition("=")
    try:
        return ProgressLine(what, float(count), int(words[1][len("mono_ms="):]), done)
    except ValueError:
        return None


def pace(start_s: float, done_mb: float, rate_mb_s: float) -> None:
    """Sleep until ``done_mb`` is on schedule at ``rate_mb_s`` (0: no pacing)."""
    if rate_mb_s > 0:
        delay_s = start_s + done_mb / rate_mb_s - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)


def touched_chunk(size_bytes: int) -> bytearray:
    """Return: a bytearray of ``size_bytes`` with every page written."""
    chunk = bytearray(size_bytes)
    chunk[::PAGE_BYTES] = b"\1" * len(range(0, size_bytes, PAGE_BYTES))
    return chunk


def alloc_anon(rate_mb_s: float, chunk_mb: float, max_mb: Optional[float]) -> List[bytearray]:
    """Allocate until ``max_mb`` (None: until killed), reporting each chunk.
    Returns: the chunks (the caller holds them)."""
    kept: List[bytearray] = []
    start_s = time.monotonic()
    done_mb = 0.0
    while max_mb is None or done_mb < max_mb:
        step_mb = chunk_mb if max_mb is None else min(chunk_mb, max_mb - done_mb)
        kept.append(touched_chunk(int(step_mb * MIB)))
        done_mb += step_mb
        report("anon_mb", done_mb)
        pace(start_s, done_mb, rate_mb_s)
    report("anon_mb", done_mb, done=True)
    return kept


def fill_cache(path: str, rate_mb_s: float, chunk_mb: float, max_mb: Optional[float]) -> float:
    """Read ``path`` (up to ``max_mb``) at ``rate_mb_s`` into the page cache,
    reporting each chunk.  Returns: the MiB read.  Raises: OSError."""
    start_s = time.monotonic()
    done_mb = 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        # Pages cached by whoever wrote the file stay charged to their memcg.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while max_mb is None or done_mb < max_mb:
            data = os.read(fd, int(chunk_mb * MIB))
            if not data:
                break
            done_mb += len(data) / MIB
            report("cache_mb", done_mb)
            pace(start_s, done_mb, rate_mb_s)
    finally:
        os.close(fd)
    report("cache_mb", done_mb, done=True)
    return done_mb


def read_passes(path: str, seconds: float) -> int:
    """Read ``path`` whole, pass after pass, until ``seconds`` have passed
    (0: one pass), reporting each pass.  Returns: the passes.  Raises: OSError."""
    end_s = time.monotonic() + seconds
    buf = bytearray(MIB)
    passes = 0
    while True:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        passes += 1
        report("passes", passes)
        if time.monotonic() >= end_s:
            break
    report("passes", passes, done=True)
    return passes


def hold(seconds: float, keep: object = None) -> None:
    """Sleep ``seconds`` (negative: until killed) with ``keep`` (the memory
    to hold) still referenced."""
    while seconds < 0:
        time.sleep(3600)
    time.sleep(seconds)


def parse_args(argv: List[str]) -> Tuple[str, Optional[str], Dict[str, Optional[float]]]:
    """Return: (mode, FILE or None, option -> value, defaults filled in).
    Raises: UsageError on an unknown mode or option, a missing FILE or value."""
    if not argv or argv[0] not in OPTIONS:
        raise UsageError("a mode is required: anon, cache or read")
    mode, rest = argv[0], argv[1:]
    path = None
    if mode != "anon":
        if not rest or rest[0].startswith("--"):
            raise UsageError("%s needs a FILE" % mode)
        path, rest = rest[0], rest[1:]
    values = {name: DEFAULTS[name] for name in OPTIONS[mode]}
    while rest:
        if rest[0] not in values or len(rest) < 2:
            raise UsageError("bad option for %s: %s" % (mode, " ".join(rest)))
        try:
            values[rest[0]] = float(rest[1])
        except ValueError:
            raise UsageError("%s needs a number, not %r" % (rest[0], rest[1]))
        rest = rest[2:]
    return mode, path, values


def run(mode: str, path: Optional[str], values: Dict[str, Optional[float]]) -> None:
    """Generate the load of ``mode``.  Raises: OSError if FILE cannot be read."""
    if mode == "read":
        assert path is not None
        read_passes(path, values["--seconds"] or 0.0)
        return
    rate_mb_s, chunk_mb = values["--rate"] or 0.0, values["--chunk"] or 1.0
    if mode == "cache":
        assert path is not None
        fill_cache(path, rate_mb_s, chunk_mb, values["--max-mb"])
        hold(values["--hold"] or 0.0)
    else:
        hold(values["--hold"] or 0.0, keep=alloc_anon(rate_mb_s, chunk_mb, values["--max-mb"]))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the generator.  Returns: the exit status (0; 2 on a bad command
    line, after the usage on stderr).  Raises: OSError if FILE cannot be read."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        say(__doc__ or USAGE)
        return 0
    try:
        mode, path, values = parse_args(args)
    except UsageError as e:
        sys.stderr.write("%s\nloadgen: %s\n" % (USAGE, e))
        return 2
    say("%s pid=%d" % (READY, os.getpid()))
    run(mode, path, values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
