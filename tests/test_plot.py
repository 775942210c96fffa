"""memagent plot: real matplotlib renders of real recorded data.

Inputs: a trace recorded in the ARM guest; a trace, the events file and the
``memagent status --json`` of the same real agent under real memcg pressure
(kill_background in dry run: docs/pictures/record_dry_run.py); the board
bench's handset day (docs/data/handset-day-*.json).  PNGs are read back
with matplotlib.image.imread; SVGs are parsed as XML and their marks counted
by the artists' gid.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, List

import pytest

from memagent import plot  # imports no matplotlib: the tests below need it
from memagent.plot import load_paths
from memagent.plotdata import MAX_LINE_CHARS, PlotError, Timeline, add_events, level_spans
from memagent.plotstatus import timeline_of_status
from support import ROOT, need

try:
    import matplotlib.image
except ImportError:
    matplotlib = None  # type: ignore[assignment]

DATA = os.path.join(ROOT, "tests", "data")
GUEST_RAMP = os.path.join(DATA, "traces", "guest", "ramp-guest128m-system.jsonl")
DRY_TRACE = os.path.join(DATA, "plot", "dryrun-trace.jsonl")
DRY_EVENTS = os.path.join(DATA, "plot", "dryrun-events.ndjson")
DRY_STATUS = os.path.join(DATA, "plot", "dryrun-status.json")
HANDSET_SCRIPT = os.path.join(ROOT, "docs", "pictures", "make_handset_plots.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def have_matplotlib() -> None:
    if matplotlib is None:
        need("matplotlib is not installed (pip install 'memagent[plot]')")


def run_cli(argv: List[str]) -> int:
    """Return: ``memagent plot``'s exit code for ``argv`` (its own parser)."""
    return plot.main(argv)


def band_pixels(png: str) -> Dict[str, int]:
    """Return: how many pixels of each level band's colour the PNG has."""
    img = matplotlib.image.imread(png)
    out = {}
    for name, color in zip(("NORMAL", "LOW", "CRITICAL"), plot.BAND_COLORS):
        rgb = [int(color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)]
        close = abs(img[:, :, :3] - rgb).max(axis=2) < 1.5 / 255
        out[name] = int(close.sum())
    return out


def svg_marks(svg: str) -> Dict[str, int]:
    """Return: the number of markers (<use>) in each mark group of the SVG."""
    root = ET.parse(svg).getroot()
    counts = {}
    for style in plot.MARK_STYLES.values():
        groups = [g for g in root.iter(SVG_NS + "g") if g.get("id") == style["gid"]]
        counts[style["gid"]] = sum(len(list(g.iter(SVG_NS + "use"))) for g in groups)
    return counts


def check_png(path: str) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 20000


def test_guest_trace_png_shows_every_level(tmp_path: Any, capsys: Any) -> None:
    out = str(tmp_path / "ramp.png")
    assert run_cli([GUEST_RAMP, "-o", out]) == 0
    assert "wrote %s (70 points, 0 kills, 0 trims)" % out in capsys.readouterr().out
    check_png(out)
    pixels = band_pixels(out)
    # The ramp replayed: NORMAL, LOW at 21.7 MiB, CRITICAL at 10.9 MiB, NORMAL again.
    assert min(pixels.values()) > 5000, pixels
    tl = load_paths([GUEST_RAMP])
    assert [lv for _, _, lv in tl.levels] == [0, 1, 2, 0]
    assert tl.psi_some and tl.psi_full and tl.low_kib == 111220 // 5
    assert "thresholds: the defaults for its size" in tl.notes


def test_trace_and_events_overlaid_svg(tmp_path: Any) -> None:
    out = str(tmp_path / "dry.svg")
    assert run_cli([DRY_TRACE, DRY_EVENTS, "-o", out]) == 0
    # Every kill was dry run: hollow marks, none among the real kills.
    assert svg_marks(out) == {"trims": 0, "kills": 0, "kills-dry-run": 4, "kills-kernel": 0}
    text = open(out).read()
    assert "dry run" in text and "kill chosen, dry run (not sent)" in text
    tl = load_paths([DRY_TRACE, DRY_EVENTS])
    # The levels are the agent's own (its notifications), not a replay.
    assert [lv for _, _, lv in tl.levels] == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert "levels: replayed" not in tl.notes and len(tl.avail) == 475


def test_threshold_options_override(tmp_path: Any) -> None:
    out = str(tmp_path / "dry.png")
    assert run_cli([DRY_TRACE, "-o", out, "--low-mib", "40", "--critical-mib", "20"]) == 0
    tl = load_paths([DRY_TRACE], low_kib=40 * 1024, critical_kib=20 * 1024)
    assert (tl.low_kib, tl.critical_kib) == (40960, 20480) and "levels: replayed" in tl.notes
    assert run_cli([DRY_TRACE, "-o", out, "--low-mib", "10", "--critical-mib", "20"]) == 2


