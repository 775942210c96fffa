"""``memagent demo --apps 0``: the bare live ramp.

The allocator runs in the virtual handset's memcg while memagent senses that
memcg in this process; nobody frees anything.  The memcg, the signals and
the summary are :func:`memagent.demo.run.live`'s.
"""

import argparse
from typing import Any, Dict, List

from .. import aio
from ..core.levels import CRITICAL, level_name
from . import scenario
from .show import RANK_RISE, RANK_TICK, TICK_MS, Show


async def live_run(hs: scenario.Handset, args: argparse.Namespace,
                   show: Show) -> Dict[str, Any]:
    """The bare ramp in ``hs``: fill the page cache, then allocate at
    ``args.rate_mib_s`` while sensing in this process, printing a tick every
    TICK_MS, until CRITICAL (or the OOM kill with ``args.until_oom``).

    Returns: the summary dict.
    """
    t = aio.ticks_ms()
    await hs.fill_page_cache()
    show.say("page cache filled in %.1f s: %d MiB charged to %s"
             % ((aio.ticks_ms() - t) / 1000, hs.memcg.usage_kib() // 1024, hs.path))
    progress = scenario.Progress()
    t0 = aio.ticks_ms()
    watch = scenario.Watch(hs.path, args.source,
                           on_note=lambda n: show.note(n, t0, progress.at(n.t_ms)))
    show.say("sensing with memagent's %s source; the allocator starts now" % watch.source_label)
    show.start(t0)
    next_tick = [t0]
    stopped_ms: List[int] = []

    def stop() -> bool:
        now = aio.ticks_ms()
        if now >= next_tick[0] and watch.monitor.last is not None:
            next_tick[0] += TICK_MS
            r = watch.monitor.last
            show.line(now, "state", "%s: %d MiB allocated, available %d MiB (%d%%)" % (
                level_name(watch.monitor.level), progress.last(), r.avail_kib // 1024,
                100 * r.avail_kib // r.total_kib), RANK_TICK)
        show.flush(now)
        if args.until_oom or watch.monitor.level < CRITICAL:
            return False
        stopped_ms.append(now)  # the line goes here: before the recovery it brings
        return True

    end = await scenario.watching(watch, hs.ramp(args.rate_mib_s, progress, stop))
    end_s = (end.end_ms - t0) / 1000
    if end.oom_killed:
        end_text = "OOM-killed after %d MiB" % progress.last()
    elif end.stopped:
        end_text = "allocator stopped by the demo at CRITICAL after %d MiB" % progress.last()
    else:
        end_text = "allocator exited (status %d) after %d MiB" % (end.returncode,
                                                                  progress.last())
    show.line(stopped_ms[0] if stopped_ms else end.end_ms, "ramp", "ends: " + end_text,
              RANK_RISE)
    show.flush()
    return {"mode": "live", "memcg": hs.path, "source": watch.source_label,
            "end": end_text, "end_s": round(end_s, 2), "oom_killed": end.oom_killed,
            "allocated_mib": progress.last(), "events": show.events}
