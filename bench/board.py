"""The board bench: the handset day in the qemu ARM guest, side by side:
nobody but the kernel's OOM killer, Debian's earlyoom (its defaults) and
memagent (booted through init with the board's profile); on request
(``--contestants``) memagent on MicroPython too, ``memagent-mpy``.

    sudo python3 -m bench.board [--mem 128,64] [--runs N] [--json FILE]
    sudo python3 -m bench.board --mem 64 --runs 5 --contestants memagent-mpy

The scenario is board/qemu-arm/scenarios/handset_day.py: three registered
background apps holding caches, an unregistered hog, a page-cache thrash,
then the foreground grows.  Every contestant gets a fresh boot per memory
size, through the init scripts with the board profile of that size
(``--board``: 128 MB qemu-arm, 64 MB zaurus-c3000), and ``--runs`` runs in
it.  For ``none`` and ``earlyoom`` the guest stops the agent init started.
``memagent-mpy`` boots with the rig's ``interpreter="micropython"``: Debian
trixie's micropython from the rig's sidecar, /usr/bin/memagent the
MicroPython launcher (board/common/micropython/memagent).

Per contestant: the kernel's OOM kills, the apps killed (by the tool or by
the kernel) and in which order, whether the foreground survived, the trims
the apps answered, the PSI ``some`` stall (/proc/pressure/memory ``total=``
over the growth), the time from the first sample at or below the profile's
CRITICAL until the memory is back above it for good, and the time spent at
or below it.  Then the tools' own memory (/proc/PID/smaps_rollup Rss, with
VmRSS beside it: on 6.1 VmRSS lags) beside the bare interpreter with
``import asyncio`` (python3 for memagent, micropython for memagent-mpy), and
how long each took from its exec to watching.

Prints markdown tables; exit status 1 if a boot failed, 2 if it cannot run
here (no qemu-system-arm).  Every process signalled lives in the guest.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIG_DIR = os.path.join(REPO, "board", "qemu-arm")
SCENARIO = os.path.join(RIG_DIR, "scenarios", "handset_day.py")
sys.path.insert(0, os.path.dirname(SCENARIO))
import handset_day  # noqa: E402

sys.path.pop(0)

Result = Dict[str, Any]
BOARDS = {128: "qemu-arm", 64: "zaurus-c3000"}
CONTESTANTS = ("none", "earlyoom", "memagent", "memagent-mpy")
# memagent-mpy only when asked: the agent's MicroPython port is new
DEFAULT_CONTESTANTS = ("none", "earlyoom", "memagent")
INTERPRETER = {"memagent-mpy": "micropython"}  # the others: python3


def load_rig() -> Any:
    """Return: the rig module (board/qemu-arm/rig.py)."""
    sys.path.insert(0, RIG_DIR)
    try:
        import rig
    finally:
        sys.path.pop(0)
    return rig


def facts_of(console: str) -> Dict[str, str]:
    """Return: the guest's ``FACT key=value`` lines."""
    out = {}
    for line in console.splitlines():
        if line.startswith("FACT "):
            key, _, value = line[5:].partition("=")
            out[key] = value.strip()
    return out


def boot(mem: int, board: str, spec: str, runs: int, timeout_s: float, out_dir: str) -> Result:
    """One fresh boot running ``runs`` handset days with ``spec``.  Returns:
    the raw runs, the FACTs, the RESULT lines, the guest's wall time.
    Raises: RuntimeError if the rig cannot run."""
    rig = load_rig()
    try:
        res = rig.run(SCENARIO, args=(spec, "runs=%d" % runs), mem_mb=mem, timeout_s=timeout_s,
                      out_dir=out_dir, boot_init=True, board=board,
                      interpreter=INTERPRETER.get(spec, "python3"))
    except rig.RigError as e:
        raise RuntimeError("the qemu rig cannot run: %s" % e) from e
    data = res.files.get("handset-%s.json" % spec)
    panic = [line for line in res.console.splitlines() if "Kernel panic" in line]
    return {"runs": json.loads(data) if data else [], "facts": facts_of(res.console),
            "results": res.results, "timed_out": res.timed_out,
            "panic": panic[0].partition("]")[2].strip() if panic else None,
            "elapsed_s": round(res.elapsed_s, 1),
            "oom_lines": (res.files.get("oom-%s.txt" % spec) or b"").decode(errors="replace"),
            "messages": (res.files.get("messages-%s.txt" % spec) or b"").decode(errors="replace"),
            "kernel": res.kernel, "console_tail": "" if data else rig.explain(res.console)}


