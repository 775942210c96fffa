"""Trace parsing and deterministic replay, on the real recorded traces."""

import glob
import json
import os

import pytest

from memagent.core import trace
from memagent.core.levels import CRITICAL, LOW, default_thresholds
from memagent.core.reading import Reading, reading_from_dict

TRACES = os.path.join(os.path.dirname(__file__), "data", "traces")


def recorded(name: str) -> "list[Reading]":
    path = os.path.join(TRACES, name)
    if not os.path.exists(path):
        pytest.fail("recorded trace %s is missing" % name)
    return trace.load_trace(path)


def test_roundtrip() -> None:
    r = Reading(5, 1000, 400, free_kib=10, file_kib=300, anon_kib=500, psi_some_avg10=1.5,
                event="psi")
    back = reading_from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.to_dict() == r.to_dict()


@pytest.mark.parametrize("line,msg", [
    ("not json", "line 3: not JSON"),
    ("[1, 2]", "line 3: a reading must be a JSON object"),
    ('{"t_ms": 1, "total_kib": 10}', "line 3: avail_kib"),
    ('{"t_ms": -1, "total_kib": 10, "avail_kib": 1}', "line 3: t_ms"),
    ('{"t_ms": 1, "total_kib": 0, "avail_kib": 1}', "line 3: total_kib must be positive"),
    ('{"t_ms": 1, "total_kib": 10, "avail_kib": true}', "line 3: avail_kib"),
    ('{"t_ms": 1, "total_kib": 10, "avail_kib": 1, "psi_some_avg10": "x"}', "psi_some"),
    ('{"memagent_trace": 99}', "line 3: trace version"),
    ("x" * 5000, "line 3: longer than"),
])
def test_bad_lines_name_the_line(line: str, msg: str) -> None:
    lines = ['{"memagent_trace": 1}', '{"t_ms": 0, "total_kib": 10, "avail_kib": 5}', line]
    with pytest.raises(trace.TraceError, match=msg):
        trace.parse_trace(lines)


def test_time_must_not_go_back() -> None:
    lines = ['{"t_ms": 10, "total_kib": 10, "avail_kib": 5}',
             '{"t_ms": 5, "total_kib": 10, "avail_kib": 5}']
    with pytest.raises(trace.TraceError, match="line 2: t_ms 5 goes back"):
        trace.parse_trace(lines)


def test_empty_trace_is_an_error() -> None:
    with pytest.raises(ValueError):
        trace.replay([])


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in
                                        glob.glob(os.path.join(TRACES, "*.jsonl"))))
def test_replay_is_deterministic(name: str) -> None:
    readings = recorded(name)
    first = [n.as_dict() for n in trace.replay(readings)]
    again = [n.as_dict() for n in trace.replay(recorded(name))]
    assert first == again


def test_recorded_ramp_warns_with_headroom() -> None:
    readings = recorded("ramp-128m.jsonl")
    notes = trace.replay(readings)
    changes = trace.level_changes(notes)
    assert changes and changes[0][1] == "LOW"
    first_low = next(n for n in notes if n.level == LOW)
    pct = 100 * first_low.avail_kib / first_low.total_kib
    assert 10 <= pct <= 30, pct
    assert any(n.level == CRITICAL for n in notes)


def test_recorded_churn_and_calm_stay_normal() -> None:
    for name in ("churn-128m.jsonl", "calm-128m.jsonl"):
        readings = recorded(name)
        assert trace.replay(readings, default_thresholds(readings[0].total_kib)) == [], name


def test_timeline_format() -> None:
    notes = trace.replay([Reading(0, 1000, 900), Reading(1000, 1000, 150)])
    lines = trace.format_timeline(notes)
    assert len(lines) == 1 and "LOW" in lines[0] and "(15%)" in lines[0]
