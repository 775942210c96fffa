"""Handset day, in the ARM guest booted through init with a board profile
(`board/qemu-arm/run --board NAME scenarios/handset_day.py memagent`): the
agent S60memagent started asks the registered apps to trim first, then kills
in class order (the unregistered hog and the cached apps before the
service), the kernel's OOM killer never acts, and the foreground lives.

Judged by the guest's RESULT and FACT lines; each case is one boot (both
together: 83-101 s of guest time here).  First, on the host, the
scenario's analysis (shared with bench/board.py) on hand-made runs.
"""

import os
import sys
from typing import Any, Dict, List

import pytest
from test_guest import RIG_DIR, load_rig
from test_guest_boot import facts_of

from support import need

SCENARIO = os.path.join(RIG_DIR, "scenarios", "handset_day.py")
sys.path.insert(0, os.path.dirname(SCENARIO))
import handset_day  # noqa: E402

sys.path.pop(0)


def _proc(name: str, cls: str, pid: int, rc: "Any", died_ms: "Any") -> "Dict[str, Any]":
    return {"name": name, "cls": cls, "pid": pid, "rc": rc, "died_ms": died_ms, "trims": []}


def _run(procs: "List[Dict[str, Any]]", kills: "List[Dict[str, Any]]") -> "Dict[str, Any]":
    """Return: a raw run as run_once makes it: CRITICAL <= 10 MiB, the growth
    from t=1000 to t=2000 ms, a foreground that finished."""
    fg = dict(_proc("foreground", "service", 9, None, None), done_ms=1900)
    samples = [[1000, 30000], [1100, 10240], [1200, 9000], [1300, 20000], [1400, 8000],
               [1500, 25000], [2000, 24000]]
    return {"procs": procs + [fg], "tool": {"kills": kills}, "samples": samples,
            "crit_kib": 10240, "t0_ms": 1000, "end_ms": 2000, "start_ms": 0,
            "oom_kills": 1, "dmesg_ooms": 1, "psi_some_us": 2500000, "psi_growth_us": 900000,
            "timed_out": False, "ramp_points": [[1900, 40.0]], "fg_class": "foreground",
            "protected": {"syslogd": True}}


def test_analysis_tells_the_tool_from_the_kernel() -> None:
    procs = [_proc("hog", "cached", 4, 0, 1150), _proc("cached-old", "cached", 5, -9, 1300),
             _proc("service", "service", 6, -9, 1450), _proc("cached-new", "cached", 7, None,
                                                            None)]
    procs[1]["trims"] = [[900, "LOW", 2048, 2048]]
    kills = [{"pid": 4, "t_ms": 1150, "decision_ms": 1100, "outcome": "exited"},
             # pidkill's "gone" after a SIGTERM the victim acted on too late: still the tool's
             {"pid": 6, "t_ms": 1460, "decision_ms": 1420, "outcome": "gone"},
             {"pid": 4242, "t_ms": 1500, "decision_ms": 1500, "outcome": "killed"}]
    fig = handset_day.analyse(_run(procs, kills))
    # exit 0 is the app's SIGTERM handler: the tool's; a SIGKILL nobody
    # recorded is the kernel's, even for a pid the tool tried ("gone")
    assert [(v["name"], v["by"]) for v in fig["victims"]] == [
        ("hog", "tool"), ("cached-old", "kernel"), ("service", "kernel")]
    assert fig["tool_kills"] == 1 and fig["stray_kills"] == [4242]
    assert fig["trims"] == 1 and fig["trimmed_kib"] == 2048 and fig["trims_first"]
    assert (fig["first_trim_ms"], fig["first_kill_ms"]) == (-100, 100)
    assert fig["class_order"] and fig["fg_survived"]
    assert (fig["psi_some_ms"], fig["psi_growth_ms"], fig["setup_ms"]) == (2500, 900, 1000)
    # at or below 10 MiB from 1100 (first) to 1400 (last); back above at 1500
    assert (fig["recovery_ms"], fig["below_crit_ms"]) == (400, 100 + 100 + 100)
    assert "1 kernel OOM kills" in handset_day.checks(fig)


def test_analysis_flags_a_service_before_a_cached_app_and_no_recovery() -> None:
    procs = [_proc("service", "service", 6, -15, 1150), _proc("hog", "cached", 4, -9, 1300)]
    kills = [{"pid": 6, "t_ms": 1150, "decision_ms": 1100, "outcome": "exited"},
             {"pid": 4, "t_ms": 1300, "decision_ms": 1250, "outcome": "killed",
              "sigkill": True}]
    run = _run(procs, kills)
    run["samples"][-1] = [2000, 5000]  # still at CRITICAL at the end
    fig = handset_day.analyse(run)
    assert [v["by"] for v in fig["victims"]] == ["tool", "tool"]
    assert not fig["class_order"] and fig["recovery_ms"] is None
    assert not fig["trims_first"]
    assert {"no trim", "a kill before the first trim",
            "kills out of class order"} <= set(handset_day.checks(fig))


