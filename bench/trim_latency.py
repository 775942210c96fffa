"""Notification-to-first-trim latency of the real agent, on this machine.

    sudo python3 -m bench.trim_latency [--quick] [--json FILE]

For each app count N (10 and 100): a fresh memcg (``memagent.demo.memcg.Memcg``)
watched by a real ``python3 -m memagent run --memcg PATH --socket SOCK
--events-json FILE`` process (outside the memcg, built-in ``release_caches``
plugin only, ``[apps] max_apps`` raised to fit N), N apps registered through
``memagent.client.Client`` (``--apps-per-proc`` clients per worker process,
one thread each, outside the memcg), then ``memagent.demo.loadgen anon`` run in
the memcg again and again up to about 85% of its limit, so that LOW
notifications happen.

Each app records ``time.monotonic()`` when its ``on_trim`` is called (the
``trim`` line read and parsed by the client library) and really frees part
of a small cache it holds (``--cache-kib``; 0: free nothing and answer the
target, a "pretend" app), refilled between events.  Apps give no
``estimate_kib`` (the scheduler learns their size): a given estimate is only
ever lowered by frees, so it would run dry after a few events.  The agent's events file
gives each notification's ``t_ms`` (CLOCK_MONOTONIC, ms, the same clock).
Latency of a LOW/CRITICAL notification: the first trim received by any app
after its ``t_ms`` and before the next notification, minus ``t_ms``.  A
notification that comes less than ``--overlap-ms`` after the previous one is
left out (its trims cannot be told from the previous event's later rounds)
and counted apart.

Prints a markdown table and one PASS/MISS line per N for the goal (median
<= 10 ms).  Exit status 2 if it cannot run here (not root, no memcg).
"""

import argparse
import json
import math
import mmap
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memagent.client import Client  # noqa: E402
from memagent.demo import loadgen, memcg  # noqa: E402

Result = Dict[str, Any]

GOAL_MEDIAN_MS = 10.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_KIB = 256  # one anonymous mapping each: closing it gives the pages back at once


# -- the apps: a worker process running several clients ------------------------------


class App:
    """One benchmark app: a Client, a small real cache, and its trim receipts."""

    def __init__(self, index: int, socket_path: str, cache_kib: int,
                 receipts: List[Tuple[float, int, str, int]]) -> None:
        self.index = index
        self.cache_kib = cache_kib
        self.receipts = receipts
        self.lock = threading.Lock()
        self.cache: List[mmap.mmap] = []
        self.refill()
        # No estimate: the scheduler lowers a given estimate by every free and
        # never raises it again, so after a few events no app would be asked.
        self.client = Client("bench-%d" % index, "cached", estimate_kib=None,
                             on_trim=self.on_trim, socket_path=socket_path)

    def refill(self) -> None:
        """Grow the cache back to ``cache_kib`` (every page written)."""
        with self.lock:
            while (len(self.cache) + 1) * ENTRY_KIB <= self.cache_kib:
                entry = mmap.mmap(-1, ENTRY_KIB * 1024)
                entry.write(b"\x5a" * (ENTRY_KIB * 1024))
                self.cache.append(entry)

    def on_trim(self, level: str, target_kib: int) -> int:
        """Record the receipt time first, then free up to ``target_kib``.
        Returns: the KiB freed (the target itself for a pretend app)."""
        self.receipts.append((time.monotonic(), self.index, level, target_kib))
        if self.cache_kib <= 0:
            return target_kib
        freed = 0
        with self.lock:
            while self.cache and freed < max(target_kib, 1):
                self.cache.pop().close()
                freed += ENTRY_KIB
        return freed


