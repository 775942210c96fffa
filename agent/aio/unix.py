"""The kernel's calls the agent makes, one name each on both interpreters.

CPython has them in ``os``, ``signal`` and ``ctypes``; MicroPython's unix
port has none of ``os.open/read/write/close/getpid``, no ``signal`` and no
``ctypes``, and reaches libc through ``ffi`` instead (:mod:`._libc`).  The
rest of the package calls these and never branches on the interpreter.

The numbers are Linux's, the same on x86_64 and on 32-bit ARM EABI (the
boards): open flags, signals, mlockall flags, and the syscalls of the
unified table (pidfd_send_signal 424, pidfd_open 434, process_mrelease
448).  Errors are OSError with the kernel's errno; on MicroPython the
shim installs the subclasses CPython raises (FileNotFoundError,
ProcessLookupError, PermissionError, BlockingIOError ...) and raises them
from these calls, so ``except ProcessLookupError`` means the same on both.
MicroPython's own ``open()`` and ``os.stat`` raise a plain OSError: code
that must tell ENOENT apart checks ``e.errno`` (see :func:`is_missing`).
"""

import errno
import os
import sys

try:
    from typing import TYPE_CHECKING, Any, List, Optional, Tuple
except ImportError:  # MicroPython
    TYPE_CHECKING = False  # type: ignore[misc]

MICROPYTHON = sys.implementation.name == "micropython"

O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
SEEK_SET = 0
SIGHUP, SIGINT, SIGKILL, SIGTERM = 1, 2, 9, 15
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
SYS_PIDFD_SEND_SIGNAL, SYS_PIDFD_OPEN, SYS_PROCESS_MRELEASE = 424, 434, 448
SOL_SOCKET, SO_PEERCRED = 1, 17
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# errno values MicroPython's errno module does not name (the same on x86 and ARM)
ENOENT, ESRCH, EBUSY, ENOSYS, ENOPROTOOPT, ENOTSUP = 2, 3, 16, 38, 92, 95

if MICROPYTHON and not TYPE_CHECKING:  # pragma: no cover - exercised under MicroPython
    from . import _libc as _sys
else:
    from . import _cpython as _sys

#: Where the calls come from: "os" (CPython) or "ffi" (MicroPython).
VIA = _sys.VIA


def is_missing(e: BaseException) -> bool:
    """Return: True if ``e`` is an OSError for a missing file (ENOENT)."""
    return isinstance(e, OSError) and bool(e.args) and e.args[0] == errno.ENOENT


def open_fd(path: str, flags: int) -> int:
    """open(2) ``path`` with ``flags`` (O_CLOEXEC always added).
    Returns: the fd.  Raises: OSError."""
    return _sys.open_fd(path, flags | O_CLOEXEC)


def read(fd: int, size: int) -> bytes:
    """read(2) up to ``size`` bytes.  Returns: them (b"" at EOF).
    Raises: BlockingIOError when a non-blocking fd has nothing; OSError."""
    return _sys.read(fd, size)


def write(fd: int, data: bytes) -> int:
    """write(2) ``data``.  Returns: the bytes written.  Raises: OSError."""
    return _sys.write(fd, data)


def close(fd: int) -> None:
    """close(2) ``fd``.  Raises: OSError (EBADF)."""
    _sys.close(fd)


def lseek(fd: int, pos: int, how: int = SEEK_SET) -> int:
    """lseek(2).  Returns: the new offset.  Raises: OSError."""
    return _sys.lseek(fd, pos, how)


def dup(fd: int) -> int:
    """dup(2), close-on-exec.  Returns: the new fd.  Raises: OSError."""
    return _sys.dup(fd)


def getpid() -> int:
    """Return: this process's pid."""
    return _sys.getpid()


def geteuid() -> int:
    """Return: this process's effective uid."""
    return _sys.geteuid()


def unlink(path: str) -> None:
    """Remove the file ``path``.  Raises: OSError."""
    _sys.unlink(path)


def chmod(path: str, mode: int) -> None:
    """chmod(2).  Raises: OSError."""
    _sys.chmod(path, mode)


def chown(path: str, uid: int, gid: int) -> None:
    """chown(2) (-1 keeps that id).  Raises: OSError."""
    _sys.chown(path, uid, gid)


def monotonic_ms() -> int:
    """Return: CLOCK_MONOTONIC in milliseconds, the clock other processes
    read too (MicroPython's ticks_ms is the same clock, wrapped at 2**30).
    Raises: OSError."""
    return int(_sys.monotonic_ms())


def listdir(path: str) -> "List[str]":
    """Return: the names in directory ``path``.  Raises: OSError."""
    return list(os.listdir(path))


def isdir(path: str) -> bool:
    """Return: True if ``path`` is a directory (False if it cannot be stat'ed)."""
    try:
        return (os.stat(path)[0] & 0o170000) == 0o040000
    except OSError:
        return False


def exists(path: str) -> bool:
    """Return: True if ``path`` can be stat'ed."""
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def file_mode(path: str) -> int:
    """Return: ``path``'s st_mode.  Raises: OSError."""
    return int(os.stat(path)[0])


def strerror(err: int) -> str:
    """Return: the C library's message for errno ``err``."""
    return _sys.strerror(err)


def eventfd(initval: int = 0) -> int:
    """Return: a new non-blocking, close-on-exec eventfd.  Raises: OSError."""
    return _sys.eventfd(initval, O_NONBLOCK | O_CLOEXEC)


