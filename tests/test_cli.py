"""The memagent command: record, replay, errors and exit codes."""

import json
import os
import subprocess
import sys
from typing import Any, List

import pytest

from memagent.demo.memcg import Memcg

TRACES = os.path.join(os.path.dirname(__file__), "data", "traces")


def memagent(*args: str, timeout_s: int = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "memagent", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def test_version_and_help() -> None:
    out = memagent("--version")
    assert out.returncode == 0 and out.stdout.startswith("memagent ")
    out = memagent()
    assert out.returncode == 2 and "run" in out.stdout and "replay" in out.stdout


def test_replay_recorded_ramp() -> None:
    out = memagent("replay", os.path.join(TRACES, "ramp-128m.jsonl"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "readings over" in lines[0]
    assert any("LOW      <- NORMAL" in line for line in lines)
    out = memagent("replay", "--json", os.path.join(TRACES, "ramp-128m.jsonl"))
    notes = [json.loads(line) for line in out.stdout.splitlines()]
    assert notes[0]["level"] == "LOW"


def test_replay_bad_trace_names_the_line(tmp_path: Any) -> None:
    bad = os.path.join(str(tmp_path), "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"t_ms": 0, "total_kib": 100, "avail_kib": 50}\n{"t_ms": 1}\n')
    out = memagent("replay", bad)
    assert out.returncode == 2 and "line 2" in out.stderr and "Traceback" not in out.stderr


def test_replay_with_config_thresholds(tmp_path: Any) -> None:
    conf = os.path.join(str(tmp_path), "m.conf")
    with open(conf, "w") as f:
        f.write("[levels]\nlow_pct = 35\ncritical_pct = 5\n")
    default = memagent("replay", "--json", os.path.join(TRACES, "ramp-128m.jsonl"))
    custom = memagent("replay", "--json", "-c", conf, os.path.join(TRACES, "ramp-128m.jsonl"))
    first_default = json.loads(default.stdout.splitlines()[0])
    first_custom = json.loads(custom.stdout.splitlines()[0])
    assert first_custom["t_ms"] < first_default["t_ms"]


def test_bad_config_is_exit_2(tmp_path: Any) -> None:
    conf = os.path.join(str(tmp_path), "m.conf")
    with open(conf, "w") as f:
        f.write("[levels]\nlow_pct = many\n")
    out = memagent("status", "-c", conf, "--socket", str(tmp_path) + "/x.sock")
    assert out.returncode == 2 and "m.conf:2" in out.stderr


@pytest.mark.memcg
def test_record_then_replay(memcg: Memcg, tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "t.jsonl")
    out = memagent("record", "--memcg", memcg.path, "--duration-s", "1.5", "-o", path)
    assert out.returncode == 0, out.stderr
    with open(path) as f:
        lines: List[str] = f.read().splitlines()
    assert json.loads(lines[0])["memagent_trace"] == 1
    readings = [json.loads(line) for line in lines[1:]]
    assert len(readings) >= 8  # --interval-ms 100 over 1.5 s
    assert all(r["total_kib"] == memcg.limit_kib() for r in readings)
    out = memagent("replay", path)
    assert out.returncode == 0 and "readings over" in out.stdout
