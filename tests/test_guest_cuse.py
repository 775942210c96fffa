"""memagent's /dev/mem_notify through CUSE on a real 32-bit ARM kernel (the
qemu guest; this machine has no /dev/cuse): the 2008 patch's own usage
example as a static C program and a Python client, its alloc-test, N=1
exclusive and fair wakeups, SIGIO-style delivery, and hostile clients.
Once with the provider on CPython and once on MicroPython, both in the
128 MB guest.  See board/qemu-arm/scenarios/mem_notify_device.py.
"""

import os
from typing import Any, Dict

import pytest
from test_guest import RIG_DIR, load_rig

SCENARIO = os.path.join(RIG_DIR, "scenarios", "mem_notify_device.py")

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def run(tmp: str, interpreter: str) -> Dict[str, str]:
    """Boot the guest with the scenario.  Returns: its FACT values; a failed
    run fails the test with its FACT and RESULT lines first."""
    rig = load_rig()
    try:
        console, _ = rig.run_scenario(SCENARIO, mem_mb=128, timeout_s=600, out_dir=tmp,
                                      interpreter=interpreter)
    except rig.RigError as e:
        pytest.fail("the qemu rig cannot run here: %s" % e)
    facts = {}
    for line in console.splitlines():
        if line.startswith("FACT "):
            key, _, value = line[5:].partition("=")
            facts[key] = value.strip()
    assert rig.scenario_ok(console), rig.explain(console)
    return facts


def check_facts(f: Dict[str, str]) -> None:
    # the seed's usage example: no wake in 30 s of calm and of page-cache
    # churn, a wake under real pressure (C and Python), with a LOW line
    for phase in ("calm", "churn"):
        assert f["%s_wakes_c" % phase] == f["%s_wakes_py" % phase] == "0"
    assert f["pressure_c"].startswith("low ") and f["pressure_py"].startswith("low ")
    assert f["pressure_sig_lines"] == "1" and f["pressure_oom_kills"] == "0"
    # alloc-test, 5 runs: exit 0 on the notification, no OOM kill, some MB left
    assert f["alloc_exits_code_oomkills"] == ",".join(["0/0"] * 5)
    assert all(int(mb) > 5 for mb in f["alloc_mb_available_at_exit"].split(","))
    # N=1: exactly one file per event, fair over 50 events
    assert f["fair_woken_per_event"].startswith('{"LOW1":') and "LOW0" not in \
        f["fair_woken_per_event"]
    assert float(f["fair_jain"]) >= 0.99
    assert f["late_opener_readable_at_once"] == "True"
    # hostile clients
    assert f["open_files_during"] == "1000" and f["open_files_after_kill"] == "0"
    assert f["interrupted_read"].endswith("exit 0")
    assert f["second_instance"].startswith("1 ") and "already served" in f["second_instance"]
    assert " poller 3 " in f["shutdown"] and "POLLERR" in f["shutdown"]


def test_the_device_on_cpython(tmp_path: Any) -> None:
    f = run(str(tmp_path), "python3")
    assert f["interpreter"] == "python3"
    check_facts(f)


def test_the_device_on_micropython(tmp_path: Any) -> None:
    f = run(str(tmp_path), "micropython")
    assert f["interpreter"] == "micropython"
    assert int(f["provider_rss_kib"]) < 4096  # the whole provider, interpreter included
    check_facts(f)
