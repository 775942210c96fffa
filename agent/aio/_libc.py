# mypy: ignore-errors
"""The kernel's calls on MicroPython's unix port, through ``ffi`` and libc
(see :mod:`.unix`, which is what the rest of the package calls).

Measured with Debian trixie's micropython 1.25 on x86_64 and in the armhf
guest (../shared notes): SO_PEERCRED through getsockopt, pidfd_open by
syscall number, eventfd, signalfd and mlockall all work.  Each C function
is bound on first use, so a libc without one (musl has no mallopt) fails
only the call that needs it.  Errors raise the OSError subclass CPython
would (installed into builtins on import: MicroPython has only OSError).
"""

import builtins
import struct
import sys

try:
    import ffi
    import uctypes
except ImportError:  # a port built without ffi (the PyPI unix port): the pure core only
    ffi = None

VIA = "ffi"

_LIBC = None
_FUNCS = {}

# errno -> the OSError subclass CPython raises for it; MicroPython's builtins
# have none of them, so `except ProcessLookupError` would be a NameError.
_CLASSES = (
    ("BlockingIOError", (11,)), ("ChildProcessError", (10,)),
    ("FileExistsError", (17,)), ("FileNotFoundError", (2,)),
    ("InterruptedError", (4,)), ("IsADirectoryError", (21,)),
    ("NotADirectoryError", (20,)), ("PermissionError", (1, 13)),
    ("ProcessLookupError", (3,)),
)
_CONNECTION = (("BrokenPipeError", (32,)), ("ConnectionAbortedError", (103,)),
               ("ConnectionRefusedError", (111,)), ("ConnectionResetError", (104,)))
_BY_ERRNO = {}


def _install_errors():
    """Put CPython's OSError subclasses into builtins (where missing)."""
    def make(name, base):
        cls = getattr(builtins, name, None)
        if cls is None:
            cls = type(name, (base,), {})
            setattr(builtins, name, cls)
        return cls

    for name, numbers in _CLASSES:
        cls = make(name, OSError)
        for n in numbers:
            _BY_ERRNO[n] = cls
    base = make("ConnectionError", OSError)
    for name, numbers in _CONNECTION:
        cls = make(name, base)
        for n in numbers:
            _BY_ERRNO[n] = cls


_install_errors()


def _libc():
    global _LIBC
    if ffi is None:
        raise OSError(38, "this MicroPython has no ffi module: the agent needs one "
                      "(Debian's micropython, or Buildroot's with libffi)")
    if _LIBC is None:
        for name in ("libc.so.6", "libc.so.0", "libc.so"):  # glibc, uClibc, musl
            try:
                _LIBC = ffi.open(name)
                break
            except OSError:
                continue
        else:
            raise OSError(38, "no C library found for ffi")
    return _LIBC


def _f(name, ret, args):
    """Return: the libc function ``name`` (bound once)."""
    fn = _FUNCS.get(name)
    if fn is None:
        fn = _FUNCS[name] = _libc().func(ret, name, args)
    return fn


def errno_now():
    """Return: the C library's errno for this thread."""
    return struct.unpack("i", uctypes.bytes_at(_f("__errno_location", "P", "")(), 4))[0]


def strerror(err):
    return _f("strerror", "s", "i")(err)


def error(err, what=""):
    """Return: the OSError (subclass) for errno ``err``."""
    cls = _BY_ERRNO.get(err, OSError)
    return cls(err, (what + ": " if what else "") + strerror(err))


def _check(res, what):
    if res < 0:
        raise error(errno_now(), what)
    return res


def open_fd(path, flags):
    return _check(_f("open", "i", "sii")(path, flags, 0o644), path)


def read(fd, size):
    buf = bytearray(size)
    n = _check(_f("read", "l", "ipl")(fd, buf, size), "read")
    return bytes(buf[:n]) if n < size else bytes(buf)


def write(fd, data):
    return _check(_f("write", "l", "ipl")(fd, data, len(data)), "write")


def close(fd):
    _check(_f("close", "i", "i")(fd), "close")


def lseek(fd, pos, how):
    return _check(_f("lseek", "l", "ili")(fd, pos, how), "lseek")


def dup(fd):
    return _check(_f("fcntl", "i", "iii")(fd, 1030, 0), "dup")  # F_DUPFD_CLOEXEC


def getpid():
    return _f("getpid", "i", "")()


def geteuid():
    return _f("geteuid", "i", "")()


def unlink(path):
    _check(_f("unlink", "i", "s")(path), path)


def chmod(path, mode):
    _check(_f("chmod", "i", "si")(path, mode), path)


def chown(path, uid, gid):
    _check(_f("chown", "i", "sii")(path, uid, gid), path)


def monotonic_ms():
    # struct timespec as the plain clock_gettime symbol has it: two C longs
    # (armhf's 64-bit time_t ABI has its own symbol, __clock_gettime64)
    import struct

    buf = bytearray(16)
    _check(_f("clock_gettime", "i", "ip")(1, buf), "clock_gettime")  # CLOCK_MONOTONIC
    sec, nsec = struct.unpack_from("ll", buf, 0)
    return sec * 1000 + nsec // 1000000


def eventfd(initval, flags):
    return _check(_f("eventfd", "i", "ii")(initval, flags), "eventfd")


def _syscall(number, args, what):
    """syscall(number, *args), always with 4 arguments (the rest 0): a
    variadic call reads as many as the kernel's call takes, and a missing
    flags argument of pidfd_send_signal was garbage: EINVAL (measured)."""
    a, b, c, d = (tuple(args) + (0, 0, 0, 0))[:4]
    return _check(_f("syscall", "l", "lllll")(number, a, b, c, d), what)


