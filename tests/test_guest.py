"""What this machine cannot do, on a real 32-bit ARM kernel in qemu-system-arm:
PSI triggers and cgroup v2 memory events, driving memagent's own sources.

Each test boots the guest (about 15-40 s under TCG) and judges only by the
RESULT and FACT lines the guest prints: qemu exits 0 whatever happens inside.
"""

import os
import re
import shutil
import sys
from typing import Any, Dict, Tuple

import pytest

from support import need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIG_DIR = os.path.join(ROOT, "board", "qemu-arm")
SCENARIO = os.path.join(RIG_DIR, "scenarios", "sources.py")

pytestmark = pytest.mark.qemu


def load_rig() -> "Any":
    """Returns: the rig module (board/qemu-arm/rig.py).  Skips (fails under
    CI=true) without qemu-system-arm."""
    if shutil.which("qemu-system-arm") is None:
        need("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
    sys.path.insert(0, RIG_DIR)
    try:
        import rig
    finally:
        sys.path.pop(0)
    return rig


def boot_script(script: str, tmp: str, args: "Tuple[str, ...]" = (),
                mem_mb: int = 128, interpreter: str = "python3") -> "Tuple[str, Dict[str, str]]":
    """Run a scenario in the guest (``interpreter`` micropython: with the
    MicroPython sidecar, RIG_INTERPRETER).  Returns: (console, FACT values);
    the guest kernel's version line is FACT ``kernel``.  A failed run fails
    the test with its FACT and RESULT lines first (rig.explain)."""
    rig = load_rig()
    try:
        console, _files = rig.run_scenario(script, mem_mb=mem_mb, timeout_s=240,
                                           out_dir=tmp, args=args, interpreter=interpreter)
    except rig.RigError as e:
        need("the qemu rig cannot build its image here: %s" % e)
    facts = {"kernel": rig.guest_kernel(console)}
    for line in console.splitlines():
        if line.startswith("FACT "):
            key, _, value = line[5:].partition("=")
            facts[key] = value.strip()
    assert rig.scenario_ok(console), rig.explain(console)
    assert facts["kernel"].startswith("Linux version "), rig.explain(console)
    return console, facts


def boot(mode: str, tmp: str) -> "Tuple[str, Dict[str, str]]":
    """Run sources.py MODE in the guest.  Returns: (console, FACT values)."""
    return boot_script(SCENARIO, tmp, (mode,))


def test_psi_source_sleeps_while_calm_and_wakes_on_thrash(tmp_path: Any) -> None:
    _, facts = boot("psi", str(tmp_path))
    assert facts["calm_readings_8s_to_18s"] == "0"
    assert int(facts["psi_wakes"]) >= 1


def test_cgroup2_source_warns_before_the_memcg_oom_kill(tmp_path: Any) -> None:
    _, facts = boot("cgroup2", str(tmp_path))
    assert int(facts["events_wakes"]) >= 1
    assert facts["oom_kills"] == "1" and facts["alloc_exit"] == "-9"
    assert float(facts["low_lead_s"]) > 0.5


def test_system_ramp_on_psi_warns_with_headroom(tmp_path: Any) -> None:
    _, facts = boot("ramp", str(tmp_path))
    assert facts["source"] == "psi"
    assert 10 <= int(facts["first_low_avail_pct"]) <= 30
    assert float(facts["low_lead_s"]) > 1.0


def test_demo_live_on_cgroup_v2(tmp_path: Any) -> None:
    # The README's first command on a cgroup v2 machine (Debian 12's default).
    console, _ = boot_script(os.path.join(RIG_DIR, "scenarios", "demo.sh"), str(tmp_path))
    assert re.search(r"LOW +from NORMAL", console) and "removed" in console, console[-3000:]
