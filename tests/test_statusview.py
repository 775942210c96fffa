"""``memagent status``'s screen (memagent.core.statusview): the fixed
states of tests/data/status/*.json against their golden screens in both
modes, and properties over hostile input: plain is pure ASCII, no line is
wider than asked, and nothing a status holds makes the renderer raise or
give up on a section.

MEMAGENT_UPDATE_SNAPSHOTS=1 rewrites the golden files (then read the diff).
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from memagent.core import statusparts
from memagent.core.statusschema import problems
from memagent.core.statusview import render
from support import micropython_ffi, need, package_layout

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "status")
FIXTURES = ("normal", "low-filling", "critical-kills", "many-apps", "not-running")
SUFFIX = {"plain": ".plain.txt", "terminal": ".term.txt"}
ANSI = re.compile("\x1b\\[[0-9;]*m")
GAVE_UP = "(cannot show:"  # a section's last resort: a bug if a test sees it


def load(name: str) -> Dict[str, Any]:
    with open(os.path.join(DATA, name + ".json")) as f:
        st: Dict[str, Any] = json.load(f)
    return st


def visible(line: str) -> str:
    """Return: ``line`` without its ANSI colour codes."""
    return ANSI.sub("", line)


def check_screen(screen: str, mode: str, width: int) -> None:
    """The properties every screen has, whatever the status."""
    assert screen.endswith("\n")
    assert GAVE_UP not in screen, screen
    if mode == "plain":
        screen.encode("ascii")
        assert "\x1b" not in screen
    else:
        assert "\x1b" not in ANSI.sub("", screen), "an escape that is not a colour"
    for line in screen.splitlines():
        assert len(visible(line)) <= width, (width, line)
        assert "\r" not in line and "\t" not in line


@pytest.mark.parametrize("mode", ["plain", "terminal"])
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_its_golden_screen(name: str, mode: str) -> None:
    screen = render(load(name), mode)
    path = os.path.join(DATA, name + SUFFIX[mode])
    if os.environ.get("MEMAGENT_UPDATE_SNAPSHOTS") == "1":
        with open(path, "w", encoding="utf-8") as f:
            f.write(screen)
    with open(path, encoding="utf-8") as f:
        assert screen == f.read(), "rerun with MEMAGENT_UPDATE_SNAPSHOTS=1 and read the diff"
    check_screen(screen, mode, 80)


@pytest.mark.parametrize("name", FIXTURES)
def test_the_fixtures_are_schema_1_documents(name: str) -> None:
    # Their shape was taken from a real agent's `memagent status --json`;
    # the schema's own check holds them to it.
    st = load(name)
    assert st["schema"] == 1 and problems(st) == []


def test_the_normal_screen_fits_80x30() -> None:
    for mode in ("plain", "terminal"):
        assert len(render(load("normal"), mode).splitlines()) <= 30


@pytest.mark.parametrize("width", [20, 33, 40, 60, 80, 132, 200])
@pytest.mark.parametrize("name", FIXTURES)
def test_every_width_is_respected(name: str, width: int) -> None:
    for mode in ("plain", "terminal"):
        check_screen(render(load(name), mode, width_cols=width), mode, width)


def test_what_the_screens_say() -> None:
    # The snapshots pin the layout; these pin the facts a reader needs.
    normal = render(load("normal"))
    assert "1181.6 MiB of 1938.0 MiB available (60%), headroom to LOW 794.0 MiB" in normal
    assert "NORMAL for 7m05s; steady" in normal
    assert "  source psi: event-driven: the first in the auto order that opened (mem_notify\n" \
        "    could not)\n" in normal
    assert "trim   asked 3 apps to free 64.6 MiB, freed 96.7 MiB in 0.4s" in normal
    assert "kill_background     DRY RUN (would kill, never kills)" in normal
    assert "NORMAL -> LOW: available under threshold" in normal
    low = render(load("low-filling"))
    assert "below LOW by 36.0 MiB" in low
    assert "LOW for 8.4s; filling 14.5 MiB/s, time left 24s" in low
    assert "PSI avg10 some 12.50%, full 3.10%" in low
    assert "would run out within lead time" in low
    assert "asked 4 apps to free 24.9 MiB, freed 6.1 MiB in 1.5s, escalated" in low
    crit = render(load("critical-kills"), width_cols=200)
    assert "CRITICAL for 15s; recovering 8.8 MiB/s" in crit
    assert "DRY RUN would kill mail 1577 (cached, 50.0 MiB); available under threshold" in crit
    assert "killed camera 1602 (cached, 131.0 MiB), freed 127.5 MiB; thrashing" in crit
    assert "not killed (gone): music 1460" in crit
    assert "plugin vendor_stats failed in on_pressure: ValueError: math domain error" in crit
    assert "vendor_stats        ok, 2 errors (see EVENTS)" in crit
    assert "vendor_thermal      disabled: on_pressure timed out" in crit
    assert "kernel: PSI trigger fired" in crit
    many = render(load("many-apps"))
    assert "APPS 40 registered" in many and "... and 32 more" in many
    rss = [float(line.split()[3]) for line in many.splitlines()
           if re.match(r"  \S+ +\d+ \w+ +[\d.]+ ", line)]
    assert len(rss) == 8 and rss == sorted(rss, reverse=True), rss
    gone = render(load("not-running"))
    assert gone.startswith("memagent 0.3.0 on handset at 18:22:15 UTC | agent NOT RUNNING\n"
                           "  not running at /run/memagent.sock ([Errno 2] No such file")
    assert "\n    computed from system now\n" in gone  # wrapped, not cut
    assert "PRESSURE LOW (computed now" in gone and "HISTORY" not in gone


def test_terminal_colours_the_level_and_the_dry_run() -> None:
    assert "\x1b[32mNORMAL\x1b[0m" in render(load("normal"), "terminal")
    assert "\x1b[33mLOW\x1b[0m" in render(load("low-filling"), "terminal")
    crit = render(load("critical-kills"), "terminal")
    assert "\x1b[1;31mCRITICAL\x1b[0m" in crit and "\x1b[33mDRY RUN\x1b[0m" in crit


def test_events_n() -> None:
    st = load("critical-kills")
    for n in (0, 1, 3, 10, 100):
        screen = render(st, events_n=n, width_cols=200)
        body = [line for line in screen.split("EVENTS", 1)[1].split("PLUGINS")[0].splitlines()
                if line.startswith("  ")]
        assert len(body) == min(n, len(st["events"])), (n, body)
        if n:
            assert body[-1].endswith("CRITICAL still held, at 146.5 MiB")  # the newest last


def test_an_older_status_with_recent_and_actions() -> None:
    # An agent before schema 1: no events, history, host or schema keys.
    with open(os.path.join(os.path.dirname(HERE), "tests", "data", "status",
                           "normal.json")) as f:
        st = json.load(f)
    for key in ("events", "history", "host", "schema", "running", "level_since_ms",
                "source_why", "wall"):
        del st[key]
    st["recent"] = [{"t_ms": 100, "level": "LOW", "prev_level": "NORMAL", "reason": "avail",
                     "avail_kib": 1000, "total_kib": 9000, "eta_ms": None, "deficit_kib": 5}]
    st["actions"] = [{"action": "kill", "t_ms": 50, "pid": 9, "name": "x", "dry_run": True,
                      "reason": "LOW avail"}]
    screen = render(st, width_cols=120)
    check_screen(screen, "plain", 120)
    assert "HISTORY ? (this agent keeps no history)" in screen
    events = screen.split("EVENTS")[1]
    assert events.index("DRY RUN would kill x 9") < events.index("NORMAL -> LOW")


# -- hostile input ----------------------------------------------------------------------

NASTY: List[Any] = [None, "x", -1, 0, 10 ** 400, -(10 ** 400), 1e308, float("nan"),
                    float("inf"), True, [], {}, [None, "y"], {"z": None},
                    "\x1b]0;owned\x07\x1b[2J\n\r\t\u202e\ud800\u4e2d\U0001f600"]


def paths(obj: Any, prefix: Tuple[Any, ...] = ()) -> Iterator[Tuple[Any, ...]]:
    """Yield: the path of every value in ``obj`` (dict keys, the first two
    and the last items of lists)."""
    if isinstance(obj, dict):
        for key in obj:
            yield prefix + (key,)
            yield from paths(obj[key], prefix + (key,))
    elif isinstance(obj, list):
        for i in sorted({0, 1, len(obj) - 1}):
            if 0 <= i < len(obj):
                yield prefix + (i,)
                yield from paths(obj[i], prefix + (i,))


def replaced(st: Dict[str, Any], path: Tuple[Any, ...], value: Any) -> Dict[str, Any]:
    out = copy.deepcopy(st)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("name", ["critical-kills", "low-filling", "not-running"])
def test_any_value_anywhere_renders(name: str) -> None:
    # Every key of the fixture, in turn, holds each nasty value: no raise,
    # no section given up, the properties hold.
    st = load(name)
    count = 0
    for path in paths(st):
        for value in NASTY:
            bad = replaced(st, path, value)
            for mode in ("plain", "terminal"):
                check_screen(render(bad, mode), mode, 80)
                count += 1
    assert count > 500, count


@pytest.mark.parametrize("st", [None, [], "status", 42, {}, {"schema": 1},
                                {"running": False}, {"running": True},
                                {k: None for k in load("critical-kills")},
                                {k: "?" for k in load("critical-kills")},
                                {k: [] for k in load("critical-kills")},
                                {k: {} for k in load("critical-kills")}])
def test_empty_and_wrong_shapes_render(st: Any) -> None:
    for mode in ("plain", "terminal"):
        for width in (20, 80):
            check_screen(render(st, mode, width), mode, width)


def test_huge_lists_render_bounded() -> None:
    st = load("critical-kills")
    app = st["apps"]["apps"][0]
    st["apps"]["apps"] = [dict(app, pid=i, rss_kib=i * 7 % 5000, name="app%d" % i)
                          for i in range(10000)]
    st["apps"]["apps_total"] = 10000
    event = st["events"][-1]
    st["events"] = [dict(event, seq=i, t_ms=i) for i in range(1000)]
    st["history"]["buckets"] = [[i * 5000, i, i % 3] for i in range(100000)]
    st["plugins"] = st["plugins"] * 100
    st["unavailable"] = {"s%d" % i: "why" for i in range(100)}
    for mode in ("plain", "terminal"):
        screen = render(st, mode)
        check_screen(screen, mode, 80)
        assert len(screen.splitlines()) < 80
        assert "... and 9992 more" in screen and "last 10 of 1000" in screen


def test_text_from_the_status_cannot_inject_escapes() -> None:
    st = load("normal")
    evil = "\x1b]0;owned\x07\x1b[31mred\x1b[0m\nnext line\u202e\u4e2d"
    st["host"] = st["apps"]["apps"][0]["name"] = st["plugins"][5]["unavailable"] = evil
    st["events"][1]["reason"] = evil
    for mode in ("plain", "terminal"):
        screen = render(st, mode, width_cols=200)
        assert "\x1b]" not in screen and "\x1b[31mred" not in screen and "\u202e" not in screen
        assert "\u4e2d" not in screen  # wide: it would break the columns
        assert "?]0;owned??[31mred?[0m?next line??" in screen
    assert len(render(st).splitlines()) == len(render(load("normal")).splitlines())


def test_bad_mode_raises() -> None:
    with pytest.raises(ValueError):
        render(load("normal"), "html")


def test_figures_and_words() -> None:
    mib, dur = statusparts.mib, statusparts.duration_ms
    assert (mib(1024), mib(1075), mib(-1536), mib(None), mib("7")) == (
        "1.0", "1.0", "-1.5", "?", "?")
    assert mib(10 ** 400).startswith("9765625") and mib(float("nan")) == "?"
    assert (dur(850), dur(45000), dur(125000), dur(3725000), dur(90000000), dur(-1)) == (
        "0.8s", "45s", "2m05s", "1h02m", "1d01h", "?")
    assert statusparts.ago_ms(100, 12100) == "-12s" and statusparts.ago_ms(200, 100) == "+0.1s"
    assert statusparts.clock_utc(1796667735.25) == "18:22:15 UTC"
    assert statusparts.hundredths(0.375) == "0.38" and statusparts.hundredths(-2) == "-2.00"
    words = statusparts.reason_words
    assert words("avail") == "available under threshold"
    assert words("kernel:vmpressure:critical") == "kernel: critical vmpressure"
    assert words("kernel:new-thing") == "kernel: new-thing"
    assert words("LOW lead-time") == "LOW: would run out within lead time"
    assert words("brand-new") == "brand-new" and words(None) == "?"


MPY_RENDER = """
import json, sys
from memagent.core.statusview import render
for path in sys.argv[1:]:
    with open(path) as f:
        st = json.load(f)
    for mode in ("plain", "terminal"):
        for width in (40, 80):
            sys.stdout.write("== %s %s %d\\n" % (path, mode, width))
            sys.stdout.write(render(st, mode, width))
