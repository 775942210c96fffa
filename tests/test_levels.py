"""The level logic: thresholds, hysteresis, rate limit, page-cache awareness,
lead time.  Pure: readings are built with explicit timestamps."""

from typing import List, Optional

import pytest

from memagent.core.levels import (
    CRITICAL,
    LOW,
    NORMAL,
    FillRate,
    Monitor,
    Notification,
    Thresholds,
    default_thresholds,
    level_from_name,
)
from memagent.core.reading import Reading

TOTAL = 128 * 1024  # a 128 MB handset


def feed(monitor: Monitor, points: "List[tuple]", event: str = "poll") -> "List[Notification]":
    notes = []
    for t_ms, avail in points:
        note = monitor.update(Reading(t_ms, TOTAL, avail, event=event))
        if note:
            notes.append(note)
    return notes


def steady(t0: int, avail: int, n: int, step_ms: int = 100) -> "List[tuple]":
    return [(t0 + i * step_ms, avail) for i in range(n)]


def test_defaults_scale_with_total() -> None:
    th = default_thresholds(TOTAL)
    assert th.low_kib == TOTAL // 5 and th.critical_kib == TOTAL // 10
    assert th.recover_kib == 2 * th.low_kib
    assert th.critical_recover_kib == th.low_kib
    with pytest.raises(ValueError):
        Thresholds(low_kib=100, critical_kib=200)


def test_level_names() -> None:
    assert level_from_name("low") == LOW
    with pytest.raises(ValueError):
        level_from_name("panic")


def test_threshold_escalation_is_immediate() -> None:
    m = Monitor(default_thresholds(TOTAL))
    notes = feed(m, [(0, 100000), (100, 26000), (150, 12000)])
    assert [(n.level, n.reason) for n in notes] == [(LOW, "avail"), (CRITICAL, "avail")]
    # CRITICAL came 50 ms after LOW: the rate limit never delays escalation.
    assert notes[1].t_ms - notes[0].t_ms == 50


def test_hysteresis_no_flapping_around_low() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    wobble = [(i * 100, th.low_kib + (500 if i % 2 else -500)) for i in range(50)]
    notes = feed(m, wobble)
    changes = [n for n in notes if n.level != n.prev_level]
    assert len(changes) == 1 and changes[0].level == LOW
    # Recovers only past ~2x the threshold.
    notes = feed(m, [(6000, th.recover_kib - 1), (6100, th.recover_kib)])
    assert [n.level for n in notes if n.level != n.prev_level] == [NORMAL]
    assert notes[-1].reason == "recovered"


def test_critical_steps_down_to_low_first() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    feed(m, [(0, 1000)])
    assert m.level == CRITICAL
    notes = feed(m, [(5000, th.critical_recover_kib + 10)])
    assert m.level == LOW and notes[0].prev_level == CRITICAL


def test_rate_limit_reminders() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    notes = feed(m, steady(0, th.low_kib - 1000, 100))  # 10 s at LOW, 100 ms apart
    reminders = [n for n in notes if n.reason == "still"]
    assert notes[0].reason == "avail"
    assert 4 <= len(reminders) <= 5
    gaps = [b.t_ms - a.t_ms for a, b in zip(notes, notes[1:])]
    assert min(gaps) >= th.renotify_ms


def test_page_cache_reclaim_is_not_pressure() -> None:
    # Daniel Spang's case: the kernel reports reclaim (vmpressure, PSI,
    # mem_notify) but most memory is clean page cache: available stays high.
    m = Monitor(default_thresholds(TOTAL))
    for event in ("vmpressure:low", "vmpressure:critical", "psi", "mem_notify"):
        assert feed(m, steady(0, 100000, 20), event=event) == []
    assert m.level == NORMAL


def test_kernel_shortage_counts_inside_the_band() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    band = (th.low_kib + th.recover_kib) // 2
    assert feed(m, [(0, band)], event="vmpressure:low") == []  # reclaim alone: no
    notes = feed(m, [(100, band)], event="psi")
    assert notes[0].level == LOW and notes[0].reason == "kernel:psi"


def test_thrash_from_psi_full() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    r = Reading(0, TOTAL, th.recover_kib - 100, psi_full_avg10=25.0)
    note = m.update(r)
    assert note is not None and note.reason == "thrash" and note.level == LOW
    r = Reading(100, TOTAL, 100000, psi_full_avg10=55.0)
    note = m.update(r)
    assert note is not None and note.level == CRITICAL


