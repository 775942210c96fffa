"""The sensing benchmark: memagent against the raw kernel signals and
earlyoom's rule, side by side on the same real pressure in one memcg.

    sudo python3 -m bench.sensing [--quick] [--json FILE]

Three parts, each in a fresh "virtual handset" (:mod:`memagent.demo.scenario`):

1. lead time: page-cache fill, then 10 MiB/s of anonymous memory until the
   OOM kill; every detector is attached at once, after the fill;
2. false positives: page-cache churn over a file 3x the memcg;
3. idle: a calm memcg; wakeups (context switches) and RSS of the memagent
   agent, Debian's earlyoom (``--dryrun``, thresholds that cannot trigger)
   and a bare ``python3 -c "import asyncio"`` interpreter.

Prints markdown tables and PASS/MISS lines for the goals.  Needs root and a
cgroup v1 memory controller (the raw detectors are v1 eventfds).
"""

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from bench.detectors import (  # noqa: E402
    TRIXIE_MICROPYTHON,
    AgentProcess,
    EarlyoomRule,
    RawEvents,
    Sampled,
)
from memagent import aio  # noqa: E402
from memagent.demo import memcg, scenario  # noqa: E402

Result = Dict[str, Any]


def raw_detectors(path: str, limit_mib: int) -> List[RawEvents]:
    """Return: vmpressure "low" and usage thresholds at 80% and 90%, registered."""
    limit = limit_mib << 20
    return [RawEvents("raw vmpressure low", path, "memory.pressure_level", "low"),
            RawEvents("raw usage >= 80%", path, "memory.usage_in_bytes", str(limit * 80 // 100)),
            RawEvents("raw usage >= 90%", path, "memory.usage_in_bytes", str(limit * 90 // 100))]


async def _attached(hs: scenario.Handset, raws: List[RawEvents], rule: EarlyoomRule,
                    watch: scenario.Watch, body: Any) -> Any:
    """Run coroutine ``body`` with every in-process detector running."""
    tasks = [aio.create_task(d.run()) for d in raws] + [aio.create_task(rule.run())]
    try:
        return await scenario.watching(watch, body)
    finally:
        for task in tasks:
            task.cancel()
        await aio.gather(*tasks, return_exceptions=True)
        for raw in raws:
            raw.close()


def _at(watch: scenario.Watch, t_ms: int) -> Optional[int]:
    """Return: the available KiB of the last reading at or before ``t_ms``."""
    avail = None
    for r in watch.readings:
        if r.t_ms > t_ms:
            break
        avail = r.avail_kib
    return avail


def _row(label: str, t_ms: Optional[int], avail_kib: Optional[int], start_ms: int,
         progress: scenario.Progress, kill_ms: int, limit_mib: int) -> Result:
    if t_ms is None:
        return {"detector": label, "fired": False}
    mib = progress.at(t_ms)
    return {"detector": label, "fired": True, "t_s": round((t_ms - start_ms) / 1000, 2),
            "allocated_mib": mib, "avail_kib": avail_kib,
            "avail_pct": None if avail_kib is None else round(100 * avail_kib / (limit_mib << 10),
                                                              1),
            "allocated_after_mib": progress.last() - mib,
            "before_oom": t_ms < kill_ms}


def start_agents(opts: argparse.Namespace, hs: scenario.Handset) -> List[AgentProcess]:
    """Return: the agent on this Python and, with ``--micropython``, on
    MicroPython, both started on ``hs``.  Raises: RuntimeError."""
    agents = [AgentProcess(hs.path, hs.scratch)]
    if opts.micropython:
        agents.append(AgentProcess(hs.path, hs.scratch, micropython=opts.micropython))
    started: List[AgentProcess] = []
    try:
        for agent in agents:
            agent.start()
            started.append(agent)
    except RuntimeError:
        for agent in started:
            agent.stop()
        raise
    return agents


def stop_agents(agents: List[AgentProcess]) -> None:
    """SIGTERM every agent."""
    for agent in agents:
        agent.stop()


def lead_time(opts: argparse.Namespace) -> Result:
    """Part 1.  Returns: per-detector first event on the ramp, and the ramp's end."""
    with scenario.Handset(opts.memcg_mib) as hs:
        aio.run(hs.fill_page_cache())
        agents = start_agents(opts, hs)
        raws = raw_detectors(hs.path, opts.memcg_mib)
        oom = RawEvents("oom", hs.path, "memory.oom_control", "")
        rule = EarlyoomRule(hs.path)
        watch = scenario.Watch(hs.path)
        progress = scenario.Progress()
        start_ms = aio.ticks_ms()

        async def body() -> scenario.ChildEnd:
            end = await hs.ramp(opts.rate_mib_s, progress)
            await aio.sleep_ms(1000)  # let everyone report the kill
            return end

        try:
            end = aio.run(_attached(hs, raws + [oom], rule, watch, body()))
        finally:
            stop_agents(agents)
        # The memcg's OOM eventfd fires as it goes under OOM, before the kill.
        kill_ms = min(oom.first_ms(start_ms) or end.end_ms, end.end_ms)
        firsts: List[Tuple[str, Optional[int], Optional[int]]] = []
        for agent in agents:
            note = next((n for n in agent.notes() if n["level"] != "NORMAL"), None)
            firsts.append((agent.label, note["t_ms"] if note else None,
                           note["avail_kib"] if note else None))
        low = watch.first_at_least(1)
        firsts.append(("memagent in-process (%s + 100 ms)" % watch.source_label,
                       low.t_ms if low else None, low.avail_kib if low else None))
        for raw in raws:
            t = raw.first_ms(start_ms)
            firsts.append((raw.label, t, _at(watch, t) if t is not None else None))
        onset = rule.onsets[0] if rule.onsets else (None, None)
        firsts.append((rule.label, onset[0], onset[1]))
        rows = [_row(label, t, avail, start_ms, progress, kill_ms, opts.memcg_mib)
                for label, t, avail in firsts]
    return {"rows": rows, "oom_killed": end.oom_killed, "rate_mib_s": opts.rate_mib_s,
            "end_s": (end.end_ms - start_ms) / 1000, "oom_s": (kill_ms - start_ms) / 1000,
            "allocated_mib": progress.last(),
            "agent_log_tail": agents[-1].log()[-300:].decode(errors="replace")}


def false_positives(opts: argparse.Namespace) -> Result:
    """Part 2.  Returns: LOW events per detector during the churn."""
    with scenario.Handset(opts.memcg_mib) as hs:
        hs.file(opts.memcg_mib * 3)  # written before anyone watches
        agents = start_agents(opts, hs)
        ctxt0 = [agent.status()["ctxt"] for agent in agents]
        raws = raw_detectors(hs.path, opts.memcg_mib)
        rule = EarlyoomRule(hs.path)
        watch = scenario.Watch(hs.path)
        progress = scenario.Progress()
        start_ms = aio.ticks_ms()
        try:
            end = aio.run(_attached(hs, raws, rule, watch,
                                    hs.churn(opts.churn_s, 3, progress)))
            ctxt = [agent.status()["ctxt"] - c0 for agent, c0 in zip(agents, ctxt0)]
        finally:
            stop_agents(agents)
        minutes = (end.end_ms - start_ms) / 60000
        rows = [{"detector": agent.label, "low_events": sum(
            1 for n in agent.notes() if n["prev_level"] == "NORMAL" and n["level"] != "NORMAL"),
            "wakeups_per_min": round(c / minutes, 1)} for agent, c in zip(agents, ctxt)]
        rows += [{"detector": "memagent in-process (%s + 100 ms)" % watch.source_label,
                 "low_events": sum(1 for n in watch.notes if n.prev_level == 0 and n.level)}]
        rows += [{"detector": raw.label, "low_events": raw.count(start_ms, end.end_ms)}
                 for raw in raws]
        rows.append({"detector": rule.label, "low_events": len(rule.onsets)})
        min_avail = min(r.avail_kib for r in watch.readings)
    return {"rows": rows, "seconds": round(minutes * 60, 1), "passes": progress.last(),
            "file_mib": opts.memcg_mib * 3, "agent_wakeups_per_min": round(ctxt[0] / minutes, 1),
            "min_avail_pct": round(100 * min_avail / (opts.memcg_mib << 10), 1)}


def _earlyoom_argv() -> Optional[List[str]]:
    """Return: earlyoom's argv for a run that cannot kill anything, or None
    (not installed, no --dryrun, or this machine is not far from 1% available)."""
    exe = shutil.which("earlyoom")
    if exe is None:
        return None
    import subprocess

    helped = subprocess.run([exe, "-h"], capture_output=True, text=True)
    if "--dryrun" not in helped.stdout + helped.stderr:
        return None
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    total, avail = (int(info[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
    if avail * 100 < total * 20:
        return None  # MemAvailable under 20%: do not even start it
    # -m 1: act only under 1% available; --dryrun: never kill; -r 3600: Debian's default.
    return [exe, "-m", "1", "-s", "1", "--dryrun", "-r", "3600"]


def idle(opts: argparse.Namespace) -> Result:
    """Part 3: an empty memcg, truly calm.  Returns: wakeups per minute and
    RSS of each process."""
    return _idle(opts, fill=False)


def idle_cache(opts: argparse.Namespace) -> Result:
    """Part 4: a memcg holding page cache, nothing running in it; the kernel
    may still trim that cache and signal.  Returns: as :func:`idle`."""
    return _idle(opts, fill=True)


def _idle(opts: argparse.Namespace, fill: bool) -> Result:
    rows = []
    with scenario.Handset(opts.memcg_mib) as hs:
        if fill:
            aio.run(hs.fill_page_cache())
        agents = start_agents(opts, hs)
        others = [Sampled("python3 -c 'import asyncio, time; time.sleep()'",
                          [sys.executable, "-c", "import asyncio, time; time.sleep(%d)"
                           % (opts.idle_s + 30)])]
        if opts.micropython:
            others.append(Sampled("micropython -c 'import asyncio, ffi, socket'",
                                  [opts.micropython, "-c", "import asyncio, ffi, socket, time; "
                                   "time.sleep(%d)" % (opts.idle_s + 30)]))
        eo = _earlyoom_argv()
        if eo is not None:
            others.append(Sampled("earlyoom " + " ".join(eo[1:]), eo))
        watch = scenario.Watch(hs.path)  # to see what the kernel reports meanwhile
        try:
            time.sleep(2.0)  # start-up is not idling
            before = [a.status() for a in agents] + [o.status() for o in others]
            aio.run(scenario.watching(watch, hs.idle(opts.idle_s)))
            after = [a.status() for a in agents] + [o.status() for o in others]
        finally:
            stop_agents(agents)
            errs = [o.stop() for o in others]
        labels = [a.label for a in agents] + [o.label for o in others]
        for label, b, a in zip(labels, before, after):
            rows.append({"process": label, "wakeups_per_min":
                         round((a["ctxt"] - b["ctxt"]) * 60 / opts.idle_s, 1),
                         "rss_kib": a["rss_kib"]})
    used = [(r.total_kib - (r.free_kib or 0)) // 1024 for r in watch.readings]
    return {"rows": rows, "seconds": opts.idle_s, "earlyoom": eo is not None, "cache": fill,
            "kernel_events": sum(1 for r in watch.readings if r.event not in ("poll", "start")),
            "usage_mib": [used[0], used[-1]], "stderr": [e for e in errs if e]}


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Return: the options (``--quick`` shortens churn and idle to 15 s)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="15 s of churn and of idle (CI smoke)")
    p.add_argument("--memcg-mib", type=int, default=128)
    p.add_argument("--rate-mib-s", type=float, default=10.0)
    p.add_argument("--churn-s", type=float, default=60.0)
    p.add_argument("--idle-s", type=float, default=60.0)
    p.add_argument("--parts", default="lead,churn,idle,idle-cache",
                   help="comma-separated subset")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--micropython", default=TRIXIE_MICROPYTHON if os.access(
        TRIXIE_MICROPYTHON, os.X_OK) else None, help="also run the agent on this MicroPython "
        "(with ffi), side by side (default: trixie's in .ci/cache, if installed)")
    p.add_argument("--no-micropython", dest="micropython", action="store_const", const=None)
    opts = p.parse_args(argv)
    if opts.quick:
        opts.churn_s = min(opts.churn_s, 15.0)
        opts.idle_s = min(opts.idle_s, 15.0)
    return opts


def run(opts: argparse.Namespace) -> Result:
    """Run the parts asked for.  Returns: the results, with each part's duration.
    Raises: memcg.MemcgError, OSError, RuntimeError (agent did not start)."""
    result: Result = {"options": vars(opts), "kernel": os.uname().release, "durations_s": {}}
    for name, part in (("lead", lead_time), ("churn", false_positives), ("idle", idle),
                       ("idle-cache", idle_cache)):
        if name in opts.parts.split(","):
            t = time.monotonic()
            result[name] = part(opts)
            result["durations_s"][name] = round(time.monotonic() - t, 1)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench.  Returns: 0, or 2 if it cannot run here."""
    opts = parse_args(argv)
    why = memcg.available()
    if why is None and memcg.find_hierarchy()[0] != "v1":
        why = "the raw detectors need cgroup v1 (cgroup.event_control); this is v2"
    if why is not None:
        print("bench/sensing: cannot run: %s" % why, file=sys.stderr)
        return 2
    result = run(opts)
    result["goals"] = report.goals(result)
    print(report.markdown(result))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
