"""``memagent demo``: live in a real memcg as root, replay without privileges,
and the recorded traces it and the tests rely on."""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List

import pytest

from conftest import need
from memagent.core import trace
from memagent.core.levels import CRITICAL, LOW
from memagent.demo import memcg
from memagent.demo import run as demo

TRACES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "traces")


def _leftovers(of_memcg: str) -> List[str]:
    """Return: the memcgs left by the process that made ``of_memcg`` (named
    memagent-<pid>-<n>): other runs on the machine may hold their own."""
    _version, root = memcg.find_hierarchy()
    pid_prefix = os.path.basename(of_memcg).rsplit("-", 1)[0] + "-"
    return glob.glob(os.path.join(root, "**", pid_prefix + "*"), recursive=True)


def _demo(*args: str, user: bool = False,
          timeout_s: float = 90) -> "subprocess.CompletedProcess[str]":
    argv = [sys.executable, "-m", "memagent", "demo"] + list(args)
    if user:
        argv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd="/")


@pytest.mark.memcg
@pytest.mark.slow
def test_live_demo_gives_low_before_the_oom_kill_and_cleans_up() -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    done = _demo("--apps", "0", "--until-oom", "--json")
    assert done.returncode == 0, done.stderr
    result: Dict[str, Any] = json.loads(done.stdout)
    assert result["mode"] == "live"
    assert result["oom_killed"], result
    lows = [e for e in result["events"] if e["level"] == "LOW" and e["prev_level"] == "NORMAL"]
    assert lows, result["events"]
    low = lows[0]
    # Measured: LOW at ~9.5 s after ~96 MiB with ~20% available; the kill at ~12.4 s.
    assert low["t_s"] < result["end_s"]
    assert 10 <= low["avail_pct"] <= 30
    assert not os.path.exists(result["memcg"])
    assert _leftovers(result["memcg"]) == []


@pytest.mark.memcg
@pytest.mark.slow
def test_live_demo_timeline_is_printed_and_stops_at_critical() -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    done = _demo("--apps", "0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "LOW      <- NORMAL" in out and "CRITICAL <- LOW" in out, out
    assert out.index("LOW      <- NORMAL") < out.index("CRITICAL <- LOW")
    assert "stopped by the demo at CRITICAL" in out
    assert "removed" in out


@pytest.mark.memcg
@pytest.mark.slow
def test_live_demo_apps_absorb_the_ramp_then_critical_and_clean_up() -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    done = _demo("--json")  # the default: 3 cooperative apps and the agent as a process
    assert done.returncode == 0, done.stderr
    result: Dict[str, Any] = json.loads(done.stdout)
    assert result["mode"] == "live" and result["apps"] == 3
    absorbed = result["absorbed"]
    assert absorbed["oom_kills"] == 0, absorbed  # no kill while the caches last
    assert absorbed["asked_apps"] >= 1 and result["trims"], result["app_compliance"]
    assert absorbed["freed_by_apps_mib"] > 0
    assert result["freed_by_apps_mib"] >= 8, result["app_compliance"]
    assert any(t["freed_kib"] > 0 for t in result["trims"])
    assert not result["oom_killed"]  # ramp 2 stopped at CRITICAL
    assert any(e["level"] == "CRITICAL" for e in result["events"])
    assert not os.path.exists(result["memcg"])
    assert not os.path.exists(os.path.dirname(result["socket"]))
    assert not os.path.exists("/proc/%d" % result["agent_pid"])
    assert _leftovers(result["memcg"]) == []


@pytest.mark.memcg
@pytest.mark.slow
def test_live_demo_apps_timeline_is_printed() -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    done = _demo()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "apps registered" in out and "trim     cache" in out, out
    assert "OOM kills 0" in out, out
    assert "stopped by the demo at CRITICAL" in out and "removed" in out


def _nobody_can_run_us() -> bool:
    """True if user nobody can start this interpreter and import memagent
    (not when they live under a 0700 home, as pyenv's do here)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                            "--clear-groups", sys.executable, "-c", "import memagent"],
                           capture_output=True, timeout=30, cwd="/")
    return probe.returncode == 0


def test_replay_as_nobody_says_why() -> None:
    if _nobody_can_run_us():
        done = _demo(user=True)
        expected_why = "not root"
    else:
        done = _demo("--replay")
        expected_why = "--replay"
    assert done.returncode == 0, done.stderr
    assert "replaying ramp-128m.jsonl" in done.stdout
    assert expected_why in done.stdout
    assert "LOW      <- NORMAL" in done.stdout
    assert "OOM-killed after" in done.stdout


def test_replay_in_process_json(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert demo.main(parser.parse_args(["--replay", "--json"])) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "replay" and result["oom_killed"]
    first = result["events"][0]
    assert first["level"] == "LOW" and 10 <= first["avail_pct"] <= 30


def test_bundled_trace_is_a_recorded_ramp() -> None:
    readings = trace.load_trace(demo.BUNDLED_TRACE)
    assert readings[0].total_kib == 128 * 1024
    assert any(r.event != "poll" for r in readings)  # recorded with kernel events


def _changes(name: str) -> List[Any]:
    readings = trace.load_trace(os.path.join(TRACES, name))
    return [n for n in trace.replay(readings) if n.level != n.prev_level]


def test_recorded_ramp_low_then_critical_before_exhaustion() -> None:
    changes = _changes("ramp-128m.jsonl")
    assert [n.level for n in changes[:2]] == [LOW, CRITICAL]
    low = changes[0]
    assert 0.10 <= low.avail_kib / low.total_kib <= 0.30
    assert low.eta_ms is not None and low.eta_ms >= 1000


@pytest.mark.parametrize("name", ["churn-128m.jsonl", "calm-128m.jsonl", "spike-128m.jsonl"])
def test_recorded_traces_without_threat_stay_normal(name: str) -> None:
    assert _changes(name) == []
