"""bench/sensing.py --quick as a loose sanity check (root, cgroup v1, ~50 s)."""

import json
import os
import subprocess
import sys
from typing import Any, Dict

import pytest

from conftest import need
from memagent.demo import memcg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.memcg, pytest.mark.slow]


def test_bench_quick(tmp_path: Any) -> None:
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
