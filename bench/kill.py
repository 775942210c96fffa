"""The kill benchmark: memagent's kill_background against the kernel's OOM
killer and Debian's earlyoom, on the same scenario, side by side in one run.

    sudo python3 -m bench.kill [--quick] [--json FILE]                # host, memcg
    sudo python3 -m bench.kill --guest [--mem 128,64] [--json FILE]   # qemu ARM guest

The scenario "handset" (board/qemu-arm/scenarios/kill_bench.py): three
background apps hold anonymous memory (oom_score_adj 900, 900, 500), then a
foreground app (oom_score_adj 0) ramps at 10 MiB/s to a size that would OOM.

- Host: each run in a fresh memcg (``memagent.demo.memcg.Memcg``, cgroup v1 or
  v2) of ``--memcg-mib``; contestants "none" (the memcg's OOM killer) and
  "memagent" (``memagent run --memcg PATH``, kill_background with
  ``dry_run = no``, outside the memcg).  earlyoom reads the system's
  /proc/meminfo and cannot see a memcg limit: listed as n/a.
- Guest (``--guest``): the qemu rig boots a fresh 32-bit ARM guest per
  contestant and memory size (default 128 MB); system-wide memory; "none",
  "memagent", "earlyoom" (its defaults, which on this scenario equal
  memagent's CRITICAL: 10% of MemTotal).  ``--contestant`` (repeatable)
  picks others: ``"memagent:mlock"`` (``mlockall = yes``),
  ``"memagent:SECTION.KEY=VALUE ..."``, ``"earlyoom:ARG ARG"``.

Per contestant: the tool's kills and the kernel's OOM kills per run, whether
the foreground survived, the victims in order, the median time from pressure
(CRITICAL: available <= 10% of the domain; or the tool's kill decision if it
came first) until the available memory is back above the victim's share (its
private memory, RssAnon, measured before the ramp), the median time from the
tool's decision until then, the foreground's longest stall (the largest gap
between two of its 1 MiB progress lines) and the wall time of the ramp.

Prints markdown tables; exit status 2 if it cannot run here (not root, no
memcg; no qemu for --guest).  Only processes the bench started are ever
signalled; on the host they all live in the bench's own memcg.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Set, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIG_DIR = os.path.join(REPO, "board", "qemu-arm")
SCENARIO = os.path.join(RIG_DIR, "scenarios", "kill_bench.py")
sys.path.insert(0, os.path.dirname(SCENARIO))
import kill_bench  # noqa: E402

sys.path.pop(0)
from memagent.demo import memcg  # noqa: E402
from memagent.sense import domains  # noqa: E402

Result = Dict[str, Any]
HOST_CONTESTANTS = ("none", "memagent")
GUEST_CONTESTANTS = ("none", "memagent", "earlyoom")
# outcomes of memagent.plugins.kill_background.pidkill that sent a signal
SIGNALLED = ("exited", "killed", "stuck")
EARLYOOM_NA = "n/a: earlyoom reads /proc/meminfo, it cannot see a memcg limit"


class MemcgPlace(kill_bench.Place):
    """A fresh memcg of ``limit_mib``: every process of the scenario starts
    inside it; its available estimate is memagent's own (domains.MemcgDomain)."""

    label = "memcg"

    def __init__(self, limit_mib: int) -> None:
        self.group = memcg.Memcg(limit_kib=limit_mib * 1024)
        self.domain = domains.MemcgDomain(self.group.path)

    def spawn(self, argv: List[str], preexec: Any, **kw: Any) -> Any:
        return self.group.spawn(argv, preexec_fn=preexec, text=True, **kw)

    def avail_kib(self) -> Tuple[int, int]:
        reading = self.domain.read(kill_bench.mono_ms(), "bench")
        return reading.avail_kib, reading.total_kib

    def oom_kills(self) -> int:
        return self.group.oom_kill_count()

    def agent_args(self) -> List[str]:
        return ["--memcg", self.group.path]


# -- analysis of one run -----------------------------------------------------------------


def real_kills(run: Result) -> List[Result]:
    """Return: the tool's kills that signalled a process (not a dry run, not
    a pid found gone or reused before the signal)."""
    return [k for k in run["tool"]["kills"]
            if not k.get("dry_run") and k.get("outcome", "exited") in SIGNALLED]


