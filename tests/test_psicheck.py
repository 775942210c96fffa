"""PSI used defensively (core/psicheck.py, the psi source): a false first
event, the trigger's NUL, and a "full" line that never moves.

Replayed on captures from the ARM guest (tests/data/qemu-arm: idle, then
under pressure) and variants of them, through the real psi source on a
swapped /proc root (a plain file takes the trigger write as the kernel's
file would, and keeps what was written)."""

import os
import shutil
from typing import Any, Dict

from memagent.core import procfs
from memagent.core.psicheck import FULL_CHECK_US, PsiCheck
from memagent.sense.domains import SystemDomain
from memagent.sense.sources.base import SourceOptions
from memagent.sense.sources.psi import PsiSource

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def capture(name: str) -> str:
    with open(os.path.join(DATA, "qemu-arm", name)) as f:
        return f.read()


def psi_text(some_total: int, full_total: int, some10: float = 14.06,
             full10: float = 0.0) -> str:
    """The 128 MB pressure capture with other totals and averages."""
    return ("some avg10=%.2f avg60=3.57 avg300=0.79 total=%d\n"
            "full avg10=%.2f avg60=1.93 avg300=0.43 total=%d\n"
            % (some10, some_total, full10, full_total))


def parse(text: str) -> "Dict[str, Dict[str, float]]":
    return procfs.parse_pressure(text)


def test_an_event_without_new_stall_is_not_confirmed() -> None:
    check = PsiCheck(stall_us=150000)
    check.arm(parse(capture("pressure-memory.128m-idle")))  # total=0
    # The false first event: the trigger fired at the first stall, 3.8 ms of it.
    assert not check.confirm(parse(capture("pressure-memory.64m-oom")))
    assert check.unconfirmed == 1
    # A genuine one: 2.5 s of some-stall since.
    assert check.confirm(parse(capture("pressure-memory.128m-pressure")))
    # Another event with only 100 ms more: not enough for a 150 ms trigger.
    assert not check.confirm(parse(psi_text(2496689 + 100000, 1468255)))
    assert check.confirm(parse(psi_text(2496689 + 100000 + 150000, 1468255)))


def test_full_that_never_moves_is_replaced_by_some() -> None:
    check = PsiCheck(stall_us=150000)
    pressure = parse(capture("pressure-memory.128m-pressure"))
    check.arm(pressure)
    assert check.full_avg10(pressure) == 7.46  # full moves: used as it is
    some = 2496689
    stuck = 1468255
    fired = []
    for step in range(1, 12):  # 1 s of some-stall a step, full frozen
        fired.append(check.watch_full(parse(psi_text(some + step * 1000000, stuck))))
    assert fired.index(True) == 9 and fired.count(True) == 1  # 10 s, said once
    assert check.full_broken
    assert check.full_avg10(parse(psi_text(some + 12000000, stuck, some10=31.5))) == 31.5


def test_full_that_moves_now_and_then_is_trusted() -> None:
    check = PsiCheck(stall_us=150000)
    check.arm(parse(psi_text(0, 0)))
    for step in range(1, 40):
        full = (step // 5) * 1000  # moves a little every 5 s of some-stall
        assert not check.watch_full(parse(psi_text(step * 1000000, full)))
    assert not check.full_broken
    assert FULL_CHECK_US == 10 * 1000000


def fake_proc(tmp: str) -> str:
    """Return: a /proc root with the guest's 128 MB meminfo and its idle
    pressure file."""
    root = os.path.join(tmp, "proc")
    os.makedirs(os.path.join(root, "pressure"))
    shutil.copy(os.path.join(DATA, "qemu-arm", "meminfo.128m-pressure"),
                os.path.join(root, "meminfo"))
    with open(os.path.join(root, "pressure", "memory"), "w") as f:
        f.write(capture("pressure-memory.128m-idle"))
    return root


def test_the_psi_source_writes_a_nul_terminated_trigger_and_confirms_events(
        tmp_path: Any) -> None:
    root = fake_proc(str(tmp_path))
    path = os.path.join(root, "pressure", "memory")
    opts = SourceOptions(proc_root=root, psi_stall_us=150000, psi_window_us=1000000)
    source = PsiSource(SystemDomain(root), opts)
    source.open()
    try:
        with open(path, "rb") as f:
            assert f.read().startswith(b"some 150000 1000000\0")
        for text, event in ((capture("pressure-memory.64m-oom"), "psi:unconfirmed"),
                            (capture("pressure-memory.128m-pressure"), "psi")):
            with open(path, "w") as f:
                f.write(text)
            reading = source.read(1000, "psi")
            assert reading.event == event
            assert reading.avail_kib > 0
        assert source.read(2000, "poll").event == "poll"  # polls are not judged
    finally:
        source.close()
