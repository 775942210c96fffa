"""The wire protocol of a CUSE character device: decode what one read() of
/dev/cuse returns, encode what one write() sends back.  No I/O here.

The facts are the kernel's: the structs of include/uapi/linux/fuse.h
(protocol 7.x, little-endian on ARM and x86, hence ``<`` formats) and the
rules of fs/fuse/cuse.c and fs/fuse/dev.c.

A request (kernel -> server) is one message per read::

    fuse_in_header (40 bytes): len u32, opcode u32, unique u64, nodeid u64,
                               uid u32, gid u32, pid u32, total_extlen u16, pad u16
    the opcode's fixed body    (e.g. fuse_poll_in: fh u64, kh u64, flags u32, events u32)
    trailing data              (WRITE: ``size`` bytes; IOCTL: ``in_size`` bytes)

``len`` counts the whole message.  Bytes past what the opcode needs are
ignored, so that a kernel with a longer struct still decodes.

A reply (server -> kernel) is one write of::

    fuse_out_header (16 bytes): len u32, error i32 (-errno or 0), unique u64
    the payload                 (e.g. fuse_poll_out: revents u32, pad u32)

An error reply carries no payload: the kernel rejects one that does.  A
poll wakeup is an unsolicited write with ``unique`` 0 and the notify code
FUSE_NOTIFY_POLL in the error field, followed by fuse_notify_poll_wakeup_out
(kh u64): it wakes the pollers of the one open file that gave that kh.

The handshake: the kernel sends CUSE_INIT (cuse_init_in); the server answers
with cuse_init_out (major 7, the kernel's minor echoed, which cuse.c wants
>= 11) followed by ``DEVNAME=<name>\\0``; then the device node exists.
FUSE_INTERRUPT gets no reply of its own: the server answers the interrupted
request with -EINTR.  Never answer OPEN or POLL with -ENOSYS: ENOSYS to POLL
makes the kernel report every later poll as readable, forever.

Pure and MicroPython-clean: module-level format strings with struct.pack,
unpack_from and calcsize (some MicroPython builds lack struct.Struct).
"""

import struct

try:
    from typing import Dict, Tuple
except ImportError:  # MicroPython
    pass

FUSE_KERNEL_VERSION = 7
CUSE_MIN_KERNEL_MINOR = 11  # cuse.c refuses an init reply with a lower minor

# opcodes (fuse_in_header.opcode)
FUSE_OPEN = 14
FUSE_READ = 15
FUSE_WRITE = 16
FUSE_RELEASE = 18
FUSE_FLUSH = 25
FUSE_INTERRUPT = 36
FUSE_IOCTL = 39
FUSE_POLL = 40
CUSE_INIT = 4096

FUSE_NOTIFY_POLL = 1  # notify code, sent in the out header's error field
FUSE_POLL_SCHEDULE_NOTIFY = 1  # fuse_poll_in.flags: the kernel waits for a wakeup
FOPEN_DIRECT_IO = 1  # fuse_open_out.open_flags
FOPEN_NONSEEKABLE = 4
CUSE_UNRESTRICTED_IOCTL = 1  # cuse_init_in/out.flags
POLLIN = 0x001  # revents, as in <poll.h> on Linux
POLLERR = 0x008
POLLHUP = 0x010
POLLRDNORM = 0x040

# struct formats (fuse.h); the names say which struct
IN_HEADER = "<IIQQIIIHH"  # fuse_in_header
OUT_HEADER = "<IiQ"  # fuse_out_header
IN_HEADER_BYTES = struct.calcsize(IN_HEADER)  # 40
OUT_HEADER_BYTES = struct.calcsize(OUT_HEADER)  # 16
CUSE_INIT_IN = "<IIII"  # major, minor, unused, flags
# cuse_init_out: major, minor, unused, flags, max_read, max_write, dev_major,
# dev_minor; then spare[10] u32, appended as zero bytes
CUSE_INIT_OUT = "<IIIIIIII"
CUSE_INIT_OUT_SPARE_BYTES = 40
OPEN_IN = "<II"  # fuse_open_in: flags, open_flags
OPEN_OUT = "<QIi"  # fuse_open_out: fh, open_flags, backing_id (was padding)
READ_IN = "<QQIIQII"  # fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, pad
WRITE_IN = "<QQIIQII"  # fuse_write_in: fh, offset, size, write_flags, lock_owner, flags, pad
WRITE_OUT = "<II"  # fuse_write_out: size, padding
RELEASE_IN = "<QIIQ"  # fuse_release_in: fh, flags, release_flags, lock_owner
FLUSH_IN = "<QIIQ"  # fuse_flush_in: fh, unused, padding, lock_owner
INTERRUPT_IN = "<Q"  # fuse_interrupt_in: unique
IOCTL_IN = "<QIIQII"  # fuse_ioctl_in: fh, flags, cmd, arg, in_size, out_size
IOCTL_OUT = "<iIII"  # fuse_ioctl_out: result, flags, in_iovs, out_iovs
POLL_IN = "<QQII"  # fuse_poll_in: fh, kh, flags, events
POLL_OUT = "<II"  # fuse_poll_out: revents, padding
NOTIFY_POLL_WAKEUP_OUT = "<Q"  # fuse_notify_poll_wakeup_out: kh