def test_events_file_alone(tmp_path: Any) -> None:
    out = str(tmp_path / "ev.png")
    assert run_cli([DRY_EVENTS, "-o", out]) == 0
    check_png(out)
    assert band_pixels(out)["CRITICAL"] > 5000
    tl = load_paths([DRY_EVENTS])
    # The notifications' own figures stand for the readings.
    assert len(tl.avail) == 12 and [m.kind for m in tl.marks] == ["dry-run"] * 4


def real_status() -> Dict[str, Any]:
    with open(DRY_STATUS) as f:
        st: Dict[str, Any] = json.load(f)
    return st


def test_status_json_file(tmp_path: Any) -> None:
    out = str(tmp_path / "st.svg")
    assert run_cli([DRY_STATUS, "-o", out]) == 0
    assert svg_marks(out)["kills-dry-run"] == 4
    png = str(tmp_path / "st.png")
    st = real_status()
    tl = plot.plot_status(st, png)
    check_png(png)
    assert min(band_pixels(png).values()) > 2000
    assert tl.t0_ms == st["history"]["now_ms"] and tl.low_kib == st["thresholds"]["low_kib"]
    assert [lv for _, _, lv in tl.levels] == [b[2] for b in st["history"]["buckets"]]
    # The agent slept through the calm stretches: two gaps, drawn as breaks.
    assert sum(1 for _, a in tl.avail if a is None) == 2


def test_events_command_output(tmp_path: Any) -> None:
    """``memagent events --follow`` lines: status-schema entries, and a gap."""
    events = real_status()["events"]
    path = str(tmp_path / "follow.jsonl")
    with open(path, "w") as f:
        for ev in events[:3] + [{"kind": "gap", "lost": 2, "after_seq": 3}] + events[5:]:
            f.write(json.dumps(ev) + "\n")
    out = str(tmp_path / "follow.svg")
    assert run_cli([path, "-o", out]) == 0
    kills = sum(1 for e in events[:3] + events[5:] if e.get("action") == "kill")
    assert svg_marks(out)["kills-dry-run"] == kills == 3


def test_a_fetched_status(tmp_path: Any, capsys: Any) -> None:
    """cmd_plot with a fetch, as the memagent command passes fetchcli's for
    --ssh/--adb/--connect: here it hands back the recorded real status, or the
    failures fetchcli reports (a host unreachable, a device without an agent)."""
    import argparse

    p = argparse.ArgumentParser()
    plot.add_plot_args(p)
    out = str(tmp_path / "dev.svg")
    args = p.parse_args(["-o", out])
    assert plot.cmd_plot(args, lambda: (real_status(), 0, None)) == 0
    assert svg_marks(out)["kills-dry-run"] == 4
    assert plot.cmd_plot(args, lambda: ({}, 7, "handset: host unreachable")) == 7
    assert "memagent: handset: host unreachable" in capsys.readouterr().err
    down = {"schema": 1, "running": False, "agent": "not running: no socket"}
    assert plot.cmd_plot(args, lambda: (down, 3, "the agent on handset is not running")) == 3
    assert "not running: no socket" in capsys.readouterr().err
    both = p.parse_args([GUEST_RAMP, "-o", out])
    assert plot.cmd_plot(both, lambda: (real_status(), 0, None)) == 2


def test_status_refusals() -> None:
    st = real_status()
    with pytest.raises(PlotError) as e:
        timeline_of_status(dict(st, schema=2))
    assert e.value.code == 10 and "newer" in str(e.value)
    with pytest.raises(PlotError) as e:
        timeline_of_status({"schema": 1, "running": False, "agent": "not running: no socket"})
    assert e.value.code == 3 and "not running: no socket" in str(e.value)
    for bad in ({"buckets": [[1, 2]]}, {"buckets": [[1, 2, 7]]}, None, {"buckets": []},
                {"buckets": [[1, True, 0]]}):
        with pytest.raises(PlotError):
            timeline_of_status(dict(st, history=bad))