def worker_main(socket_path: str, first: int, count: int, cache_kib: int) -> int:
    """Run apps ``first``..``first+count-1`` until stdin closes, refilling
    their caches every 0.5 s; then print the receipts as one JSON line.
    Prints ``ready`` once every app is registered.  Returns: exit code."""
    receipts: List[Tuple[float, int, str, int]] = []
    apps = [App(first + i, socket_path, cache_kib, receipts) for i in range(count)]
    for app in apps:
        app.client.connect()
    threads = [threading.Thread(target=app.client.run_forever, daemon=True) for app in apps]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not sys.stdin.readline():
            break
        for app in apps:
            app.refill()
    for app in apps:
        app.client.stop()
    for thread in threads:
        thread.join(2.0)
    for app in apps:
        app.client.close()
    print(json.dumps({"receipts": receipts}), flush=True)
    return 0


# -- one run: agent, apps, pressure ---------------------------------------------------


def _wait_for(path: str, timeout_s: float, proc: "subprocess.Popen[Any]") -> None:
    """Wait until ``path`` exists.  Raises: RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError("the agent exited with %s before serving %s"
                               % (proc.returncode, path))
        if time.monotonic() > deadline:
            raise RuntimeError("no %s after %.0f s" % (path, timeout_s))
        time.sleep(0.02)


def _write_config(tmp: str, n_apps: int) -> str:
    """Return: a config file with room for ``n_apps`` apps and only the built-in plugin."""
    os.makedirs(os.path.join(tmp, "plugins.d"), exist_ok=True)
    path = os.path.join(tmp, "memagent.conf")
    with open(path, "w") as f:
        f.write("[apps]\nmax_apps = %d\n[plugins]\nenable = release_caches\ndir = %s\n"
                % (n_apps + 8, os.path.join(tmp, "plugins.d")))
    return path


def _start_workers(sock: str, n_apps: int, per_proc: int,
                   cache_kib: int) -> "List[subprocess.Popen[str]]":
    """Return: the worker processes, once each printed ``ready``.
    Raises: RuntimeError if one fails to register its apps."""
    workers = []
    for first in range(0, n_apps, per_proc):
        count = min(per_proc, n_apps - first)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "bench.trim_latency", "--worker", "--socket", sock,
             "--first", str(first), "--count", str(count), "--cache-kib", str(cache_kib)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("a worker failed to register its apps (exit %s)" % worker.poll())
    return workers


def _stop_workers(workers: "List[subprocess.Popen[str]]") -> List[Tuple[float, int, str, int]]:
    """Close the workers' stdin.  Returns: every receipt, in time order."""
    receipts: List[Tuple[float, int, str, int]] = []
    for worker in workers:
        try:
            out, _ = worker.communicate("", timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        for line in out.splitlines():
            if line.startswith("{"):
                receipts.extend(tuple(r) for r in json.loads(line)["receipts"])  # type: ignore
    return sorted(receipts)


def stop_agent(agent: "subprocess.Popen[Any]", timeout_s: float = 10) -> None:
    """SIGTERM the agent and reap it (SIGKILL past ``timeout_s``)."""
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def _pressure(group: memcg.Memcg, opts: argparse.Namespace, max_mb: int) -> None:
    """Run one loadgen anon ramp to ``max_mb`` in the group, hold, exit."""
    child = group.spawn([sys.executable, "-S", loadgen.__file__, "anon", "--rate",
                         str(opts.rate_mib_s), "--max-mb", str(max_mb), "--hold",
                         str(opts.hold_s)], stdout=subprocess.DEVNULL)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _read_events(path: str, since_ms: int) -> List[Dict[str, Any]]:
    """Return: the LOW/CRITICAL notifications in the events file at or after ``since_ms``."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("level") in ("LOW", "CRITICAL") and obj.get("t_ms", -1) >= since_ms:
                out.append(obj)
    return sorted(out, key=lambda o: o["t_ms"])


def attribute(notes: List[Dict[str, Any]], receipts: List[Tuple[float, int, str, int]],
              overlap_ms: int, window_ms: int = 3000) -> List[Dict[str, Any]]:
    """Match each notification to the trims that followed it.

    ``receipts``: (monotonic s, app, level, target_kib), sorted.  A
    notification's window runs from its ``t_ms`` to the next one's (at most
    ``window_ms``).  Returns: per notification ``t_ms``, ``level``,
    ``latency_ms`` (None: no trim in its window), ``woken`` (distinct apps)
    and ``overlap`` (it came within ``overlap_ms`` of the previous one).
    """
    rows = []
    for i, note in enumerate(notes):
        start = float(note["t_ms"])
        end = start + window_ms
        if i + 1 < len(notes):
            end = min(end, float(notes[i + 1]["t_ms"]))
        inside = [r for r in receipts if start <= r[0] * 1000.0 < end]
        rows.append({
            "t_ms": note["t_ms"], "level": note["level"], "reason": note.get("reason"),
            "latency_ms": round(inside[0][0] * 1000.0 - start, 3) if inside else None,
            "woken": len({r[1] for r in inside}),
            "overlap": i > 0 and note["t_ms"] - notes[i - 1]["t_ms"] < overlap_ms,
        })
    return rows


def percentile(values: List[float], pct: float) -> float:
    """Return: the nearest-rank ``pct`` percentile of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(int(math.ceil(pct / 100.0 * len(ordered))) - 1, 0)]


