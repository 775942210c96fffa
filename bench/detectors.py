"""The detectors that bench/sensing.py compares, all watching one memcg.

* :class:`AgentProcess`: the real ``memagent run --memcg PATH --events-json
  FILE`` process (its notifications, its context switches, its RSS);
* :class:`RawEvents`: a bare cgroup v1 eventfd registered through
  ``cgroup.event_control``: vmpressure ``low`` on ``memory.pressure_level``,
  or one threshold on ``memory.usage_in_bytes`` (fires on crossing it in
  either direction, so each event records the usage it found);
* :class:`EarlyoomRule`: earlyoom's rule (available memory at or below 10%
  of total, read every 100 ms) applied to the memcg's available estimate.

Times are monotonic milliseconds (:func:`memagent.aio.ticks_ms`), the clock
of the agent's ``t_ms`` too.
"""

import json
import os
import signal
import subprocess
import sys
import time
from typing import IO, Any, Dict, List, Optional, Tuple

from memagent import aio
from memagent.core.pidfs import parse_kib_fields
from memagent.sense import domains
from memagent.sense.sources.cgroup1 import drain, eventfd, register_event

READY_TIMEOUT_S = 15.0


def proc_status(pid: int) -> Dict[str, int]:
    """Return: VmRSS (KiB) and ctxt switches (voluntary + nonvoluntary) of ``pid``.
    Raises: OSError if the process is gone."""
    with open("/proc/%d/status" % pid) as f:
        text = f.read()
    ctxt = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            ctxt += int(value)
    return {"rss_kib": parse_kib_fields(text).get("VmRSS") or 0, "ctxt": ctxt}


