"""The fair trim scheduler against broadcast-to-all, in pure simulation.

    python3 -m bench.fairness [--quick] [--json FILE] [--events 1000] [--seed 1]

N registered apps (10, 100, 1,000) on a 128 MB board live through the same
pressure events (deficits of 1-10% of the board) twice: once under
bench/fairsim.py (``run_event``: bounded rounds, fair rotation, measured
compliance) and once under a broadcast baseline (every app asked to drop its
whole cache on every event, as low-memory-monitor and systemd's memory
pressure broadcast do).  Prints markdown tables and PASS/MISS per goal.
See the "fairness" section of bench/README.md and docs/fairness.md.
"""

import argparse
import json
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.fairsim import run_event
from memagent.core.classes import CLASSES
from memagent.core.levels import CRITICAL, LOW
from memagent.plugins.release_caches.scheduler import FairScheduler

BOARD_KIB = 128 * 1024
EVENT_GAP_MS = 10000
CLASS_MIX = (("cached", 60), ("service", 20), ("perceptible", 8), ("visible", 7),
             ("foreground", 5))
NON_COMPLIANT_PCT = 10   # half ignore requests, half claim a big cache and free nothing
DECLARING_PCT = 50       # compliant apps that tell the agent their estimate
CHUNKY_PCT = 30          # compliant apps that free whole 1 MiB chunks
CHUNK_KIB = 1024
REGROW_PCT = (5, 50)     # of its largest cache, an app regrows 5-50% between events
GOAL_JAIN = 0.99
GOAL_MEDIAN_OVER = 1.5
MIN_ASKS = 5             # asks per equal app before Jain's index means anything


