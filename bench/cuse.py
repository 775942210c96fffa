"""The /dev/mem_notify bench: ``memagent cuse`` in the qemu ARM guest
(board/qemu-arm/scenarios/cuse_bench.py).

    sudo python3 -m bench.cuse [--interpreter micropython] [--runs N] [--json FILE]

Three parts, in one boot per run (``--runs`` boots, their samples pooled):

- **Wake latency** per wake: the client's poll-return CLOCK_MONOTONIC ms
  minus the ``t_ms`` of the line it read (the monitor's decision time), with
  1, 10, 100 and 1,000 waiters, at N = 1 (``max_per_event = 1``) and
  wake-all (``max_per_event = 65536``, every file at LOW); the memory held
  at LOW with a pressure event every 250 ms (``renotify_ms``), no rate limit.
- **Raw PSI beside the device**: on the same 10 MB/s ramp, when a PSI
  trigger armed by a client ("some 150000 1000000", POLLPRI) and the device
  each first woke, and the MemAvailable then.
- **Memory**: /proc/PID/smaps_rollup Rss and Pss of the same interpreter's
  agent with no plugin, and of the provider with 0 and 1,000 open files.

Prints markdown tables; exit status 1 if a boot failed, 2 if it cannot run
here (no qemu-system-arm).  Every process signalled lives in the guest.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from bench.board import facts_of, load_rig

SCENARIO = "cuse_bench.py"
COUNTS = (1, 10, 100, 1000)
MODES = (("n1", "N=1"), ("all", "wake-all"))
INTERPRETERS = {"python3": "CPython", "micropython": "MicroPython"}
Facts = Dict[str, str]
Histogram = Dict[int, int]


def parse_histogram(text: Optional[str]) -> Histogram:
    """Return: {ms: count} from the scenario's ``ms x count`` pairs."""
    out: Histogram = {}
    for pair in (text or "").split(","):
        if "x" not in pair:
            continue
        ms, _, count = pair.rpartition("x")
        out[int(ms)] = out.get(int(ms), 0) + int(count)
    return out


def merge(histograms: Sequence[Histogram]) -> Histogram:
    out: Histogram = {}
    for h in histograms:
        for ms, count in h.items():
            out[ms] = out.get(ms, 0) + count
    return out


