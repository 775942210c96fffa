"""The CUSE wire protocol: byte-exact vectors for every message, both ways,
written by hand from fuse.h's struct layouts, and malformed and short reads."""

import errno
import struct
from typing import List, Tuple

import pytest

from memagent.core import cusewire as cw
from memagent.core.cusewire import WireError, parse_request


def in_header(length: int, opcode: int, unique: int, nodeid: int = 0, uid: int = 1000,
              gid: int = 1001, pid: int = 4242) -> bytes:
    # fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid u32,
    # gid u32, pid u32, total_extlen u16, padding u16
    return (struct.pack("<I", length) + struct.pack("<I", opcode) + struct.pack("<Q", unique)
            + struct.pack("<Q", nodeid) + struct.pack("<I", uid) + struct.pack("<I", gid)
            + struct.pack("<I", pid) + b"\0\0" + b"\0\0")


def request(opcode: int, unique: int, body: bytes) -> bytes:
    return in_header(40 + len(body), opcode, unique) + body


def out_header(length: int, error: int, unique: int) -> bytes:
    return struct.pack("<I", length) + struct.pack("<i", error) + struct.pack("<Q", unique)


# The requests the kernel sends, by hand.
INIT = request(4096, 2, struct.pack("<I", 7) + struct.pack("<I", 41) + b"\0" * 4
               + struct.pack("<I", 1))
OPEN = request(14, 4, struct.pack("<I", 0o4000) + struct.pack("<I", 0))  # O_NONBLOCK
READ = request(15, 6, struct.pack("<Q", 3) + struct.pack("<Q", 0) + struct.pack("<I", 4096)
               + struct.pack("<I", 0) + struct.pack("<Q", 0xAB) + struct.pack("<I", 0o4000)
               + b"\0" * 4)
WRITE = request(16, 8, struct.pack("<Q", 3) + struct.pack("<Q", 0) + struct.pack("<I", 25)
                + struct.pack("<I", 1) + struct.pack("<Q", 0) + struct.pack("<I", 2)
                + b"\0" * 4 + b"low_kib 8192 leave_kib 16")
RELEASE = request(18, 10, struct.pack("<Q", 3) + struct.pack("<I", 2) + struct.pack("<I", 0)
                  + struct.pack("<Q", 0))
FLUSH = request(25, 12, struct.pack("<Q", 3) + b"\0" * 8 + struct.pack("<Q", 77))
INTERRUPT = request(36, 15, struct.pack("<Q", 14))
IOCTL = request(39, 16, struct.pack("<Q", 3) + struct.pack("<I", 0) + struct.pack("<I", 0x40044D01)
                + struct.pack("<Q", 0xBEEF0000) + struct.pack("<I", 4) + struct.pack("<I", 0)
                + struct.pack("<i", 10))
POLL = request(40, 18, struct.pack("<Q", 3) + struct.pack("<Q", 0x1122334455667788)
               + struct.pack("<I", 1) + struct.pack("<I", 0x41))
VALID = [INIT, OPEN, READ, WRITE, RELEASE, FLUSH, INTERRUPT, IOCTL, POLL]


def test_header_sizes() -> None:
    assert cw.IN_HEADER_BYTES == 40 == len(in_header(40, 1, 1))
    assert cw.OUT_HEADER_BYTES == 16
    assert struct.calcsize(cw.CUSE_INIT_OUT) + cw.CUSE_INIT_OUT_SPARE_BYTES == 72
    sizes = {cw.CUSE_INIT_IN: 16, cw.OPEN_IN: 8, cw.OPEN_OUT: 16, cw.READ_IN: 40,
             cw.WRITE_IN: 40, cw.WRITE_OUT: 8, cw.RELEASE_IN: 24, cw.FLUSH_IN: 24,
             cw.INTERRUPT_IN: 8, cw.IOCTL_IN: 32, cw.IOCTL_OUT: 16, cw.POLL_IN: 24,
             cw.POLL_OUT: 8, cw.NOTIFY_POLL_WAKEUP_OUT: 8}
    for fmt, size in sizes.items():
        assert struct.calcsize(fmt) == size, fmt