def boots(mem: int, board: str, spec: str, opts: argparse.Namespace, out_dir: str) -> Result:
    """``opts.runs`` handset days with ``spec``: in one boot, or with
    ``opts.fresh`` each in a boot of its own (nothing left over from the
    run before: the apps' memory, the agent's state).  Returns: as
    :func:`boot`, the runs and the logs of every boot together, the FACTs
    of each FACT key joined with ";" as the scenario does within a boot.
    Raises: RuntimeError."""
    if not opts.fresh:
        return boot(mem, board, spec, opts.runs, opts.timeout_s, out_dir)
    parts = [boot(mem, board, spec, 1, opts.timeout_s, "%s-%d" % (out_dir, i))
             for i in range(opts.runs)]
    merged = dict(parts[0])
    merged["runs"] = [r for p in parts for r in p["runs"]]
    keys = {k for p in parts for k in p["facts"]}
    merged["facts"] = {k: ";".join(p["facts"].get(k, "None") for p in parts) for k in keys}
    # the tools' memory is measured once per boot: the first boot's figures
    merged["facts"].update({k: v for k, v in parts[0]["facts"].items()
                            if k.startswith(("tool_", "micropython_", "python_", "bare_"))})
    merged["results"] = [r for p in parts for r in p["results"]]
    merged["timed_out"] = any(p["timed_out"] for p in parts)
    merged["panic"] = next((p["panic"] for p in parts if p["panic"]), None)
    merged["elapsed_s"] = round(sum(p["elapsed_s"] for p in parts), 1)
    for key in ("oom_lines", "messages", "console_tail"):
        merged[key] = "".join(p[key] for p in parts)
    return merged


