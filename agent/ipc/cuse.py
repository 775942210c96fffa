"""The CUSE server behind /dev/mem_notify: reads of /dev/cuse in, replies,
poll wakeups and signals out.  The decisions are :class:`memagent.core.
memnotify.Device`'s; this module only does the I/O.

The kernel's side (fs/fuse/cuse.c, dev.c): opening /dev/cuse starts a
connection; the first request is CUSE_INIT, and the reply with
``DEVNAME=<name>`` makes the character device.  Each read of /dev/cuse
returns one request (at least ``min_read_buffer_bytes`` of buffer); each
write is one reply or one notification.  Closing /dev/cuse removes the
device: its open files then fail (ENODEV) and their pollers wake with
POLLERR.  A second server asking for a name that exists is refused by the
kernel, which aborts its connection (reads then fail with ENODEV).

Bridged to the loop the project's way: /dev/cuse opened non-blocking,
behind :class:`memagent.aio.FdWatch`, drained a bounded number of requests
per wakeup.  No timer: a quiet device costs no wakeup.  Runs on CPython
and MicroPython (:mod:`memagent.aio.unix` does the reads and writes).
"""

import errno

from .. import aio
from ..aio import unix
from ..core import cusewire as wire
from ..core.logs import get_logger
from ..core.memnotify import Device, Effects

try:
    from typing import Callable, Dict, List, Optional
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.cuse")

MAX_WRITE_BYTES = 4096  # what clients may write(): commands are short
READ_BUFFER_BYTES = wire.min_read_buffer_bytes(MAX_WRITE_BYTES)
DRAIN_MAX = 64  # requests answered per wakeup before the loop runs others
INIT_TIMEOUT_MS = 5000
NODE_WAIT_MS = 2000  # for mdev, which makes the node after the uevent
NODE_RETRY_MS = 20
ENODEV = 19


class CuseError(Exception):
    """The device cannot be served; the message says why, for the operator."""


def gid_of(group: str, etc_group: str = "/etc/group") -> int:
    """Return: the gid of ``group`` (a name from ``etc_group``, or a number).
    Raises: CuseError if it is unknown or the file unreadable."""
    if group.isdigit():
        return int(group)
    try:
        with open(etc_group) as f:
            text = f.read()
    except OSError as e:
        raise CuseError("group %r: cannot read %s: %s" % (group, etc_group, unix.why(e)))
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
            return int(fields[2])
    raise CuseError("group %r is not in %s" % (group, etc_group))


def kernel_device(devname: str, dev_dir: str = "/dev", sys_dir: str = "/sys") -> "Optional[str]":
    """Return: why a node ``dev_dir/devname`` that is no CUSE device (a
    kernel's own /dev/mem_notify) exists, or None when there is none."""
    node = dev_dir + "/" + devname
    if not unix.exists(node):
        return None
    if unix.exists(sys_dir + "/class/cuse/" + devname):
        return None  # another CUSE server's: the kernel refuses the name
    return "%s exists and is not served through CUSE (a kernel device): the agent " \
           "reads it as its mem_notify source instead" % node


def taken_by_cuse(devname: str, sys_dir: str = "/sys") -> bool:
    """Return: True if a CUSE server already serves ``devname``."""
    return unix.exists(sys_dir + "/class/cuse/" + devname)