class RawEvents:
    """One eventfd on a cgroup v1 control file; records (t_ms, count, usage_kib)
    of every wake.  Raises (constructor): OSError if the kernel refuses."""

    def __init__(self, label: str, group_dir: str, file_name: str, args: str) -> None:
        self.label = label
        self.group_dir = group_dir
        self.fd = eventfd()
        try:
            register_event(group_dir, self.fd, file_name, args)
        except OSError:
            os.close(self.fd)
            raise
        self.events: List[Tuple[int, int, int]] = []

    def _usage_kib(self) -> int:
        try:
            with open(self.group_dir + "/memory.usage_in_bytes") as f:
                return int(f.read()) // 1024
        except OSError:
            return -1

    async def run(self) -> None:
        """Record wakes until cancelled (or until the group is removed)."""
        watch = aio.FdWatch(self.fd)
        try:
            while True:
                await watch.wait(None)
                count = drain(self.fd)
                if count:
                    self.events.append((aio.ticks_ms(), count, self._usage_kib()))
        finally:
            watch.close()

    def first_ms(self, after_ms: int = 0) -> Optional[int]:
        """Return: the time of the first wake at or after ``after_ms``, or None."""
        return next((t for t, _, _ in self.events if t >= after_ms), None)

    def count(self, start_ms: int, end_ms: int) -> int:
        """Return: how many wakes came in [start_ms, end_ms]."""
        return sum(1 for t, _, _ in self.events if start_ms <= t <= end_ms)

    def close(self) -> None:
        """Close the eventfd (the kernel unregisters it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class EarlyoomRule:
    """earlyoom's trigger on the memcg: avail <= ``pct`` of the limit, every ``interval_ms``.
    ``onsets`` holds the times it went from above to at-or-below."""

    def __init__(self, group_dir: str, pct: int = 10, interval_ms: int = 100) -> None:
        self.label = "earlyoom rule (avail <= %d%%, %d ms poll)" % (pct, interval_ms)
        self.domain = domains.MemcgDomain(group_dir)
        self.pct = pct
        self.interval_ms = interval_ms
        self.onsets: List[Tuple[int, int]] = []  # (t_ms, avail_kib)
        self.polls = 0

    async def run(self) -> None:
        """Poll until cancelled (or until the group is removed)."""
        below = False
        try:
            while True:
                r = self.domain.read(aio.ticks_ms())
                self.polls += 1
                now_below = r.avail_kib * 100 <= r.total_kib * self.pct
                if now_below and not below:
                    self.onsets.append((r.t_ms, r.avail_kib))
                below = now_below
                await aio.sleep_ms(self.interval_ms)
        except FileNotFoundError:
            return


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "board", "common", "micropython", "memagent")
# Debian trixie's micropython 1.25 with ffi (.ci/micropython-trixie installs it)
TRIXIE_MICROPYTHON = os.path.join(REPO, ".ci", "cache", "micropython-trixie", "micropython")


def micropython_lib(workdir: str) -> str:
    """Lay agent/ out as ``memagent`` and plugins/ as ``memagent/plugins``
    (symlinks, as MicroPython imports them: it has no package-dir mapping)
    under ``workdir``.  Returns: the directory for MEMAGENT_MPY_LIB."""
    lib = os.path.join(workdir, "mpy-lib")
    pkg = os.path.join(lib, "memagent")
    if not os.path.isdir(pkg):
        os.makedirs(pkg)
        agent = os.path.join(REPO, "agent")
        for name in os.listdir(agent):
            if name != "__pycache__":
                os.symlink(os.path.join(agent, name), os.path.join(pkg, name))
        os.symlink(os.path.join(REPO, "plugins"), os.path.join(pkg, "plugins"))
    return lib


class AgentProcess:
    """``memagent run --source SOURCE`` on a memcg, as a child of the bench
    (outside the memcg), with its log and events in ``workdir``: on this
    Python (``python -m memagent``), or with ``micropython`` (an
    interpreter's path) through the board's MicroPython launcher."""

    def __init__(self, group_dir: str, workdir: str, source: str = "cgroup1",
                 micropython: Optional[str] = None) -> None:
        tag = "-mpy" if micropython else ""
        self.label = "memagent run (%s%s)" % (source, ", MicroPython" if micropython else "")
        self.events_path = os.path.join(workdir, "agent%s-events.jsonl" % tag)
        self.log_path = os.path.join(workdir, "agent%s.log" % tag)
        args = ["run", "--memcg", group_dir, "--source", source, "--events-json",
                self.events_path, "--no-socket"]
        self.env: Dict[str, str] = {}
        if micropython:
            self.argv = ["sh", LAUNCHER] + args
            self.env = {"MEMAGENT_MICROPYTHON": micropython,
                        "MEMAGENT_MPY_LIB": micropython_lib(workdir)}
        else:
            self.argv = [sys.executable, "-m", "memagent"] + args
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self._log: Optional[IO[bytes]] = None

    def start(self) -> None:
        """Start the agent and wait until it logs its source.
        Raises: RuntimeError with its log if it exits or stays silent."""
        import memagent

        env = dict(os.environ, **self.env)
        package_dir = os.path.dirname(os.path.abspath(memagent.__file__))
        if os.path.basename(package_dir) == "memagent":  # not installed: show the child where
            root = os.path.dirname(package_dir)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if b"source:" in self.log():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("memagent run did not start: %s" % self.log().decode(errors="replace"))

    def log(self) -> bytes:
        """Return: what the agent logged so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def status(self) -> Dict[str, int]:
        """Return: the agent's RSS and context switches now (see proc_status)."""
        assert self.proc is not None
        return proc_status(self.proc.pid)

    def notes(self) -> List[Dict[str, Any]]:
        """Return: the notifications the agent wrote (JSON objects)."""
        try:
            with open(self.events_path) as f:
                objs = [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []
        return [o for o in objs if "action" not in o]  # plugins' actions are not notes

    def actions(self) -> List[Dict[str, Any]]:
        """Return: the plugins' actions the agent wrote (kills, switches)."""
        try:
            with open(self.events_path) as f:
                return [o for o in (json.loads(line) for line in f if line.strip())
                        if "action" in o]
        except OSError:
            return []

    def stop(self) -> None:
        """SIGTERM the agent, wait (SIGKILL after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Sampled:
    """A child started only to be measured (bare interpreter, earlyoom)."""

    def __init__(self, label: str, argv: List[str]) -> None:
        self.label = label
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def status(self) -> Dict[str, int]:
        """Return: its RSS and context switches now.  Raises: OSError if it exited."""
        return proc_status(self.proc.pid)

    def stop(self) -> str:
        """Terminate it.  Returns: what it wrote to stderr (last 400 chars)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")[-400:]