def quantile(h: Histogram, q: float) -> Optional[int]:
    """Return: the nearest-rank ``q`` quantile of a histogram (None if empty)."""
    n = sum(h.values())
    if not n:
        return None
    rank = max(1, -(-int(q * n * 1000) // 1000))  # ceil(q * n), exact for q = 0.5, 0.99
    seen = 0
    for ms in sorted(h):
        seen += h[ms]
        if seen >= rank:
            return ms
    return max(h)


def _sum(runs: Sequence[Facts], key: str) -> int:
    return sum(int(f.get(key) or 0) for f in runs if (f.get(key) or "0").lstrip("-").isdigit())


def latency_rows(runs: Sequence[Facts]) -> List[Dict[str, Any]]:
    """Return: one row per mode and waiter count found in the runs' FACTs."""
    rows = []
    for mode, label in MODES:
        for count in COUNTS:
            tag = "%s_%d" % (mode, count)
            if not any(("lat_" + tag) in f for f in runs):
                continue
            h = merge([parse_histogram(f.get("lat_" + tag)) for f in runs])
            per_event: Dict[str, int] = {}
            for f in runs:
                for k, v in json.loads(f.get("woken_per_event_" + tag) or "{}").items():
                    per_event[k] = per_event.get(k, 0) + v
            rows.append({"mode": label, "waiters": count, "events": _sum(runs, "events_" + tag),
                         "wakes": sum(h.values()), "median": quantile(h, 0.5),
                         "p99": quantile(h, 0.99), "max": max(h) if h else None,
                         "negative": sum(c for ms, c in h.items() if ms < 0),
                         "per_event": per_event})
    return rows


def _ms(v: Optional[int]) -> str:
    return "-" if v is None else "%d ms" % v


def _per_event(d: Dict[str, int]) -> str:
    """Return: "LOW 1 x60" style, most frequent first (the status caps at 100)."""
    items = sorted(d.items(), key=lambda kv: -kv[1])
    return ", ".join("%s x%d" % kv for kv in items[:3]) + (" ..." if len(items) > 3 else "") \
        if items else "-"


def latency_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    out = ["| mode | waiters | events | woken per event (status) | wakes (n) | median | p99 "
           "| max | line newer than the poll |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append("| %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            r["mode"], "{:,}".format(r["waiters"]), r["events"], _per_event(r["per_event"]),
            "{:,}".format(r["wakes"]), _ms(r["median"]), _ms(r["p99"]), _ms(r["max"]),
            "{:,}".format(r["negative"])))
    return out


def _pair(value: Optional[str]) -> Optional[List[int]]:
    """"Rss/Pss" -> [rss, pss], None if missing."""
    if not value or "/" not in value:
        return None
    try:
        return [int(x) for x in value.split("/")]
    except ValueError:
        return None


RSS_ROWS = (("rss_agent_nosocket", "agent, no plugin, no control socket (`run --no-socket`)"),
            ("rss_agent_socket", "agent, no plugin, control socket (`run --socket`)"),
            ("rss_provider_0", "provider (`cuse --socket`), 0 open files"),
            ("rss_provider_1000", "provider, 1,000 open files"),
            ("rss_provider_after", "provider, after the 1,000 closed"))


def rss_table(runs: Sequence[Facts]) -> List[str]:
    """Return: Rss/Pss per process (the median over the runs), and each
    against the agent with no plugin and the same socket."""
    out = ["| process | Rss | Pss | Rss vs the agent with its socket |", "|---|---:|---:|---:|"]

    def median(key: str) -> Optional[List[int]]:
        vals = [p for p in (_pair(f.get(key)) for f in runs) if p]
        if not vals:
            return None
        vals.sort()
        return vals[(len(vals) - 1) // 2]

    base = median("rss_agent_socket")
    for key, label in RSS_ROWS:
        v = median(key)
        delta = "%+d KiB" % (v[0] - base[0]) if v and base and key.startswith("rss_provider") \
            else ""
        out.append("| %s | %s | %s | %s |" % (
            label, "{:,} KiB".format(v[0]) if v else "-", "{:,} KiB".format(v[1]) if v else "-",
            delta))
    return out


def _fired(text: str) -> str:
    if text == "none":
        return "did not fire"
    ms, _, kib = text.partition(":")
    return "{:,} KiB at +{:,} ms".format(int(kib), int(ms))


def psi_table(runs: Sequence[Facts]) -> List[str]:
    """Return: per ramp, MemAvailable (and ms after the ramp began) when the
    raw PSI trigger and the device first fired."""
    out = ["| run | MemAvailable at the start | ramp down to | raw PSI trigger first fired "
           "| device first woke a client | PSI fires in the ramp |",
           "|---|---:|---:|---:|---:|---:|"]
    n = 0
    for boot, f in enumerate(runs, 1):
        for key in sorted(k for k in f if k.startswith("psi_run") and k[7:].isdigit()):
            fields = dict(kv.split("=", 1) for kv in f[key].split())
            n += 1
            out.append("| %d.%s | {:,} KiB | {:,} KiB | %s | %s | %s |".format(
                int(fields.get("start_kib", 0)), int(fields.get("ramp_to_kib", 0))) % (
                boot, key[7:], _fired(fields.get("psi", "none")),
                _fired(fields.get("device", "none")), fields.get("fires", "-")))
    return out if n else []


def run(interpreter: str, mem: int, timeout_s: float, args: List[str]) -> Dict[str, Any]:
    """Boot the guest once with the scenario.  Returns: its FACTs, whether
    it completed, the kernel, the console's account if it failed.
    Raises: RuntimeError if the rig cannot run."""
    rig = load_rig()
    with tempfile.TemporaryDirectory(prefix="memagent-cuse-") as tmp:
        try:
            res = rig.run(str(rig.HERE / "scenarios" / SCENARIO), args, mem_mb=mem,
                          timeout_s=timeout_s, out_dir=tmp, interpreter=interpreter)
        except rig.RigError as e:
            raise RuntimeError("the qemu rig cannot run: %s" % e) from e
        log = res.files.get("provider.log", b"").decode(errors="replace")
    return {"facts": facts_of(res.console), "ok": res.ok, "kernel": res.kernel,
            "elapsed_s": round(res.elapsed_s), "provider_log": log,
            "tail": "" if res.ok else rig.explain(res.console)}


def report(interpreter: str, mem: int, results: Sequence[Dict[str, Any]]) -> List[str]:
    """Return: the markdown report of the boots."""
    runs = [r["facts"] for r in results]
    lines = ["## /dev/mem_notify (memagent cuse, %s), %d MB guest, %d boot(s)"
             % (INTERPRETERS.get(interpreter, interpreter), mem, len(runs)), "",
             "### Wake latency: poll() return - the line's t_ms", ""]
    lines += latency_table(latency_rows(runs))
    psi = psi_table(runs)
    if psi:
        th = runs[0].get("psi_thresholds", "-")
        lines += ["", "### Raw PSI trigger (some 150000 1000000) vs the device, same ramp "
                  "(10 MB/s; provider's thresholds %s)" % th, ""] + psi
    if any("rss_provider_0" in f for f in runs):
        lines += ["", "### Memory (smaps_rollup)", ""] + rss_table(runs)
        lines += ["", "Plugins of the agent measured as \"no plugin\" (its status): %s." % (
            "; ".join(sorted(set(f.get("rss_agent_plugins", "-") for f in runs))))]
    errors = [k for f in runs for k, v in f.items()
              if k.startswith(("client_errors_", "oom_kills_", "psi_run")) and
              k.endswith(("errors", "kills")) and v not in ("0", "None")]
    if errors:
        lines += ["", "Note: %s." % ", ".join(sorted(set(errors)))]
    lines += ["", "Guest kernel: %s; guest time per boot: %s s." % (
        results[0]["kernel"], ", ".join(f.get("bench_s", "-") for f in runs))]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench.  Returns: 0, 1 if a boot failed, 2 if it cannot run here."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--interpreter", choices=sorted(INTERPRETERS), default="python3",
                   help="the provider's interpreter (default python3)")
    p.add_argument("--runs", type=int, default=1, help="boots, samples pooled (default 1)")
    p.add_argument("--mem", type=int, default=128)
    p.add_argument("--parts", default="latency,psi,rss")
    p.add_argument("--counts", default=",".join(str(c) for c in COUNTS))
    p.add_argument("--events", type=int, default=60, help="pressure events per N=1 case")
    p.add_argument("--all-wakes", type=int, default=2000, help="wakes aimed at per wake-all "
                   "case (10 events at least)")
    p.add_argument("--ramps", type=int, default=2, help="PSI-vs-device ramps per boot")
    p.add_argument("--timeout-s", type=float, default=1200.0)
    p.add_argument("--json", help="also write the FACTs and the provider's logs here")
    opts = p.parse_args(argv)
    if shutil.which("qemu-system-arm") is None:
        print("bench.cuse: cannot run here: qemu-system-arm is not installed", file=sys.stderr)
        return 2
    args = ["parts=" + opts.parts, "counts=" + opts.counts, "events=%d" % opts.events,
            "all_wakes=%d" % opts.all_wakes, "ramps=%d" % opts.ramps]
    results = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        for _ in range(opts.runs):
            results.append(run(opts.interpreter, opts.mem, opts.timeout_s, args))
    except RuntimeError as e:
        print("bench.cuse: %s" % e, file=sys.stderr)
        return 1
    lines = report(opts.interpreter, opts.mem, results)
    lines += ["", "Run %s: `python3 -m bench.cuse %s`." % (
        started, " ".join(sys.argv[1:] if argv is None else argv))]
    print("\n".join(lines))
    for r in results:
        if not r["ok"]:
            print("\nA boot failed:\n%s" % r["tail"], file=sys.stderr)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