class SimApp:
    """One simulated app: a cache that regrows between events, a behaviour."""

    def __init__(self, rng: random.Random, app_id: int, cls: str, kind: str) -> None:
        self.app_id = app_id
        self.cls = cls
        self.kind = kind      # "complies", "ignores" or "lies"
        self.max_cache_kib = int(512 * 2 ** rng.uniform(0, 5))      # 512 KiB .. 16 MiB
        self.regrow_kib = max(self.max_cache_kib * rng.randrange(REGROW_PCT[0],
                                                                 REGROW_PCT[1] + 1) // 100, 1)
        self.cache_kib = self.max_cache_kib
        self.event = 0
        self.declares = self.kind == "lies" or rng.randrange(100) < DECLARING_PCT
        self.chunk_kib = CHUNK_KIB if rng.randrange(100) < CHUNKY_PCT else 1

    def regrow(self, event: int) -> int:
        """Return: the cache now, after regrowing since the last event seen."""
        self.cache_kib = min(self.max_cache_kib,
                             self.cache_kib + self.regrow_kib * (event - self.event))
        self.event = event
        return self.cache_kib

    def estimate_kib(self) -> Optional[int]:
        """Return: what the app tells the agent it can free (None: says nothing)."""
        if not self.declares:
            return None
        return self.max_cache_kib if self.kind == "lies" else self.cache_kib

    def free(self, target_kib: int) -> int:
        """Return: KiB freed when asked for ``target_kib`` (the measured drop)."""
        if self.kind != "complies":
            return 0
        freed = min(self.cache_kib, -(-target_kib // self.chunk_kib) * self.chunk_kib)
        self.cache_kib -= freed
        return freed


def _quota(n: int, mix: Tuple[Tuple[str, int], ...], rng: random.Random) -> List[str]:
    """Return: n labels in the mix's proportions (largest remainders), shuffled."""
    counts = {name: n * pct // 100 for name, pct in mix}
    by_remainder = sorted(mix, key=lambda kv: -(n * kv[1] % 100))
    for name, _ in by_remainder[:n - sum(counts.values())]:
        counts[name] += 1
    labels = [name for name, _ in mix for _ in range(counts[name])]
    rng.shuffle(labels)
    return labels


def make_apps(n: int, seed: int) -> List[SimApp]:
    """Return: n apps in exact class and behaviour proportions (same for a seed)."""
    rng = random.Random(seed * 1000003 + n)
    classes = _quota(n, CLASS_MIX, rng)
    bad = max(n * NON_COMPLIANT_PCT // 100, 1)
    kinds = _quota(n, (("ignores", bad * 50 // n), ("lies", bad * 50 // n),
                       ("complies", 100 - bad * 100 // n)), rng)
    return [SimApp(rng, 1000 + i, classes[i], kinds[i]) for i in range(n)]


def make_events(count: int, seed: int) -> List[Tuple[int, int]]:
    """Return: [(deficit_kib, level)]: 1-10% of the board; CRITICAL above 7%."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        deficit_kib = rng.randint(BOARD_KIB // 100, BOARD_KIB // 10)
        out.append((deficit_kib, CRITICAL if deficit_kib > BOARD_KIB * 7 // 100 else LOW))
    return out


def pct(values: List[float], p: float) -> float:
    """Return: the p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(int(p / 100 * len(ordered)), len(ordered) - 1)]


def jain(counts: List[int]) -> float:
    """Return: Jain's fairness index (1.0: all equal; 1/n: one takes all)."""
    squares = sum(c * c for c in counts)
    return sum(counts) ** 2 / (len(counts) * squares) if squares else 1.0


def run_fair(n: int, events: List[Tuple[int, int]], seed: int, fanout: int,
             max_rounds: int) -> Dict[str, Any]:
    apps = make_apps(n, seed)
    by_id = {a.app_id: a for a in apps}
    sched = FairScheduler(fanout=fanout)
    for app in apps:
        sched.register(app.app_id, app.cls, app.estimate_kib())
    counts = {a.app_id: 0 for a in apps}
    dirty: Dict[int, SimApp] = {}
    spent_ns = [0]
    now = [0]

    def respond(app_id: int, target_kib: int) -> int:
        t0 = time.perf_counter_ns()
        app = by_id[app_id]
        counts[app_id] += 1
        app.regrow(now[0])
        freed = app.free(target_kib)
        dirty[app_id] = app
        spent_ns[0] += time.perf_counter_ns() - t0
        return freed

    woken, over, cost_us, rounds, covered = [], [], [], [], 0
    for i, (deficit_kib, level) in enumerate(events):
        for app in list(dirty.values()):   # apps report their regrown caches
            app.regrow(i)
            if app.declares and app.kind == "complies":
                sched.set_estimate(app.app_id, app.estimate_kib())
            if app.cache_kib >= app.max_cache_kib:
                del dirty[app.app_id]
        now[0] = i
        spent_ns[0] = 0
        t0 = time.perf_counter_ns()
        stats = run_event(sched, deficit_kib, level, i * EVENT_GAP_MS, respond, max_rounds)
        cost_us.append((time.perf_counter_ns() - t0 - spent_ns[0]) / 1000)
        woken.append(stats.woken)
        over.append(stats.over_freeing())
        rounds.append(stats.rounds)
        covered += stats.covered()
    equal = [counts[a.app_id] for a in apps if a.kind == "complies" and a.cls == "cached"]
    bad = [counts[a.app_id] for a in apps if a.kind != "complies" and a.cls == "cached"]
    return {"n": n, "woken": woken, "over": over, "cost_us": cost_us, "rounds": rounds,
            "covered": covered, "equal_counts": equal, "bad_counts": bad,
            "never_asked": sum(1 for c in equal if c == 0)}


def run_broadcast(n: int, events: List[Tuple[int, int]], seed: int) -> Dict[str, Any]:
    apps = make_apps(n, seed)
    over, covered = [], 0
    for i, (deficit_kib, _) in enumerate(events):
        freed_kib = 0
        for app in apps:
            freed_kib += app.free(app.regrow(i))
        over.append(freed_kib / deficit_kib)
        covered += freed_kib >= deficit_kib
    return {"n": n, "woken": [n] * len(events), "over": over, "covered": covered}


def summarise(fair: Dict[str, Any], broadcast: Dict[str, Any], events: int) -> Dict[str, Any]:
    f_equal = fair["equal_counts"]
    mean_equal = sum(f_equal) / len(f_equal) if f_equal else 0.0
    return {
        "n": fair["n"], "events": events, "equal_apps": len(f_equal),
        "jain": round(jain(f_equal), 4) if f_equal else None,
        "asks_per_equal_app": round(mean_equal, 1),
        "asks_per_non_compliant_app": round(sum(fair["bad_counts"]) / len(fair["bad_counts"]), 1)
        if fair["bad_counts"] else None,
        "never_asked": fair["never_asked"],
        "woken_mean": round(sum(fair["woken"]) / events, 2), "woken_max": max(fair["woken"]),
        "rounds_mean": round(sum(fair["rounds"]) / events, 2),
        "covered_pct": round(100 * fair["covered"] / events, 1),
        "over_median": round(pct(fair["over"], 50), 3), "over_p90": round(pct(fair["over"], 90), 3),
        "cost_us_median": round(pct(fair["cost_us"], 50), 1),
        "cost_us_p99": round(pct(fair["cost_us"], 99), 1),
        "broadcast_woken_mean": float(broadcast["n"]),
        "broadcast_covered_pct": round(100 * broadcast["covered"] / events, 1),
        "broadcast_over_median": round(pct(broadcast["over"], 50), 3),
        "broadcast_over_p90": round(pct(broadcast["over"], 90), 3),
    }


def goals(rows: List[Dict[str, Any]], bound: int) -> List[Tuple[Optional[bool], str]]:
    """Return: [(True: PASS, False: MISS, None: SKIP, text)].  Fairness is
    judged over whole rotations only: >= MIN_ASKS asks per equal app."""
    out: List[Tuple[Optional[bool], str]] = []
    for r in rows:
        n = r["n"]
        text = "N=%d: Jain's index of requests over %d equal apps %s >= %.2f, none never " \
            "asked (%d)" % (n, r["equal_apps"], r["jain"], GOAL_JAIN, r["never_asked"])
        if r["asks_per_equal_app"] < MIN_ASKS:
            out.append((None, text + ": only %.1f asks per app, run more events"
                        % r["asks_per_equal_app"]))
        else:
            out.append((r["jain"] is not None and r["jain"] >= GOAL_JAIN
                        and r["never_asked"] == 0, text))
        out.append((r["woken_max"] <= bound,
                    "N=%d: apps woken per event mean %.2f, max %d <= fanout x rounds = %d "
                    "(broadcast: %d)" % (n, r["woken_mean"], r["woken_max"], bound, n)))
        out.append((r["over_median"] <= GOAL_MEDIAN_OVER,
                    "N=%d: median over-freeing %.3f <= %.1f (broadcast: %.3f)"
                    % (n, r["over_median"], GOAL_MEDIAN_OVER, r["broadcast_over_median"])))
    return out


def markdown(result: Dict[str, Any]) -> str:
    opts = result["options"]
    rows = result["rows"]
    out = ["## memagent fair trim scheduler bench (%d events, fanout %d, <= %d rounds, "
           "%d MB board%s)" % (opts["events"], opts["fanout"], opts["max_rounds"],
                               BOARD_KIB // 1024, ", --quick" if opts["quick"] else ""), "",
           "Apps: %s; %d%% non-compliant (half ignore, half claim and free nothing); caches "
           "512 KiB-16 MiB regrowing %d-%d%% per event; %d%% of the compliant apps give an "
           "estimate, %d%% free whole %d KiB chunks." % (
               ", ".join("%s %d%%" % kv for kv in CLASS_MIX), NON_COMPLIANT_PCT,
               REGROW_PCT[0], REGROW_PCT[1], DECLARING_PCT, CHUNKY_PCT, CHUNK_KIB), "",
           "### Fairness and cost (the release_caches scheduler)", "",
           "| N | equal apps | Jain | asks/equal app | asks/non-compliant app | never asked "
           "| covered | rounds/event | plan+record us median | p99 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append("| %d | %d | %s | %.1f | %s | %d | %.1f%% | %.2f | %.1f | %.1f |" % (
            r["n"], r["equal_apps"], r["jain"], r["asks_per_equal_app"],
            r["asks_per_non_compliant_app"], r["never_asked"], r["covered_pct"],
            r["rounds_mean"], r["cost_us_median"], r["cost_us_p99"]))
    out += ["", "### Wakeups and over-freeing: fair scheduler vs broadcast-to-all", "",
            "| N | woken/event fair (mean, max) | broadcast | freed/deficit fair (median, p90) "
            "| broadcast | covered fair | broadcast |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append("| %d | %.2f, %d | %d | %.3f, %.3f | %.3f, %.3f | %.1f%% | %.1f%% |" % (
            r["n"], r["woken_mean"], r["woken_max"], r["n"], r["over_median"], r["over_p90"],
            r["broadcast_over_median"], r["broadcast_over_p90"], r["covered_pct"],
            r["broadcast_covered_pct"]))
    out += ["", "### Goals", ""] + ["- %s %s" % (
        "SKIP" if ok is None else "PASS" if ok else "MISS", text) for ok, text in result["goals"]]
    out += ["", "Duration: %.1f s" % result["duration_s"]]
    return "\n".join(out)


def main(argv: Optional[List[str]] = None,
         emit: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.fairness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 events instead of 1000")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--sizes", default="10,100,1000", help="app counts, comma-separated")
    parser.add_argument("--fanout", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    count = args.events or (200 if args.quick else 1000)
    started = time.monotonic()
    events = make_events(count, args.seed)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        fair = run_fair(n, events, args.seed, args.fanout, args.max_rounds)
        rows.append(summarise(fair, run_broadcast(n, events, args.seed), count))
    result = {"options": {"events": count, "fanout": args.fanout, "max_rounds": args.max_rounds,
                          "seed": args.seed, "quick": args.quick, "classes": list(CLASSES)},
              "rows": rows, "goals": goals(rows, args.fanout * args.max_rounds),
              "duration_s": round(time.monotonic() - started, 2)}
    emit(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
