"""The processes of ``memagent demo``'s cooperative-apps mode: the agent
(``memagent run``, outside the memcg) and the cache apps (inside it).

:class:`Coop` starts them, reads what they say (the apps' stdout lines, the
agent's events file) and stops only what it started.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import IO, Any, Dict, List, Optional, Tuple

from ..core.levels import LEVEL_NAMES, Notification
from . import scenario
from .show import DemoError

# The cache apps: memagent.demo.cacheapp, inside the memcg.
CACHE_APP_ARGV = (sys.executable, "-u", "-m", "memagent.demo.cacheapp")
# Only the built-in release_caches and kill_background plugins (no drop-in
# directory of this machine), kill_background in dry run (its default, said
# here too): it shows whom it would kill, and the demo never kills.
AGENT_CONFIG = ("[plugins]\nenable = release_caches, kill_background\ndir = %s\n"
                "[kill_background]\ndry_run = yes\n")


class Coop:
    """The cooperative-apps side of a live run: ``memagent run`` as a real
    process outside the memcg (on a socket in a temp directory, events to a
    file there), and ``n`` cache apps started inside ``hs``'s memcg.

    :meth:`close` stops only what it started (by Popen, never by name) and
    removes the temp directory; the memcg itself is the Handset's.
    """

    def __init__(self, hs: scenario.Handset, n: int, cache_mib: int) -> None:
        self.hs = hs
        self.n = n
        self.cache_mib = cache_mib
        self.tmp = tempfile.mkdtemp(prefix="memagent-demo-")
        self.sock = os.path.join(self.tmp, "agent.sock")
        self.events_path = os.path.join(self.tmp, "events.jsonl")
        self.log_path = os.path.join(self.tmp, "agent.log")
        self.agent: "Optional[subprocess.Popen[bytes]]" = None
        self.apps: "List[Tuple[str, subprocess.Popen[bytes]]]" = []
        self._events: Optional[IO[str]] = None
        self._partial: Dict[str, bytes] = {}
        self.cache_kib: Dict[str, int] = {}  # what each app still holds (its own report)

    def start_agent(self) -> None:
        """Start the agent (own session: Ctrl-C on the terminal is ours to handle)."""
        cfg = os.path.join(self.tmp, "memagent.conf")
        with open(cfg, "w") as f:
            f.write(AGENT_CONFIG % os.path.join(self.tmp, "plugins.d"))
        with open(self.log_path, "wb") as log_file:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "memagent", "run", "-c", cfg, "--memcg", self.hs.path,
                 "--socket", self.sock, "--events-json", self.events_path],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)

    def start_apps(self) -> None:
        """Start the cache apps inside the memcg."""
        for i in range(self.n):
            name = "cache%d" % (i + 1)
            child = self.hs.memcg.spawn(
                list(CACHE_APP_ARGV) + ["--socket", self.sock, "--name", name,
                                        "--cache-mib", str(self.cache_mib)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, start_new_session=True)
            assert child.stdout is not None
            os.set_blocking(child.stdout.fileno(), False)
            self.apps.append((name, child))

    def agent_log_tail(self, lines: int = 8) -> str:
        """Return: the last ``lines`` of the agent's log, for an error message."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).strip()
        except OSError:
            return ""

    def check_agent(self) -> None:
        """Raises: DemoError if the agent has exited."""
        if self.agent is not None and self.agent.poll() is not None:
            raise DemoError("the agent exited (status %s): %s"
                            % (self.agent.returncode, self.agent_log_tail()))

    def app_lines(self) -> List[Tuple[str, List[str]]]:
        """Return: (app name, its complete new stdout lines) for each app."""
        out = []
        for name, child in self.apps:
            assert child.stdout is not None
            data = b""
            while True:
                try:
                    chunk = os.read(child.stdout.fileno(), 65536)
                except (BlockingIOError, ValueError):
                    break
                if not chunk:
                    break
                data += chunk
            lines = (self._partial.get(name, b"") + data).split(b"\n")
            self._partial[name] = lines.pop()
            out.append((name, [line.decode("ascii", "replace") for line in lines]))
        return out

    def new_events(self) -> Tuple[List[Notification], List[Dict[str, Any]]]:
        """Return: the agent's notifications and its plugins' actions (kill
        choices, source switches) written since the last call."""
        notes: List[Notification] = []
        actions: List[Dict[str, Any]] = []
        if self._events is None:
            try:
                self._events = open(self.events_path)
            except FileNotFoundError:
                return notes, actions
        while True:
            pos = self._events.tell()
            line = self._events.readline()
            if not line.endswith("\n"):
                self._events.seek(pos)  # a partial line: read it whole next time
                return notes, actions
            obj = json.loads(line)
            if "action" in obj:
                actions.append(obj)
                continue
            notes.append(Notification(int(obj["t_ms"]), LEVEL_NAMES.index(obj["level"]),
                                      LEVEL_NAMES.index(obj["prev_level"]), str(obj["reason"]),
                                      int(obj["avail_kib"]), int(obj["total_kib"]),
                                      obj.get("eta_ms")))

    def close(self) -> None:
        """SIGTERM the apps then the agent (SIGKILL after 5 s), remove the temp directory."""
        try:
            for _name, child in self.apps:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for _name, child in self.apps:
                _stop(child, 5.0)
                if child.stdout is not None:
                    child.stdout.close()
            if self.agent is not None:
                if self.agent.poll() is None:
                    self.agent.send_signal(signal.SIGTERM)
                _stop(self.agent, 5.0)
        finally:
            if self._events is not None:
                self._events.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def _stop(child: "subprocess.Popen[bytes]", timeout_s: float) -> None:
    """Wait for ``child`` (ours) to exit; SIGKILL it after ``timeout_s``."""
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()