def summarise(n_apps: int, rows: List[Dict[str, Any]]) -> Result:
    """Return: count, median, p99 and max latency, apps woken per event."""
    kept = [r for r in rows if not r["overlap"] and r["latency_ms"] is not None]
    lat = [r["latency_ms"] for r in kept]
    woken = [r["woken"] for r in kept]
    return {"apps": n_apps, "notifications": len(rows),
            "overlapped": sum(1 for r in rows if r["overlap"]),
            "no_trim": sum(1 for r in rows if not r["overlap"] and r["latency_ms"] is None),
            "count": len(lat),
            "median_ms": statistics.median(lat) if lat else None,
            "p99_ms": percentile(lat, 99) if lat else None,
            "max_ms": max(lat) if lat else None,
            "woken_median": statistics.median(woken) if woken else None,
            "woken_max": max(woken) if woken else None}


def run_size(n_apps: int, opts: argparse.Namespace, tmp: str) -> Result:
    """Measure with ``n_apps`` apps.  Returns: the summary plus per-event rows."""
    sock = os.path.join(tmp, "agent-%d.sock" % n_apps)
    events = os.path.join(tmp, "events-%d.jsonl" % n_apps)
    agent_log = os.path.join(tmp, "agent-%d.log" % n_apps)
    config = _write_config(tmp, n_apps)
    limit_kib = opts.memcg_mib * 1024
    max_mb = opts.max_mb or max(int(opts.memcg_mib * 0.85) - 6, 1)
    group = memcg.Memcg(limit_kib=limit_kib)
    agent: "Optional[subprocess.Popen[Any]]" = None
    workers: "List[subprocess.Popen[str]]" = []
    log_file: "Optional[IO[Any]]" = None
    receipts: List[Tuple[float, int, str, int]] = []
    try:
        log_file = open(agent_log, "w")
        agent = subprocess.Popen(
            [sys.executable, "-m", "memagent", "run", "-c", config, "--memcg", group.path,
             "--socket", sock, "--events-json", events],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log_file)
        _wait_for(sock, 15.0, agent)
        _wait_for(events, 15.0, agent)
        workers = _start_workers(sock, n_apps, opts.apps_per_proc, opts.cache_kib)
        time.sleep(0.5)
        since_ms = int(time.monotonic() * 1000)
        started = time.monotonic()
        for _ in range(opts.cycles):
            _pressure(group, opts, max_mb)
            time.sleep(opts.gap_s)
        time.sleep(1.0)  # let the last trim event finish
        elapsed = time.monotonic() - started
        receipts = _stop_workers(workers)
        workers = []
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        if agent is not None:
            stop_agent(agent)
        if log_file is not None:
            log_file.close()
        group.destroy()
    if agent.returncode not in (0, -signal.SIGTERM):
        with open(agent_log) as f:
            raise RuntimeError("the agent exited with %s: %s" % (agent.returncode,
                                                                f.read()[-2000:]))
    rows = attribute(_read_events(events, since_ms), receipts, opts.overlap_ms)
    result = summarise(n_apps, rows)
    result.update({"cycles": opts.cycles, "max_mb": max_mb, "seconds": round(elapsed, 1),
                   "trims_received": len(receipts), "rows": rows})
    return result


