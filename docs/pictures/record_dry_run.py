"""Record a trace, its events file and the agent's status, with kill_background
in dry run, for ``memagent plot``'s tests and docs (tests/data/plot/dryrun-*).

As root, on a machine with a memory controller:

    sudo python3 docs/pictures/record_dry_run.py tests/data/plot

A throw-away memcg of 128 MiB; ``memagent record`` and ``memagent run`` (its
events in a file, kill_background in dry run) both watch it. Three holders of
10 MiB at ``oom_score_adj`` 900 (cached: the victims it would choose) start,
then an allocator grows to 78 MiB at 10 MB/s (to CRITICAL, short of the memcg's OOM
kill), holds 3 s and exits; 8 s later a second one does the same at 5 MB/s. Nothing
is killed; the events file says whom the agent would have killed. At the end,
``memagent status --json`` saves the agent's status (its history: 5 s buckets).
The trace's header names the scenario and the memcg's OOM kills; the memcg's
path and the host's name are replaced by neutral ones.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from memagent.demo import loadgen
from memagent.demo.memcg import Memcg

CONF = """[plugins]
enable = kill_background
[kill_background]
dry_run = yes
kill_at_low = always
low_class = cached
critical_class = service
"""


def adj900() -> None:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("900")


def fix_header(trace_path: str, oom_kills: int) -> None:
    """Name the scenario in the trace's header, in place of the memcg's path."""
    with open(trace_path) as f:
        lines = f.readlines()
    head = json.loads(lines[0])
    head.update(domain="memcg", limit_mib=128, oom_kills=oom_kills,
                recorded=time.strftime("%Y-%m-%d"), recorder="docs/pictures/record_dry_run.py",
                how="3 holders of 10 MiB at adj 900, then 78 MiB at 10 MB/s held 3 s, "
                    "8 s later 78 MiB at 5 MB/s held 3 s; kill_background in dry run")
    lines[0] = json.dumps(head) + "\n"
    with open(trace_path, "w") as f:
        f.writelines(lines)


def save_status(memagent: "list[str]", sock: str, memcg: str, path: str) -> None:
    """Save the agent's ``memagent status --json`` to ``path``, neutral names in."""
    text = subprocess.run(memagent + ["status", "--json", "--socket", sock],
                          capture_output=True, text=True, check=True).stdout
    st = json.loads(text.replace(memcg, "/sys/fs/cgroup/memory/memagent-plot"))
    st["host"] = "recorder"
    with open(path, "w") as f:
        json.dump(st, f, indent=1, sort_keys=True)
        f.write("\n")


def ramp(group: Memcg, alloc: "list[str]", rate_mb_s: int) -> None:
    """Grow an allocator to 78 MiB at ``rate_mb_s``, hold 3 s; wait for its exit."""
    group.spawn(alloc + ["--rate", str(rate_mb_s), "--max-mb", "78", "--hold", "3"]).wait()


def main(out_dir: str) -> int:
    """Record into ``out_dir``.  Returns: 0."""
    memagent = [sys.executable, "-m", "memagent"]
    trace_path = os.path.join(out_dir, "dryrun-trace.jsonl")
    events_path = os.path.join(out_dir, "dryrun-events.ndjson")
    alloc = [sys.executable, "-S", loadgen.__file__, "anon"]
    with tempfile.TemporaryDirectory() as tmp, Memcg(limit_kib=128 * 1024) as group:
        conf = os.path.join(tmp, "m.conf")
        with open(conf, "w") as f:
            f.write(CONF)
        for path in (trace_path, events_path):
            if os.path.exists(path):
                os.unlink(path)
        rec = subprocess.Popen(memagent + ["record", "--memcg", group.path, "-c", conf,
                                           "-o", trace_path, "--interval-ms", "100"])
        agent = subprocess.Popen(memagent + ["run", "--memcg", group.path, "-c", conf,
                                             "--socket", os.path.join(tmp, "s"),
                                             "--events-json", events_path])
        time.sleep(3)
        holders = [group.spawn(alloc + ["--rate", "0", "--max-mb", "10", "--hold", "-1"],
                               preexec_fn=adj900) for _ in range(3)]
        time.sleep(2)
        ramp(group, alloc, 10)
        time.sleep(8)
        ramp(group, alloc, 5)
        time.sleep(3)
        save_status(memagent, os.path.join(tmp, "s"), group.path,
                    os.path.join(out_dir, "dryrun-status.json"))
        for p in holders:
            p.kill()
            p.wait()
        time.sleep(2)
        for p in (rec, agent):
            p.send_signal(signal.SIGTERM)
            p.wait()
        oom_kills = group.oom_kill_count()
    fix_header(trace_path, oom_kills)
    print("wrote %s, %s and dryrun-status.json" % (trace_path, events_path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