def pidfd_open(pid: int) -> "Optional[int]":
    """Return: a pidfd for ``pid``, or None where there are none (Linux
    before 5.3: ENOSYS; a Python without them).  Raises: ProcessLookupError
    if no such process, other OSError (EMFILE...)."""
    try:
        return _sys.pidfd_open(pid)
    except OSError as e:
        if e.args and e.args[0] == ENOSYS:
            return None
        raise


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """Send ``sig`` to the process of ``pidfd``.  Raises:
    ProcessLookupError (it exited), PermissionError, OSError."""
    _sys.pidfd_send_signal(pidfd, sig)


def process_mrelease(pidfd: int) -> None:
    """Reap the memory of the dying process of ``pidfd`` now (Linux 5.15).
    Raises: OSError (ENOSYS, EINVAL: not dying, ESRCH: reaped)."""
    _sys.process_mrelease(pidfd)


def mlockall(flags: int) -> None:
    """mlockall(2) with ``flags`` (MCL_*).  Raises: OSError."""
    _sys.mlockall(flags)


def set_nice(value: int) -> None:
    """setpriority(2): this process's nice value (-20 highest, 19 lowest).
    Raises: OSError (EACCES without CAP_SYS_NICE below the current one)."""
    _sys.set_nice(value)


def mallopt(param: int, value: int) -> bool:
    """glibc's mallopt.  Returns: True if it was set (False without it)."""
    return _sys.mallopt(param, value)


def set_process_name(name: str) -> bool:
    """prctl(PR_SET_NAME): the comm ``ps``, ``pidof`` and the OOM report
    show.  MicroPython started by a loader is called "ld-linux-armhf."
    otherwise.  Returns: True if set."""
    return _sys.set_process_name(name)


def peer_credentials(sock: "Any") -> "Optional[Tuple[int, int, int]]":
    """Return: SO_PEERCRED ``(pid, uid, gid)`` of the Unix socket ``sock``,
    None when there are none (not a Unix socket, closed)."""
    return _sys.peer_credentials(sock)


def getsockopt_int(sock: "Any", level: int, option: int) -> int:
    """Return: an int socket option.  Raises: OSError (ENOPROTOOPT...)."""
    return _sys.getsockopt_int(sock, level, option)


def machine() -> str:
    """Return: the machine name uname(2) gives ("x86_64", "armv7l"), or ""."""
    uname = getattr(os, "uname", None)
    if uname is not None:
        return str(uname().machine)
    try:
        import platform

        return str(platform.platform().split("-")[-1])
    except (ImportError, AttributeError, IndexError):
        return ""


def hostname() -> str:
    """Return: the node name uname(2) gives ("handset"), or ""."""
    uname = getattr(os, "uname", None)
    if uname is not None:
        try:
            return str(uname().nodename)
        except (AttributeError, OSError):
            pass
    try:
        with open("/proc/sys/kernel/hostname") as f:
            return f.read().strip()
    except OSError:
        return ""


def exit_now(code: int) -> None:
    """End the process now with ``code``, without the interpreter's
    teardown (os._exit).  Never returns."""
    _sys.exit_now(code)


EPOLLIN, EPOLLPRI, EPOLLERR, EPOLLHUP = 1, 2, 8, 16


def epoll() -> "Any":
    """Return: a new epoll object: ``fileno()``, ``register(fd, mask)``,
    ``unregister(fd)``, ``poll(timeout_s)`` ([(fd, mask)]), ``clear()``
    (consume the readiness), ``close()``.
    Raises: OSError."""
    return _sys.Epoll()


_ERRNO_NAMES = {1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 9: "EBADF", 10: "ECHILD",
                11: "EAGAIN", 13: "EACCES", 16: "EBUSY", 22: "EINVAL", 24: "EMFILE",
                32: "EPIPE", 38: "ENOSYS", 92: "ENOPROTOOPT", 95: "EOPNOTSUPP"}


def errno_name(err: int) -> str:
    """Return: the symbolic name of errno ``err`` ("ESRCH"), or its number
    as text (MicroPython's errno names few of them)."""
    return str(errno.errorcode.get(err) or _ERRNO_NAMES.get(err) or err)


def why(e: BaseException) -> str:
    """Return: the text of an error for a log line: an OSError's message
    ("No such file or directory"; MicroPython's OSError has no strerror),
    else ``str(e)``."""
    text = getattr(e, "strerror", None)
    if text:
        return str(text)
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return strerror(e.args[0])
    return str(e)


def device_number(fd: int) -> "Optional[int]":
    """Return: fstat(fd).st_rdev (0 for a file that is no device), None
    where it cannot be read (MicroPython's ``os`` has no fstat)."""
    fstat = getattr(os, "fstat", None)
    if fstat is None:
        return None
    try:
        return int(fstat(fd).st_rdev)
    except OSError:
        return None


def sockaddr(path: str) -> "Any":
    """Return: the address of the Unix socket ``path`` as ``connect`` and
    ``bind`` take it: the path (CPython), a packed sockaddr_un (MicroPython)."""
    if MICROPYTHON:  # pragma: no cover
        import socket
        import struct

        return struct.pack("H", socket.AF_UNIX) + path.encode() + b"\0"
    return path


def stderr_is_null() -> bool:
    """Return: True if fd 2 is /dev/null or closed: nobody reads it."""
    try:
        err, null = os.stat("/proc/self/fd/2"), os.stat("/dev/null")
    except OSError:
        return True
    return (err[1], err[2]) == (null[1], null[2])


def ioctl_read(fd: int, request: int, size: int) -> bytes:
    """ioctl(2) ``request`` (an unsigned long: _IOR numbers have bit 31 set)
    on ``fd`` with a ``size``-byte buffer the kernel fills (EVIOCGNAME,
    EVIOCGPROP, TIOCGPTN ...).  Returns: the whole buffer (the caller
    knows where its data ends).  Raises: OSError (ENOTTY: ``fd`` is not
    the kind of file that answers ``request``)."""
    return _sys.ioctl_read(fd, request, size)
