"""Sensing under CPU contention: the guest's sensing scenarios while the
host's CPUs are saturated, side by side with the same scenarios on an idle
host.  A handset is busiest exactly when its memory runs out.

    sudo python3 -m bench.contention [--runs N] [--busy N] [--no-idle] [--json FILE]

Each scenario boots the qemu ARM guest (128 MB, TCG: the guest's one vCPU
is a host thread, so the busy loops take its CPU as a handset's busy apps
would) and runs:

- ``psi``: board/qemu-arm/scenarios/sources.py psi: the PSI source sleeps
  while calm, then wakes on a page-cache thrash;
- ``cgroup2``, ``poll``: a 10 MB/s ramp in a 48 MiB v2 memcg, with that
  source: LOW before the memcg's OOM kill, and its lead;
- ``ramp``: the system-wide 10 MB/s ramp on psi (auto): LOW before the
  kernel's OOM kill, and its lead;
- ``handset``: the handset day (handset_day.py, memagent booted through
  init with the qemu-arm profile): the agent's first LOW before the first
  death, and its lead.

The contention: ``--busy`` (default: one per host CPU) processes of this
interpreter spinning ``while True: pass``, started before the boot and
killed after it; they are this bench's own children.  Prints a markdown
table per condition; exit status 1 if a run failed, 2 if it cannot run
here (no qemu-system-arm).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench import board

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIG_DIR = os.path.join(REPO, "board", "qemu-arm")
SOURCES = os.path.join(RIG_DIR, "scenarios", "sources.py")
HANDSET = os.path.join(RIG_DIR, "scenarios", "handset_day.py")
SCENARIOS = ("psi", "cgroup2", "poll", "ramp", "handset")

Result = Dict[str, Any]
load_rig = board.load_rig  # the rig module (board/qemu-arm/rig.py)
facts_of = board.facts_of  # the guest's FACT lines


class Busy:
    """``n`` spinning processes of this interpreter, for a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: "List[subprocess.Popen[bytes]]" = []

    def __enter__(self) -> "Busy":
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"]))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs = []


def boot(rig: Any, scenario: str, tmp: str) -> Tuple[bool, Dict[str, str], str]:
    """Run one scenario in a fresh guest.  Returns: (the guest's RESULT
    held, its FACTs, rig.explain of the console)."""
    if scenario == "handset":
        res = rig.run(HANDSET, args=("memagent",), mem_mb=128, timeout_s=600, out_dir=tmp,
                      boot_init=True, board="qemu-arm")
        console = res.console
        facts = facts_of(console)
        ok = facts.get("low_first") == "True"  # the sensing's part of the day
    else:
        console, _files = rig.run_scenario(SOURCES, mem_mb=128, timeout_s=600, out_dir=tmp,
                                           args=(scenario,))
        facts = facts_of(console)
        ok = rig.scenario_ok(console)
    return ok, facts, rig.explain(console)


def lead_s(scenario: str, facts: Dict[str, str]) -> Optional[float]:
    """Return: the warning's lead in seconds (LOW before the OOM kill or
    the first death), None where the scenario has none (psi) or no LOW came."""
    try:
        if scenario == "handset":
            return int(facts["low_lead_ms"]) / 1000.0
        return float(facts["low_lead_s"])
    except (KeyError, ValueError):
        return None


def run_condition(rig: Any, busy: int, runs: int, scenarios: "Tuple[str, ...]",
                  log: Callable[[str], None]) -> List[Result]:
    """Run each scenario ``runs`` times with ``busy`` spinning processes.
    Returns: one row per run: scenario, ok, lead_s, wall_s, facts, explain."""
    rows = []
    with Busy(busy):
        for scenario in scenarios:
            for i in range(runs):
                t0 = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
                    ok, facts, why = boot(rig, scenario, tmp)
                wall = time.monotonic() - t0
                row = {"scenario": scenario, "busy": busy, "run": i + 1, "ok": ok,
                       "lead_s": lead_s(scenario, facts), "wall_s": round(wall, 1),
                       "facts": facts, "explain": "" if ok else why}
                rows.append(row)
                log("%s busy=%d run %d: %s, lead %s s, %.0f s" % (
                    scenario, busy, i + 1, "ok" if ok else "FAILED", row["lead_s"], wall))
    return rows


def table(rows: List[Result], runs: int) -> List[str]:
    """Return: markdown lines, one row per scenario and condition."""
    out = ["| scenario | host busy loops | runs ok | LOW lead (s), per run | boot wall (s) |",
           "|---|---:|---:|---|---:|"]
    keys = []
    for r in rows:
        if (r["scenario"], r["busy"]) not in keys:
            keys.append((r["scenario"], r["busy"]))
    for scenario, busy in keys:
        mine = [r for r in rows if r["scenario"] == scenario and r["busy"] == busy]
        leads = ", ".join("-" if r["lead_s"] is None else "%.2f" % r["lead_s"] for r in mine)
        walls = max(r["wall_s"] for r in mine)
        out.append("| %s | %d | %d/%d | %s | %.0f |" % (
            scenario, busy, sum(r["ok"] for r in mine), len(mine), leads, walls))
    return out


def main(argv: "Optional[List[str]]" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1, help="runs per scenario and condition")
    p.add_argument("--busy", type=int, default=os.cpu_count() or 2,
                   help="spinning processes on the host (default: one per CPU)")
    p.add_argument("--no-idle", action="store_true", help="skip the idle-host condition")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma list of scenarios")
    p.add_argument("--json", help="write the raw rows here")
    args = p.parse_args(argv)
    if shutil.which("qemu-system-arm") is None:
        print("bench.contention: qemu-system-arm is not installed", file=sys.stderr)
        return 2
    rig = load_rig()
    scenarios = tuple(s for s in args.only.split(",") if s)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for busy in ([args.busy] if args.no_idle else [0, args.busy]):
        rows += run_condition(rig, busy, args.runs, scenarios, log)
    print("Sensing in the qemu ARM guest (128 MB) on a host with %d CPUs, %s"
          % (os.cpu_count() or 0, time.strftime("%Y-%m-%d")))
    print("\n".join(table(rows, args.runs)))
    for r in rows:
        if not r["ok"]:
            print("\n%s (busy %d, run %d) failed:\n%s" % (r["scenario"], r["busy"], r["run"],
                                                        r["explain"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
