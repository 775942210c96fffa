"""The handset day's picture: memagent against the kernel's OOM killer alone and
earlyoom, one panel each, drawn with memagent plot's own functions.

    python3 docs/pictures/make_handset_plots.py     # docs/img/handset-day{,-64}.png
    python3 docs/pictures/make_handset_plots.py --extract /tmp/board128.json --size 128

The inputs, docs/data/handset-day-{128,64}.json, hold one run per contestant of
a ``python3 -m bench.board --json FILE`` result (``--extract`` makes one from
it): the guest sampler's available memory every 50 ms, PSI memory ``full``
avg10 every 10th sample, each app's trims and death, the tool's kills and
memagent's level notifications, on the guest's monotonic clock.  Needs
matplotlib (``pip install 'memagent[plot]'``).
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List

from memagent.core import trace
from memagent.core.levels import Thresholds
from memagent.core.reading import Reading
from memagent.plot import draw_memory, draw_psi, legend_handles, new_figure, save
from memagent.plotdata import Mark, Timeline, add_events, level_spans

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)
# size (MB) -> the data file, the picture, the panels: at 64 MB the board's
# agent is memagent on MicroPython (docs/bench-board.md).
FIGURES = {"128": ("handset-day-128.json", "handset-day.png", "memagent,none,earlyoom"),
           "64": ("handset-day-64.json", "handset-day-64.png", "memagent-mpy,none,earlyoom")}
NAMES = {"memagent": "memagent (CPython)", "memagent-mpy": "memagent (MicroPython)",
         "none": "no tool: the kernel's OOM killer", "earlyoom": "earlyoom 1.7"}
KEEP_RUN = ("contestant", "start_ms", "t0_ms", "end_ms", "low_kib", "crit_kib", "total_kib",
            "a0_kib", "oom_kills", "samples")


def extract(board_json: str, size: str, run_index: int) -> Dict[str, Any]:
    """Return: the small input of this script: run ``run_index`` of each
    contestant at ``size`` MB of a bench.board result, trimmed to what the
    picture draws.  Raises: KeyError, IndexError for a result without them."""
    with open(board_json) as f:
        board = json.load(f)
    out: Dict[str, Any] = {"from": os.path.basename(board_json), "options": board["options"],
                           "size_mb": int(size), "board": board["sizes"][size]["board"],
                           "run_index": run_index, "runs": {}}
    for name, boot in board["sizes"][size]["boots"].items():
        run = boot["runs"][run_index]
        small = {k: run[k] for k in KEEP_RUN}
        small["psi_full"] = [[v[0], v[3]] for v in run["vm_samples"] if v[3] >= 0]
        small["procs"] = [{k: p.get(k) for k in ("name", "cls", "adj", "pid", "start_ms",
                                                   "died_ms", "rc", "trims")}
                          for p in run["procs"]]
        small["kills"] = [{k: e.get(k) for k in ("t_ms", "decision_ms", "pid", "dry_run",
                                                 "outcome", "sigkill", "sig", "level")}
                          for e in run["tool"]["kills"]]
        small["notes"] = run["tool"]["notes"]
        out["runs"][name] = small
    return out


def killed_by_tool(proc: Dict[str, Any], kills: List[Dict[str, Any]]) -> bool:
    """Return: whether the tool ended ``proc`` (the scenario's rule: a SIGTERM
    exit with a kill entry for its pid, or a SIGKILL the entries record)."""
    mine = [k for k in kills if k["pid"] == proc["pid"] and not k.get("dry_run")]
    if proc["rc"] in (0, -15) and mine:
        return True
    return proc["rc"] == -9 and any(k.get("sigkill") or k.get("sig") == "SIGKILL" for k in mine)


def timeline_of_run(run: Dict[str, Any], label: str) -> Timeline:
    """Return: the Timeline of one handset-day run, t=0 at the foreground's
    growth start; levels from memagent's notifications, else replayed."""
    tl = Timeline(label)
    tl.avail = [(t, a) for t, a in run["samples"]]
    tl.psi_full = [(t, v / 100.0) for t, v in run["psi_full"]]
    tl.low_kib, tl.critical_kib, tl.total_kib = run["low_kib"], run["crit_kib"], run["total_kib"]
    tl.t0_ms = run["t0_ms"]
    for proc in run["procs"]:
        tl.marks.extend(Mark(t[0], "trim") for t in proc.get("trims") or [])
        if proc["died_ms"] is not None:  # the tool's kills where it chose the victim
            chosen = [k["decision_ms"] for k in run["kills"] if k["pid"] == proc["pid"]]
            if killed_by_tool(proc, run["kills"]):
                tl.marks.append(Mark(min(chosen), "kill", proc["name"]))
            else:
                tl.marks.append(Mark(proc["died_ms"], "kernel", proc["name"]))
    changes = add_events(tl, [dict(n, kind="level") for n in run["notes"]])
    if not run["notes"]:
        readings = [Reading(t, run["total_kib"], a) for t, a in run["samples"]]
        thresholds = Thresholds(run["low_kib"], run["crit_kib"], total_kib=run["total_kib"])
        changes = [(n.t_ms, n.level, n.prev_level) for n in trace.replay(readings, thresholds)]
    first, last = tl.span_ms()
    tl.levels = level_spans(changes, first, last)
    return tl


