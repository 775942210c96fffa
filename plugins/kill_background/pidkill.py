"""Killing one process without ever hitting a recycled pid.

:func:`kill` pins the process with ``pidfd_open`` (Linux 5.3), then checks
that the pid still names the process that was chosen (its start time in
``/proc/PID/stat`` equals the one recorded when it was scanned); from then on
every signal goes through the pidfd, which names that process and no other,
whatever happens to the pid.  A registered app is not pinned here: its
process was pinned when it connected (``AppView.process``), and the kill
signals through a dup of that pidfd, or not at all once that process has
exited.  The sequence:

1. ``pidfd_send_signal(SIGTERM)``, then wait up to ``grace_ms`` for the
   pidfd to become readable (the kernel marks it so when the process exits;
   polled through :class:`memagent.aio.FdWatch`, no timer); with a
   ``grace_ms`` of 0 no SIGTERM at all;
2. if still alive: ``SIGKILL``, then ``process_mrelease`` (Linux 5.15) so
   the kernel reaps the victim's memory at once instead of when its last
   thread leaves the kernel; then wait up to ``wait_ms``.

process_mrelease is syscall 448 on arm, arm64, x86 and the other
architectures of the unified table; it is called by number (through
:mod:`memagent.aio.unix`: ctypes on CPython, ffi on MicroPython) and a
kernel without it (ENOSYS) or an architecture with its own numbering (mips,
alpha, ia64) is reported, never fatal.

The start-time check has the resolution of the clock tick (10 ms at
USER_HZ 100): a pid reused by a process started in the same tick as the
victim would not be told apart.  Pids cycle through ``pid_max`` (32768 at
least) before reuse, so that needs 32,768 forks in one tick.

The same on CPython and MicroPython: every call is :mod:`memagent.aio.unix`'s.
"""


try:
    from typing import Any, Dict, Optional, Tuple
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.aio import unix
from memagent.core.pidfs import read_stat
from memagent.core.pidref import ProcessRef

# Architectures whose syscall numbers are not the unified table's.
_OWN_SYSCALL_TABLE = ("mips", "alpha", "ia64")

EXITED, KILLED, STUCK, REUSED, GONE, DENIED = (
    "exited", "killed", "stuck", "reused", "gone", "denied")



def supported() -> Optional[str]:
    """Return: None if this Python and kernel can kill by pidfd, else why not."""
    try:
        fd = unix.pidfd_open(unix.getpid())
    except OSError as e:
        return "pidfd_open: %s" % unix.why(e)
    if fd is None:
        return "pidfd_open: not available (needs Linux 5.3+ and Python 3.9+)"
    unix.close(fd)
    return None


def process_mrelease(pidfd: int) -> str:
    """Ask the kernel to reap the memory of the dying process ``pidfd``
    names now.  Returns: "ok", or why not ("ENOSYS: ..." on kernels before
    5.15, "EINVAL" if it is not dying yet, "ESRCH" if already reaped...).
    Never raises."""
    machine = unix.machine()
    if machine.startswith(_OWN_SYSCALL_TABLE):
        return "unsupported: %s numbers its syscalls differently" % machine
    try:
        unix.process_mrelease(pidfd)
    except AttributeError as e:
        return "unsupported: %s" % e
    except OSError as e:
        err = e.args[0] if e.args else 0
        return "%s: %s" % (unix.errno_name(err), unix.strerror(err))
    return "ok"


