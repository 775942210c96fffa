"""MicroPython on the 64 MB board, in the ARM guest: the rig's sidecar
(Debian trixie's micropython 1.25 in /opt/trixie, with its own glibc and
loader, `run --interpreter micropython`) runs the modules the agent needs
beside bookworm's python3, and /usr/bin/memagent is the MicroPython launcher
(board/common/micropython/memagent).  One boot of the zaurus-c3000 profile
through init (scenarios/mpy_sidecar.py, about 15 s here), judged by its
RESULT and FACT lines.
"""

import json
import os
from typing import Any, Dict

import pytest
from test_guest import RIG_DIR, load_rig
from test_guest_boot import facts_of

from support import need

SCENARIO = os.path.join(RIG_DIR, "scenarios", "mpy_sidecar.py")

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def mpy_boot(tmp_path_factory: Any) -> "Any":
    """Returns: the RunResult of one 64 MB boot with the sidecar, through init."""
    rig = load_rig()
    try:
        return rig.run(SCENARIO, mem_mb=64, timeout_s=300,
                       out_dir=str(tmp_path_factory.mktemp("mpy-sidecar")), boot_init=True,
                       board="zaurus-c3000", interpreter="micropython")
    except rig.RigError as e:
        need("the qemu rig cannot build its MicroPython image here: %s" % e)


def facts(res: "Any") -> "Dict[str, str]":
    return facts_of(res.console)


def test_micropython_runs_from_the_sidecar_on_the_64mb_board(mpy_boot: "Any") -> None:
    fs = facts(mpy_boot)
    assert mpy_boot.ok, load_rig().explain(mpy_boot.console)
    assert fs["mpy_imports_ok"] == "True"  # asyncio, ffi, socket, select, struct, json
    assert fs["mpy_version"].startswith("(1,25,"), fs
    # ffi reaches trixie's libc; python3 keeps bookworm's
    assert fs["python3_glibc"] == "2.36" and fs["mpy_glibc"] != "2.36", fs
    assert fs["mpy_comm"] == "micropython", fs
    # loose bounds (measured 2026-12-07: the sidecar 2,965 KiB on disk; Rss
    # 1,856 KiB after the imports, python3 with asyncio 12,776; `import
    # asyncio` 50 ms, python3's 1,055 ms); the figures are FACTs for the docs
    assert int(fs["sidecar_kib"]) < 4096, fs
    assert 0 < int(fs["mpy_imports_rss_kib"]) < 4096, fs
    assert int(fs["mpy_imports_rss_kib"]) < int(fs["python3_asyncio_rss_kib"]), fs
    assert int(fs["mpy_imports_ms"]) < 2000, fs
    # the launcher got as far as memagent: its version, or memagent's own import failed
    assert fs["launcher_reached"] in ("version", "memagent's own code"), fs


def test_the_agent_runs_on_micropython_from_init(mpy_boot: "Any") -> None:
    fs = facts(mpy_boot)
    assert fs.get("launcher_reached") == "version", fs
    assert fs.get("agent_running") == "True", fs
    assert fs.get("agent_comm") == "memagent", fs  # start-stop-daemon -n memagent finds it
    assert fs.get("agent_exec_to_status_ms") not in (None, "None"), fs
    # issue 11: <= 3 MB calm (smaps_rollup Rss), armed within 1 s of exec
    assert 0 < int(fs.get("agent_rss_kib") or 0) <= 3072, fs
    assert int(fs["agent_exec_to_status_ms"]) <= 1000, fs


FOOTPRINT = os.path.join(RIG_DIR, "scenarios", "footprint.py")


