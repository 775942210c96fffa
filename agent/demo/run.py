"""``memagent demo``: the "virtual handset", safe on any Linux machine.

With root and a memory controller it makes a 128 MiB memcg (no swap), fills
it with page cache, then runs Daniel Spang's 2008 alloc-test inside it (10
MB/s of anonymous memory) while memagent senses the memcg in this process,
and prints the timeline as it goes: when LOW and CRITICAL came, the MiB
allocated, the headroom left and the predicted time left.  The allocator is
stopped at CRITICAL (``--until-oom``: left to the OOM killer).  The memcg is
removed at the end, also on Ctrl-C or SIGTERM; the demo only ever signals
processes it started inside its own memcg.

Without privileges or a memory controller (or with ``--replay``) it replays
a trace recorded that way (``memagent/demo/ramp-128m.jsonl``) through the
same monitor and says why it is replaying.

Measured here (cgroup v1, kernel 6.18): the live run takes ~12 s (~13 s with
``--until-oom``); LOW came after 95-96 MiB with 19-20% (25 MiB) available,
2.8 s before the OOM kill at 123 MiB; CRITICAL after 108-109 MiB (9%).
"""

import argparse
import json
import os
import signal
import sys
from typing import Any, Dict, Optional

from .. import aio
from ..core import trace
from . import apps, memcg, scenario
from . import coop as coop_mod
from . import live as live_mode
from .show import (
    KILLS_DRY_RUN,
    KILLS_NONE,
    KILLS_REPLAY,
    DemoError,
    Show,
    apps_summary,
    header,
    summary_lines,
)

BUNDLED_TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ramp-128m.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the ``demo`` subcommand)."""
    parser.add_argument("--replay", action="store_true",
                        help="replay the bundled recording even if a live run is possible")
    parser.add_argument("--trace", help="replay this trace instead of the bundled one")
    parser.add_argument("--until-oom", action="store_true",
                        help="do not stop the allocator at CRITICAL: let the OOM killer end it")
    parser.add_argument("--memcg-mib", type=int, default=128,
                        help="size of the virtual handset (default 128)")
    parser.add_argument("--rate-mib-s", type=float, default=10.0,
                        help="allocation rate in MiB/s (default 10, as in 2008)")
    parser.add_argument("--source", default="auto",
                        help="memagent source to sense with (default auto)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary instead of the timeline")
    parser.add_argument("--apps", type=int, default=3,
                        help="cooperative cache apps in the handset, with the agent as a real "
                             "process freeing their caches (default 3; 0: the agent senses "
                             "in-process and nobody frees anything)")
    parser.add_argument("--cache-mib", type=int, default=16,
                        help="cache each app holds and can give back, MiB (default 16)")


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: the same cleanup."""
    raise KeyboardInterrupt("SIGTERM")


def live(args: argparse.Namespace, show: Show) -> Dict[str, Any]:
    """Run the virtual handset for real.

    Returns: the summary dict.  Raises: memcg.MemcgError if the memcg
    cannot be made; KeyboardInterrupt on Ctrl-C/SIGTERM (after cleanup).
    """
    header(show, args.memcg_mib, args.rate_mib_s,
           KILLS_DRY_RUN if args.apps > 0 else KILLS_NONE, apps=args.apps > 0)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        hs = scenario.Handset(args.memcg_mib)
        coop = coop_mod.Coop(hs, args.apps, args.cache_mib) if args.apps > 0 else None
        try:
            if coop is not None:
                result = aio.run(apps.coop_run(hs, coop, args, show))
            else:
                result = aio.run(live_mode.live_run(hs, args, show))
        finally:
            try:
                if coop is not None:
                    coop.close()
            finally:
                hs.close()
    finally:
        signal.signal(signal.SIGTERM, old)
    if coop is not None:
        show.say("agent and apps stopped, %s removed" % coop.tmp)
    show.say("memcg %s removed" % hs.path)
    for line in summary_lines(show, result["end"], result["end_s"]):
        show.say(line)
    if coop is not None:
        for line in apps_summary(result):
            show.say(line)
    return result


def _replay_mib(head: Dict[str, Any], t_ms: int) -> Optional[int]:
    """Return: the MiB allocated at ``t_ms`` by the recorded ramp, from its header."""
    start, rate = head.get("ramp_start_ms"), head.get("rate_mib_s")
    if not isinstance(start, int) or not isinstance(rate, (int, float)):
        return None
    most = head.get("alloc_mib_at_end", 1 << 30)
    return max(0, min(int((t_ms - start) * rate / 1000), int(most)))


def replay(path: str, why: str, show: Show) -> Dict[str, Any]:
    """Replay a recorded ramp through the monitor and print its timeline.

    Returns: the summary dict.  Raises: OSError, trace.TraceError.
    """
    with open(path) as f:
        first = f.readline()
        head: Dict[str, Any] = json.loads(first) if "memagent_trace" in first else {}
    readings = trace.load_trace(path)
    show.say("replaying %s: %s" % (os.path.basename(path), why))
    show.say("(recorded on kernel %s, %s source, %s)" % (
        head.get("kernel", "?"), head.get("source", "?"), head.get("recorded", "?")))
    limit_mib = readings[0].total_kib // 1024
    header(show, limit_mib, float(head.get("rate_mib_s", 10)), KILLS_REPLAY)
    t0 = int(head.get("ramp_start_ms", readings[0].t_ms))
    show.start(t0)
    for note in trace.replay(readings):
        show.note(note, t0, _replay_mib(head, note.t_ms))
    show.flush()
    end_ms = int(head.get("end_ms", readings[-1].t_ms))
    oom = bool(head.get("oom_killed"))
    end_text = ("OOM-killed after %s MiB" if oom else "recording ended after %s MiB") % (
        head.get("alloc_mib_at_end", "?"))
    for line in summary_lines(show, end_text, (end_ms - t0) / 1000):
        show.say(line)
    return {"mode": "replay", "why": why, "trace": path, "end": end_text,
            "end_s": round((end_ms - t0) / 1000, 2), "oom_killed": oom,
            "events": show.events}


def why_not_live(args: argparse.Namespace) -> Optional[str]:
    """Return: why the demo must replay, or None if it can run live."""
    if args.replay or args.trace:
        return "replay asked for (--replay/--trace)"
    return memcg.available()


def main(args: argparse.Namespace) -> int:
    """Run the demo.  Returns: 0, 1 if it failed, 130 on Ctrl-C."""
    show = Show(quiet=bool(args.json))
    why = why_not_live(args)
    result: Dict[str, Any] = {}
    try:
        if why is None:
            try:
                result = live(args, show)
            except memcg.MemcgError as e:
                why = "cannot run live: %s" % e
        if why is not None:
            result = replay(args.trace or BUNDLED_TRACE, why, show)
    except KeyboardInterrupt:
        print("memagent demo: interrupted; what it started was stopped and the memcg removed",
              file=sys.stderr)
        return 130
    except (OSError, ValueError, DemoError) as e:
        print("memagent demo: %s" % e, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