# opcode -> (body format, Request attributes in the struct's order; "" skips)
_BODIES: "Dict[int, Tuple[str, Tuple[str, ...]]]" = {
    CUSE_INIT: (CUSE_INIT_IN, ("major", "minor", "", "flags")),
    FUSE_OPEN: (OPEN_IN, ("flags", "open_flags")),
    FUSE_READ: (READ_IN, ("fh", "offset", "size", "read_flags", "lock_owner", "flags", "")),
    FUSE_WRITE: (WRITE_IN, ("fh", "offset", "size", "write_flags", "lock_owner", "flags", "")),
    FUSE_RELEASE: (RELEASE_IN, ("fh", "flags", "release_flags", "lock_owner")),
    FUSE_FLUSH: (FLUSH_IN, ("fh", "", "", "lock_owner")),
    FUSE_INTERRUPT: (INTERRUPT_IN, ("interrupted_unique",)),
    FUSE_IOCTL: (IOCTL_IN, ("fh", "flags", "cmd", "arg", "in_size", "out_size")),
    FUSE_POLL: (POLL_IN, ("fh", "kh", "flags", "events")),
}

FUSE_MIN_READ_BUFFER_BYTES = 8192  # the kernel refuses a shorter read of /dev/cuse
FUSE_MIN_IO_BYTES = 4096  # cuse.c raises max_read and max_write to at least this
READ_BUFFER_BYTES = 65536  # what the server reads with: room for max_write 65456
# No request comes near this (the read buffer bounds them); a header that
# claims more is garbage, not a long message.
MAX_REQUEST_BYTES = 1 << 24
MAX_DEVNAME_BYTES = 64
MAX_ERRNO = 4095  # the kernel's MAX_ERRNO: -errno must be a valid error

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


class WireError(ValueError):
    """A message that is not valid on the /dev/cuse wire (short, inconsistent
    length, truncated body), or an encoder argument out of range.
    ``str(err)`` says which."""


def min_read_buffer_bytes(max_write_bytes: int) -> int:
    """Return: the smallest buffer a read of /dev/cuse accepts once the init
    reply said ``max_write_bytes``: max(8192, in header + fuse_write_in +
    max_write), with max_write raised to the kernel's 4096 floor."""
    write_in_bytes = struct.calcsize(WRITE_IN)
    max_write_bytes = max(max_write_bytes, FUSE_MIN_IO_BYTES)
    return max(FUSE_MIN_READ_BUFFER_BYTES, IN_HEADER_BYTES + write_in_bytes + max_write_bytes)


def may_answer_enosys(opcode: int) -> bool:
    """Return: whether an unhandled ``opcode`` may be answered with -ENOSYS.
    False for OPEN and POLL (the kernel would then treat every later poll as
    readable), CUSE_INIT (the device would not be created) and INTERRUPT
    (it gets no reply at all)."""
    return opcode not in (FUSE_OPEN, FUSE_POLL, CUSE_INIT, FUSE_INTERRUPT)


def needs_reply(opcode: int) -> bool:
    """Return: False for FUSE_INTERRUPT, whose answer goes to the original
    request instead; True for every other opcode."""
    return opcode != FUSE_INTERRUPT


