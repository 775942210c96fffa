"""bench/kill.py: its analysis on a hand-made run, then the bench itself, short,
on the host (a real memcg) and in the qemu ARM guest (earlyoom beside it)."""

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from memagent.demo import memcg
from support import need

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(samples: List[List[int]], procs: List[Dict[str, Any]],
         kills: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Return: a raw run as kill_bench.run_once makes it: CRITICAL <= 10 MiB,
    the ramp from t=0 to t=1000 ms, one progress line every 100 ms but a
    600 ms gap."""
    fg = {"name": "foreground", "pid": 9, "rc": 0, "died_ms": 1000, "anon_kib": None,
          "rss_kib": None}
    return {"samples": samples, "crit_kib": 10240, "t0_ms": 0, "end_ms": 1000,
            "procs": procs + [fg], "tool": {"kills": kills}, "oom_kills": 1,
            "timed_out": False,
            "ramp_points": [[0, 1.0], [100, 2.0], [700, 3.0], [800, 4.0]]}


def test_episodes_time_from_critical_to_memory_back() -> None:
    from bench.kill import analyse, episodes

    samples = [[0, 30000], [100, 20000], [200, 10000], [300, 9000], [350, 28000],
               [400, 27000], [600, 9500], [650, 9000], [700, 16000], [900, 15000]]
    procs = [{"name": "cached-big", "pid": 5, "rc": -15, "died_ms": 340, "anon_kib": 20000},
             {"name": "cached-old", "pid": 4, "rc": -9, "died_ms": 720, "anon_kib": 12000},
             {"name": "service", "pid": 6, "rc": None, "died_ms": None, "anon_kib": 8000}]
    kills: List[Dict[str, Any]] = [
        {"pid": 5, "t_ms": 345, "decision_ms": 330, "dry_run": False, "outcome": "exited"},
        {"pid": 77, "t_ms": 800, "decision_ms": 800, "dry_run": True}]
    eps = episodes(_run(samples, procs, kills))
    assert [(e["name"], e["by"]) for e in eps] == [("cached-big", "tool"),
                                                   ("cached-old", "kernel")]
    # The tool: CRITICAL crossed at 200, decided at 330, back (+19 MiB) at 350.
    assert (eps[0]["pressure_ms"], eps[0]["back_ms"]) == (200, 350)
    assert (eps[0]["crit_to_back_ms"], eps[0]["decision_to_back_ms"]) == (150, 20)
    # The kernel: crossed again at 600; the kernel's reaper gave 7 MiB back at
    # 700 (more than half of the victim's 12000 KiB) before its exit was seen.
    assert (eps[1]["pressure_ms"], eps[1]["back_ms"], eps[1]["crit_to_back_ms"]) == (600, 700,
                                                                                     100)
    figs = analyse(_run(samples, procs, kills))
    assert figs["tool_kills"] == 1 and figs["dry_run_kills"] == 1 and figs["stray_kills"] == []
    assert figs["victims"] == ["cached-big", "cached-old (kernel)"]
    assert figs["max_stall_ms"] == 600 and figs["fg_survived"]
    assert figs["below_ms"] == 100 + 50 + 50 + 50  # 200-350, 600-700 at or below 10 MiB


def test_a_kill_outside_the_scenario_is_reported() -> None:
    from bench.kill import analyse

    kills: List[Dict[str, Any]] = [
        {"pid": 4242, "t_ms": 100, "decision_ms": 100, "outcome": "killed"},
        {"pid": 4243, "t_ms": 100, "decision_ms": 100, "outcome": "reused"}]
    figs = analyse(_run([[0, 5000]], [], kills))
    assert figs["stray_kills"] == [4242] and figs["tool_kills"] == 1


def _row(rows: List[Dict[str, Any]], label: str) -> Dict[str, Any]:
    return next(r for r in rows if r["contestant"] == label)


@pytest.mark.memcg
@pytest.mark.slow
def test_host_bench_quick(tmp_path: Any) -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    out = tmp_path / "kill.json"
    done = subprocess.run([sys.executable, "-m", "bench.kill", "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "| memagent |" in done.stdout and "| earlyoom | n/a" in done.stdout
    rows = json.loads(out.read_text())["host"]["rows"]
    none, agent = _row(rows, "none"), _row(rows, "memagent")
    # The scenario is sized so that without a tool the memcg's OOM killer must act...
    assert none["oom_kills"][0] >= 1 and none["tool_kills"] == [0]
    # ...and memagent kills first, background apps only, the foreground lives.
    assert agent["tool_kills"][0] >= 1 and agent["stray_kills"] == []
    first = agent["figures"][0]["episodes"][0]
    assert first["by"] == "tool" and first["name"].startswith("cached"), first
    assert agent["fg_survived"] == 1
    assert 0 <= first["decision_to_back_ms"] < 2000, first  # loose: seen on time at all


@pytest.mark.qemu
@pytest.mark.slow
def test_guest_bench_quick(tmp_path: Any) -> None:
    if shutil.which("qemu-system-arm") is None:
        need("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
    out = tmp_path / "kill.json"
    done = subprocess.run([sys.executable, "-m", "bench.kill", "--guest", "--quick",
                           "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    if "cannot build" in done.stderr or "rig cannot run" in done.stderr:
        need("the qemu rig cannot build its image here: " + done.stderr[-500:])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["guest"]["sizes"]["128"]["rows"]
    assert {r["contestant"] for r in rows} >= {"none", "memagent", "earlyoom"}
    assert _row(rows, "none")["oom_kills"][0] >= 1
    for label in ("memagent", "earlyoom"):
        row = _row(rows, label)
        assert row["tool_kills"][0] >= 1 and row["stray_kills"] == [], row["figures"]
        # Loose: a tool's first kill of a boot can lose its race with the kernel
        # on the emulated CPU (memagent, 1 run of 3 on 2026-11-26: the kernel
        # killed ~100 ms after the crossing); a cached app must still be its pick.
        episodes = row["figures"][0]["episodes"]
        assert any(e["by"] == "tool" and e["name"].startswith("cached")
                   for e in episodes), episodes
