"""Running the local ``ssh`` or ``adb`` client for :mod:`memagent.remote`,
bounded: a deadline kills it, its output is capped, its lines are too.

A top-level (CLI layer) module: CPython only, standard library only.
"""

import json
import os
import selectors
import subprocess
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

# The exit codes of `memagent status` / `events` / `plot` when fetching
# (/work/notes13 contract; docs/remote.md has the table).
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_BUSY = 4
EXIT_TOO_LARGE = 5
EXIT_NO_ANSWER = 6
EXIT_UNREACHABLE = 7
EXIT_AUTH = 8
EXIT_MISSING = 9
EXIT_VERSION = 10

MAX_STDOUT_BYTES = 4 << 20  # a status with thousands of apps is well under 1 MiB
MAX_STDERR_BYTES = 64 << 10  # kept for the messages (the tail beyond is dropped)
MAX_LINE_BYTES = 256 << 10  # one event line (the agent's own bound is far lower)
READ_BYTES = 65536


class RemoteError(Exception):
    """Asking the device failed.  ``exit_code``: the CLI's exit status
    (EXIT_*); ``str(self)``: one line that names the device."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def spawn(argv: Sequence[str], name: str) -> "subprocess.Popen[bytes]":
    """Return: the started client, stdin from /dev/null (it never waits
    for a keyboard), stdout and stderr piped.  Raises: RemoteError (exit 7)
    when the client cannot be run (not installed)."""
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)
    except OSError as e:
        raise RemoteError(EXIT_UNREACHABLE, "cannot ask %s: cannot run %s: %s"
                          % (name, argv[0], e.strerror or e))


def reap(proc: "subprocess.Popen[bytes]") -> None:
    """Kill ``proc`` if it still runs, wait for it, close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def pump(proc: "subprocess.Popen[bytes]", err: bytearray, deadline: Optional[float],
         name: str) -> Iterator[bytes]:
    """Yield: ``proc``'s stdout as it comes, until both pipes close; its
    stderr goes into ``err`` (its first MAX_STDERR_BYTES).  ``deadline``:
    time.monotonic() by which it must be done (None: no limit).
    Raises: RemoteError (exit 6) at the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    try:
        while sel.get_map():
            left_s = None if deadline is None else deadline - time.monotonic()
            if left_s is not None and left_s <= 0:
                raise RemoteError(EXIT_NO_ANSWER, "%s gave no answer in time" % name)
            for key, _ in sel.select(left_s):
                chunk = os.read(key.fd, READ_BYTES)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stderr:
                    err += chunk[:max(0, MAX_STDERR_BYTES - len(err))]
                else:
                    yield chunk
    finally:
        sel.close()


def wait_exit(proc: "subprocess.Popen[bytes]", deadline: Optional[float], name: str) -> int:
    """Return: ``proc``'s exit status, once its pipes are closed.
    Raises: RemoteError (exit 6) if it does not end by ``deadline``."""
    try:
        return proc.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RemoteError(EXIT_NO_ANSWER, "%s gave no answer in time" % name)


def run_remote(argv: Sequence[str], timeout_s: float, name: str = "",
               max_stdout_bytes: int = MAX_STDOUT_BYTES) -> Tuple[int, bytes, bytes]:
    """Run the client ``argv`` to its end, within ``timeout_s``.

    Returns: (its exit status, its stdout, the first MAX_STDERR_BYTES of
    its stderr).
    Raises: RemoteError: exit 5 when stdout passes ``max_stdout_bytes``,
    6 at the timeout, 7 when the client cannot be run; the client is
    killed then.  ``name``: the device, for the messages.
    """
    name = name or argv[0]
    deadline = time.monotonic() + timeout_s
    proc = spawn(argv, name)
    out, err = bytearray(), bytearray()
    try:
        for chunk in pump(proc, err, deadline, name):
            out += chunk
            if len(out) > max_stdout_bytes:
                raise RemoteError(EXIT_TOO_LARGE, "%s answered with over %d bytes"
                                  % (name, max_stdout_bytes))
        return wait_exit(proc, deadline, name), bytes(out), bytes(err)
    finally:
        reap(proc)


def run_lines(argv: Sequence[str], timeout_s: Optional[float], name: str,
              status: List[int], err: bytearray) -> Iterator[bytes]:
    """Yield: each stdout line of the client ``argv`` (without its newline)
    as it arrives; then ``status`` gets its exit status appended and
    ``err`` holds its stderr.  Closing the generator kills the client.
    Raises: RemoteError: 5 for a line over MAX_LINE_BYTES, 6 at the
    timeout (None: none), 7 when the client cannot be run."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    proc = spawn(argv, name)
    buf = bytearray()
    try:
        for chunk in pump(proc, err, deadline, name):
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    break
                line = bytes(buf[:end])
                del buf[:end + 1]
                yield line
            if len(buf) > MAX_LINE_BYTES:
                raise RemoteError(EXIT_TOO_LARGE, "%s sent a line over %d bytes"
                                  % (name, MAX_LINE_BYTES))
        if buf:
            yield bytes(buf)
        status.append(wait_exit(proc, deadline, name))
    finally:
        reap(proc)


def last_line(text: str, default: str) -> str:
    """Return: the last non-blank line of ``text`` (for one-line messages)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else default


def parse_json(text: str) -> Optional[Dict[str, Any]]:
    """Return: the JSON object ``text`` holds, else None.  Lines before the
    object's first line (old adbd puts stderr on stdout) are skipped."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("{"):
            try:
                obj = json.loads("\n".join(lines[i:]))
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None
