"""Boot, in the ARM guest: it comes up through its init scripts as a device
does (`board/qemu-arm/run --init --board NAME`), /etc/init.d/S60memagent
starts the agent with the board's profile, and the agent picks PSI and
answers `memagent status`; reload, restart and stop work; the shutdown stops
it.  Judged by the guest's RESULT and FACT lines (scenarios/boot.py).
"""

import os
from typing import Any, Dict

import pytest
from test_guest import RIG_DIR, load_rig

from support import need

SCENARIO = os.path.join(RIG_DIR, "scenarios", "boot.py")

pytestmark = pytest.mark.qemu


def boot(board: str, mem_mb: int, tmp: str, interpreter: str = "python3") -> "Any":
    """Boot the guest through init with ``board``'s profile and run boot.py.
    Returns: the rig's RunResult (its ``ok`` already asserted)."""
    rig = load_rig()
    try:
        res = rig.run(SCENARIO, mem_mb=mem_mb, timeout_s=300, out_dir=tmp,
                      boot_init=True, board=board, interpreter=interpreter)
    except rig.RigError as e:
        need("the qemu rig cannot build its image here: %s" % e)
    assert res.ok, rig.explain(res.console)
    return res


def facts_of(console: str) -> "Dict[str, str]":
    out = {}
    for line in console.splitlines():
        if line.startswith("FACT "):
            key, _, value = line[5:].partition("=")
            out[key] = value.strip()
    return out


# Each board on the interpreter its image has: the Zaurus's is MicroPython
# (its profile locks the agent's pages: 13 MB of CPython's at 64 MB).
@pytest.mark.parametrize("board,mem_mb,interpreter", [
    ("qemu-arm", 128, "python3"), ("openmoko-gta02", 128, "python3"),
    ("zaurus-c3000", 64, "micropython")])
def test_agent_starts_from_init_with_the_board_profile(board: str, mem_mb: int, interpreter: str,
                                                       tmp_path: Any) -> None:
    res = boot(board, mem_mb, str(tmp_path), interpreter)
    console = res.console
    facts = facts_of(console)
    assert facts["board"] == board
    assert facts["source"] == "psi"
    assert facts["oom_score_adj"] == "-1000"
    assert facts["kill_background_dry_run"] == "False"
    # the profile's thresholds, as a share of the guest's RAM
    low_pct = 100 * int(facts["low_kib"]) / int(facts["memtotal_kib"])
    assert round(low_pct) == (25 if board == "zaurus-c3000" else 20)
    plugins = set(facts["plugins"].split(","))
    assert {"release_caches", "user_activity", "kill_background"} <= plugins
    assert ("notify_ui" in plugins) == (board == "openmoko-gta02")
    # the init scripts' own words on the console, in order: start at boot,
    # the scenario's RESULT, then the shutdown's stop of a running agent
    start = console.index("RIG-INIT start")
    assert console.index("Starting memagent: OK", start) < console.index("RESULT ok")
    stop = console.index("RIG-INIT stop")
    assert console.index("Stopping memagent: OK", stop) < console.index("RIG-EXIT 0")
    assert "Out of memory" not in console
    # loose sanity bounds: the numbers themselves are FACTs for the docs
    assert 0 < float(facts["boot_to_status_s"]) < 60
    assert 0 < int(facts["agent_vmrss_kib"]) < 48 * 1024
    assert "messages" in res.files and b"config reloaded" in res.files["messages"]