def _first_at_most(samples: List[List[int]], since_ms: int, until_ms: int,
                   limit_kib: int) -> Optional[int]:
    """Return: the time of the first sample in [since, until] with at most
    ``limit_kib`` available, or None."""
    for t_ms, avail in samples:
        if since_ms <= t_ms <= until_ms and avail <= limit_kib:
            return t_ms
    return None


def _back(samples: List[List[int]], since_ms: int, share_kib: int) -> Optional[int]:
    """Return: the time of the first sample after ``since_ms`` at which the
    available memory stands at least half of ``share_kib`` above its lowest
    point since the last sample at or before ``since_ms``, or None.  Half, not all: the ramp goes on
    allocating (0.5 MiB per 50 ms sample at 10 MiB/s) and the survivors fault
    back the file pages reclaim took from them (measured on the host: a
    29 MiB victim gave a jump of 26 MiB)."""
    before = [avail for t_ms, avail in samples if t_ms <= since_ms]
    low: Optional[int] = before[-1] if before else None  # the jump may come at once
    for t_ms, avail in samples:
        if t_ms <= since_ms:
            continue
        low = avail if low is None else min(low, avail)
        if avail - low >= share_kib // 2:
            return t_ms
    return None


def episodes(run: Result) -> List[Result]:
    """Return: one entry per background process that died during the run,
    in order of death: ``name``, ``by`` ("tool", "kernel" or "exit N"),
    ``pressure_ms`` (the first sample at or below CRITICAL since the previous
    episode, or the tool's decision if earlier), ``back_ms`` (see
    :func:`_back`; the victim's share is its RssAnon before the ramp), and
    the durations ``crit_to_back_ms`` and ``decision_to_back_ms`` (None when
    a point is missing)."""
    samples, crit = run["samples"], run["crit_kib"]
    kills = {k["pid"]: k for k in real_kills(run)}
    deaths = sorted((p for p in run["procs"][:-1] if p["died_ms"] is not None),
                    key=lambda p: p["died_ms"])
    out = []
    since = run["t0_ms"]
    for p in deaths:
        kill = kills.get(p["pid"])
        by = "tool" if kill else ("kernel" if p["rc"] == -9 else "exit %s" % p["rc"])
        decision = kill["decision_ms"] if kill else None
        cross = _first_at_most(samples, since, p["died_ms"], crit)
        starts = [t for t in (cross, decision) if t is not None]
        pressure = min(starts) if starts else None
        share = p.get("anon_kib") or p.get("rss_kib") or 0
        back = None if pressure is None else _back(samples, pressure, share)
        out.append({"name": p["name"], "pid": p["pid"], "by": by, "share_kib": share,
                    "pressure_ms": pressure, "decision_ms": decision, "died_ms": p["died_ms"],
                    "back_ms": back,
                    "crit_to_back_ms": None if back is None or pressure is None
                    else back - pressure,
                    "decision_to_back_ms": None if back is None or decision is None
                    else back - decision})
        if back is not None:
            since = back
    return out


def below_ms(run: Result) -> int:
    """Return: the time the domain spent at or below CRITICAL from the ramp's
    start to its end: each sample's state held until the next sample (a
    sampler stalled by thrashing counts its whole gap)."""
    samples = [s for s in run["samples"] if run["t0_ms"] <= s[0] <= run["end_ms"]]
    return sum(b[0] - a[0] for a, b in zip(samples, samples[1:]) if a[1] <= run["crit_kib"])


def analyse(run: Result) -> Result:
    """Return: the run's figures (see the module docstring)."""
    ours = {p["pid"] for p in run["procs"]}
    real = real_kills(run)
    points = run["ramp_points"]
    gaps = [b[0] - a[0] for a, b in zip(points, points[1:])]
    eps = episodes(run)
    fg = run["procs"][-1]
    return {"tool_kills": len({k["pid"] for k in real}),
            "stray_kills": sorted({k["pid"] for k in real if k["pid"] not in ours}),
            "dry_run_kills": len(run["tool"]["kills"]) - len(real),
            "oom_kills": run["oom_kills"], "fg_survived": fg["rc"] == 0, "fg_rc": fg["rc"],
            "victims": [e["name"] + ("" if e["by"] == "tool" else " (%s)" % e["by"])
                        for e in eps],
            "episodes": eps, "max_stall_ms": max(gaps) if gaps else None,
            "below_ms": below_ms(run),
            "min_avail_kib": min((a for t, a in run["samples"]
                                  if run["t0_ms"] <= t <= run["end_ms"]), default=None),
            "fg_mib": points[-1][1] if points else 0,
            "wall_ms": run["end_ms"] - run["t0_ms"], "timed_out": run["timed_out"]}


