"""The /dev/mem_notify device's answers (memagent.core.memnotify): every
request the kernel sends, as the bytes it would read; the pressure events
that wake files; the line, the commands and the signal ioctl; and hostile
input (bad writes, unknown files and opcodes, 1,000 opens, max_files).
The requests are built by hand from fuse.h's layouts (as in
test_cusewire), then decoded by the wire module, as the server does."""

import struct
from typing import List

import pytest

from memagent.core import cusewire as cw
from memagent.core.levels import CRITICAL, LOW, NORMAL
from memagent.core.memnotify import (
    MEMNOTIFY_SETSIG,
    Device,
    Effects,
    format_line,
    parse_command,
    parse_line,
)
from memagent.core.waiters import Waiters, jain_index

PID, UID = 4242, 1000


def request(opcode: int, unique: int, body: bytes, pid: int = PID) -> cw.Request:
    head = struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, 0, UID, UID, pid, 0, 0)
    return cw.parse_request(head + body)


def open_req(unique: int) -> cw.Request:
    return request(cw.FUSE_OPEN, unique, struct.pack("<II", 0, 0))


def poll_req(unique: int, fh: int, kh: int, schedule: bool = True) -> cw.Request:
    return request(cw.FUSE_POLL, unique, struct.pack("<QQII", fh, kh, int(schedule), 1))


def read_req(unique: int, fh: int, size: int = 4096) -> cw.Request:
    return request(cw.FUSE_READ, unique, struct.pack("<QQIIQII", fh, 0, size, 0, 0, 0, 0))


def write_req(unique: int, fh: int, data: bytes) -> cw.Request:
    body = struct.pack("<QQIIQII", fh, 0, len(data), 0, 0, 0, 0) + data
    return request(cw.FUSE_WRITE, unique, body)


def ioctl_req(unique: int, fh: int, cmd: int, data: bytes) -> cw.Request:
    body = struct.pack("<QIIQII", fh, 0, cmd, 0xBEEF, len(data), 0) + data
    return request(cw.FUSE_IOCTL, unique, body)


def release_req(unique: int, fh: int) -> cw.Request:
    return request(cw.FUSE_RELEASE, unique, struct.pack("<QIIQ", fh, 0, 0, 0))


