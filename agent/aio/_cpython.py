"""The kernel's calls on CPython: ``os``, ``signal`` and ``ctypes`` (see
:mod:`.unix`, which is what the rest of the package calls)."""

import ctypes
import os
import signal
import socket
import struct

try:
    from typing import Any, List, Optional, Tuple
except ImportError:  # pragma: no cover
    pass

VIA = "os"
_libc: "Optional[Any]" = None
SYS_PROCESS_MRELEASE = 448


def _c() -> "Any":
    """Return: the process's own C library (glibc, musl or uClibc:
    ``find_library("c")`` finds nothing on a Buildroot image)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _raise(name: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, "%s: %s" % (name, os.strerror(err)))


open_fd = os.open
read = os.read
write = os.write
close = os.close
lseek = os.lseek
getpid = os.getpid
geteuid = os.geteuid
unlink = os.unlink
chmod = os.chmod
chown = os.chown
strerror = os.strerror


def monotonic_ms() -> int:
    """CLOCK_MONOTONIC in milliseconds (time.monotonic is that clock on Linux)."""
    import time

    return int(time.monotonic() * 1000)


def dup(fd: int) -> int:
    """os.dup: close-on-exec already (non-inheritable)."""
    return os.dup(fd)


def eventfd(initval: int, flags: int) -> int:
    """os.eventfd (3.10+), else libc's."""
    if hasattr(os, "eventfd"):
        return int(os.eventfd(initval, flags))
    fd = int(_c().eventfd(initval, flags))
    if fd < 0:
        _raise("eventfd")
    return fd


def pidfd_open(pid: int) -> "Optional[int]":
    """os.pidfd_open (3.9+); None on an older Python."""
    opener = getattr(os, "pidfd_open", None)
    return None if opener is None else int(opener(pid))


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """signal.pidfd_send_signal (3.9+)."""
    signal.pidfd_send_signal(pidfd, sig)


def process_mrelease(pidfd: int) -> None:
    """syscall(448, pidfd, 0) through libc."""
    if _c().syscall(ctypes.c_long(SYS_PROCESS_MRELEASE), ctypes.c_int(pidfd),
                    ctypes.c_uint(0)) != 0:
        _raise("process_mrelease")


def mlockall(flags: int) -> None:
    """libc's mlockall."""
    if _c().mlockall(flags) != 0:
        _raise("mlockall")


def set_nice(value: int) -> None:
    """setpriority(PRIO_PROCESS, 0, value)."""
    os.setpriority(os.PRIO_PROCESS, 0, value)


def mallopt(param: int, value: int) -> bool:
    """glibc's mallopt (False where the C library has none: musl)."""
    try:
        return bool(_c().mallopt(param, value))
    except AttributeError:
        return False


def set_process_name(name: str) -> bool:
    """prctl(PR_SET_NAME, name)."""
    try:
        return int(_c().prctl(15, name.encode()[:15], 0, 0, 0)) == 0
    except AttributeError:
        return False


def peer_credentials(sock: "Any") -> "Optional[Tuple[int, int, int]]":
    """getsockopt(SO_PEERCRED) on the socket object."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def getsockopt_int(sock: "Any", level: int, option: int) -> int:
    """sock.getsockopt(level, option)."""
    return int(sock.getsockopt(level, option))


def exit_now(code: int) -> None:
    """os._exit."""
    os._exit(code)


class Epoll:
    """select.epoll, level-triggered: its fd polls readable while a member
    has an event (how one wait covers many fds)."""

    def __init__(self) -> None:
        import select

        self._ep = select.epoll()

    def fileno(self) -> int:
        """Return: the epoll fd."""
        return int(self._ep.fileno())

    def register(self, fd: int, mask: int) -> None:
        """Watch ``fd`` for ``mask`` (EPOLLIN 1, EPOLLPRI 2, EPOLLERR 8)."""
        self._ep.register(fd, mask)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``."""
        self._ep.unregister(fd)

    def clear(self) -> None:
        """Consume the current readiness (nothing is returned)."""
        self._ep.poll(0)

    def poll(self, timeout: float = 0, max_events: int = 16) -> "List[Tuple[int, int]]":
        """Return: [(fd, mask)] of the members with events (``timeout`` s)."""
        return [(int(fd), int(mask)) for fd, mask in self._ep.poll(timeout, max_events)]

    def close(self) -> None:
        """Close the epoll fd (the members stay open)."""
        self._ep.close()


def ioctl_read(fd: int, request: int, size: int) -> bytes:
    """fcntl.ioctl with a ``size``-byte buffer the kernel fills (mutable,
    so no 1024-byte limit)."""
    import fcntl

    buf = bytearray(size)
    fcntl.ioctl(fd, request, buf, True)
    return bytes(buf)