class Request:
    """One decoded message from /dev/cuse.

    Header fields: ``length_bytes``, ``opcode``, ``unique``, ``nodeid``,
    ``uid``, ``gid``, ``pid`` (of the calling process, in the server's pid
    namespace).  Body fields are those of the opcode's struct, named as in
    fuse.h (``flags`` is the struct's ``flags``: the open(2) flags for
    OPEN/READ/WRITE/RELEASE, the poll flags for POLL, the ioctl flags for
    IOCTL, the init flags for CUSE_INIT); ``interrupted_unique`` is
    fuse_interrupt_in's unique; ``data`` the trailing bytes of WRITE
    (``size`` of them) and IOCTL (``in_size``).  Fields the opcode does not
    carry are 0 (``data``: b"").  An unknown opcode has the header only.
    """

    __slots__ = ("length_bytes", "opcode", "unique", "nodeid", "uid", "gid", "pid",
                 "fh", "kh", "flags", "events", "open_flags", "offset", "size",
                 "read_flags", "write_flags", "release_flags", "lock_owner",
                 "interrupted_unique", "cmd", "arg", "in_size", "out_size",
                 "major", "minor", "data")

    def __init__(self, length_bytes: int, opcode: int, unique: int, nodeid: int,
                 uid: int, gid: int, pid: int) -> None:
        self.length_bytes = length_bytes
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.fh = self.kh = self.flags = self.events = self.open_flags = 0
        self.offset = self.size = self.read_flags = self.write_flags = 0
        self.release_flags = self.lock_owner = self.interrupted_unique = 0
        self.cmd = self.arg = self.in_size = self.out_size = 0
        self.major = self.minor = 0
        self.data = b""

    def __repr__(self) -> str:
        return "Request(opcode=%d, unique=%d, pid=%d)" % (self.opcode, self.unique, self.pid)


def parse_request(buf: bytes) -> Request:
    """Decode ``buf``, what one read of /dev/cuse returned.

    Return: the :class:`Request`.  Raises: WireError when ``buf`` is shorter
    than the in header, its ``len`` is absurd or differs from len(buf) (the
    kernel writes exactly one message per read), the body is shorter than
    the opcode's struct, or WRITE/IOCTL data is shorter than announced."""
    got = len(buf)
    if got < IN_HEADER_BYTES:
        raise WireError("short read: %d bytes, the fuse_in_header alone is %d"
                        % (got, IN_HEADER_BYTES))
    length, opcode, unique, nodeid, uid, gid, pid, _, _ = struct.unpack_from(IN_HEADER, buf, 0)
    if length < IN_HEADER_BYTES or length > MAX_REQUEST_BYTES:
        raise WireError("absurd message length %d in the header (opcode %d)" % (length, opcode))
    if length != got:
        raise WireError("header says %d bytes, the read returned %d (opcode %d)"
                        % (length, got, opcode))
    req = Request(length, opcode, unique, nodeid, uid, gid, pid)
    body = _BODIES.get(opcode)
    if body is None:
        return req
    fmt, names = body
    need = IN_HEADER_BYTES + struct.calcsize(fmt)
    if got < need:
        raise WireError("opcode %d: body of %d bytes, its struct needs %d"
                        % (opcode, got - IN_HEADER_BYTES, need - IN_HEADER_BYTES))
    for name, value in zip(names, struct.unpack_from(fmt, buf, IN_HEADER_BYTES)):
        if name:
            setattr(req, name, value)
    if opcode == FUSE_WRITE or opcode == FUSE_IOCTL:
        data_bytes = req.size if opcode == FUSE_WRITE else req.in_size
        if got - need < data_bytes:
            raise WireError("opcode %d: %d data bytes announced, %d present"
                            % (opcode, data_bytes, got - need))
        req.data = bytes(buf[need:need + data_bytes])
    return req


# -- encoding ------------------------------------------------------------------

def _check(name: str, value: int, low: int, high: int) -> None:
    """Raises: WireError unless ``low <= value <= high`` (MicroPython's
    struct.pack truncates instead of refusing)."""
    if not isinstance(value, int) or value < low or value > high:
        raise WireError("%s %r is out of range %d..%d" % (name, value, low, high))


def _out(unique: int, error: int, payload: bytes) -> bytes:
    """Return: fuse_out_header + ``payload``, one message."""
    _check("unique", unique, 0, _U64)
    return struct.pack(OUT_HEADER, OUT_HEADER_BYTES + len(payload), error, unique) + payload


def reply_error(unique: int, errno: int) -> bytes:
    """Return: the error reply to request ``unique``: the out header alone,
    error = -``errno``.  Raises: WireError unless 0 < errno <= 4095."""
    _check("errno", errno, 1, MAX_ERRNO)
    return _out(unique, -errno, b"")


def reply(unique: int, payload: bytes = b"") -> bytes:
    """Return: the success reply to request ``unique`` carrying ``payload``
    (the out header alone for RELEASE and FLUSH).  Raises: WireError for a
    ``unique`` out of the u64 range."""
    return _out(unique, 0, bytes(payload))


