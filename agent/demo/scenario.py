"""Real memory pressure in a throw-away memcg: the "virtual handset".

Used by ``memagent demo``, ``bench/sensing.py`` and the tests.  A
:class:`Handset` is a memcg of ``limit_mib`` (no swap) that only holds
processes it started; the scenarios run inside it while a :class:`Watch`
runs memagent's own sensing (MemcgDomain + the cgroup1/cgroup2 source +
Monitor) in this process, sampling at least every ``SAMPLE_MS``:

* :meth:`Handset.fill_page_cache`: read a file on disk from inside the memcg,
  so its page cache is charged there (a file larger than the limit leaves
  the memcg full of cache, as in Daniel Spang's 2008 test);
* :meth:`Handset.ramp`: his alloc-test: anonymous memory at 10 MB/s until
  the OOM killer (or a caller's stop) ends it, with the MiB allocated vs time;
* :meth:`Handset.churn`: re-read a file ``file_factor`` times the limit;
* :meth:`Handset.spike`: a burst allocation, held, then released;
* :meth:`Handset.idle`: nothing at all.

Measured here (Debian 12 VM, kernel 6.18, cgroup v1, 128 MiB memcg, 192 MiB
file): writing and reading the file takes ~0.6 s; the 10 MB/s ramp is
OOM-killed after 123 MiB, 12.3-12.4 s in; raw vmpressure "low" fires from
the first MiB on.

CPython only (subprocess); scenarios are coroutines on :mod:`memagent.aio`.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from .. import aio
from ..core.levels import Monitor, Notification, default_thresholds
from ..core.reading import Reading
from ..sense import domains
from . import loadgen, memcg

SAMPLE_MS = 100
MIB = 1 << 20
_SCRATCH_ENV = "MEMAGENT_SCRATCH"
# Page cache on these is shmem: without swap it cannot be reclaimed at all.
_RAM_FILESYSTEMS = ("tmpfs", "ramfs", "devtmpfs", "hugetlbfs")

# The children run memagent.demo.loadgen by path under -S: no site, no memagent
# import, so that little beyond their load is charged to the memcg.
LOADGEN_ARGV = (sys.executable, "-S", os.path.abspath(loadgen.__file__))


def _fs_type(path: str, mounts_path: str = "/proc/self/mounts") -> str:
    """Return: the type of the filesystem holding ``path`` ("" if unknown)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    with open(mounts_path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype = point, fields[2]
    return fstype


def scratch_dir() -> str:
    """Create a scratch directory on a disk-backed filesystem ($MEMAGENT_SCRATCH,
    /var/tmp, /tmp, then the current directory: the first not on tmpfs).

    Returns: its path (the caller removes it).
    Raises: OSError if no candidate is disk-backed and writable.
    """
    reasons = []
    for base in (os.environ.get(_SCRATCH_ENV), "/var/tmp", tempfile.gettempdir(), os.getcwd()):
        if not base or not os.path.isdir(base):
            continue
        fstype = _fs_type(base)
        if fstype in _RAM_FILESYSTEMS:
            reasons.append("%s is %s" % (base, fstype))
            continue
        try:
            return tempfile.mkdtemp(prefix="memagent-scenario-", dir=base)
        except OSError as e:
            reasons.append("%s: %s" % (base, e.strerror))
    raise OSError("no disk-backed scratch directory (set %s): %s"
                  % (_SCRATCH_ENV, "; ".join(reasons)))


def drop_cached(path: str) -> None:
    """Write back and drop ``path``'s page cache (its pages stay charged to
    whoever read them first, so the memcg's reader must start cold)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_file(directory: str, name: str, size_mib: int) -> str:
    """Write a ``size_mib`` file of non-zero bytes and drop it from the cache.

    Returns: its path.  Raises: OSError (e.g. ENOSPC).
    """
    path = os.path.join(directory, name)
    block = b"\xa5" * MIB
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(block)
    drop_cached(path)
    return path


class Progress:
    """What a child reported: (monotonic ms, count) points, MiB or passes;
    ``full_ms``: the time of its done line (anon: --max-mb reached)."""

    def __init__(self) -> None:
        self.points: List[Tuple[int, int]] = []
        self.full_ms: Optional[int] = None
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Take a chunk of the child's stdout (:mod:`memagent.demo.loadgen` lines)."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            parsed = loadgen.parse_line(line.decode("ascii", "replace"))
            if parsed is None:
                continue
            if parsed.done:
                self.full_ms = parsed.mono_ms
            else:
                self.points.append((parsed.mono_ms, int(parsed.count)))

    def last(self) -> int:
        """Return: the latest count (0 before the first)."""
        return self.points[-1][1] if self.points else 0

    def at(self, t_ms: int) -> int:
        """Return: the count reported at or before ``t_ms`` (0 before the first)."""
        count = 0
        for point_ms, value in self.points:
            if point_ms > t_ms:
                break
            count = value
        return count


class ChildEnd:
    """How a scenario child ended: ``returncode`` (-9: SIGKILL), ``end_ms``
    (monotonic ms when its exit was seen), ``oom_kills`` in the memcg during
    its run, ``stopped`` (True if we ended it)."""

    def __init__(self, returncode: int, end_ms: int, oom_kills: int, stopped: bool) -> None:
        self.returncode = returncode
        self.end_ms = end_ms
        self.oom_kills = oom_kills
        self.stopped = stopped

    @property
    def oom_killed(self) -> bool:
        """Return: True if the kernel's OOM killer ended the child."""
        return not self.stopped and self.oom_kills > 0 and self.returncode == -signal.SIGKILL


class Watch:
    """memagent's sensing of one memcg, in this process: a source wakes it
    (or SAMPLE_MS passes), it reads the domain and feeds a Monitor.

    ``source_name``: a source of :mod:`memagent.sense.sources`, or "poll-only" to
    read on the timer alone.  ``on_note`` is called with each notification.
    """

    def __init__(self, path: str, source_name: str = "auto", interval_ms: int = SAMPLE_MS,
                 on_note: Optional[Callable[[Notification], None]] = None) -> None:
        self.domain = domains.MemcgDomain(path)
        self.interval_ms = interval_ms
        self.on_note = on_note
        self.readings: List[Reading] = []
        self.notes: List[Notification] = []
        self.source: Any = None
        self.source_label = "timer"  # the source's name once one opens
        self.source_error = ""
        if source_name != "poll-only":
            self._open_source(source_name)
        first = self.domain.read(aio.ticks_ms(), "start")
        self.monitor = Monitor(default_thresholds(first.total_kib))
        self._take(first)

    def _open_source(self, name: str) -> None:
        try:
            from ..sense import sources

            self.source, _skipped = sources.choose(name, self.domain, sources.SourceOptions())
            self.source_label = str(self.source.name)
        except Exception as e:  # whatever the reason, sense on the timer and say why
            self.source_error = "%s: %s" % (type(e).__name__, e)

    def _take(self, reading: Reading) -> None:
        self.readings.append(reading)
        note = self.monitor.update(reading)
        if note is not None:
            self.notes.append(note)
            if self.on_note is not None:
                self.on_note(note)

    async def run(self) -> None:
        """Sense until cancelled (or until the memcg is gone)."""
        try:
            while True:
                event = None
                if self.source is not None:
                    event = await self.source.wait(self.interval_ms)
                else:
                    await aio.sleep_ms(self.interval_ms)
                self._take(self.domain.read(aio.ticks_ms(), event or "poll"))
        except FileNotFoundError:
            return  # the memcg was removed under us
        finally:
            self.close()

    def close(self) -> None:
        """Release the source (idempotent)."""
        if self.source is not None:
            self.source.close()
            self.source = None

    def write_trace(self, out: IO[str], extra: Optional[Dict[str, Any]] = None) -> None:
        """Write the readings as a trace (header + one reading per line)."""
        head: Dict[str, Any] = {"memagent_trace": 1, "domain": "memcg", "source": self.source_label,
                "interval_ms": self.interval_ms, "kernel": os.uname().release}
        head.update(extra or {})
        out.write(json.dumps(head) + "\n")
        for reading in self.readings:
            out.write(json.dumps(reading.to_dict()) + "\n")

    def first_at_least(self, level: int, after_ms: int = 0) -> Optional[Notification]:
        """Return: the first notification at ``level`` or above after ``after_ms``."""
        for note in self.notes:
            if note.level >= level and note.t_ms >= after_ms:
                return note
        return None


async def follow(child: "Any", progress: Progress,
                 stop: Optional[Callable[[], bool]] = None) -> bool:
    """Feed ``child``'s stdout to ``progress`` until it exits, or until
    ``stop()`` (asked at every line and at least every SAMPLE_MS) says so,
    then SIGKILL it.  Returns: True if we stopped it."""
    fd = child.stdout.fileno()
    os.set_blocking(fd, False)
    watch = aio.FdWatch(fd)
    try:
        while True:
            if stop is not None and stop():
                child.kill()
                return True
            if not await watch.wait(SAMPLE_MS):
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return False
            progress.feed(data)
    finally:
        watch.close()


class Handset:
    """A "virtual handset": a memcg of ``limit_mib`` and a scratch directory.

    Use as a context manager: on exit (also on Ctrl-C) every process in the
    memcg is killed, the memcg removed and the scratch files deleted.
    Raises (constructor): memcg.MemcgError if no memcg can be made.
    """

    def __init__(self, limit_mib: int = 128) -> None:
        self.limit_mib = limit_mib
        self.memcg = memcg.Memcg(limit_kib=limit_mib * 1024)
        self.path = self.memcg.path
        try:
            self.scratch = scratch_dir()
        except OSError:
            self.memcg.destroy()
            raise
        self._files: Dict[int, str] = {}

    def close(self) -> None:
        """Kill the memcg's processes, remove it and the scratch files."""
        try:
            self.memcg.destroy()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "Handset":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, size_mib: int) -> str:
        """Return: a scratch file of ``size_mib`` (made once, then reused)."""
        if size_mib not in self._files:
            self._files[size_mib] = make_file(self.scratch, "data-%d" % size_mib, size_mib)
        return self._files[size_mib]

    def _spawn(self, args: Tuple[object, ...]) -> "Any":
        """Start memagent.demo.loadgen ``args`` in the memcg.  Returns: the Popen."""
        import subprocess

        argv = list(LOADGEN_ARGV) + [str(a) for a in args]
        return self.memcg.spawn(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)

    async def _run(self, args: Tuple[object, ...], progress: Progress,
                   stop: Optional[Callable[[], bool]] = None) -> ChildEnd:
        """Run memagent.demo.loadgen ``args`` in the memcg, following its progress.
        Returns: how it ended."""
        kills0 = self.memcg.oom_kill_count()
        child = self._spawn(args)
        stopped = await follow(child, progress, stop)
        while child.poll() is None:
            await aio.sleep_ms(2)
        end_ms = aio.ticks_ms()
        child.stdout.close()
        return ChildEnd(child.returncode, end_ms, self.memcg.oom_kill_count() - kills0, stopped)

    async def fill_page_cache(self, file_mib: Optional[int] = None) -> Progress:
        """Read a file (default 1.5x the limit) once from inside the memcg.
        Returns: the reader's progress (one pass)."""
        path = self.file(file_mib or self.limit_mib * 3 // 2)
        drop_cached(path)
        progress = Progress()
        await self._run(("read", path), progress)
        return progress

    async def ramp(self, rate_mib_s: float = 10.0, progress: Optional[Progress] = None,
                   stop: Optional[Callable[[], bool]] = None) -> ChildEnd:
        """Allocate anonymous memory at ``rate_mib_s`` until the OOM kill or
        ``stop()``; ``progress`` gets the MiB allocated vs time."""
        return await self._run(("anon", "--rate", rate_mib_s), progress or Progress(), stop)

    async def churn(self, seconds: float = 60.0, file_factor: int = 3,
                    progress: Optional[Progress] = None) -> ChildEnd:
        """Re-read a file ``file_factor`` times the limit for ``seconds``;
        ``progress`` counts the passes."""
        path = self.file(self.limit_mib * file_factor)
        drop_cached(path)
        return await self._run(("read", path, "--seconds", seconds), progress or Progress())

    async def spike(self, size_mib: int = 70, hold_s: float = 2.0,
                    progress: Optional[Progress] = None) -> ChildEnd:
        """Allocate ``size_mib`` as fast as possible, hold it, then exit (release)."""
        return await self._run(("anon", "--rate", 0, "--max-mb", size_mib, "--hold", hold_s),
                               progress or Progress())

    async def idle(self, seconds: float) -> None:
        """Do nothing in the memcg for ``seconds``."""
        await aio.sleep_ms(int(seconds * 1000))


async def watching(watch: Watch, body: "Any") -> Any:
    """Run coroutine ``body`` while ``watch`` senses; then stop the watch.
    Returns: what ``body`` returned."""
    task = aio.create_task(watch.run())
    try:
        return await body
    finally:
        task.cancel()
        await aio.gather(task, return_exceptions=True)
