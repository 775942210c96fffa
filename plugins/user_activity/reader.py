"""Input event nodes (/dev/input/event*) read directly, on CPython and on
MicroPython: no python-evdev (a C extension, CPython only).

A read of an evdev node returns whole ``struct input_event`` records
(include/uapi/linux/input.h)::

    struct timeval time;   /* two longs: tv_sec, tv_usec */
    __u16 type; __u16 code; __s32 value;

16 bytes in a 32-bit process (armhf: 4 + 4 + 2 + 2 + 4; the kernel gives an
armhf process on an arm64 kernel the same 16-byte compat records), 24 in a
64-bit one (x86_64, arm64: 8 + 8 + 2 + 2 + 4).  So the layout is this
process's own ``struct.calcsize("llHHi")``: native longs, no trailing
padding (measured 24 on x86_64 under CPython and trixie's micropython, 16
in the armhf guest).

The kernel never cuts a record (a buffer smaller than one is EINVAL), but a
FIFO or a file of captured records can: :meth:`EvdevReader.read` keeps a cut
record's bytes and completes them with the next read, never parsing part of
one.  Each read asks for at most ``events`` records (64, as python-evdev), so
a flood costs a bounded buffer per read.

The name and the input properties come from two ioctls, _IOR numbers of the
asm-generic encoding (x86, ARM EABI, arm64, riscv alike: direction READ = 2 at
bit 30, the 14-bit size at bit 16, the type 'E' at bit 8, the number in the
low byte): EVIOCGNAME(256) = 0x81004506, EVIOCGPROP(4) = 0x80044509.
(alpha, mips, powerpc and sparc encode the direction differently.)
"""

import struct
from collections import namedtuple

try:
    from typing import List
except ImportError:  # MicroPython
    pass

from memagent.aio import unix

#: This process's struct input_event ("llHHi": 16 bytes on armhf, 24 on x86_64).
NATIVE = "llHHi"
#: A 32-bit little-endian process's (armhf, armel, i386): how the captures
#: of the ARM guest (tests/data/evdev/) are read on any host.
ARMHF = "<llHHi"
READ_EVENTS = 64

IOC_READ = 2


def ior(kind: str, nr: int, size: int) -> int:
    """Return: _IOC(_IOC_READ, kind, nr, size), asm-generic encoding."""
    return (IOC_READ << 30) | (size << 16) | (ord(kind) << 8) | nr


NAME_LEN = 256
PROP_LEN = 4  # INPUT_PROP_CNT is 0x20 bits
EVIOCGNAME = ior("E", 0x06, NAME_LEN)
EVIOCGPROP = ior("E", 0x09, PROP_LEN)

#: One record: ``.type`` is what the plugin counts (python-evdev's InputEvent
#: has the same fields).
InputEvent = namedtuple("InputEvent", ("sec", "usec", "type", "code", "value"))


def c_string(raw: bytes) -> str:
    """Return: the NUL-terminated text in ``raw``; bytes that are not UTF-8
    (a driver's name) become "?"."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    try:
        return raw.decode()
    except UnicodeError:
        return "".join(chr(b) if 32 <= b < 127 else "?" for b in raw)


def prop_bits(raw: bytes) -> "List[int]":
    """Return: the numbers of the bits set in the bitmask ``raw`` (EVIOCGPROP's)."""
    return [i for i in range(8 * len(raw)) if raw[i // 8] >> (i % 8) & 1]


class EvdevReader:
    """An input event node opened O_RDONLY | O_NONBLOCK: what the plugin
    calls a device (``fileno()``, ``read()``, ``close()``, ``name``,
    ``input_props()``).

    Opening makes no ioctl, so a FIFO or a file of records reads as well (the
    tests); :func:`open_evdev`, the plugin's opener, also asks the node its
    name, which only an evdev node answers.  ``layout`` is the record's
    struct format (:data:`NATIVE`; :data:`ARMHF` reads the guest's captures).
    Raises: OSError from open(2).
    """

    def __init__(self, path: str, layout: str = NATIVE, events: int = READ_EVENTS) -> None:
        self.path = path
        self.layout = layout
        self.size = struct.calcsize(layout)
        self.events = max(events, 1)
        self.name = ""
        self._rest = b""
        self.fd = unix.open_fd(path, unix.O_RDONLY | unix.O_NONBLOCK)

    def fileno(self) -> int:
        """Return: the fd.  Raises: ValueError once closed."""
        if self.fd < 0:
            raise ValueError("%s is closed" % self.path)
        return self.fd

    @property
    def pending(self) -> int:
        """The bytes of a cut record kept for the next read (0 on an evdev node)."""
        return len(self._rest)

    def read(self) -> "List[InputEvent]":
        """Read at most ``events`` records.

        Returns: the whole records read, oldest first; [] at EOF (a FIFO
        whose writer has gone, the end of a file) or when only part of a
        record came.  Raises: BlockingIOError when there is nothing to read;
        OSError (ENODEV: the device was unplugged; ValueError once closed).
        """
        rest = self._rest
        data = unix.read(self.fileno(), self.size * self.events - len(rest))
        if rest:
            data = rest + data
        end = len(data) - len(data) % self.size
        self._rest = data[end:]
        layout, unpack = self.layout, struct.unpack_from
        return [InputEvent(*unpack(layout, data, at)) for at in range(0, end, self.size)]

    def read_name(self) -> str:
        """Return: the device's name (EVIOCGNAME).  Raises: OSError (ENOTTY:
        not an evdev node)."""
        return c_string(unix.ioctl_read(self.fileno(), EVIOCGNAME, NAME_LEN))

    def input_props(self) -> "List[int]":
        """Return: the INPUT_PROP_* numbers the device has (EVIOCGPROP).
        Raises: OSError (ENOTTY: not an evdev node; EINVAL before Linux 3.7)."""
        return prop_bits(unix.ioctl_read(self.fileno(), EVIOCGPROP, PROP_LEN))

    def close(self) -> None:
        """Close the fd (again: nothing)."""
        fd, self.fd = self.fd, -1
        self._rest = b""
        if fd >= 0:
            unix.close(fd)


def open_evdev(path: str) -> EvdevReader:
    """The plugin's opener: ``path`` opened, its name read.

    Returns: the device.  Raises: OSError: from open(2) (EACCES, ENODEV,
    ENXIO), or ENOTTY when ``path`` is no evdev node (/dev/input/mouse0, a
    FIFO), which is then never read as one (its fd is closed).
    """
    device = EvdevReader(path)
    try:
        device.name = device.read_name()
    except BaseException:
        device.close()
        raise
    return device