def _median(values: List[Any]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summarise(spec: str, part: Result) -> Result:
    """Return: the contestant's row from one boot's runs."""
    if not part["runs"]:
        why = "; ".join(m for _, m in part["results"]) or part.get("panic") or (
            "timed out" if part["timed_out"] else "no RESULT")
        return {"contestant": spec, "na": "no run completed: " + why,
                "bare": bare_interpreter(spec, part["facts"])}
    figs = [handset_day.analyse(r) for r in part["runs"]]
    orders: Dict[str, int] = {}
    for f in figs:
        key = ", ".join(v["name"] + ("" if v["by"] == "tool" else " (%s)" % v["by"])
                        for v in f["victims"]) or "none"
        orders[key] = orders.get(key, 0) + 1
    first = part["runs"][0]
    return {"contestant": spec, "runs": len(figs), "figures": figs,
            "oom_kills": [f["oom_kills"] for f in figs],
            "killed": [len(f["victims"]) for f in figs],
            "tool_kills": [f["tool_kills"] for f in figs],
            "fg_survived": sum(1 for f in figs if f["fg_survived"]),
            "fg_timed_out": sum(1 for f in figs if f["timed_out"]), "orders": orders,
            "trims": _median([f["trims"] for f in figs]),
            "trimmed_kib": _median([f["trimmed_kib"] for f in figs]),
            "psi_some_ms": _median([f["psi_some_ms"] for f in figs]),
            "psi_growth_ms": _median([f["psi_growth_ms"] for f in figs]),
            "fg_stall_ms": [f.get("fg_stall_ms") for f in figs],
            "setup_s": _median([f["setup_ms"] / 1000 for f in figs]),
            "recovery_ms": _median([f["recovery_ms"] for f in figs]),
            "not_recovered": sum(1 for f in figs if f["recovery_ms"] is None),
            "below_crit_ms": _median([f["below_crit_ms"] for f in figs]),
            "wall_s": _median([f["wall_ms"] / 1000 for f in figs]),
            "tool_rss": handset_day.tool_rss(first),
            "startup": first["tool"].get("startup") or {},
            "tool_start_ms": first.get("tool_start_ms"),
            "avail_cost_kib": first["a0_kib"] - first["avail_with_tool_kib"],
            "bare": bare_interpreter(spec, part["facts"]),
            "elapsed_s": part["elapsed_s"], "panic": part.get("panic")}


def bare_interpreter(spec: str, facts: Dict[str, str]) -> Dict[str, Any]:
    """Return: the bare interpreter the guest measured beside ``spec`` (its
    name, Rss and VmRSS in KiB, start-up in ms; None where not measured)."""
    name = "micropython" if spec == "memagent-mpy" else "python3"
    prefix = "micropython_asyncio" if spec == "memagent-mpy" else "python_asyncio"
    return {"name": name, "rss_kib": facts.get(prefix + "_rss_kib"),
            "vmrss_kib": facts.get(prefix + "_vmrss_kib"), "ms": facts.get(prefix + "_ms")}


def _kib(value: Any) -> str:
    return "-" if value in (None, "None") else "%s KiB" % value


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else "%.0f ms" % value


def table(mem: int, board: str, rows: List[Result], runs: int) -> List[str]:
    """Return: the markdown tables of one memory size."""
    out = ["### %d MB guest, profile %s, %d run%s per boot" % (mem, board, runs,
                                                              "" if runs == 1 else "s"), ""]
    out += ["| contestant | kernel OOM kills (per run) | apps killed: by the tool + by the "
            "kernel (per run) "
            "| victims, in order (runs) | foreground survived | trims answered, KiB freed "
            "(median) | PSI some stall: the run, the growth (median) "
            "| the foreground's longest stall (per run) "
            "| CRITICAL -> back above it (median) | time at or below CRITICAL (median) "
            "| apps' start, median; boot, wall |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "na" in row:
            out.append("| %s | %s | | | | | | | | | |" % (row["contestant"], row["na"]))
            continue
        survived = "%d/%d" % (row["fg_survived"], row["runs"])
        if row["fg_timed_out"]:
            survived += " (%d stalled past the timeout)" % row["fg_timed_out"]
        orders = "; ".join("%s (%d)" % kv for kv in sorted(row["orders"].items(),
                                                           key=lambda kv: -kv[1]))
        back = _ms(row["recovery_ms"]) + (" (%d never)" % row["not_recovered"]
                                          if row["not_recovered"] else "")
        killed = ", ".join("%d + %d" % (tool, all_ - tool)
                           for tool, all_ in zip(row["tool_kills"], row["killed"]))
        stalls = ", ".join(_ms(v) for v in row.get("fg_stall_ms") or [])
        out.append("| %s | %s | %s | %s | %s | %.0f, %.0f | %s, %s | %s | %s | %s "
                   "| %.1f s; %.0f s |"
                   % (row["contestant"], ", ".join(map(str, row["oom_kills"])), killed,
                      orders, survived, row["trims"] or 0, row["trimmed_kib"] or 0,
                      _ms(row["psi_some_ms"]), _ms(row["psi_growth_ms"]), stalls, back,
                      _ms(row["below_crit_ms"]), row["setup_s"] or 0, row["elapsed_s"]))
    ended = ["%s: %s after %d run%s" % (r["contestant"], r["panic"], r["runs"],
                                        "" if r["runs"] == 1 else "s")
             for r in rows if r.get("panic") and "na" not in r]
    if ended:
        out += ["", "A boot ended in a kernel panic: " + "; ".join(ended) + "."]
    out += ["", "| tool | Rss (smaps_rollup) | Anonymous | VmRSS | available memory it "
            "took | exec -> status answer, -> plugins started | bare interpreter with `import "
            "asyncio`: Rss (VmRSS), start-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["contestant"] == "none" or "na" in row and row["bare"]["rss_kib"] is None:
            continue
        if "na" in row:  # the bare interpreter was measured before the tool failed
            rss, st, bare = {}, {"exec_to_status_ms": None}, row["bare"]
            row = dict(row, avail_cost_kib=None)
        else:
            rss, st, bare = row["tool_rss"], row["startup"], row["bare"]
        if st:
            started = "%s, %s" % (_ms(st.get("exec_to_status_ms")),
                                  _ms(st.get("exec_to_ready_ms")))
        else:  # earlyoom: from its start to its banner
            started = "%s (its banner)" % _ms(row["tool_start_ms"])
        if bare["rss_kib"] is None:
            bare_text = "-"
        else:
            bare_text = "%s: %s (%s)%s" % (bare["name"], _kib(bare["rss_kib"]),
                                           _kib(bare["vmrss_kib"]),
                                           ", %s ms" % bare["ms"] if bare["ms"] else "")
        out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            row["contestant"], _kib(rss.get("Rss")), _kib(rss.get("Anonymous")),
            _kib(rss.get("VmRSS")), _kib(row["avail_cost_kib"]), started, bare_text))
    return out


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Return: the options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mem", default="128,64", help="guest RAM sizes in MB (128, 64)")
    p.add_argument("--runs", type=int, default=3, help="handset days per boot (per "
                   "contestant, with --fresh)")
    p.add_argument("--fresh", action="store_true", help="a fresh boot for each run")
    p.add_argument("--contestant", "--contestants", action="append", dest="contestants",
                   metavar="NAME[,NAME]",
                   help="%s; repeatable or comma-separated (default: %s)"
                   % (", ".join(CONTESTANTS), ",".join(DEFAULT_CONTESTANTS)))
    p.add_argument("--timeout-s", type=float, default=420.0, help="per boot")
    p.add_argument("--json", help="also write the raw runs and the rows here")
    opts = p.parse_args(argv)
    opts.mem = [int(m) for m in opts.mem.split(",") if m.strip()]
    unknown = [m for m in opts.mem if m not in BOARDS]
    if unknown:
        p.error("--mem: %s (a board profile exists for %s)" % (unknown, sorted(BOARDS)))
    names = [n.strip() for arg in opts.contestants or [] for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTESTANTS]
    if unknown:
        p.error("--contestant: %s (choose from %s)" % (", ".join(unknown), ", ".join(CONTESTANTS)))
    opts.contestants = list(dict.fromkeys(names)) or list(DEFAULT_CONTESTANTS)
    return opts


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench.  Returns: 0, 1 if a boot failed, 2 if it cannot run here."""
    opts = parse_args(argv)
    if shutil.which("qemu-system-arm") is None:
        print("bench.board: cannot run here: qemu-system-arm is not installed",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    result: Result = {"options": vars(opts), "sizes": {}}
    lines = ["## memagent board bench: the handset day in the qemu ARM guest", ""]
    failed = False
    with tempfile.TemporaryDirectory(prefix="memagent-board-bench-") as tmp:
        for mem in opts.mem:
            board, parts, rows = BOARDS[mem], {}, []
            for spec in opts.contestants:
                try:
                    part = boots(mem, board, spec, opts, os.path.join(tmp, "%d-%s" % (mem, spec)))
                except RuntimeError as e:
                    print("bench.board: %s" % e, file=sys.stderr)
                    return 1
                parts[spec] = part
                rows.append(summarise(spec, part))
                failed = failed or not part["runs"]
            result["sizes"][str(mem)] = {"board": board, "boots": parts, "rows": rows}
            lines += table(mem, board, rows, opts.runs) + [""]
            kernels = sorted({part["kernel"] for part in parts.values()})
            lines += ["Guest kernel: %s." % "; ".join(kernels), ""]
    result["seconds"] = round(time.monotonic() - started, 1)
    lines.append("Bench time: %.0f s." % result["seconds"])
    print("\n".join(lines))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, REPO)
    sys.exit(main())