def test_the_foreground_s_longest_stall() -> None:
    # 5 MiB/s: 200 ms per MiB.  Late by 300 ms at the first point, then on
    # time, then 1 MiB that took 1,500 ms (1,300 ms of stall), then the hold.
    run = {"t0_ms": 1000, "rate_mib_s": 5.0,
           "ramp_points": [[1500, 1.0], [1700, 2.0], [3200, 3.0], [6200, 3.0]]}
    assert handset_day.longest_stall_ms(run) == 1300
    assert handset_day.longest_stall_ms(dict(run, ramp_points=[])) is None
    on_time = [[1000 + 200 * i, float(i)] for i in range(1, 11)] + [[5000, 10.0]]
    assert handset_day.longest_stall_ms(dict(run, ramp_points=on_time)) == 0


def day(board: str, mem_mb: int, tmp: str, interpreter: str = "python3") -> "Any":
    """Boot through init with ``board``'s profile and run the handset day
    with memagent on ``interpreter``.  Returns: the rig's RunResult."""
    rig = load_rig()
    spec = "memagent-mpy" if interpreter == "micropython" else "memagent"
    try:
        return rig.run(SCENARIO, args=(spec,), mem_mb=mem_mb, timeout_s=300, out_dir=tmp,
                       boot_init=True, board=board, interpreter=interpreter)
    except rig.RigError as e:
        need("the qemu rig cannot build its image here: %s" % e)


def check_day(res: "Any") -> "Dict[str, str]":
    """What a handset day with memagent must show.  Returns: the FACTs."""
    facts = facts_of(res.console)
    results = [msg for status, msg in res.results]
    assert res.ok, "%s\n%s" % (results, load_rig().explain(res.console))
    # trims first: apps answered trims, and before the agent's first kill
    assert int(facts["trims"]) >= 1 and int(facts["trimmed_kib"]) > 0, facts
    assert facts["trims_first"] == "True", facts
    # kills in class order, every one the agent's (the kernel's are "name(kernel)")
    assert facts["class_order"] == "True", facts
    victims = facts["kills"].split(",") if facts["kills"] != "-" else []
    assert all("(" not in v for v in victims), victims
    assert "foreground" not in victims and "service" not in victims[:1], victims
    # no kernel OOM kill: /proc/vmstat, dmesg and the console
    assert facts["oom_kills"] == "0" and facts["dmesg_ooms"] == "0", facts
    assert "Out of memory" not in res.console
    assert facts["fg_survived"] == "True" and facts["fg_class"] == "foreground", facts
    assert facts["recovery_ms"] != "None", facts  # above CRITICAL again by the end
    return facts


@pytest.mark.qemu
@pytest.mark.slow
def test_handset_day_128mb(tmp_path: Any) -> None:
    facts = check_day(day("qemu-arm", 128, str(tmp_path)))
    assert int(facts["tool_kills"]) >= 1  # the day is sized so that trims alone do not do
    assert 0 < int(facts["psi_some_ms"]) < 60000  # loose: the thrash is seen at all


@pytest.mark.qemu
@pytest.mark.slow
def test_handset_day_64mb(tmp_path: Any) -> None:
    # The 64 MB board's interpreter is MicroPython (its Buildroot defconfig),
    # and its kernel boosts no watermarks (board/zaurus-c3000/sysctl.conf).
    # Measured 2026-12-07 (bench.board --mem 64 --runs 5 --fresh, docs/bench-board.md;
    # the agent at nice -20, SIGKILL at CRITICAL): 11 trims first, then the hog,
    # both cached apps and the service, in class order and all by the agent; no
    # kernel OOM kill; the foreground lives, 5 of 5, its longest stall 0.43-0.72 s.
    # earlyoom: 3 kernel kills a run, stalls of 11-17 s; no agent: the guest
    # livelocked past its timeout in 13 of 14 boots.
    facts = check_day(day("zaurus-c3000", 64, str(tmp_path), interpreter="micropython"))
    assert int(facts["tool_kills"]) <= 4, facts
    assert int(facts["fg_stall_ms"]) < 5000, facts  # loose: the goal is 1 s
    assert 0 < int(facts["psi_some_ms"]) < 60000, facts  # loose: the thrash is seen at all


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured 2026-11-25, -26 and 2026-12-07 (docs/bench-board.md): at 64 MB the CPython "
    "agent takes 16.9 MB of Rss (10.3 MB anonymous) of the 26 MB available; with the "
    "board's watermark boost on, the kernel OOM-killed 2-4 apps and the foreground in "
    "every run (one boot ended in 'System is deadlocked on memory'); with it off "
    "(2026-12-07, 8 fresh boots), 4-6 kernel kills a run and the foreground lost in 8 "
    "of 8, where the MicroPython agent (2.3 MB) kept it 5 of 5 with no kernel kill; at "
    "nice -20, 4 kernel kills a run and the foreground lost 5 of 5"))
def test_handset_day_64mb_cpython(tmp_path: Any) -> None:
    check_day(day("zaurus-c3000", 64, str(tmp_path)))


@pytest.mark.qemu
@pytest.mark.slow
def test_handset_day_128mb_micropython(tmp_path: Any) -> None:
    # Measured 2026-12-07 (bench.board --mem 128 --runs 3 --fresh): 17-18 trims
    # first (28,928 KiB), then one kill, the unregistered hog, 11.3-11.8 s into the
    # growth; never at CRITICAL, no kernel kill, the foreground lives; earlyoom
    # killed both cached apps in every run.
    facts = check_day(day("qemu-arm", 128, str(tmp_path), interpreter="micropython"))
    assert int(facts["tool_kills"]) <= 1, facts  # fewer than earlyoom's 2