# -- report ------------------------------------------------------------------------------


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else "%.1f" % value


def table(result: Result) -> List[str]:
    """Return: the markdown table and the goal lines."""
    opts = result["options"]
    out = ["### Notification to first trim request, real agent, %d MiB memcg" % opts["memcg_mib"],
           "",
           "loadgen anon at %g MiB/s to %s MiB, hold %g s, %d cycles per N; apps: %s KiB "
           "cache each, %d per worker process; fanout 3." % (
               opts["rate_mib_s"], result["sizes"][0]["max_mb"] if result["sizes"] else "?",
               opts["hold_s"], opts["cycles"], opts["cache_kib"] or "pretend (0)",
               opts["apps_per_proc"]), "",
           "| apps (N) | LOW/CRITICAL notifications | measured | median ms | p99 ms | max ms "
           "| apps woken per event (median / max) | no trim | overlapped |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["sizes"]:
        out.append("| %d | %d | %d | %s | %s | %s | %s / %s | %d | %d |" % (
            s["apps"], s["notifications"], s["count"], _ms(s["median_ms"]), _ms(s["p99_ms"]),
            _ms(s["max_ms"]), "-" if s["woken_median"] is None else "%g" % s["woken_median"],
            "-" if s["woken_max"] is None else s["woken_max"], s["no_trim"], s["overlapped"]))
    out.append("")
    for s in result["sizes"]:
        ok = s["median_ms"] is not None and s["median_ms"] <= GOAL_MEDIAN_MS
        out.append("- %s: N=%d median %s ms <= %g ms" % (
            "PASS" if ok else "MISS", s["apps"], _ms(s["median_ms"]), GOAL_MEDIAN_MS))
    return out


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Return: the options (``--quick`` sets fewer cycles)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 pressure cycles per N")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--sizes", default="10,100", help="app counts (default 10,100)")
    p.add_argument("--cycles", type=int, help="pressure cycles per N (default 30, quick 4)")
    p.add_argument("--memcg-mib", type=int, default=64)
    p.add_argument("--max-mb", type=int, help="loadgen --max-mb (default 85%% of the memcg - 6)")
    p.add_argument("--rate-mib-s", type=float, default=50.0)
    p.add_argument("--hold-s", type=float, default=1.0)
    p.add_argument("--gap-s", type=float, default=1.0, help="pause between cycles")
    p.add_argument("--cache-kib", type=int, default=2048,
                   help="each app's real cache (0: pretend apps that free nothing)")
    p.add_argument("--apps-per-proc", type=int, default=10)
    p.add_argument("--overlap-ms", type=int, default=250,
                   help="leave out notifications this close to the previous one")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--socket", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.cycles is None:
        opts.cycles = 4 if opts.quick else 30
    return opts


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point.  Returns: 0 after a run, 1 if it failed, 2 if it cannot run here."""
    opts = parse_args(argv)
    if opts.worker:
        return worker_main(opts.socket, opts.first, opts.count, opts.cache_kib)
    reason = memcg.available()
    if reason is not None:
        print("bench.trim_latency: cannot run here: %s" % reason, file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="memagent-trim-")
    result: Result = {"options": {k: v for k, v in vars(opts).items()
                                  if k not in ("worker", "socket", "first", "count")},
                      "sizes": []}
    try:
        for n_apps in [int(s) for s in opts.sizes.split(",") if s.strip()]:
            result["sizes"].append(run_size(n_apps, opts, tmp))
    except (RuntimeError, OSError) as e:
        print("bench.trim_latency: %s" % e, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(table(result)))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