def test_opcodes_and_constants() -> None:
    assert (cw.FUSE_OPEN, cw.FUSE_READ, cw.FUSE_WRITE, cw.FUSE_RELEASE, cw.FUSE_FLUSH) == (
        14, 15, 16, 18, 25)
    assert (cw.FUSE_INTERRUPT, cw.FUSE_IOCTL, cw.FUSE_POLL, cw.CUSE_INIT) == (36, 39, 40, 4096)
    assert cw.FUSE_KERNEL_VERSION == 7 and cw.FUSE_NOTIFY_POLL == 1
    assert (cw.FOPEN_DIRECT_IO, cw.FOPEN_NONSEEKABLE, cw.POLLIN) == (1, 4, 1)


def test_min_read_buffer() -> None:
    assert cw.min_read_buffer_bytes(4096) == 8192
    assert cw.min_read_buffer_bytes(0) == 8192  # the kernel raises max_write to 4096
    assert cw.min_read_buffer_bytes(65536) == 65536 + 80
    assert cw.READ_BUFFER_BYTES >= cw.min_read_buffer_bytes(4096)


# -- decoding ------------------------------------------------------------------

def test_parse_header_fields() -> None:
    req = parse_request(OPEN)
    assert (req.length_bytes, req.opcode, req.unique, req.nodeid) == (48, 14, 4, 0)
    assert (req.uid, req.gid, req.pid) == (1000, 1001, 4242)
    assert (req.flags, req.open_flags, req.fh, req.data) == (0o4000, 0, 0, b"")


def test_parse_cuse_init() -> None:
    req = parse_request(INIT)
    assert (req.opcode, req.unique, req.major, req.minor, req.flags) == (4096, 2, 7, 41, 1)


def test_parse_read_write_release_flush() -> None:
    req = parse_request(READ)
    assert (req.fh, req.offset, req.size, req.read_flags, req.lock_owner, req.flags) == (
        3, 0, 4096, 0, 0xAB, 0o4000)
    req = parse_request(WRITE)
    assert (req.fh, req.size, req.write_flags, req.flags) == (3, 25, 1, 2)
    assert req.data == b"low_kib 8192 leave_kib 16"
    req = parse_request(RELEASE)
    assert (req.opcode, req.fh, req.flags, req.release_flags, req.lock_owner) == (18, 3, 2, 0, 0)
    req = parse_request(FLUSH)
    assert (req.opcode, req.fh, req.lock_owner) == (25, 3, 77)


def test_parse_interrupt_names_the_original_request() -> None:
    req = parse_request(INTERRUPT)
    assert (req.opcode, req.unique, req.interrupted_unique) == (36, 15, 14)
    assert not cw.needs_reply(req.opcode) and cw.needs_reply(cw.FUSE_POLL)
    # the answer goes to the original request, header only
    assert cw.reply_error(req.interrupted_unique, errno.EINTR) == out_header(16, -4, 14)


def test_parse_ioctl_and_poll() -> None:
    req = parse_request(IOCTL)
    assert (req.fh, req.flags, req.cmd, req.arg, req.in_size, req.out_size) == (
        3, 0, 0x40044D01, 0xBEEF0000, 4, 0)
    assert req.data == struct.pack("<i", 10)
    req = parse_request(POLL)
    assert (req.fh, req.kh, req.flags, req.events) == (3, 0x1122334455667788, 1, 0x41)
    assert req.flags & cw.FUSE_POLL_SCHEDULE_NOTIFY


def test_unknown_opcode_has_the_header_only() -> None:
    raw = request(1, 20, b"\x01" * 16)  # FUSE_LOOKUP: not CUSE's business
    req = parse_request(raw)
    assert (req.opcode, req.unique, req.pid, req.fh, req.data) == (1, 20, 4242, 0, b"")
    assert cw.may_answer_enosys(1) and cw.may_answer_enosys(cw.FUSE_READ)
    for opcode in (cw.FUSE_OPEN, cw.FUSE_POLL, cw.CUSE_INIT, cw.FUSE_INTERRUPT):
        assert not cw.may_answer_enosys(opcode)


