"""The bounded history behind status's sparklines (memagent.core.history):
folding uneven readings into buckets without losing a dip, the ring's
bound, gaps where the agent slept, and the two renderings."""

import sys
import tracemalloc

import pytest

from memagent.core.history import History, level_marks, sparkline
from memagent.core.levels import CRITICAL, LOW, NORMAL


def test_a_dip_inside_a_bucket_survives() -> None:
    h = History(capacity=4, step_ms=1000)
    for t, avail, level in ((0, 9000, NORMAL), (300, 2000, CRITICAL), (900, 8000, LOW)):
        h.add(t, avail, level)
    assert h.buckets() == [(0, 2000, CRITICAL)]


def test_the_ring_keeps_the_newest_capacity_buckets() -> None:
    h = History(capacity=3, step_ms=1000)
    for i in range(10):
        h.add(i * 1000 + 5, 100 - i, NORMAL)
    assert len(h) == 3
    assert h.buckets() == [(7000, 93, NORMAL), (8000, 92, NORMAL), (9000, 91, NORMAL)]


def test_a_clock_that_goes_back_folds_into_the_newest() -> None:
    h = History(capacity=3, step_ms=1000)
    h.add(5000, 50, NORMAL)
    h.add(1000, 10, LOW)
    assert h.buckets() == [(5000, 10, LOW)]


def test_series_has_gaps_where_no_reading_came() -> None:
    h = History(capacity=10, step_ms=1000)
    h.add(1000, 10, NORMAL)
    h.add(4000, 40, LOW)
    avail, level = h.series(now_ms=4500, width=5)
    assert avail == [None, 10, None, None, 40] and level == [None, NORMAL, None, None, LOW]


def test_renderings() -> None:
    assert sparkline([0, None, 50, 100, 200], 0, 100, ascii_only=True) == "_ -^^"
    assert len(sparkline([0, 100], 0, 100)) == 2 and sparkline([0], 0, 100) == "\u2581"
    assert level_marks([NORMAL, LOW, CRITICAL, None], ascii_only=True) == ".LC "


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        History(capacity=0)
    with pytest.raises(ValueError):
        History(step_ms=0)


def test_what_ten_minutes_cost() -> None:
    # 120 buckets of 5 s, full: three lists of 120 small ints (CPython caches
    # ints below 257; these are typical MiB-scale values, allocated once each)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    h = History()
    for i in range(2000):
        h.add(i * 5000, 20000 + i, LOW)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(h) == 120
    assert grown < 16 * 1024, grown  # measured 11.5 KiB on CPython 3.11 x86_64
    assert sys.getsizeof(h._avail) < 2048