class CuseServer:
    """One CUSE device, served from ``device`` (a memnotify.Device).

    ``mode`` and ``gid`` (-1: keep root's) are applied to the node once it
    exists.  Nothing is opened until :meth:`start`.
    """

    def __init__(self, device: Device, devname: str = "mem_notify", mode: int = 0o600,
                 gid: int = -1, cuse_path: str = "/dev/cuse", dev_dir: str = "/dev",
                 sys_dir: str = "/sys") -> None:
        self.device = device
        self.devname = devname
        self.mode, self.gid = mode, gid
        self.cuse_path, self.dev_dir, self.sys_dir = cuse_path, dev_dir, sys_dir
        self.fd: "Optional[int]" = None
        self.devnum: "Optional[str]" = None  # "major:minor" once the device exists
        self.kernel_minor = 0
        self.pidfds: "Dict[int, int]" = {}  # fh -> pidfd of who registered a signal
        self.malformed = self.write_errors = self.signals_sent = self.signal_errors = 0
        self.last_error: "Optional[str]" = None
        # called when a file set its own thresholds (the plugin then keeps
        # the readings coming while the agent is calm)
        self.on_thresholds: "Optional[Callable[[], None]]" = None

    @property
    def node(self) -> str:
        """The device node's path."""
        return self.dev_dir + "/" + self.devname

    def kernel_device(self) -> "Optional[str]":
        """Return: why not to serve (a kernel's own node of this name
        exists), or None."""
        return kernel_device(self.devname, self.dev_dir, self.sys_dir)

    async def start(self) -> None:
        """Open /dev/cuse, answer CUSE_INIT, wait for the node, set its mode.
        Raises: CuseError saying why (no /dev/cuse, the name taken, the
        kernel's protocol too old, no INIT within INIT_TIMEOUT_MS)."""
        if taken_by_cuse(self.devname, self.sys_dir):
            raise CuseError("%s is already served by another CUSE server (a second memagent?)"
                            % self.node)
        try:
            self.fd = unix.open_fd(self.cuse_path, unix.O_RDWR | unix.O_NONBLOCK)
        except OSError as e:
            raise CuseError("cannot open %s: %s%s" % (
                self.cuse_path, unix.why(e),
                " (modprobe cuse)" if unix.is_missing(e) else ""))
        try:
            await self._handshake()
            await self._wait_node()
        except BaseException:
            self.close()
            raise

    async def _handshake(self) -> None:
        watch = aio.FdWatch(self._fd())
        try:
            if not await watch.wait(INIT_TIMEOUT_MS):
                raise CuseError("no CUSE_INIT from the kernel in %d ms" % INIT_TIMEOUT_MS)
            req = wire.parse_request(self._read_one() or b"")
        except (OSError, wire.WireError) as e:
            raise CuseError("CUSE handshake: %s" % unix.why(e))
        finally:
            watch.close()
        if req.opcode != wire.CUSE_INIT or req.major != wire.FUSE_KERNEL_VERSION:
            raise CuseError("CUSE handshake: expected CUSE_INIT 7.x, got opcode %d %d.%d"
                            % (req.opcode, req.major, req.minor))
        if req.minor < wire.CUSE_MIN_KERNEL_MINOR:
            raise CuseError("the kernel speaks FUSE 7.%d; CUSE needs 7.%d"
                            % (req.minor, wire.CUSE_MIN_KERNEL_MINOR))
        self.kernel_minor = req.minor
        self._send(wire.init_reply(req.unique, req.minor, self.devname, MAX_WRITE_BYTES,
                                   MAX_WRITE_BYTES))

    async def _wait_node(self) -> None:
        """Wait for the class device and the node; set the node's mode/group.
        Raises: CuseError if the kernel refused the name (the connection is
        aborted) or no node came within NODE_WAIT_MS."""
        waited_ms = 0
        while True:
            try:
                with open(self.sys_dir + "/class/cuse/" + self.devname + "/dev") as f:
                    self.devnum = f.read().strip()
            except OSError:
                self.devnum = None
            if self.devnum and unix.exists(self.node):
                break
            if self._aborted():
                raise CuseError("the kernel refused %s (the name is taken)" % self.node)
            if waited_ms >= NODE_WAIT_MS:
                raise CuseError("%s did not appear within %d ms" % (self.node, NODE_WAIT_MS))
            await aio.sleep_ms(NODE_RETRY_MS)
            waited_ms += NODE_RETRY_MS
        try:
            unix.chmod(self.node, self.mode)
            if self.gid >= 0:
                unix.chown(self.node, -1, self.gid)
        except OSError as e:
            raise CuseError("cannot set the mode of %s: %s" % (self.node, unix.why(e)))

    def _aborted(self) -> bool:
        """Return: True if the connection is gone (a read fails with ENODEV)."""
        try:
            data = self._read_one()
        except OSError as e:
            return bool(e.args[0] == ENODEV)
        if data:  # an early request (an OPEN racing the node): answer it
            self._answer(data)
        return False

    def _fd(self) -> int:
        if self.fd is None:
            raise CuseError("the CUSE connection is closed")
        return self.fd

    def _read_one(self) -> "Optional[bytes]":
        """Return: one request's bytes, or None if none is pending.
        Raises: OSError (ENODEV: the connection is gone)."""
        try:
            return unix.read(self._fd(), READ_BUFFER_BYTES)
        except OSError as e:
            # EAGAIN: nothing pending; ENOENT: a request was interrupted
            # before we read it (the kernel dropped it).
            if e.args[0] in (errno.EAGAIN, errno.ENOENT):
                return None
            raise

    def _send(self, data: bytes) -> None:
        """One write to /dev/cuse.  ENOENT (the request was interrupted and
        is gone) is normal; other errors are counted and logged."""
        try:
            unix.write(self._fd(), data)
        except OSError as e:
            if e.args[0] == errno.ENOENT:
                return
            self.write_errors += 1
            self.last_error = "write: %s" % unix.why(e)
            if e.args[0] == ENODEV:
                raise
            log.warning("cuse %s: %s", self.devname, self.last_error)

    async def serve(self) -> None:
        """Answer requests until the connection ends (returns) or the task
        is cancelled.  Raises: OSError for a failing /dev/cuse."""
        watch = aio.FdWatch(self._fd())
        try:
            while self.fd is not None:
                await watch.wait(None)
                for _ in range(DRAIN_MAX):
                    try:
                        data = self._read_one()
                    except OSError as e:
                        if e.args[0] == ENODEV:
                            self.last_error = "the kernel ended the CUSE connection"
                            return
                        raise
                    if data is None:
                        break
                    self._answer(data)
        finally:
            watch.close()

    def _answer(self, data: bytes) -> None:
        try:
            req = wire.parse_request(data)
        except wire.WireError as e:
            self.malformed += 1
            self.last_error = "malformed request: %s" % e
            log.warning("cuse %s: %s", self.devname, self.last_error)
            return
        log.debug("cuse %s: %r fh %d", self.devname, req, req.fh)
        self.apply(self.device.handle(req, aio.ticks_ms()))

    def apply(self, out: Effects) -> None:
        """Carry out ``out``: bind registered signals to pidfds (before the
        ioctl's reply releases its caller), write, signal, forget."""
        for fh, pid, signo in out.registered:
            self._forget(fh)
            if signo:
                pidfd = unix.pidfd_open(pid)
                if pidfd is not None:
                    self.pidfds[fh] = pidfd
        for data in out.writes:
            self._send(data)
        for fh in out.signals:
            self._signal(fh)
        for fh in out.released:
            self._forget(fh)
        if out.thresholds and self.on_thresholds is not None:
            self.on_thresholds()

    def _signal(self, fh: int) -> None:
        pidfd = self.pidfds.get(fh)
        f = self.device.files.get(fh)
        if pidfd is None or f is None or not f.signo:
            return
        try:
            unix.pidfd_send_signal(pidfd, f.signo)
            self.signals_sent += 1
        except OSError as e:  # ESRCH: the opener is gone; its fh lives on (fork)
            self.signal_errors += 1
            self.last_error = "signal %d: %s" % (f.signo, unix.why(e))

    def _forget(self, fh: int) -> None:
        pidfd = self.pidfds.pop(fh, None)
        if pidfd is not None:
            try:
                unix.close(pidfd)
            except OSError:
                pass

    def event(self, level: int, avail_kib: int, total_kib: int, eta_ms: "Optional[int]",
              target_kib: int, t_ms: int, pressure: bool) -> "List[int]":
        """Tell the device of a reading or notification (see Device.update).
        Returns: the fh woken."""
        out = self.device.update(level, avail_kib, total_kib, eta_ms, target_kib, t_ms,
                                 aio.ticks_ms(), pressure)
        if self.fd is not None:
            self.apply(out)
        return out.woken

    def close(self) -> None:
        """Close /dev/cuse: the kernel removes the device; its open files
        fail and their pollers wake with POLLERR.  Idempotent."""
        for fh in list(self.pidfds):
            self._forget(fh)
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                unix.close(fd)
            except OSError:
                pass

    def status(self) -> "Dict[str, object]":
        """Return: the device's and the server's counters, JSON-ready."""
        st = self.device.status()
        st.update({"node": self.node, "devnum": self.devnum, "malformed": self.malformed,
                   "write_errors": self.write_errors, "signals_sent": self.signals_sent,
                   "signal_errors": self.signal_errors, "last_error": self.last_error,
                   "fuse_minor": self.kernel_minor})
        return st
