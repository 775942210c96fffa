"""The event log's numbered ring (memagent.runtime.eventlog): every kind of
entry numbered in order, a follower's view by number, and bounded RAM."""

import gc
import io
import json
import logging
import tracemalloc
from typing import Iterator

import pytest

from memagent.core.levels import Notification
from memagent.runtime.eventlog import RECENT_EVENTS, EventLog


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # the log lines are not what is tested
    yield
    logging.disable(logging.NOTSET)


def fill(log: EventLog, rounds: int) -> None:
    """Add ``rounds`` x (a level change, a dry-run kill, a plugin error)."""
    for i in range(rounds):
        log.note(Notification(1000 + i, 1, 0, "avail", 20000, 65536, 1500, 4000))
        log.record_action("kill", pid=1234 + i, name="camera", cls="cached", reason="avail",
                          level="CRITICAL", rss_kib=131000, freed_kib=127500, ms=12,
                          sigkill=False, dry_run=True, outcome="dry-run", mrelease=None,
                          registered=True, adj=900)
        log.plugin_error("vendor_stats", "on_pressure", "raised ValueError: math domain error")


def test_every_kind_is_numbered_in_order_and_written() -> None:
    out = io.StringIO()
    log = EventLog(out)
    fill(log, 2)
    assert [e["seq"] for e in log.events] == [1, 2, 3, 4, 5, 6] and log.seq == 6
    assert [e["kind"] for e in log.events[:3]] == ["level", "action", "plugin_error"]
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    # an events file's reader takes a line without "action" for a notification
    assert len(written) == 6 and written[2]["action"] == "plugin_error"
    assert [("action" in w) for w in written] == [False, True, True] * 2
    assert "action" in written[1] and written[1]["dry_run"] is True


def test_since_gives_the_newer_ones_and_the_ring_is_bounded() -> None:
    log = EventLog(None)
    fill(log, 100)  # 300 entries
    assert len(log.events) == RECENT_EVENTS and log.events[0]["seq"] == 300 - RECENT_EVENTS + 1
    assert [e["seq"] for e in log.since(297)] == [298, 299, 300]
    assert log.since(300) == [] and log.since(10 ** 9) == []
    assert [e["seq"] for e in log.since(0, 2)] == [237, 238]  # a gap: 1..236 are gone
    assert log.since(5, 0) == [] and log.since(5, -1) == []


def test_the_rings_cost_under_64_kib_and_do_not_grow() -> None:
    # Measured 2026-12-07, CPython 3.11 x86_64: the three rings full (64
    # numbered events, 16 notes, 16 actions) held 41.5 KiB.
    gc.collect()
    tracemalloc.start()
    try:
        log = EventLog(None)
        fill(log, 100)
        gc.collect()
        full_bytes = tracemalloc.get_traced_memory()[0]
        fill(log, 1000)
        gc.collect()
        later_bytes = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert full_bytes < 64 * 1024, full_bytes
    assert later_bytes < full_bytes + 4096, (full_bytes, later_bytes)
