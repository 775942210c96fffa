"""``memagent demo``: live in a real memcg as root, replay without privileges,
and the recorded traces it and the tests rely on."""

import argparse
import glob
import json
import os
import re
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
from memagent.demo.show import HEAD, KILLS_DRY_RUN, Show

TRACES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "traces")
# The one timeline layout: time since the ramp started, what, details.
LINE = re.compile(r"^ *(-?\d+\.\d\d)s  (\S(?:.{0,8}\S)?) *  (\S.*)$")
REASONS = ("avail", "lead-time", "thrash", "kernel:", "recovered", "still")


def _timeline(out: str) -> List[Any]:
    """Return: the timeline of a demo's output as (t_s, what, details), after
    checking that every line between the column heads and the first blank
    or closing line has the one layout."""
    lines = out.splitlines()
    assert lines.count(HEAD) == 1, out
    rows = []
    for line in lines[lines.index(HEAD) + 1:]:
        if not line.strip() or line.startswith(("agent and apps stopped", "memcg ")):
            break
        m = LINE.match(line)
        assert m, "not the timeline layout: %r" % line
        rows.append((float(m.group(1)), m.group(2), m.group(3)))
    assert rows, out
    return rows


def _reads_on_its_own(out: str) -> List[Any]:
    """Check what every demo's timeline must do.  Returns: its rows."""
    rows = _timeline(out)
    times = [t for t, _what, _details in rows]
    assert times == sorted(times), "timestamps go backwards: %s" % rows
    legend = out[out.index("legend:"):out.index(HEAD)]
    for code in REASONS:
        assert "\n  %s" % code in legend, (code, legend)
    for _t, what, details in rows:
        if what in ("LOW", "CRITICAL", "NORMAL"):
            reason = details.split("(", 1)[1].split(")", 1)[0]
            assert reason.startswith(REASONS), details
    assert out.count("kills:") == 1 and out.index("kills:") < out.index(HEAD), out
    return rows


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
    rows = _reads_on_its_own(out)
    changes = [(what, details.split(" (")[0]) for _t, what, details in rows
               if what in ("LOW", "CRITICAL")]
    assert changes[:2] == [("LOW", "from NORMAL"), ("CRITICAL", "from LOW")], rows
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
    ramps = result["ramps"]
    assert [r["ramp"] for r in ramps] == [1, 2]
    assert sum(r["trims"] for r in ramps) == len(result["trims"])
    assert sum(r["allocated_mib"] for r in ramps) == result["allocated_mib"]
    assert all(k["dry_run"] for k in result["kill_choices"]), result["kill_choices"]
    assert not result["oom_killed"]  # ramp 2 stopped at CRITICAL
    assert any(e["level"] == "CRITICAL" for e in result["events"])
    assert not os.path.exists(result["memcg"])
    assert not os.path.exists(os.path.dirname(result["socket"]))
    assert not os.path.exists("/proc/%d" % result["agent_pid"])
    assert _leftovers(result["memcg"]) == []


@pytest.mark.memcg
@pytest.mark.slow
def test_live_demo_apps_timeline_reads_on_its_own() -> None:
    reason = memcg.available()
    if reason is not None:
        need(reason)
    done = _demo()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "apps registered" in out and "stopped by the demo at CRITICAL" in out, out
    rows = _reads_on_its_own(out)
    # The kills' dry run, said once at the top; choices only as "would kill".
    assert out.lower().count("dry run") == 1 and "kills: " + KILLS_DRY_RUN in out, out
    assert all(what != "KILLED" for _t, what, _d in rows), rows
    # Nobody is asked with nothing left, and a recovery follows its trims.
    left: Dict[str, int] = {}
    trims = {1: 0, 2: 0}
    ramp = 0
    for i, (t, what, details) in enumerate(rows):
        if what.startswith("ramp ") and details.startswith("starts"):
            ramp = int(what[5:])
        if what == "trim":
            app = details.split()[0]
            assert left.get(app, 1) > 0, "%s asked with 0 KiB left: %s" % (app, rows)
            left[app] = int(details.rsplit(",", 1)[1].split()[0])
            trims[ramp] += 1
        if details.startswith("from CRITICAL (recovered)"):
            # the CRITICAL trims that brought it are printed before it
            assert not [r for r in rows[i + 1:] if r[0] == t and r[1] == "trim"
                        and " at CRITICAL," in r[2]], rows
    # Totals per ramp: each ramp's own trims, adding up to the whole run.
    summary = out[out.index("\nsummary:"):]
    per_ramp = {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"\n  ramp (\d)   (\d+) MiB allocated, (\d+) trims", summary)}
    in_all = re.search(r"\n  in all   (\d+) MiB allocated, (\d+) trims", summary)
    assert in_all and sorted(per_ramp) == [1, 2], summary
    assert per_ramp[1][1] == trims[1] and per_ramp[2][1] == trims[2], (per_ramp, trims)
    assert per_ramp[1][0] + per_ramp[2][0] == int(in_all.group(1)), summary
    assert per_ramp[1][1] + per_ramp[2][1] == int(in_all.group(2)), summary
    assert "OOM kills 0" in summary, summary


def test_timeline_merges_lines_of_several_sources_by_time(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Lines come as each source is read (the agent's events, then each app's
    # stdout): out of order.  The timeline holds them back and prints by time;
    # at the same ms a rise, then its trims, then the recovery they brought.
    show = Show(quiet=False)
    show.start(1000, hold_ms=500)
    show.line(4760, "trim", "cache2 asked 1 KiB")
    show.line(4770, "trim", "cache3 asked 1 KiB")
    show.line(4750, "LOW", "from CRITICAL (recovered)", rank=2)
    show.line(4750, "trim", "cache1 asked 1 KiB")
    show.flush(5000)  # nothing is older than 500 ms yet
    show.line(4740, "CRITICAL", "from LOW (avail)", rank=0)
    show.flush(5260)
    show.flush()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == HEAD
    assert [line.split()[:2] for line in out[1:]] == [
        ["3.74s", "CRITICAL"], ["3.75s", "trim"], ["3.75s", "LOW"], ["3.76s", "trim"],
        ["3.77s", "trim"]], out


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
    rows = _reads_on_its_own(done.stdout)
    assert ("LOW", "from NORMAL (avail)") in [(w, d.split(":")[0]) for _t, w, d in rows]
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