def pidfd_open(pid):
    return _syscall(434, (pid, 0), "pidfd_open")


def pidfd_send_signal(pidfd, sig):
    _syscall(424, (pidfd, sig, 0, 0), "pidfd_send_signal")  # info NULL, flags 0


def process_mrelease(pidfd):
    _syscall(448, (pidfd, 0), "process_mrelease")


def mlockall(flags):
    _check(_f("mlockall", "i", "i")(flags), "mlockall")


def set_nice(value):
    _check(_f("setpriority", "i", "iii")(0, 0, value), "setpriority")  # PRIO_PROCESS, self


def mallopt(param, value):
    try:
        return _f("mallopt", "i", "ii")(param, value) == 1
    except OSError:
        return False


def set_process_name(name):
    return _f("prctl", "i", "ipiii")(15, name.encode()[:15] + b"\0", 0, 0, 0) == 0


def _sockopt(fd, level, option, size):
    buf = bytearray(size)
    length = bytearray(struct.pack("I", size))
    _check(_f("getsockopt", "i", "iiipp")(fd, level, option, buf, length), "getsockopt")
    return bytes(buf[:struct.unpack("I", length)[0]])


def peer_credentials(sock):
    try:
        raw = _sockopt(sock.fileno(), 1, 17, 12)  # SOL_SOCKET, SO_PEERCRED
    except (OSError, AttributeError):
        return None
    if len(raw) < 12:
        return None
    return struct.unpack("3i", raw)


def getsockopt_int(sock, level, option):
    return struct.unpack("i", _sockopt(sock.fileno(), level, option, 4))[0]


def shutdown_write(sock):
    """shutdown(SHUT_WR): the peer reads EOF after what was sent."""
    _check(_f("shutdown", "i", "ii")(sock.fileno(), 1), "shutdown")


def exit_now(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, AttributeError):
            pass
    _f("_exit", "v", "i")(code)


# -- signals as a file: MicroPython has no signal module ---------------------------

def signalfd(signals):
    """Block ``signals`` and return a non-blocking signalfd that reads
    them (128-byte signalfd_siginfo records).  Raises: OSError."""
    mask = 0
    for sig in signals:
        mask |= 1 << (sig - 1)
    sigset = bytearray(128)  # glibc's sigset_t; the kernel reads 8 bytes
    sigset[0:8] = struct.pack("<Q", mask)
    _check(_f("sigprocmask", "i", "ipp")(0, sigset, None), "sigprocmask")  # SIG_BLOCK
    return _check(_f("signalfd", "i", "ipi")(-1, sigset, 0o4000 | 0o2000000), "signalfd")


def read_signal(fd):
    """Return: the next signal number from a signalfd, None if none is pending."""
    try:
        raw = read(fd, 128)
    except OSError as e:
        if e.args and e.args[0] == 11:
            return None
        raise
    return struct.unpack("<I", raw[:4])[0] if len(raw) >= 4 else None


def _epoll_layout():
    """Return: (size, offset of data) of struct epoll_event: packed 12
    bytes on x86_64, 16 (data aligned to 8) on 32-bit ARM and the rest."""
    try:
        import platform

        packed = "x86_64" in platform.platform()
    except ImportError:
        packed = False
    return (12, 4) if packed else (16, 8)


class Epoll:
    """epoll through libc, level-triggered: its fd polls readable while a
    member has an event.  Each member's data is its fd."""

    def __init__(self):
        self.fd = _check(_f("epoll_create1", "i", "i")(0o2000000), "epoll_create1")
        self.size, self.data_at = _epoll_layout()

    def fileno(self):
        return self.fd

    def _ctl(self, op, fd, mask):
        event = bytearray(16)
        event[0:4] = struct.pack("<I", mask)
        event[self.data_at:self.data_at + 4] = struct.pack("<i", fd)
        _check(_f("epoll_ctl", "i", "iiip")(self.fd, op, fd, event), "epoll_ctl")

    def poll(self, timeout=0, max_events=16):
        """Return: [(fd, mask)] of the members with events (``timeout`` s)."""
        events = bytearray(self.size * max_events)
        n = _check(_f("epoll_wait", "i", "ipii")(self.fd, events, max_events,
                                                 int(timeout * 1000)), "epoll_wait")
        out = []
        for i in range(n):
            at = i * self.size
            mask = struct.unpack("<I", events[at:at + 4])[0]
            fd = struct.unpack("<i", events[at + self.data_at:at + self.data_at + 4])[0]
            out.append((fd, mask))
        return out

    def register(self, fd, mask):
        self._ctl(1, fd, mask)  # EPOLL_CTL_ADD

    def unregister(self, fd):
        self._ctl(2, fd, 0)  # EPOLL_CTL_DEL

    def clear(self):
        events = bytearray(16 * 8)
        _f("epoll_wait", "i", "ipii")(self.fd, events, 8, 0)

    def close(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1


def ioctl_read(fd, request, size):
    """libc's ioctl(fd, request, buf): the request passed as an unsigned
    long ("L": ffi keeps the bits of an int above 2**31 on 32-bit ARM).
    ioctl is variadic; called as a fixed (int, unsigned long, pointer)
    function it gets the same registers on x86_64 and ARM EABI (integer
    arguments only)."""
    buf = bytearray(size)
    _check(_f("ioctl", "i", "iLp")(fd, request, buf), "ioctl")
    return bytes(buf)