"""


@pytest.mark.micropython
def test_the_same_screens_under_micropython() -> None:
    exe = micropython_ffi()
    files = [os.path.join(DATA, name + ".json") for name in FIXTURES]
    outs = []
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        for cmd, env in (([exe, "-X", "heapsize=16M"], {"MICROPYPATH": ".frozen:" + tmp}),
                         ([sys.executable], {"PYTHONPATH": tmp})):
            out = subprocess.run(cmd + ["-c", MPY_RENDER] + files, env=dict(os.environ, **env),
                                 capture_output=True, timeout=120)
            assert out.returncode == 0, out.stderr
            outs.append(out.stdout.decode("utf-8"))
    assert outs[0].count("== ") == len(FIXTURES) * 4
    assert outs[0] == outs[1]


def picture_script() -> Any:
    """Return: docs/pictures/make_status_png.py as a module."""
    import importlib.util
    path = os.path.join(os.path.dirname(HERE), "docs", "pictures", "make_status_png.py")
    spec = importlib.util.spec_from_file_location("make_status_png", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_picture_is_what_a_terminal_shows(tmp_path: Any) -> None:
    # The script's real path: tmux runs the renderer, capture-pane gives the
    # screen back; its text and colours must be the renderer's own, and the
    # PNG small enough for the docs.
    import shutil
    if shutil.which("tmux") is None:
        need("tmux is not installed")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        need("matplotlib is not installed (pip install memagent[plot])")
    script = picture_script()
    fixture = os.path.join(DATA, "critical-kills.json")
    lib = package_layout(str(tmp_path / "lib"))
    want = render(load("critical-kills"), "terminal")
    screen = script.capture(fixture, len(want.splitlines()) + 1, lib)
    shown = [visible(line).rstrip() for line in screen.rstrip("\n").split("\n")]
    assert shown[:len(want.splitlines())] == [visible(x).rstrip() for x in want.splitlines()]
    runs = script.parse(screen)
    styled = {(chunk.strip(), style) for line in runs for _, chunk, style in line}
    assert ("CRITICAL", (31, True, False)) in styled and ("DRY RUN", (33, False, False)) in styled
    out = str(tmp_path / "status.png")
    assert script.main([fixture, "-o", out]) == 0
    with open(out, "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and 10000 < len(png) < 150 * 1024
