"""Record the real-pressure traces of tests/data/traces/ on this machine.

Each trace is one scenario of :mod:`memagent.demo.scenario` in a fresh 128 MiB
memcg, sensed by memagent's own reading path (MemcgDomain + the cgroup
source, a reading at least every 100 ms and at every kernel event)::

    sudo python3 -m bench.record [--out tests/data/traces] [ramp churn spike calm]

Needs root and a memory controller.  Prints one line per trace.
"""

import argparse
import os
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memagent import aio  # noqa: E402
from memagent.core.trace import level_changes, replay  # noqa: E402
from memagent.demo import scenario  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "tests", "data", "traces")
Extra = Dict[str, Any]


async def ramp(hs: scenario.Handset, opts: argparse.Namespace) -> Extra:
    """Fill the page cache, then 10 MiB/s until the OOM kill, then 1 s more.
    Returns: the header fields."""
    fill_ms = aio.ticks_ms()
    await hs.fill_page_cache()
    progress = scenario.Progress()
    start_ms = aio.ticks_ms()
    end = await hs.ramp(opts.rate_mib_s, progress)
    await aio.sleep_ms(1000)
    return {"fill_start_ms": fill_ms, "fill_mib": hs.limit_mib * 3 // 2,
            "ramp_start_ms": start_ms, "rate_mib_s": opts.rate_mib_s, "end_ms": end.end_ms,
            "alloc_mib_at_end": progress.last(), "oom_killed": end.oom_killed}


async def churn(hs: scenario.Handset, opts: argparse.Namespace) -> Extra:
    """Re-read a file 3x the memcg for ``opts.churn_s``.  Returns: the header fields."""
    progress = scenario.Progress()
    start_ms = aio.ticks_ms()
    end = await hs.churn(opts.churn_s, 3, progress)
    return {"churn_start_ms": start_ms, "file_mib": hs.limit_mib * 3,
            "passes": progress.last(), "end_ms": end.end_ms}


async def spike(hs: scenario.Handset, opts: argparse.Namespace) -> Extra:
    """Cache fill, 2 s calm, ``opts.spike_mib`` at full speed, held 2 s,
    released (the child exits), 3 s calm.  Returns: the header fields."""
    await hs.fill_page_cache()
    await aio.sleep_ms(2000)
    progress = scenario.Progress()
    start_ms = aio.ticks_ms()
    end = await hs.spike(opts.spike_mib, 2.0, progress)
    await aio.sleep_ms(3000)
    return {"spike_start_ms": start_ms, "spike_full_ms": progress.full_ms,
            "spike_mib": progress.last(), "release_ms": end.end_ms,
            "oom_killed": end.oom_killed}


async def calm(hs: scenario.Handset, opts: argparse.Namespace) -> Extra:
    """Cache fill, then nothing for ``opts.calm_s``.  Returns: the header fields."""
    await hs.fill_page_cache()
    start_ms = aio.ticks_ms()
    await hs.idle(opts.calm_s)
    return {"calm_start_ms": start_ms, "calm_s": opts.calm_s}


SCENARIOS: Dict[str, Callable[[scenario.Handset, argparse.Namespace], Awaitable[Extra]]] = {
    "ramp": ramp, "churn": churn, "spike": spike, "calm": calm}
HOW = {
    "ramp": "page cache filled by reading a file 1.5x the limit, then anonymous memory at "
            "rate_mib_s until the OOM kill, then 1 s",
    "churn": "a file 3x the limit re-read from inside the memcg for churn_s",
    "spike": "page cache fill, 2 s calm, spike_mib allocated at full speed, held 2 s, "
             "released, 3 s calm",
    "calm": "page cache fill, then idle for calm_s",
}


def record(name: str, opts: argparse.Namespace) -> str:
    """Run scenario ``name`` in a fresh memcg and write its trace.
    Returns: a one-line report.  Raises: memcg.MemcgError, OSError."""
    path = os.path.join(opts.out, "%s-%dm.jsonl" % (name, opts.memcg_mib))
    with scenario.Handset(opts.memcg_mib) as hs:
        watch = scenario.Watch(hs.path, opts.source)
        extra = aio.run(scenario.watching(watch, SCENARIOS[name](hs, opts)))
    extra.update({"scenario": name, "limit_mib": opts.memcg_mib, "how": HOW[name],
                  "recorded": time.strftime("%Y-%m-%d"), "recorder": "bench/record.py"})
    with open(path, "w") as out:
        watch.write_trace(out, extra)
    readings = watch.readings
    events = sum(1 for r in readings if r.event not in ("poll", "start"))
    changes = level_changes(replay(readings))
    return "%s: %d readings (%d woken by events) over %.1f s, source %s; replayed: %s" % (
        path, len(readings), events, (readings[-1].t_ms - readings[0].t_ms) / 1000,
        watch.source_label, changes or "no level change")


def main(argv: Optional[List[str]] = None) -> int:
    """Record the traces named on the command line (default all).  Returns: exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="any of: " + " ".join(SCENARIOS))
    p.add_argument("--out", default=OUT_DIR)
    p.add_argument("--memcg-mib", type=int, default=128)
    p.add_argument("--rate-mib-s", type=float, default=10.0)
    p.add_argument("--churn-s", type=float, default=40.0)
    p.add_argument("--calm-s", type=float, default=30.0)
    p.add_argument("--spike-mib", type=int, default=70)
    p.add_argument("--source", default="auto")
    opts = p.parse_args(argv)
    unknown = set(opts.names) - set(SCENARIOS)
    if unknown:
        p.error("unknown scenario(s): %s" % " ".join(sorted(unknown)))
    os.makedirs(opts.out, exist_ok=True)
    for name in opts.names or list(SCENARIOS):
        print(record(name, opts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
