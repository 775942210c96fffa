"""Markdown tables and PASS/MISS goals for bench/sensing.py's results."""

from typing import Any, Dict, List, Optional

Result = Dict[str, Any]

LOW_WINDOW_PCT = (10.0, 30.0)  # first LOW with 10-30% of the memcg available
MAX_IDLE_WAKEUPS_PER_MIN = 1.0
MAX_RSS_RATIO = 1.3


def _lead_table(lead: Result, limit_mib: int) -> List[str]:
    out = ["### Lead time: %d MiB memcg full of page cache, anonymous ramp at %g MiB/s"
           % (limit_mib, lead["rate_mib_s"]), "",
           "Ramp ended at %.2f s after %d MiB allocated (%s)." % (
               lead["end_s"], lead["allocated_mib"],
               "OOM kill" if lead["oom_killed"] else "no OOM kill"), "",
           "| detector | first LOW at | MiB allocated | available then | MiB allocated after "
           "| before the OOM kill |", "|---|---:|---:|---:|---:|---|"]
    for row in lead["rows"]:
        if not row["fired"]:
            out.append("| %s | never | - | - | - | - |" % row["detector"])
            continue
        avail = "?" if row["avail_kib"] is None else "%.1f MiB (%.0f%%)" % (
            row["avail_kib"] / 1024, row["avail_pct"])
        out.append("| %s | %.2f s | %d | %s | %d | %s |" % (
            row["detector"], row["t_s"], row["allocated_mib"], avail,
            row["allocated_after_mib"], "yes" if row["before_oom"] else "**no**"))
    return out


def _churn_table(churn: Result) -> List[str]:
    out = ["### False positives: page-cache churn, %.0f s over a %d MiB file (%d passes)"
           % (churn["seconds"], churn["file_mib"], churn["passes"]), "",
           "Lowest available estimate during the churn: %.1f%% of the memcg." % (
               churn["min_avail_pct"]), "",
           "| detector | LOW events | wakeups/min |", "|---|---:|---:|"]
    out += ["| %s | %d | %s |" % (r["detector"], r["low_events"], r.get("wakeups_per_min", "-"))
            for r in churn["rows"]]
    return out


def _idle_table(idle: Result) -> List[str]:
    if idle.get("cache"):
        head = ["### Idle with page cache: %.0f s" % idle["seconds"], "",
                "The memcg holds only page cache from a fill; nothing runs in it.  Meanwhile "
                "its usage went %d -> %d MiB and the kernel signalled %d events (vmpressure "
                "or usage thresholds) to an in-process watcher: each one wakes an "
                "event-driven agent." % (idle["usage_mib"][0], idle["usage_mib"][1],
                                         idle["kernel_events"])]
    else:
        head = ["### Idle: calm, empty memcg, %.0f s" % idle["seconds"], "",
                "Nothing runs in the memcg; the kernel signalled %d events to an in-process "
                "watcher." % idle["kernel_events"]]
    out = head + ["",
           "| process | wakeups/min (voluntary+nonvoluntary ctxt switches) | VmRSS KiB |",
           "|---|---:|---:|"]
    out += ["| %s | %.1f | %d |" % (r["process"], r["wakeups_per_min"], r["rss_kib"])
            for r in idle["rows"]]
    if not idle["earlyoom"]:
        out += ["", "earlyoom not run (not installed, no --dryrun, or MemAvailable < 20%)."]
    return out


def markdown(result: Result) -> str:
    """Return: the results as markdown tables, then the goals."""
    opts = result["options"]
    out = ["## memagent sensing bench (kernel %s, %d MiB memcg%s)" % (
        result["kernel"], opts["memcg_mib"], ", --quick" if opts["quick"] else ""), ""]
    if "lead" in result:
        result["lead"].setdefault("rate_mib_s", opts["rate_mib_s"])
        out += _lead_table(result["lead"], opts["memcg_mib"]) + [""]
    if "churn" in result:
        out += _churn_table(result["churn"]) + [""]
    for part in ("idle", "idle-cache"):
        if part in result:
            out += _idle_table(result[part]) + [""]
    out += ["### Goals", ""] + ["- %s %s" % ("PASS" if ok else "MISS", text)
                                for ok, text in result.get("goals", [])]
    out += ["", "Durations: " + ", ".join("%s %.0f s" % kv
                                          for kv in result["durations_s"].items())]
    return "\n".join(out)


def _row(rows: List[Result], prefix: str, key: str = "detector") -> Optional[Result]:
    return next((r for r in rows if str(r[key]).startswith(prefix)), None)


def _agents(rows: List[Result], key: str = "detector") -> List[Result]:
    return [r for r in rows if str(r[key]).startswith("memagent run")]


def _lead_goal(row: Result) -> List[Any]:
    name = row["detector"]
    if not row["fired"] or row["avail_pct"] is None:
        return [False, "%s: first LOW with 10-30%% of the memcg available, before the "
                "OOM kill: no LOW" % name]
    pct, before = row["avail_pct"], row["before_oom"]
    return [LOW_WINDOW_PCT[0] <= pct <= LOW_WINDOW_PCT[1] and before,
            "%s: first LOW with 10-30%% of the memcg available, before the OOM kill: "
            "%.1f%% available, %s the kill" % (name, pct, "before" if before else "AFTER")]


def goals(result: Result) -> List[List[Any]]:
    """Return: [ok, text] for each goal whose part was run, per agent (this
    Python's, and MicroPython's when it ran)."""
    out: List[List[Any]] = []
    if "lead" in result:
        out += [_lead_goal(row) for row in _agents(result["lead"]["rows"])] or [
            [False, "first LOW before the OOM kill: no agent row"]]
    if "churn" in result:
        for row in _agents(result["churn"]["rows"]):
            out.append([row["low_events"] == 0, "%s: no LOW during page-cache churn: %d LOW "
                        "events" % (row["detector"], row["low_events"])])
    if "idle" in result:
        for agent in _agents(result["idle"]["rows"], "process"):
            w = agent["wakeups_per_min"]
            out.append([w <= MAX_IDLE_WAKEUPS_PER_MIN, "%s: <= 1 wakeup/min while calm "
                        "(event-driven source): %.1f/min" % (agent["process"], w)])
    if "idle-cache" in result:
        part = result["idle-cache"]
        events_per_min = part["kernel_events"] * 60 / part["seconds"]
        for agent in _agents(part["rows"], "process"):
            w = agent["wakeups_per_min"]
            out.append([w <= max(events_per_min, MAX_IDLE_WAKEUPS_PER_MIN),
                        "%s: no wakeups of its own while the kernel trims idle page cache: "
                        "%.1f/min for %.1f kernel events/min" % (agent["process"], w,
                                                                events_per_min)])
            bare = _row(part["rows"], "micropython" if "MicroPython" in agent["process"]
                        else "python3", "process")
            if bare:
                ratio = agent["rss_kib"] / bare["rss_kib"]
                out.append([ratio <= MAX_RSS_RATIO,
                            "%s: RSS <= 1.3x its bare interpreter with asyncio: %d / %d KiB "
                            "= %.2fx" % (agent["process"], agent["rss_kib"], bare["rss_kib"],
                                         ratio)])
    return out