def test_footprint_side_by_side_calm_and_after_hostile_clients(tmp_path: "Any") -> None:
    # bench.footprint's boot: CPython's agent, MicroPython's and earlyoom in
    # one guest.  Issue 11's figures for the MicroPython agent: <= 3 MB calm,
    # <= 4 MB after 200 subscribers, 64 emoji-named apps, 40 unfinished
    # 60 KiB lines, garbage and 300 status requests; it answers after, and
    # within 1 s of its exec.  Measured 2026-12-07: 2,376 / 3,324 KiB, 696 ms
    # (CPython's agent: 17,608 / 18,672 KiB, 3,354 ms; earlyoom 1,096 KiB).
    rig = load_rig()
    try:
        res = rig.run(FOOTPRINT, mem_mb=128, timeout_s=500, out_dir=str(tmp_path),
                      boot_init=True, board="zaurus-c3000", interpreter="micropython")
    except rig.RigError as e:
        need("the qemu rig cannot build its MicroPython image here: %s" % e)
    fs = facts_of(res.console)
    assert res.ok, rig.explain(res.console)
    assert 0 < int(fs["micropython_calm_rss_kib"]) <= 3072, fs
    assert 0 < int(fs["micropython_after_rss_kib"]) <= 4096, fs
    assert int(fs["micropython_ready_ms"]) <= 1000, fs
    assert fs["micropython_answers_after"] == "True" and fs["cpython_answers_after"] == "True"
    battery = json.loads(fs["micropython_battery"])
    assert battery["subscribed"] == 72 and battery["registered"] == 64, battery
    # the side by side: the CPython agent is several times bigger
    assert int(fs["cpython_calm_rss_kib"]) > 3 * int(fs["micropython_calm_rss_kib"]), fs
    assert 0 < int(fs["earlyoom_calm_rss_kib"]) < int(fs["micropython_calm_rss_kib"]), fs


STARTUP = os.path.join(RIG_DIR, "scenarios", "startup.py")


def test_startup_calm_and_under_a_page_cache_thrash(tmp_path: "Any") -> None:
    # bench.footprint's second boot: the agent's exec to its first status
    # answer in the 64 MB guest, calm and while a reader streams a file of
    # 1.25 x RAM with 16 MiB left (issue 11: armed within 1 s, also under a
    # thrash).  The bounds here are loose; docs/micropython.md has the figures
    # (2026-12-07, started at nice -20: calm 562-597 ms, thrash 848-1,038 ms;
    # the CPython agent calm 1,615-2,251 ms, thrash 4.8-58 s).
    rig = load_rig()
    try:
        res = rig.run(STARTUP, ["runs=3"], mem_mb=64, timeout_s=500, out_dir=str(tmp_path),
                      boot_init=True, board="zaurus-c3000", interpreter="micropython")
    except rig.RigError as e:
        need("the qemu rig cannot build its MicroPython image here: %s" % e)
    fs = facts_of(res.console)
    assert res.ok, rig.explain(res.console)
    assert int(fs["thrash_psi_some_ms_s"]) > 0, fs  # the thrash was there
    for cond in ("calm", "thrash"):
        times = fs["micropython_%s_ms" % cond].split(";")
        assert "None" not in times and len(times) == 3, fs
        assert sorted(int(t) for t in times)[1] <= 3000, fs
    assert "None" not in fs["cpython_calm_ms"], fs


@pytest.mark.parametrize("mode", ["psi", "cgroup2", "poll"])
def test_sources_on_micropython(mode: str, tmp_path: "Any") -> None:
    # scenarios/sources.py with memagent on MicroPython: the PSI trigger's
    # POLLPRI (calm: no reading; a thrash: psi wakes), cgroup v2
    # memory.events (kernfs POLLPRI) and the poll source each warn before
    # the memcg's OOM kill, as tests/test_guest.py checks them on CPython.
    from test_guest import SCENARIO as SOURCES
    from test_guest import boot_script

    _, fs = boot_script(SOURCES, str(tmp_path), (mode,), interpreter="micropython")
    assert fs["agent_exe"].startswith("/opt/trixie/"), fs  # MicroPython ran it
    if mode == "psi":
        assert fs["calm_readings_8s_to_18s"] == "0" and int(fs["psi_wakes"]) >= 1, fs
    else:
        assert fs["oom_kills"] == "1" and fs["alloc_exit"] == "-9", fs
        assert float(fs["low_lead_s"]) > 0.5, fs
    if mode == "cgroup2":
        assert int(fs["events_wakes"]) >= 1, fs