def test_bytes_past_the_struct_are_ignored() -> None:
    raw = request(40, 18, POLL[40:] + b"\0" * 8)  # a kernel with a longer fuse_poll_in
    assert parse_request(raw).kh == 0x1122334455667788
    assert parse_request(bytearray(POLL)).kh == 0x1122334455667788


# -- malformed and short reads ------------------------------------------------

def refused(buf: bytes) -> str:
    with pytest.raises(WireError) as info:
        parse_request(buf)
    return str(info.value)


def test_empty_and_short_reads() -> None:
    assert "short read: 0 bytes" in refused(b"")
    assert "short read: 39 bytes" in refused(OPEN[:39])


@pytest.mark.parametrize("raw", VALID)
def test_every_truncation_is_refused(raw: bytes) -> None:
    for cut in range(len(raw)):
        refused(raw[:cut])  # the header's len disagrees (or no header at all)
        if cut >= 40:  # the same cut with a consistent len: the body is short
            fixed = struct.pack("<I", cut) + raw[4:cut]
            assert "opcode" in refused(fixed)


def test_length_disagreeing_with_the_buffer() -> None:
    assert "header says 49 bytes, the read returned 48" in refused(
        struct.pack("<I", 49) + OPEN[4:])
    assert "header says 48" in refused(OPEN + b"\0")  # two messages in one read never happen


def test_absurd_lengths() -> None:
    assert "absurd" in refused(struct.pack("<I", 1 << 30) + OPEN[4:])  # 1 GB
    assert "absurd" in refused(struct.pack("<I", 0xFFFFFFFF) + OPEN[4:])
    assert "absurd" in refused(struct.pack("<I", 8) + OPEN[4:])  # shorter than the header


def test_data_shorter_than_announced() -> None:
    short_write = request(16, 8, WRITE[40:80] + b"low")  # size says 25
    assert "25 data bytes announced, 3 present" in refused(short_write)
    short_ioctl = request(39, 16, IOCTL[40:72])  # in_size 4, no data
    assert "4 data bytes announced, 0 present" in refused(short_ioctl)


# -- encoding ------------------------------------------------------------------

def test_error_reply_is_the_header_alone() -> None:
    assert cw.reply_error(6, errno.EAGAIN) == out_header(16, -11, 6)
    assert cw.reply_error(2 ** 64 - 1, errno.ENOSYS) == out_header(16, -38, 2 ** 64 - 1)
    for bad in (0, -4, 4096):
        with pytest.raises(WireError):
            cw.reply_error(6, bad)


def test_plain_reply() -> None:
    assert cw.reply(10) == out_header(16, 0, 10)  # RELEASE, FLUSH
    assert cw.reply(10, b"xy") == out_header(18, 0, 10) + b"xy"
    with pytest.raises(WireError):
        cw.reply(-1)


def test_init_reply_layout() -> None:
    got = cw.init_reply(2, 41, "mem_notify", 4096, 8192, flags=1)
    devinfo = b"DEVNAME=mem_notify\0"
    body = (struct.pack("<I", 7) + struct.pack("<I", 41) + b"\0" * 4 + struct.pack("<I", 1)
            + struct.pack("<I", 4096) + struct.pack("<I", 8192) + b"\0" * 8 + b"\0" * 40)
    assert len(body) == 72  # 18 u32
    assert got == out_header(16 + 72 + len(devinfo), 0, 2) + body + devinfo
    assert got.endswith(b"\0DEVNAME=mem_notify\0")
    numbered = cw.init_reply(2, 11, "x", 4096, 4096, dev_major=240, dev_minor=3)
    assert numbered[16 + 24:16 + 32] == struct.pack("<I", 240) + struct.pack("<I", 3)


