"""The board bench: the handset day in the qemu ARM guest, side by side:
nobody but the kernel's OOM killer, Debian's earlyoom (its defaults) and
memagent (booted through init with the board's profile).

    sudo python3 -m bench.board [--mem 128,64] [--runs N] [--json FILE]

The scenario is board/qemu-arm/scenarios/handset_day.py: three registered
background apps holding caches, an unregistered hog, a page-cache thrash,
then the foreground grows.  Every contestant gets a fresh boot per memory
size, through the init scripts with the board profile of that size
(``--board``: 128 MB qemu-arm, 64 MB zaurus-c3000), and ``--runs`` runs in
it.  For ``none`` and ``earlyoom`` the guest stops the agent init started.

Per contestant: the kernel's OOM kills, the apps killed (by the tool or by
the kernel) and in which order, whether the foreground survived, the trims
the apps answered, the PSI ``some`` stall (/proc/pressure/memory ``total=``
over the growth), the time from the first sample at or below the profile's
CRITICAL until the memory is back above it for good, and the time spent at
or below it.  Then the tools' own memory: memagent's RSS in the guest beside
a bare ``python3 -c "import asyncio"`` and earlyoom's.

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
CONTESTANTS = ("none", "earlyoom", "memagent")


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
                      out_dir=out_dir, boot_init=True, board=board)
    except rig.RigError as e:
        raise RuntimeError("the qemu rig cannot run: %s" % e) from e
    data = res.files.get("handset-%s.json" % spec)
    panic = [line for line in res.console.splitlines() if "Kernel panic" in line]
    return {"runs": json.loads(data) if data else [], "facts": facts_of(res.console),
            "results": res.results, "timed_out": res.timed_out,
            "panic": panic[0].partition("]")[2].strip() if panic else None,
            "elapsed_s": round(res.elapsed_s, 1),
            "oom_lines": (res.files.get("oom-%s.txt" % spec) or b"").decode(errors="replace"),
            "kernel": res.kernel, "console_tail": "" if data else rig.explain(res.console)}


def _median(values: List[Any]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summarise(spec: str, part: Result) -> Result:
    """Return: the contestant's row from one boot's runs."""
    if not part["runs"]:
        why = "; ".join(m for _, m in part["results"]) or part.get("panic") or (
            "timed out" if part["timed_out"] else "no RESULT")
        return {"contestant": spec, "na": "no run completed: " + why}
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
            "setup_s": _median([f["setup_ms"] / 1000 for f in figs]),
            "recovery_ms": _median([f["recovery_ms"] for f in figs]),
            "not_recovered": sum(1 for f in figs if f["recovery_ms"] is None),
            "below_crit_ms": _median([f["below_crit_ms"] for f in figs]),
            "wall_s": _median([f["wall_ms"] / 1000 for f in figs]),
            "tool_rss": first["tool"].get("rss") or {"VmRSS": first["tool"].get("rss_kib")},
            "avail_cost_kib": first["a0_kib"] - first["avail_with_tool_kib"],
            "bare_asyncio_kib": part["facts"].get("python_asyncio_vmrss_kib"),
            "elapsed_s": part["elapsed_s"], "panic": part.get("panic")}


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
            "| CRITICAL -> back above it (median) | time at or below CRITICAL (median) "
            "| apps' start, median; boot, wall |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        if "na" in row:
            out.append("| %s | %s | | | | | | | | |" % (row["contestant"], row["na"]))
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
        out.append("| %s | %s | %s | %s | %s | %.0f, %.0f | %s, %s | %s | %s | %.1f s; %.0f s |"
                   % (row["contestant"], ", ".join(map(str, row["oom_kills"])), killed,
                      orders, survived, row["trims"] or 0, row["trimmed_kib"] or 0,
                      _ms(row["psi_some_ms"]), _ms(row["psi_growth_ms"]), back,
                      _ms(row["below_crit_ms"]), row["setup_s"] or 0, row["elapsed_s"]))
    ended = ["%s: %s after %d run%s" % (r["contestant"], r["panic"], r["runs"],
                                        "" if r["runs"] == 1 else "s")
             for r in rows if r.get("panic") and "na" not in r]
    if ended:
        out += ["", "A boot ended in a kernel panic: " + "; ".join(ended) + "."]
    out += ["", "| tool | VmRSS | RssAnon | available memory it took | bare `python3 -c "
            "\"import asyncio\"` VmRSS |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        if "na" in row or row["contestant"] == "none":
            continue
        rss = row["tool_rss"]
        out.append("| %s | %s KiB | %s | %s KiB | %s |" % (
            row["contestant"], rss.get("VmRSS"),
            "%s KiB" % rss["RssAnon"] if rss.get("RssAnon") else "-", row["avail_cost_kib"],
            "%s KiB" % row["bare_asyncio_kib"] if row["bare_asyncio_kib"] else "-"))
    return out


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Return: the options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mem", default="128,64", help="guest RAM sizes in MB (128, 64)")
    p.add_argument("--runs", type=int, default=3, help="handset days per boot")
    p.add_argument("--contestant", action="append", dest="contestants",
                   choices=CONTESTANTS, help="repeatable (default: all three)")
    p.add_argument("--timeout-s", type=float, default=420.0, help="per boot")
    p.add_argument("--json", help="also write the raw runs and the rows here")
    opts = p.parse_args(argv)
    opts.mem = [int(m) for m in opts.mem.split(",") if m.strip()]
    unknown = [m for m in opts.mem if m not in BOARDS]
    if unknown:
        p.error("--mem: %s (a board profile exists for %s)" % (unknown, sorted(BOARDS)))
    opts.contestants = opts.contestants or list(CONTESTANTS)
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
                    part = boot(mem, board, spec, opts.runs, opts.timeout_s,
                                os.path.join(tmp, "%d-%s" % (mem, spec)))
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
