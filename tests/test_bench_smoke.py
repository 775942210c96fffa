"""bench/sensing.py --quick as a loose sanity check (root, cgroup v1, ~50 s)."""

import json
import os
import subprocess
import sys
from typing import Any, Dict

import pytest

from conftest import need
from memagent.demo import memcg
from support import micropython_ffi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.memcg, pytest.mark.slow]


def test_bench_quick(tmp_path: Any) -> None:
    micropython_ffi()  # the agent on MicroPython runs beside CPython's
    reason = memcg.available()
    if reason is None and memcg.find_hierarchy()[0] != "v1":
        reason = "the bench's raw detectors need cgroup v1"
    if reason is not None:
        need(reason)
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench.sensing", "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "| memagent run (cgroup1) |" in done.stdout
    result: Dict[str, Any] = json.loads(out.read_text())
    lead = result["lead"]
    assert lead["oom_killed"]
    agent = lead["rows"][0]
    assert agent["fired"] and agent["before_oom"], agent
    vmpressure = next(r for r in lead["rows"] if r["detector"] == "raw vmpressure low")
    # Measured: raw vmpressure "low" fires at the first MiB on a memcg full of cache.
    assert vmpressure["fired"] and vmpressure["allocated_mib"] < agent["allocated_mib"]
    assert all(r["rss_kib"] > 0 for r in result["idle"]["rows"])
    assert {"lead", "churn", "idle"} <= set(result["durations_s"])
    # The same agent on MicroPython, side by side: LOW before the OOM kill,
    # none under page-cache churn, no wakeups of its own while calm.
    mpy = "memagent run (cgroup1, MicroPython)"
    row = next(r for r in lead["rows"] if r["detector"] == mpy)
    assert row["fired"] and row["before_oom"], row
    row = next(r for r in result["churn"]["rows"] if r["detector"] == mpy)
    assert row["low_events"] == 0, row
    row = next(r for r in result["idle"]["rows"] if r["process"] == mpy)
    assert row["wakeups_per_min"] <= 1.0 and 0 < row["rss_kib"], row