def test_lead_time_raises_low_early_on_a_fast_fill() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    # 40 MB/s fill: at 40 MB available there is 1 s left, under lead_ms=2 s.
    points = [(i * 100, 90000 - i * 4096) for i in range(20)]
    notes = feed(m, points)
    first = notes[0]
    assert first.level == LOW and first.reason == "lead-time"
    assert first.avail_kib > th.low_kib
    assert first.eta_ms is not None and first.eta_ms <= th.lead_ms


def test_slow_fill_waits_for_the_threshold() -> None:
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    points = [(i * 100, 60000 - i * 100) for i in range(400)]  # 1 MB/s
    notes = feed(m, points)
    assert notes[0].reason == "avail"


def test_fill_rate_window_and_bound() -> None:
    rate = FillRate(2000)
    assert rate.kib_per_s() is None
    for i in range(1000):
        rate.add(i * 10, 100000 - i * 10)  # 1000 KiB/s
    assert rate.kib_per_s() == 1000
    assert len(rate._points) <= FillRate.MAX_POINTS
    rate.add(0, 5)  # time going back resets
    assert rate.kib_per_s() is None


def test_next_sample_calm_means_no_timer() -> None:
    m = Monitor(default_thresholds(TOTAL))
    assert m.next_sample_ms(0) == 0  # nothing read yet: read now
    feed(m, steady(0, 100000, 30))
    assert m.next_sample_ms(10000) is None
    # Plain reclaim far above the band (page-cache churn) keeps it calm.
    m.update(Reading(3000, TOTAL, 100000, event="vmpressure:low"))
    assert m.next_sample_ms(3100) is None
    # A kernel shortage keeps the loop sampling for active_hold_ms.
    m.update(Reading(3200, TOTAL, 100000, event="psi"))
    interval: Optional[int] = m.next_sample_ms(3300)
    assert interval is not None and 100 <= interval <= 1000
    assert m.next_sample_ms(3200 + m.thresholds.active_hold_ms) is None


def test_shortage_holds_the_level_until_quiet() -> None:
    # Measured in the ARM guest: under page-cache thrash PSI fires every
    # 1-3 s while available hovers at the band's edge (37-42%).  Without the
    # quiet rule the level flapped LOW/NORMAL five times in 12 s.
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    edge = th.recover_kib
    notes = []
    for i in range(12):
        notes += feed(m, [(i * 1000, edge - 2000)], event="psi" if i % 2 == 0 else "poll")
        notes += feed(m, [(i * 1000 + 500, edge + 2000)])
    assert [n.level for n in notes if n.level != n.prev_level] == [LOW]
    notes = feed(m, [(12000 + th.quiet_ms, edge + 2000)])
    assert [n.level for n in notes] == [NORMAL]


def test_next_sample_shortens_as_the_threshold_nears() -> None:
    m = Monitor(default_thresholds(TOTAL))
    feed(m, [(i * 100, 100000 - i * 1024) for i in range(10)])  # 10 MB/s
    far = m.next_sample_ms(1000)
    feed(m, [(1000 + i * 100, 90000 - i * 1024) for i in range(50)])
    near = m.next_sample_ms(6000)
    assert far is not None and near is not None and near <= far


def test_a_level_held_by_the_hysteresis_is_reminded_every_remind_ms() -> None:
    # With cgroup1, LOW held 11 s of unchanging memory with no reminder: the
    # reading called for NORMAL, only the hysteresis held LOW.
    th = default_thresholds(TOTAL)
    m = Monitor(th)
    band = (th.low_kib + th.recover_kib) // 2
    notes = feed(m, [(0, th.low_kib - 10)] + steady(1000, band, 12, step_ms=1000))
    assert [(n.t_ms, n.level, n.reason) for n in notes] == [
        (0, LOW, "avail"), (5000, LOW, "still"), (10000, LOW, "still")]
    assert th.remind_ms == 5000
    # Never while NORMAL.
    notes = feed(m, steady(20000, th.recover_kib + 10, 20, step_ms=1000))
    assert [(n.level, n.reason) for n in notes] == [(NORMAL, "recovered")]


def test_remind_ms_is_never_below_renotify_ms() -> None:
    th = Thresholds(TOTAL // 5, TOTAL // 10, renotify_ms=3000, remind_ms=1000,
                    total_kib=TOTAL)
    assert th.remind_ms == 3000
