"""bench/trim_latency.py --quick as a loose sanity check (root, a memcg, ~30 s)."""

import json
import os
import subprocess
import sys
from typing import Any, Dict

import pytest

from memagent.demo import memcg
from support import need

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.memcg, pytest.mark.slow]


def test_attribute_windows() -> None:
    """Trims are matched to the notification before them, within its window."""
    from bench.trim_latency import attribute, percentile, summarise

    notes = [{"t_ms": 1000, "level": "LOW"}, {"t_ms": 1100, "level": "CRITICAL"},
             {"t_ms": 5000, "level": "LOW"}]
    receipts = [(1.0042, 1, "LOW", 8), (1.0050, 2, "LOW", 8), (1.1031, 3, "CRITICAL", 8)]
    rows = attribute(notes, receipts, overlap_ms=250)
    assert [r["woken"] for r in rows] == [2, 1, 0]
    assert rows[0]["latency_ms"] == pytest.approx(4.2, abs=0.01)
    assert rows[1]["overlap"] and rows[2]["latency_ms"] is None
    summary = summarise(3, rows)
    assert (summary["count"], summary["overlapped"], summary["no_trim"]) == (1, 1, 1)
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0


def test_bench_quick(tmp_path: Any) -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    out = tmp_path / "trim.json"
    done = subprocess.run([sys.executable, "-m", "bench.trim_latency", "--quick",
                           "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "| apps (N) |" in done.stdout and "median" in done.stdout
    result: Dict[str, Any] = json.loads(out.read_text())
    assert [s["apps"] for s in result["sizes"]] == [10, 100]
    for size in result["sizes"]:
        # Loose: pressure did make LOW notifications, apps got trims after them,
        # and the agent answered within a second, waking at most every app.
        assert size["count"] >= 1, size
        assert 0 <= size["median_ms"] < 1000, size
        assert 1 <= size["woken_max"] <= size["apps"], size