class KillResult:
    """What :func:`kill` did to one process.

    ``outcome``: EXITED (after SIGTERM), KILLED (after SIGKILL), STUCK
    (still there after SIGKILL and ``wait_ms``), REUSED (the pid names
    another process now: nothing was signalled), GONE (it exited before it
    could be signalled), DENIED (EPERM).  ``sigkill``: SIGKILL was sent;
    ``ms``: from SIGTERM to the exit seen (or to giving up); ``mrelease``:
    what process_mrelease said, None if not called.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.outcome = GONE
        self.sigkill = False
        self.ms = 0
        self.mrelease: Optional[str] = None
        self.error: Optional[str] = None

    @property
    def signalled(self) -> bool:
        """True if a signal was sent to the process."""
        return self.outcome in (EXITED, KILLED, STUCK)

    def as_dict(self) -> Dict[str, Any]:
        """Return: the result, JSON-ready."""
        return {"pid": self.pid, "outcome": self.outcome, "sigkill": self.sigkill,
                "ms": self.ms, "mrelease": self.mrelease, "error": self.error}


def open_checked(pid: int, started: Optional[int], proc_root: str = "/proc",
                 process: Optional[ProcessRef] = None) -> Tuple[Optional[int], str]:
    """Pin ``pid`` with a pidfd and check it is still the process that
    started at ``started`` (clock ticks; None skips the check); with
    ``process`` (a registered app's, bound at connect), take a dup of its
    pidfd instead, if that process is still ``pid`` and alive.
    Returns: (pidfd, "") or (None, REUSED/GONE/DENIED).  The caller closes
    the pidfd.  Raises: OSError from pidfd_open other than ESRCH/EPERM."""
    if process is not None:
        fd = process.dup() if process.pid == pid else None
        return (fd, "") if fd is not None else (None, GONE)
    try:
        pidfd = unix.pidfd_open(pid)
    except ProcessLookupError:
        return None, GONE
    except PermissionError:
        return None, DENIED
    # The pidfd pins the process that holds the pid now; the stat read
    # after it names the same one as long as that process still exists.
    if pidfd is None:
        return None, DENIED  # supported() said so at start: no pidfds here
    st = read_stat(pid, proc_root)
    if started is not None and (st is None or st.started != started):
        unix.close(pidfd)
        return None, GONE if st is None else REUSED
    return pidfd, ""


async def wait_exit(pidfd: int, timeout_ms: int) -> bool:
    """Wait until the process of ``pidfd`` has exited.  Returns: True if it
    did within ``timeout_ms``."""
    watch = aio.FdWatch(pidfd)
    try:
        return await watch.wait(timeout_ms)
    finally:
        watch.close()


def _send(pidfd: int, sig: int, result: KillResult) -> bool:
    """Send ``sig``.  Returns: False (result set) if the process is gone or
    may not be signalled."""
    try:
        unix.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        result.outcome = GONE
        return False
    except PermissionError as e:
        result.outcome, result.error = DENIED, str(e)
        return False
    return True


async def kill(pid: int, started: Optional[int], grace_ms: int = 1000, wait_ms: int = 3000,
               mrelease: bool = True, proc_root: str = "/proc",
               process: Optional[ProcessRef] = None) -> KillResult:
    """Kill process ``pid`` if it is still the one that started at
    ``started`` (with ``process``, a registered app's: if that bound
    process is alive, through its pidfd): SIGTERM, ``grace_ms`` to exit,
    then SIGKILL (and process_mrelease if ``mrelease``) and ``wait_ms`` more.
    ``grace_ms`` 0: SIGKILL at once, no SIGTERM.

    Returns: a KillResult (see there); a reused pid gives REUSED with
    nothing signalled.  Raises: OSError only for an unexpected pidfd_open
    failure (EMFILE, ENOSYS: see :func:`supported`).
    """
    result = KillResult(pid)
    pidfd, why = open_checked(pid, started, proc_root, process)
    if pidfd is None:
        result.outcome = why
        return result
    try:
        t0_ms = aio.ticks_ms()
        # No grace: SIGKILL at once, as lmkd does (a SIGTERM then would only
        # make the victim page in its handler).
        if grace_ms > 0 and not _send(pidfd, unix.SIGTERM, result):
            return result
        if grace_ms > 0 and await wait_exit(pidfd, grace_ms):
            result.outcome = EXITED
        else:
            result.sigkill = True
            if not _send(pidfd, unix.SIGKILL, result):
                return result
            if mrelease:
                result.mrelease = process_mrelease(pidfd)
            result.outcome = KILLED if await wait_exit(pidfd, wait_ms) else STUCK
        result.ms = aio.ticks_ms() - t0_ms
        return result
    finally:
        unix.close(pidfd)