@pytest.mark.parametrize("size,marks", [
    # memagent: hog, cached-old, cached-new by the tool after 14 trims; the
    # kernel alone: cached-new; earlyoom: cached-new, cached-old.
    ("128", {"trims": 14, "kills": 5, "kills-dry-run": 0, "kills-kernel": 1}),
    # memagent on MicroPython: 4 kills after 10 trims; the kernel takes 3
    # apps with no tool and 3 with earlyoom.
    ("64", {"trims": 10, "kills": 4, "kills-dry-run": 0, "kills-kernel": 6}),
])
def test_handset_day_figure(tmp_path: Any, size: str, marks: Dict[str, int]) -> None:
    """The docs' figures: three panels from the board bench's real runs."""
    out = str(tmp_path / "hd.svg")
    proc = subprocess.run([sys.executable, HANDSET_SCRIPT, "--size", size, "-o", out],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert svg_marks(out) == marks


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"\n  \n", "empty file"),
    (b"hello\n", "line 1: not JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2]\n", "line 1: a JSON object was expected"),
    (b'{"hello": 1}\n', "line 1: neither a reading nor an event"),
    (b"[" * 30000 + b"]" * 30000, "line 1: not JSON (nested too deeply)"),
    (b'{"a":' * 12000 + b"1" + b"}" * 12000, "line 1: longer than"),
    (b'{"t_ms": 1, "total_kib": 100, "avail_kib": NaN}\n', "line 1: not JSON"),
    (b'{"t_ms": 5, "total_kib": 100000, "avail_kib": 9}\n'
     b'{"t_ms": 1, "total_kib": 100000, "avail_kib": 9}\n', "line 2: t_ms 1 goes back"),
    (b'{"kind": "level", "level": "LOW"}\n', "line 1: an event without an integer t_ms"),
    (b'{"memagent_trace": 7}\n', "line 1: trace version 7"),
])
def test_hostile_inputs(tmp_path: Any, capsys: Any, content: bytes, message: str) -> None:
    path = str(tmp_path / "bad.jsonl")
    with open(path, "wb") as f:
        f.write(content)
    assert run_cli([path, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not os.path.exists(str(tmp_path / "x.png"))


def test_garbage_among_real_lines(tmp_path: Any, capsys: Any) -> None:
    """A real trace with its events and a broken line in the middle."""
    with open(DRY_TRACE) as f:
        lines = f.readlines()
    with open(DRY_EVENTS) as f:
        lines[100:100] = f.readlines()[:2] + ['{"t_ms": 71540000, "oops\n']
    path = str(tmp_path / "mixed.jsonl")
    with open(path, "w") as f:
        f.writelines(lines)
    assert run_cli([path, "-o", str(tmp_path / "m.png")]) == 2
    assert "mixed.jsonl: line 103: not JSON" in capsys.readouterr().err
    del lines[102]  # without it: a trace and its events in one file plot
    with open(path, "w") as f:
        f.writelines(lines)
    assert run_cli([path, "-o", str(tmp_path / "m.png")]) == 0


def test_ten_megabyte_line(tmp_path: Any, capsys: Any) -> None:
    path = str(tmp_path / "long.jsonl")
    with open(path, "w") as f:
        f.write('{"t_ms": 1, "total_kib": 100000, "avail_kib": 9}\n')
        f.write('{"t_ms": 2, "x": "' + "a" * (10 << 20) + '"}\n')
    assert run_cli([path, "-o", str(tmp_path / "x.svg")]) == 2
    assert "line 2: longer than %d characters" % MAX_LINE_CHARS in capsys.readouterr().err


def test_usage_errors(tmp_path: Any, capsys: Any) -> None:
    st = DRY_STATUS
    cases = [([], "no input"), ([GUEST_RAMP, "-o", str(tmp_path / "x.jpg")], "end in .png or .svg"),
             ([str(tmp_path / "missing.jsonl")], "cannot read"), ([str(tmp_path)], "cannot read"),
             ([st, GUEST_RAMP], "a status JSON is plotted alone")]
    for argv, message in cases:
        assert run_cli(argv + ["-o", str(tmp_path / "x.png")] * ("-o" not in argv)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert run_cli([GUEST_RAMP, "-o", str(tmp_path / "no" / "dir.png")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_without_matplotlib(tmp_path: Any) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from memagent import plot\nsys.exit(plot.main())\n")
    out = str(tmp_path / "x.png")
    proc = subprocess.run([sys.executable, "-c", code, GUEST_RAMP, "-o", out],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "memagent: " + plot.NEEDS_MATPLOTLIB
    assert not os.path.exists(out)


def test_level_spans() -> None:
    assert level_spans([], 0, 10) == [(0, 10, 0)]
    # Reminders change nothing; before the first change, the level it left.
    changes = [(5, 2, 1), (7, 2, 2), (9, 0, 2)]
    assert level_spans(changes, 0, 12) == [(0, 5, 1), (5, 9, 2), (9, 12, 0)]


def test_trim_and_kill_actions() -> None:
    """The events file's actions as release_caches and kill_background write them."""
    tl = Timeline("x")
    changes = add_events(tl, [
        {"kind": "action", "action": "trim", "t_ms": 5, "level": "LOW", "apps": 2, "asks": 2,
         "deficit_kib": 4096, "freed_kib": 3000, "ms": 40, "escalated": False},
        {"kind": "action", "action": "kill", "t_ms": 9, "name": "cached-old", "dry_run": False,
         "outcome": "exited"},
        {"kind": "action", "action": "source", "t_ms": 10, "source": "poll"},
        {"kind": "plugin_error", "t_ms": 11, "plugin": "x", "hook": "on_pressure", "error": "E"},
        {"kind": "level", "t_ms": 3, "level": "LOW", "prev_level": "NORMAL"}])
    assert [(m.t_ms, m.kind, m.label) for m in tl.marks] == [(5, "trim", ""),
                                                              (9, "kill", "cached-old")]
    assert changes == [(3, 1, 0)] and tl.notes == []