def _devname_info(devname: str) -> bytes:
    """Return: ``DEVNAME=<devname>\\0``.  Raises: WireError unless devname is
    1..64 printable ASCII characters without "/", "=" or NUL."""
    if not isinstance(devname, str) or not 0 < len(devname) <= MAX_DEVNAME_BYTES:
        raise WireError("device name must be 1..%d characters: %r" % (MAX_DEVNAME_BYTES, devname))
    for ch in devname:
        if not 0x20 < ord(ch) < 0x7F or ch in "/=":
            raise WireError("device name %r: only printable ASCII, no '/' or '='" % devname)
    return b"DEVNAME=" + devname.encode() + b"\0"


def init_reply(unique: int, kernel_minor: int, devname: str, max_read_bytes: int,
               max_write_bytes: int, flags: int = 0, dev_major: int = 0,
               dev_minor: int = 0) -> bytes:
    """Return: the reply to CUSE_INIT: cuse_init_out (major 7, the kernel's
    ``kernel_minor`` echoed, the rest as given; dev_major 0 lets the kernel
    pick the numbers) followed by ``DEVNAME=<devname>\\0``.
    Raises: WireError for a bad devname (see the module notes), a minor the
    kernel's cuse.c would refuse (< 11), or a field out of the u32 range."""
    info = _devname_info(devname)
    _check("kernel_minor", kernel_minor, CUSE_MIN_KERNEL_MINOR, _U32)
    for name, value in (("max_read_bytes", max_read_bytes), ("max_write_bytes", max_write_bytes),
                        ("flags", flags), ("dev_major", dev_major), ("dev_minor", dev_minor)):
        _check(name, value, 0, _U32)
    body = struct.pack(CUSE_INIT_OUT, FUSE_KERNEL_VERSION, kernel_minor, 0, flags,
                       max_read_bytes, max_write_bytes, dev_major, dev_minor)
    return _out(unique, 0, body + bytes(CUSE_INIT_OUT_SPARE_BYTES) + info)


def open_reply(unique: int, fh: int, open_flags: int = FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE
               ) -> bytes:
    """Return: the reply to OPEN: fuse_open_out with file handle ``fh`` (the
    kernel hands it back in every later request on that file) and the
    FOPEN_* ``open_flags``.  Raises: WireError for a value out of range."""
    _check("fh", fh, 0, _U64)
    _check("open_flags", open_flags, 0, _U32)
    return _out(unique, 0, struct.pack(OPEN_OUT, fh, open_flags, 0))


def read_reply(unique: int, data: bytes) -> bytes:
    """Return: the reply to READ: the out header and ``data`` (at most the
    request's ``size`` bytes; b"" is end of file).  Raises: WireError for a
    ``unique`` out of range."""
    return _out(unique, 0, bytes(data))


def write_reply(unique: int, size_bytes: int) -> bytes:
    """Return: the reply to WRITE: fuse_write_out saying ``size_bytes`` were
    taken.  Raises: WireError for a value out of range."""
    _check("size_bytes", size_bytes, 0, _U32)
    return _out(unique, 0, struct.pack(WRITE_OUT, size_bytes, 0))


def poll_reply(unique: int, revents: int) -> bytes:
    """Return: the reply to POLL: fuse_poll_out with ``revents`` (POLLIN...,
    0 when not ready).  Raises: WireError for a value out of range."""
    _check("revents", revents, 0, _U32)
    return _out(unique, 0, struct.pack(POLL_OUT, revents, 0))


def ioctl_reply(unique: int, result: int, data: bytes = b"") -> bytes:
    """Return: the reply to IOCTL: fuse_ioctl_out (``result``, the value
    ioctl(2) returns; no retry, no iovecs) followed by ``data``, the bytes
    copied out to the caller (at most the request's ``out_size``).
    Raises: WireError for a ``result`` outside i32."""
    _check("result", result, -0x80000000, 0x7FFFFFFF)
    return _out(unique, 0, struct.pack(IOCTL_OUT, result, 0, 0, 0) + bytes(data))


def poll_wakeup(kh: int) -> bytes:
    """Return: the 24-byte notify message that wakes the pollers of the open
    file whose POLL carried ``kh``: out header {24, FUSE_NOTIFY_POLL, 0} and
    fuse_notify_poll_wakeup_out.  Raises: WireError for a kh out of u64."""
    _check("kh", kh, 0, _U64)
    return _out(0, FUSE_NOTIFY_POLL, struct.pack(NOTIFY_POLL_WAKEUP_OUT, kh))