def out(unique: int, error: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("<IiQ", 16 + len(payload), error, unique) + payload


def opened(dev: Device, n: int, now_ms: int = 0) -> List[int]:
    """Open ``n`` files and poll each with kh = 1000 + fh; return their fh."""
    fhs = []
    for i in range(n):
        eff = dev.handle(open_req(100 + i), now_ms)
        fh = struct.unpack_from("<Q", eff.writes[0], 16)[0]
        dev.handle(poll_req(200 + i, fh, 1000 + fh), now_ms)
        fhs.append(fh)
    return fhs


def woken_kh(eff: Effects) -> List[int]:
    """The kh of each FUSE_NOTIFY_POLL write (24 bytes: header, kh)."""
    for w in eff.writes:
        assert struct.unpack_from("<IiQ", w) == (24, cw.FUSE_NOTIFY_POLL, 0)
    return [struct.unpack_from("<Q", w, 16)[0] for w in eff.writes]


def pressure(dev: Device, level: int, avail_kib: int, now_ms: int) -> Effects:
    return dev.update(level, avail_kib, 65536, 2000, 4096, now_ms, now_ms, True)


def test_open_poll_read_release_bytes() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    eff = dev.handle(open_req(7), 0)
    assert eff.writes == [out(7, 0, struct.pack("<QIi", 1, cw.FOPEN_DIRECT_IO
                                                | cw.FOPEN_NONSEEKABLE, 0))]
    assert dev.handle(poll_req(8, 1, 0xAA), 0).writes == [out(8, 0, struct.pack("<II", 0, 0))]
    assert dev.files[1].kh == 0xAA
    line = format_line(NORMAL, 0, 0, None, 0, 0)
    assert dev.handle(read_req(9, 1), 0).writes == [out(9, 0, line)]
    eff = dev.handle(release_req(10, 1), 0)
    assert eff.writes == [out(10)] and eff.released == [1]
    assert 1 not in dev.files and len(dev.waiters) == 0


def test_pressure_wakes_n_per_event_by_poll_notification_then_clears() -> None:
    dev = Device(Waiters(max_per_event=2, min_gap_ms=0))
    fhs = opened(dev, 5)
    eff = pressure(dev, LOW, 5000, 10)
    assert woken_kh(eff) == [1000 + fhs[0], 1000 + fhs[1]] and eff.woken == fhs[:2]
    revents = dev.handle(poll_req(300, fhs[0], 1000 + fhs[0]), 10).writes[0]
    assert revents == out(300, 0, struct.pack("<II", cw.POLLIN | cw.POLLRDNORM, 0))
    # the same event again (a reminder) wakes the next two, not the ready ones
    assert pressure(dev, LOW, 5000, 20).woken == fhs[2:4]
    assert pressure(dev, CRITICAL, 1000, 30).woken == [fhs[4]]  # all that are not ready
    dev.update(NORMAL, 30000, 65536, None, 0, 40, 40, False)
    assert not any(dev.waiters.is_ready(fh) for fh in fhs)


def test_read_returns_the_line_and_acknowledges() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    (fh,) = opened(dev, 1)
    pressure(dev, LOW, 5120, 123456)
    assert dev.waiters.is_ready(fh)
    data = dev.handle(read_req(5, fh), 0).writes[0][16:]
    assert data == b"low 5120 65536 2000 4096 123456\n"
    assert parse_line(data) == {"level": "low", "avail_kib": 5120, "total_kib": 65536,
                                "eta_ms": 2000, "target_kib": 4096, "t_ms": 123456}
    assert not dev.waiters.is_ready(fh)  # acknowledged
    assert pressure(dev, LOW, 5000, 123556).woken == [fh]  # the next event chooses it again
    assert dev.handle(read_req(6, fh, size=3), 0).writes[0][16:] == b"low"  # short buffer


def test_fair_rotation_ten_waiters_one_per_event() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    fhs = opened(dev, 10)
    counts = {fh: 0 for fh in fhs}
    for event in range(50):
        eff = pressure(dev, LOW, 5000, event * 100)
        assert len(eff.woken) == 1
        counts[eff.woken[0]] += 1
        dev.handle(read_req(event, eff.woken[0]), event * 100)  # the waiter reads
    assert jain_index(list(counts.values())) == 1.0


def test_late_opener_is_ready_at_once() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    pressure(dev, LOW, 5000, 0)
    (fh,) = opened(dev, 1, now_ms=5)
    assert dev.waiters.is_ready(fh)


def test_own_thresholds_by_write() -> None:
    dev = Device(Waiters(max_per_event=4, min_gap_ms=0))
    a, b = opened(dev, 2)
    cmd = b"low_kib 20000 leave_kib 30000"
    assert dev.handle(write_req(3, a, cmd), 0).writes == [out(3, 0, struct.pack("<II", len(cmd),
                                                                                  0))]
    # a reading at NORMAL, below a's own threshold: only a wakes
    eff = dev.update(NORMAL, 18000, 65536, None, 0, 1, 1, False)
    assert eff.woken == [a] and not dev.waiters.is_ready(b)
    assert parse_line(dev.line(a))["target_kib"] == 12000  # up to its leave level
    dev.update(NORMAL, 31000, 65536, None, 0, 2, 2, False)
    assert not dev.waiters.is_ready(a)
    assert dev.handle(write_req(4, a, b"global"), 0).writes[0] == out(4, 0, struct.pack(
        "<II", 6, 0))
    assert dev.waiters.thresholds(a) is None


@pytest.mark.parametrize("bad", [b"", b"low_kib 1", b"low_kib 9 leave_kib 8",
                                 b"low_kib -1 leave_kib 8", b"low_kib x leave_kib 8",
                                 b"\xff\xfe", b"global " * 40, b"drop caches"])
def test_bad_commands_are_einval_and_change_nothing(bad: bytes) -> None:
    dev = Device(Waiters())
    (fh,) = opened(dev, 1)
    assert dev.handle(write_req(9, fh, bad), 0).writes == [out(9, -22)]
    assert dev.waiters.thresholds(fh) is None and dev.bad == 1
    with pytest.raises(ValueError):
        parse_command(bad)


def test_setsig_ioctl_registers_the_caller_and_wakeups_signal() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    (fh,) = opened(dev, 1)
    assert MEMNOTIFY_SETSIG == (1 << 30) | (4 << 16) | (ord("M") << 8) | 1
    eff = dev.handle(ioctl_req(11, fh, MEMNOTIFY_SETSIG, struct.pack("<i", 10)), 0)
    assert eff.writes == [out(11, 0, struct.pack("<iIII", 0, 0, 0, 0))]
    assert eff.registered == [(fh, PID, 10)]
    assert pressure(dev, LOW, 5000, 1).signals == [fh]
    # FIOASYNC-like or unknown ioctls: ENOTTY; a signal number out of range: EINVAL
    assert dev.handle(ioctl_req(12, fh, 0x5452, b""), 0).writes == [out(12, -25)]
    bad = ioctl_req(13, fh, MEMNOTIFY_SETSIG, struct.pack("<i", 99))
    assert dev.handle(bad, 0).writes == [out(13, -22)]


def test_interrupt_answers_the_original_with_eintr() -> None:
    dev = Device(Waiters())
    eff = dev.handle(request(cw.FUSE_INTERRUPT, 21, struct.pack("<Q", 20)), 0)
    assert eff.writes == [out(20, -4)]


def test_unknown_files_and_opcodes_never_crash() -> None:
    dev = Device(Waiters())
    assert dev.handle(read_req(1, 77), 0).writes == [out(1, -5)]
    assert dev.handle(poll_req(2, 77, 5), 0).writes == [out(2, 0, struct.pack("<II",
                                                                               cw.POLLERR, 0))]
    assert dev.handle(write_req(3, 77, b"global"), 0).writes == [out(3, -5)]
    assert dev.handle(ioctl_req(4, 77, MEMNOTIFY_SETSIG, b"\0" * 4), 0).writes == [out(4, -5)]
    assert dev.handle(release_req(5, 77), 0).writes == [out(5)]
    assert dev.handle(request(1, 6, b""), 0).writes == [out(6, -38)]  # LOOKUP: ENOSYS
    assert dev.bad == 1


def test_a_thousand_opens_then_max_files_then_release_frees() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0, max_files=1000))
    fhs = opened(dev, 1000)
    assert len(dev.files) == 1000
    assert dev.handle(open_req(5000), 0).writes == [out(5000, -23)]  # ENFILE
    assert pressure(dev, CRITICAL, 100, 1).woken == fhs  # all at CRITICAL
    for i, fh in enumerate(fhs):
        dev.handle(release_req(6000 + i, fh), 2)
    assert not dev.files and len(dev.waiters) == 0
    assert dev.status()["opens"] == 1000 and dev.status()["refused"] == 1


@pytest.mark.parametrize("bad", ["", "low 1 2 3 4", "high 1 2 3 4 5", "low a 2 3 4 5"])
def test_parse_line_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_line(bad)


def test_own_thresholds_are_judged_when_written() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    (fh,) = opened(dev, 1)
    dev.update(NORMAL, 40000, 65536, None, 0, 1, 1, False)
    eff = dev.handle(write_req(3, fh, b"low_kib 50000 leave_kib 60000"), 2)
    assert eff.thresholds and eff.woken == [fh]
    assert eff.writes[0] == out(3, 0, struct.pack("<II", 29, 0))
    assert woken_kh(Effects()) == [] and struct.unpack_from("<Q", eff.writes[1], 16)[0] == 1000 + fh


def test_setsig_on_a_ready_file_signals_at_once() -> None:
    dev = Device(Waiters(max_per_event=1, min_gap_ms=0))
    pressure(dev, LOW, 5000, 0)
    (fh,) = opened(dev, 1)  # a late opener: ready at once
    eff = dev.handle(ioctl_req(11, fh, MEMNOTIFY_SETSIG, struct.pack("<i", 10)), 1)
    assert eff.registered == [(fh, PID, 10)] and eff.signals == [fh]