@pytest.mark.parametrize("devname", ["", "a/b", "a=b", "a\0b", "m\u00e9m", "a b", "x" * 65, "\n"])
def test_init_reply_refuses_bad_devnames(devname: str) -> None:
    with pytest.raises(WireError):
        cw.init_reply(2, 41, devname, 4096, 4096)


def test_init_reply_refuses_bad_numbers() -> None:
    assert len(cw.init_reply(2, 41, "x" * 64, 4096, 4096)) == 16 + 72 + 8 + 64 + 1
    for kwargs in ({"kernel_minor": 10}, {"max_read_bytes": -1}, {"max_write_bytes": 2 ** 32},
                   {"flags": -1}, {"dev_major": 2 ** 32}):
        args = {"unique": 2, "kernel_minor": 41, "devname": "mem_notify", "max_read_bytes": 4096,
                "max_write_bytes": 4096}
        args.update(kwargs)
        with pytest.raises(WireError):
            cw.init_reply(**args)  # type: ignore[arg-type]


def test_open_reply() -> None:
    expected = out_header(32, 0, 4) + struct.pack("<Q", 9) + struct.pack("<I", 5) + b"\0" * 4
    assert cw.open_reply(4, 9) == expected  # DIRECT_IO | NONSEEKABLE by default
    assert cw.open_reply(4, 9, 0) == out_header(32, 0, 4) + struct.pack("<Q", 9) + b"\0" * 8
    with pytest.raises(WireError):
        cw.open_reply(4, -1)


def test_read_and_write_replies() -> None:
    line = b"LOW 8000 65536 1200 4096 123456\n"
    assert cw.read_reply(6, line) == out_header(16 + len(line), 0, 6) + line
    assert cw.read_reply(6, b"") == out_header(16, 0, 6)
    assert cw.write_reply(8, 25) == out_header(24, 0, 8) + struct.pack("<I", 25) + b"\0" * 4


def test_poll_reply() -> None:
    assert cw.poll_reply(18, cw.POLLIN) == out_header(24, 0, 18) + b"\x01\0\0\0" + b"\0" * 4
    assert cw.poll_reply(18, 0) == out_header(24, 0, 18) + b"\0" * 8


def test_ioctl_reply() -> None:
    assert cw.ioctl_reply(16, 0) == out_header(32, 0, 16) + b"\0" * 16
    got = cw.ioctl_reply(16, -1, b"\x07\0\0\0")
    assert got == out_header(36, 0, 16) + struct.pack("<i", -1) + b"\0" * 12 + b"\x07\0\0\0"
    with pytest.raises(WireError):
        cw.ioctl_reply(16, 2 ** 31)


def test_poll_wakeup_is_24_bytes() -> None:
    got = cw.poll_wakeup(0x1122334455667788)
    assert len(got) == 24
    assert got == (b"\x18\0\0\0" + b"\x01\0\0\0" + b"\0" * 8
                   + bytes([0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]))
    with pytest.raises(WireError):
        cw.poll_wakeup(2 ** 64)


def test_a_whole_session_round_trip() -> None:
    # The exchange a server has for one open/poll/wake/close, message by message.
    replies: List[Tuple[int, bytes]] = []
    for raw in VALID:
        req = parse_request(raw)
        if req.opcode == cw.CUSE_INIT:
            replies.append((req.unique, cw.init_reply(req.unique, req.minor, "mem_notify",
                                                      4096, 4096)))
        elif req.opcode == cw.FUSE_POLL:
            replies.append((req.unique, cw.poll_reply(req.unique, 0)))
            replies.append((0, cw.poll_wakeup(req.kh)))
        elif cw.needs_reply(req.opcode):
            replies.append((req.unique, cw.reply_error(req.unique, errno.EINVAL)))
    for unique, message in replies:
        length, error, got_unique = struct.unpack_from("<IiQ", message)
        assert length == len(message) and got_unique == unique
        assert error <= 0 or (error == cw.FUSE_NOTIFY_POLL and unique == 0)
        assert error >= 0 or length == 16  # an error reply carries nothing
