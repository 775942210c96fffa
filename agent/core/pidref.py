"""A process pinned by a pidfd: how the agent names a process it acts on.

A pid is only a number: once its process is reaped the kernel hands it out
again, to any user's process.  A pidfd names one process for as long as the
fd is open, and its process's pid cannot be reused while that process has
not been reaped.  So a :class:`ProcessRef` is bound once (for an app, when
its connection is accepted: :mod:`memagent.ipc.session`), and from then on
every use first asks the pidfd whether its process is still there
(:meth:`ProcessRef.alive`); a /proc read is trusted only if the process is
still alive *after* the read (the pid named it during the read).

Where there is no pidfd (Python before 3.9, Linux before 5.3, MicroPython)
the start time (field 22 of ``/proc/PID/stat``) is the only check, with the
resolution of a clock tick.

Identity is read from the real ``/proc`` (never a test's ``[agent]
proc_root`` tree): a pidfd names a real process.

The core makes no system calls of its own: the pidfd calls (``pidfd_open``,
``dup``, ``close``) come from the caller as ``calls``, an object with those
three functions (:mod:`memagent.aio.unix`, on either interpreter).
Without it, a ref uses ``os``'s where this Python has them, and the start
time where not (MicroPython's ``os`` has none).
"""

import errno

from .pidfs import effective_uid, start_time

try:
    import select
except ImportError:  # pragma: no cover - a port without select
    select = None  # type: ignore[assignment]

try:
    from typing import Any, Optional, Tuple
except ImportError:  # MicroPython
    pass

PROC = "/proc"
EXITED = "exited"


class OsCalls:
    """The pidfd calls from ``os`` (CPython 3.9+); none on MicroPython."""

    @staticmethod
    def pidfd_open(pid: int) -> "Optional[int]":
        """Return: a pidfd for process ``pid``, or None where this Python or
        kernel has none (AttributeError, ENOSYS).  Raises: ProcessLookupError
        if no process has that pid, other OSError (EMFILE...)."""
        import os

        opener = getattr(os, "pidfd_open", None)
        if opener is None:
            return None
        try:
            fd: int = opener(pid)
        except OSError as e:
            if e.args and e.args[0] == errno.ENOSYS:  # a kernel before 5.3
                return None
            raise
        return fd

    @staticmethod
    def dup(fd: int) -> int:
        """Return: os.dup(fd)."""
        import os

        return os.dup(fd)

    @staticmethod
    def close(fd: int) -> None:
        """os.close(fd)."""
        import os

        os.close(fd)


def pidfd_open(pid: int, calls: "Any" = None) -> "Optional[int]":
    """Return: a pidfd for process ``pid`` through ``calls`` (default
    :class:`OsCalls`), or None where there are none.  Raises:
    ProcessLookupError if no process has that pid, other OSError."""
    fd: "Optional[int]" = (calls or OsCalls).pidfd_open(pid)
    return fd


def exited(pidfd: int) -> bool:
    """Return: True if the process of ``pidfd`` has exited (the kernel makes
    a pidfd readable then), or if ``pidfd`` is not an open fd."""
    if select is None:  # pragma: no cover
        return False
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class ProcessRef:
    """One process, pinned: ``pid``, ``uid`` (the effective uid it had when
    bound: SO_PEERCRED's), ``started`` (its start time, clock ticks since
    boot), ``pidfd`` (None where there is none) and ``via`` (how it was
    bound: "SO_PEERPIDFD", "pidfd_open" or "start time").  :meth:`close`
    it when done; a closed ref is never alive."""

    __slots__ = ("pid", "uid", "started", "pidfd", "via", "closed", "calls")

    def __init__(self, pid: int, uid: int, started: int, pidfd: "Optional[int]",
                 via: str, calls: "Any" = None) -> None:
        self.pid, self.uid, self.started = pid, uid, started
        self.pidfd, self.via = pidfd, via
        self.calls = calls or OsCalls
        self.closed = False

    def alive(self) -> bool:
        """Return: True while the bound process has not exited (and so its
        pid still names it); False once it exited or the ref is closed.
        Without a pidfd: True while the pid's start time is the bound one."""
        if self.closed:
            return False
        if self.pidfd is None:
            return start_time(self.pid, PROC) == self.started
        return not exited(self.pidfd)

    def changed(self) -> "Optional[str]":
        """Return: why the process is no longer the one bound ("exited",
        "start time ...", "uid ..."), or None if it still is: alive, same
        start time and same effective uid, both read while it was alive."""
        if not self.alive():
            return EXITED
        started, uid = start_time(self.pid, PROC), effective_uid(self.pid, PROC)
        if not self.alive():
            return EXITED
        return _differs(self.started, started, self.uid, uid)

    def dup(self) -> "Optional[int]":
        """Return: a new fd on the same pidfd (the caller closes it), or
        None if the ref is closed, has no pidfd or its process exited."""
        if self.closed or self.pidfd is None or exited(self.pidfd):
            return None
        fd: int = self.calls.dup(self.pidfd)
        return fd

    def close(self) -> None:
        """Close the pidfd (idempotent)."""
        if not self.closed and self.pidfd is not None:
            self.calls.close(self.pidfd)
        self.closed = True

    def __repr__(self) -> str:
        return "ProcessRef(pid %d uid %d via %s%s)" % (self.pid, self.uid, self.via,
                                                       ", closed" if self.closed else "")


def _differs(want_started: int, started: "Optional[int]", want_uid: int,
             uid: "Optional[int]") -> "Optional[str]":
    """Return: what differs between the bound start time and uid and those
    read now (None: nothing)."""
    if started is None or uid is None:
        return EXITED
    if started != want_started:
        return "start time %d, not %d" % (started, want_started)
    if uid != want_uid:
        return "uid %d, not %d" % (uid, want_uid)
    return None


def bind(pid: int, uid: int, pidfd: "Optional[int]" = None,
         via: str = "pidfd_open", calls: "Any" = None) -> "Tuple[Optional[ProcessRef], str]":
    """Pin process ``pid``, which the kernel says has effective uid ``uid``.

    ``pidfd``: one the kernel already gave for it (SO_PEERPIDFD), owned by
    this call from here on; None opens one with ``pidfd_open(pid)``, or
    falls back to the start time where there are no pidfds.  Returns:
    ``(ref, "")``, or ``(None, why)`` when the process exited or its uid
    is not ``uid`` (any pidfd is then closed).  ``calls``: the pidfd calls
    (see the module's docstring).  Raises: OSError from pidfd_open other
    than ESRCH (EMFILE: the agent is out of fds).
    """
    if pidfd is None:
        try:
            pidfd = pidfd_open(pid, calls)
        except ProcessLookupError:
            return None, EXITED
        if pidfd is None:
            via = "start time"
    started, euid = start_time(pid, PROC), effective_uid(pid, PROC)
    ref = ProcessRef(pid, uid, -1 if started is None else started, pidfd, via, calls)
    why = _differs(ref.started, started, uid, euid)
    if why is None and pidfd is not None and exited(pidfd):
        why = EXITED  # the reads may have been of a reused pid
    if why is not None:
        ref.close()
        return None, why
    return ref, ""