def _median(values: List[Any]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summarise(label: str, runs: List[Result]) -> Result:
    """Return: the contestant's row: per-run counts and medians over runs."""
    figs = [analyse(r) for r in runs]
    eps = [e for f in figs for e in f["episodes"]]
    orders: Dict[str, int] = {}
    for f in figs:
        key = ", ".join(f["victims"]) or "none"
        orders[key] = orders.get(key, 0) + 1
    tool = runs[0]["tool"] if runs else {}
    return {"contestant": label, "runs": len(runs), "figures": figs,
            "tool_kills": [f["tool_kills"] for f in figs],
            "oom_kills": [f["oom_kills"] for f in figs],
            "stray_kills": [p for f in figs for p in f["stray_kills"]],
            "fg_survived": sum(1 for f in figs if f["fg_survived"]),
            "fg_timed_out": sum(1 for f in figs if f["timed_out"]),
            "orders": orders, "episodes": len(eps),
            "crit_to_back_ms": _median([e["crit_to_back_ms"] for e in eps]),
            "decision_to_back_ms": _median([e["decision_to_back_ms"] for e in eps]),
            "not_back": sum(1 for e in eps if e["pressure_ms"] is not None
                            and e["back_ms"] is None),
            "no_pressure": sum(1 for e in eps if e["pressure_ms"] is None),
            "max_stall_ms": _median([f["max_stall_ms"] for f in figs]),
            "below_ms": _median([f["below_ms"] for f in figs]),
            "min_avail_kib": _median([f["min_avail_kib"] for f in figs]),
            "wall_s": _median([f["wall_ms"] / 1000 for f in figs]),
            "tool_rss_kib": tool.get("rss_kib"),
            "avail_cost_kib": _median([r["a0_kib"] - r["avail_with_tool_kib"] for r in runs])}


# -- tables ------------------------------------------------------------------------------


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else "%.0f ms" % value


def table(title: str, rows: List[Result], runs: List[Result], note: str = "") -> List[str]:
    """Return: the markdown table of one place (host memcg, or one guest size)."""
    out = ["### " + title, ""]
    if runs:
        r = runs[0]
        apps = ", ".join("%s %d MiB (adj %d)" % (n, mib, adj)
                         for n, _cls, adj, mib in r["sizes"]["apps"])
        out += ["Domain %d KiB, %d KiB available at the start; CRITICAL <= %d KiB.  Loads: "
                "%s; foreground ramp %g MiB/s to %d MiB, then held %g s; each a Python "
                "process of %s KiB private memory besides." % (
                    r["total_kib"], r["a0_kib"], r["crit_kib"], apps, r["rate_mib_s"],
                    r["sizes"]["ramp_mib"], kill_bench.RAMP_HOLD_S,
                    r["sizes"].get("overhead_kib", "?")), ""]
    out += ["| contestant | kills by the tool (per run) | kernel OOM kills (per run) "
            "| foreground survived | victims, in order (runs) | pressure -> memory back, "
            "median (episodes) | tool's decision -> back, median | time at or below CRITICAL, "
            "median | longest foreground stall, median | wall, median |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "na" in row:
            out.append("| %s | %s | | | | | | | | |" % (row["contestant"], row["na"]))
            continue
        orders = "; ".join("%s (%d)" % kv for kv in sorted(row["orders"].items(),
                                                           key=lambda kv: -kv[1]))
        survived = "%d/%d" % (row["fg_survived"], row["runs"])
        if row["fg_timed_out"]:
            survived += " (%d still stalled after %.0f s)" % (row["fg_timed_out"],
                                                           kill_bench.RAMP_TIMEOUT_S)
        out.append("| %s | %s | %s | %s | %s | %s (%d%s) | %s | %s | %s | %.1f s |" % (
            row["contestant"], ", ".join(map(str, row["tool_kills"])),
            ", ".join(map(str, row["oom_kills"])), survived, orders,
            _ms(row["crit_to_back_ms"]), row["episodes"],
            "".join(", %d %s" % (row[k], text) for k, text in (
                ("not_back", "never back"), ("no_pressure", "without CRITICAL first"))
                if row.get(k)),
            _ms(row["decision_to_back_ms"]), _ms(row["below_ms"]), _ms(row["max_stall_ms"]),
            row["wall_s"] or 0))
    costs = ["%s %s KiB RSS, %s KiB of the available memory" % (
        row["contestant"], row["tool_rss_kib"], "%.0f" % row["avail_cost_kib"]
        if row.get("avail_cost_kib") is not None else "?")
        for row in rows if row.get("tool_rss_kib")]
    if costs:
        out += ["", "The tools' own cost at the start: " + "; ".join(costs) + "."]
    lows = ["%s %.0f KiB" % (row["contestant"], row["min_avail_kib"])
            for row in rows if row.get("min_avail_kib") is not None]
    if lows:
        out += ["", "Lowest available memory sampled during the ramp (median of runs): "
                + "; ".join(lows) + "."]
    strays = [p for row in rows for p in row.get("stray_kills", [])]
    out += ["", "Kills of processes outside the scenario: %s." % (strays or "none")]
    if note:
        out += ["", note]
    return out


# -- the two places ----------------------------------------------------------------------


def run_host(opts: argparse.Namespace) -> Result:
    """Each contestant ``opts.runs`` times, each run in a fresh memcg.
    Returns: {"runs": {label: [raw runs]}, "rows": [...]}.
    Raises: memcg.MemcgError, RuntimeError (a tool or app failed to start)."""
    raw: Dict[str, List[Result]] = {}
    sizes: Optional[Result] = None
    with tempfile.TemporaryDirectory(prefix="memagent-killbench-") as tmp:
        for _ in range(opts.runs):  # interleaved: a drift in the machine hits all alike
            for spec in opts.contestants:
                place = MemcgPlace(opts.memcg_mib)
                try:
                    if sizes is None:
                        sizes = kill_bench.sizes_mib(place.avail_kib()[0],
                                                     kill_bench.interpreter_kib(place))
                    run = kill_bench.run_once(place, kill_bench.contestant(spec), sizes,
                                              opts.rate_mib_s, tmp)
                finally:
                    place.group.destroy()
                raw.setdefault(run["contestant"], []).append(run)
    rows = [summarise(label, runs) for label, runs in raw.items()]
    if any(spec.startswith("earlyoom") for spec in opts.contestants):
        raise RuntimeError("earlyoom on the host: " + EARLYOOM_NA)
    rows.append({"contestant": "earlyoom", "na": EARLYOOM_NA})
    return {"runs": raw, "rows": rows, "memcg_mib": opts.memcg_mib}


def run_guest(opts: argparse.Namespace) -> Result:
    """Boot the qemu guest once per memory size and contestant.
    Returns: {"sizes": {mem: {"runs": ..., "rows": ..., "boots": ...}}}.
    Raises: RuntimeError (the rig cannot build or a boot failed)."""
    sys.path.insert(0, RIG_DIR)
    try:
        import rig
    finally:
        sys.path.pop(0)
    out: Result = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="memagent-killbench-guest-") as tmp:
        for mem in opts.mem:
            raw: Dict[str, List[Result]] = {}
            boots: Dict[str, float] = {}
            kernels: "Set[str]" = set()
            for spec in opts.contestants:
                out_dir = os.path.join(tmp, "%d-%d" % (mem, len(boots)))
                try:
                    res = rig.run(SCENARIO, args=(spec, "runs=%d" % opts.guest_runs,
                                                  "rate=%g" % opts.rate_mib_s),
                                  mem_mb=mem, timeout_s=opts.guest_timeout_s, out_dir=out_dir)
                except rig.RigError as e:
                    raise RuntimeError("the qemu rig cannot run: %s" % e) from e
                files = [v for k, v in res.files.items() if k.startswith("kill-")]
                if not res.ok or not files:
                    raise RuntimeError("guest %d MB, %s: results %s, exit %s, timed out %s:\n%s"
                                       % (mem, spec, res.results, res.exit_status,
                                          res.timed_out, rig.explain(res.console)))
                runs = json.loads(files[0])
                raw[runs[0]["contestant"]] = runs
                boots[spec] = round(res.elapsed_s, 1)
                kernels.add(res.kernel)
            out["sizes"][str(mem)] = {"runs": raw, "boots_s": boots, "kernel": sorted(kernels),
                                      "rows": [summarise(k, v) for k, v in raw.items()]}
    return out


# -- entry point -------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Return: the options (``--quick``: one run, a 64 MiB memcg; guest: 128 MB, one run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one run per contestant")
    p.add_argument("--guest", action="store_true", help="the qemu ARM guest instead of the host")
    p.add_argument("--runs", type=int, default=5, help="host runs per contestant")
    p.add_argument("--memcg-mib", type=int, default=128)
    p.add_argument("--rate-mib-s", type=float, default=10.0)
    p.add_argument("--mem", default="128",
                   help="guest RAM sizes in MB, e.g. 128,64 (at 64 MB a CPython agent can "
                   "thrash for the whole ramp timeout: use --guest-runs 1)")
    p.add_argument("--guest-runs", type=int, default=3, help="runs per guest boot")
    p.add_argument("--contestant", action="append", dest="contestants", metavar="SPEC",
                   help="repeatable: none, memagent, 'memagent:OPT OPT' (mlock, "
                   "SECTION.KEY=VALUE), earlyoom (guest only), 'earlyoom:ARG ARG'; "
                   "default: %s on the host, %s in the guest" % (
                       ", ".join(HOST_CONTESTANTS), ", ".join(GUEST_CONTESTANTS)))
    p.add_argument("--guest-timeout-s", type=float, default=240.0)
    p.add_argument("--json", help="also write the raw runs and the rows here")
    opts = p.parse_args(argv)
    opts.mem = [int(m) for m in opts.mem.split(",") if m.strip()]
    if not opts.contestants:
        opts.contestants = list(GUEST_CONTESTANTS if opts.guest else HOST_CONTESTANTS)
    if opts.quick:
        opts.runs, opts.guest_runs, opts.memcg_mib, opts.mem = 1, 1, 64, opts.mem[:1]
    return opts


def _cannot(opts: argparse.Namespace) -> Optional[str]:
    """Return: why the bench cannot run here, or None."""
    if opts.guest:
        import shutil

        return None if shutil.which("qemu-system-arm") else "qemu-system-arm is not installed"
    return memcg.available()


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench.  Returns: 0, 1 if a run failed, 2 if it cannot run here."""
    opts = parse_args(argv)
    why = _cannot(opts)
    if why is not None:
        print("bench.kill: cannot run here: %s" % why, file=sys.stderr)
        return 2
    started = time.monotonic()
    result: Result = {"options": vars(opts), "kernel": os.uname().release}
    lines = ["## memagent kill bench (%s)" % ("qemu ARM guest" if opts.guest
                                             else "host kernel %s" % os.uname().release), ""]
    try:
        if opts.guest:
            result["guest"] = run_guest(opts)
            for mem, part in result["guest"]["sizes"].items():
                lines += table("qemu ARM guest, %s MB, system-wide, %d runs per boot" % (
                    mem, opts.guest_runs), part["rows"],
                    next(iter(part["runs"].values()), [])) + [""]
                lines += ["Guest kernel: %s." % "; ".join(part["kernel"]), ""]
        else:
            result["host"] = run_host(opts)
            host = result["host"]
            lines += table("%d MiB memcg, %d runs per contestant" % (opts.memcg_mib, opts.runs),
                           host["rows"], next(iter(host["runs"].values()), [])) + [""]
    except (RuntimeError, OSError) as e:
        print("bench.kill: %s" % e, file=sys.stderr)
        return 1
    result["seconds"] = round(time.monotonic() - started, 1)
    lines.append("Bench time: %.0f s." % result["seconds"])
    print("\n".join(lines))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
