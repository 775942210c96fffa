"""The wakeup policy of /dev/mem_notify's open files (issue 12)."""

from typing import Dict

import pytest

from memagent.core.levels import CRITICAL, LOW, NORMAL
from memagent.core.waiters import Waiters, jain_index


def test_each_low_event_wakes_one_and_rotation_is_fair() -> None:
    w = Waiters(max_per_event=1, min_gap_ms=0)
    for fh in range(10):
        assert w.add(fh, 0) is False
    counts: Dict[int, int] = {fh: 0 for fh in range(10)}
    for event in range(50):
        now = 100 * event
        woken = w.pressure(LOW, 5000, now)
        assert len(woken) == 1
        assert w.is_ready(woken[0])
        counts[woken[0]] += 1
        assert w.level_changed(NORMAL, 50000, now + 50) == woken
        assert not w.is_ready(woken[0])
    assert list(counts.values()) == [5] * 10
    assert [w.wakes(fh) for fh in range(10)] == [5] * 10
    assert jain_index(list(counts.values())) >= 0.99


def test_the_rate_limit_skips_a_recent_file_and_picks_the_next() -> None:
    w = Waiters(max_per_event=1, min_gap_ms=1000)
    w.add(1, 0)
    w.add(2, 0)
    assert w.pressure(LOW, 5000, 0) == [1]  # queue: 2, 1
    w.level_changed(NORMAL, 50000, 50)
    w.add(3, 100)  # queue: 2, 1, 3
    assert w.pressure(LOW, 5000, 200) == [2]  # queue: 1, 3, 2
    w.level_changed(NORMAL, 50000, 250)
    assert w.pressure(LOW, 5000, 300) == [3]  # 1 woken 300 ms ago: skipped
    w.level_changed(NORMAL, 50000, 350)
    assert w.pressure(LOW, 5000, 400) == []  # all three too recent
    assert w.pressure(LOW, 5000, 1000) == [1]  # 1 kept its place at the front


def test_ready_files_are_not_woken_again() -> None:
    w = Waiters(max_per_event=2, min_gap_ms=0)
    for fh in range(3):
        w.add(fh, 0)
    assert w.pressure(LOW, 5000, 0) == [0, 1]
    assert w.pressure(LOW, 5000, 10) == [2]
    assert w.pressure(LOW, 5000, 20) == []


def test_critical_wakes_everyone_not_ready_ignoring_the_rate_limit() -> None:
    w = Waiters(max_per_event=1, min_gap_ms=10000)
    for fh in range(5):
        w.add(fh, 0)
    assert w.pressure(LOW, 5000, 0) == [0]
    assert w.pressure(CRITICAL, 1000, 10) == [1, 2, 3, 4]
    w.level_changed(NORMAL, 50000, 20)
    assert w.pressure(CRITICAL, 1000, 30) == [0, 1, 2, 3, 4]  # queue order after rotation
    assert all(w.is_ready(fh) for fh in range(5))


def test_a_late_opener_learns_the_current_state() -> None:
    w = Waiters(max_per_event=1, min_gap_ms=1000)
    assert w.add(1, 0) is False
    assert not w.is_ready(1)
    w.pressure(LOW, 5000, 10)
    assert w.add(2, 20) is True
    assert w.is_ready(2)
    w.level_changed(NORMAL, 50000, 30)
    assert not w.is_ready(2)
    assert w.pressure(LOW, 5000, 40) == []  # 1 and 2 both woken < 1000 ms ago
    w.level_changed(NORMAL, 50000, 50)
    assert w.add(3, 60) is False


def test_own_thresholds_with_hysteresis() -> None:
    w = Waiters(max_per_event=1, min_gap_ms=0)
    w.add(7, 0)
    w.set_thresholds(7, 8192, 16384)
    assert w.thresholds(7) == (8192, 16384)
    assert w.pressure(LOW, 9000, 0) == []  # the global level alone: no
    assert w.pressure(NORMAL, 8192, 10) == [7]  # its own enter threshold
    assert w.level_changed(NORMAL, 12000, 20) == []  # in the band: stays ready
    assert w.is_ready(7)
    assert w.level_changed(LOW, 16384, 30) == [7]  # at leave_kib: clears
    assert w.pressure(CRITICAL, 9000, 40) == []  # CRITICAL, but not wanted
    assert w.pressure(CRITICAL, 8000, 50) == [7]
    w.clear_thresholds(7)
    assert w.thresholds(7) is None
    assert w.level_changed(LOW, 50000, 60) == []
    assert w.level_changed(NORMAL, 50000, 70) == [7]


@pytest.mark.parametrize("enter, leave", [(0, 10), (10, 10), (20, 10), (-5, 10)])
def test_invalid_thresholds_raise(enter: int, leave: int) -> None:
    w = Waiters()
    w.add(1, 0)
    with pytest.raises(ValueError, match="enter_kib"):
        w.set_thresholds(1, enter, leave)
    with pytest.raises(KeyError):
        w.set_thresholds(2, 10, 20)


def test_remove_a_ready_file_and_an_unknown_one() -> None:
    w = Waiters(max_per_event=1, min_gap_ms=0)
    w.add(1, 0)
    w.add(2, 0)
    assert w.pressure(LOW, 5000, 0) == [1]
    w.remove(1)
    assert len(w) == 1 and 1 not in w and not w.is_ready(1)
    w.remove(99)
    assert len(w) == 1
    assert w.pressure(LOW, 5000, 10) == [2]
    with pytest.raises(ValueError, match="already open"):
        w.add(2, 20)


def test_max_files_overflow() -> None:
    w = Waiters(max_files=3)
    for fh in range(3):
        w.add(fh, 0)
    with pytest.raises(OverflowError, match="max_files"):
        w.add(3, 0)
    w.remove(0)
    w.add(3, 0)
    assert len(w) == 3
    assert len(Waiters()) == 0 and Waiters().max_files == 1024


def test_bad_parameters_and_levels() -> None:
    with pytest.raises(ValueError):
        Waiters(max_per_event=0)
    with pytest.raises(ValueError):
        Waiters(min_gap_ms=-1)
    with pytest.raises(ValueError, match="unknown level"):
        Waiters().pressure(3, 0, 0)


def test_jain_index_on_known_vectors() -> None:
    assert jain_index([1, 1, 1, 1]) == 1.0
    assert jain_index([1, 0, 0, 0]) == 0.25
    assert jain_index([]) == 1.0
    assert jain_index([0, 0]) == 1.0
    assert jain_index([5, 5, 5, 4]) == pytest.approx(361 / 364)
