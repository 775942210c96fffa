"""Sensing under CPU contention: the guest's sensing scenarios (psi,
cgroup2, poll, the system ramp, and the handset day's LOW) pass with the
host's CPUs saturated by busy loops, N runs of N (bench/contention.py;
MEMAGENT_CONTENTION_RUNS, default 2).  A handset is busiest exactly when
its memory runs out.  Each run is a fresh boot; ~8 minutes in all.
"""

import os
import shutil
from typing import Any

import pytest

from support import need

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_sensing_warns_with_the_host_cpu_saturated(capsys: Any) -> None:
    if shutil.which("qemu-system-arm") is None:
        need("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
    from bench import contention

    runs = int(os.environ.get("MEMAGENT_CONTENTION_RUNS", "2"))
    rig = contention.load_rig()
    busy = max(os.cpu_count() or 2, 2)
    try:
        rows = contention.run_condition(rig, busy, runs, contention.SCENARIOS, print)
    except rig.RigError as e:
        need("the qemu rig cannot build its image here: %s" % e)
    with capsys.disabled():
        print("\n" + "\n".join(contention.table(rows, runs)))
    failed = [r for r in rows if not r["ok"]]
    assert not failed, "\n\n".join("%s run %d:\n%s" % (r["scenario"], r["run"], r["explain"])
                                   for r in failed)
    for r in rows:
        if r["scenario"] != "psi":
            assert r["lead_s"] is not None and r["lead_s"] > 0, r
    assert {r["scenario"] for r in rows} == set(contention.SCENARIOS)