def panel_title(name: str, run: Dict[str, Any], tl: Timeline) -> str:
    """Return: the panel's title: the contestant and what happened."""
    tool = sum(1 for m in tl.marks if m.kind == "kill")
    kernel = sum(1 for m in tl.marks if m.kind == "kernel")
    trims = sum(1 for m in tl.marks if m.kind == "trim")
    levels = "levels: its own" if run["notes"] else "levels: memagent's monitor replayed"
    return "%s: %d kills by the tool, %d by the kernel (%d OOM kills), %d trims; %s" % (
        NAMES.get(name, name), tool, kernel, run["oom_kills"], trims, levels)


def draw(data: Dict[str, Any], out_path: str, panels: "List[str]") -> None:
    """Draw one panel per contestant in ``panels``, sharing both axes, to
    ``out_path``.  Raises: KeyError for a contestant not in ``data``."""
    fig, axes = new_figure(len(panels), width_in=11.0, height_in=3.0 * len(panels) + 0.8)
    y_max = max(a for name in panels for _, a in data["runs"][name]["samples"]) / 1024 * 1.08
    twins, levels = [], []
    for ax, name in zip(axes, panels):
        run = data["runs"][name]
        tl = timeline_of_run(run, name)
        draw_memory(ax, tl, y_max_mib=y_max)
        ax.axvline(0, color="#555555", linewidth=0.8, linestyle=":", label="growth starts")
        twin = ax.twinx()
        draw_psi(twin, tl)
        twin.set_ylim(0, 100)
        twins.append(twin)
        levels += [lv for _, _, lv in tl.levels]
        ax.set_title(panel_title(name, run, tl), fontsize=9, loc="left")
    axes[-1].set_xlabel("time from the foreground's growth start (s)")
    handles, labels = legend_handles(list(axes) + twins, levels)
    fig.legend(handles, labels, loc="outside lower center", ncol=6, fontsize=8)
    fig.suptitle("The handset day, %d MB ARM guest (%s profile), run %d of each: "
                 "available memory, level, trims, kills, PSI full" % (
                     data["size_mb"], data["board"], data["run_index"] + 1), fontsize=10)
    save(fig, out_path)


def main(argv: "List[str]") -> int:
    """Returns: 0 (the pictures, or with --extract the data file, written)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--extract", metavar="BOARD_JSON", help="make the size's data file from "
                   "a bench.board --json result instead of drawing")
    p.add_argument("--size", choices=sorted(FIGURES), help="only this size (MB)")
    p.add_argument("--run", type=int, default=0, help="--extract: which run of each (0-based)")
    p.add_argument("--data", help="the data file (default docs/data/handset-day-SIZE.json)")
    p.add_argument("-o", "--output", help="the picture (default docs/img/, .png or .svg)")
    p.add_argument("--panels", help="contestants, in order (default: the size's)")
    args = p.parse_args(argv)
    for size in [args.size] if args.size else sorted(FIGURES, key=int, reverse=True):
        data_name, out_name, panels = FIGURES[size]
        data_path = args.data or os.path.join(DOCS, "data", data_name)
        if args.extract:
            with open(data_path, "w") as f:
                json.dump(extract(args.extract, size, args.run), f, separators=(",", ":"))
                f.write("\n")
            print("wrote %s" % data_path)
            return 0
        with open(data_path) as f:
            data = json.load(f)
        out_path = args.output or os.path.join(DOCS, "img", out_name)
        draw(data, out_path, (args.panels or panels).split(","))
        print("wrote %s" % out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
