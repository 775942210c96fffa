"""The agent's memory under a hostile local user, and its legitimate apps'
trims meanwhile, on this machine.

    sudo python3 -m bench.hostile [--quick] [--json FILE]

A real ``python3 -m memagent run --memcg PATH --socket SOCK --events-json
FILE`` process (outside the memcg, built-in ``release_caches`` only) with
two legitimate apps registered through ``memagent.client.Client`` (the
workers of bench/trim_latency.py, root).  Its memory is read when calm,
then after each phase of a bounded battery, then once the attacker has
gone.  The attacker is one process of an unprivileged user (``nobody``,
forked from the bench); what a phase opened is held until the agent's
memory is read after it, then let go (one uid may hold [apps] max_per_uid
connections at once):

1. **connections**: 1,000 connections, one after the other, each asking
   ``ping`` and closing;
2. **slowloris**: 40 connections sending most of a longest line (64 KiB),
   then a byte every 250 ms;
3. **subscribers**: 100 connections subscribed to every level, asking
   ``status`` 20 times, that never read;
4. **fuzz**: 2,000 fuzzed request lines (mutated valid requests, random
   bytes, deep nesting, overlong lines), reconnecting when dropped;
5. **registrations**: 64 registrations with the longest name allowed.

Meanwhile a ramp in the memcg brings LOW again and again: each
notification's latency to the first trim an app received (CLOCK_MONOTONIC
in both) is the legitimate apps' service during the battery.

Memory: VmRSS and smaps_rollup's Rss (VmRSS under-counts on some kernels).
Goal: growth <= 2 MiB from calm to after, and trims within 10 ms of a
notification during the battery.  Prints markdown tables and PASS/MISS
lines; exit status 1 on a miss, 2 if it cannot run here (not root, no memcg).
"""

import argparse
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from bench import trim_latency as tl
from memagent.core.protocol import MAX_LINE_BYTES
from memagent.demo import memcg

REPO = tl.REPO
Result = Dict[str, Any]
GROWTH_GOAL_KIB = 2048
LATENCY_GOAL_MS = 10.0
PHASES = ("connections", "slowloris", "subscribers", "fuzz", "registrations")


# -- the attacker (run as nobody) --------------------------------------------------------


Address = Union[str, Tuple[str, int]]  # a Unix socket's path, or TCP (host, port)


def _connect(path: Address) -> Optional[socket.socket]:
    family = socket.AF_UNIX if isinstance(path, str) else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    return s


def _ask(s: socket.socket, line: bytes) -> bytes:
    """Send ``line``; return the first reply line (b"" if none came)."""
    try:
        s.sendall(line)
        return s.recv(65536)
    except OSError:
        return b""


def fuzz_line(rng: random.Random) -> bytes:
    """Return: one hostile request line."""
    valid = [{"v": 1, "id": 1, "cmd": "register", "name": "x", "class": "cached"},
             {"v": 1, "id": 2, "cmd": "trimmed", "trim_id": 1, "freed_kib": 10},
             {"v": 1, "id": 3, "cmd": "subscribe", "levels": ["LOW"]},
             {"v": 1, "id": 4, "cmd": "status"}]
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n"
    if kind == 1:
        depth = rng.randrange(10, 5000)
        return b"[" * depth + b"]" * depth + b"\n"
    if kind == 2:
        return b'{"cmd":"ping","pad":"' + b"A" * (MAX_LINE_BYTES + 10) + b'"}\n'
    text = json.dumps(rng.choice(valid))
    chars = list(text)
    for _ in range(rng.randrange(1, 6)):
        chars[rng.randrange(len(chars))] = chr(rng.choice([0, 10, 0x2028, 0x202E, 34, 92,
                                                           rng.randrange(32, 0x10000)]))
    return "".join(chars).encode("utf-8", "surrogatepass") + b"\n"


def attack(path: Address, phase: str, held: List[socket.socket], quick: bool) -> int:
    """Run one phase against ``path`` (a Unix socket, or the TCP status
    listener: tests/test_statustcp.py).  Returns: how many connections the
    agent refused or dropped."""
    scale = 10 if quick else 1
    refused = 0
    if phase == "connections":
        for _ in range(1000 // scale):
            s = _connect(path)
            if s is None or b'"ok":true' not in _ask(s, b'{"cmd":"ping"}\n').replace(b" ", b""):
                refused += 1
            if s is not None:
                s.close()
    elif phase == "slowloris":
        slow = [s for s in (_connect(path) for _ in range(40)) if s is not None]
        for s in slow:  # most of a longest line, then a byte at a time
            try:
                s.sendall(b'{"cmd":"ping","pad":"' + b"A" * (MAX_LINE_BYTES - 1024))
            except OSError:
                refused += 1
        for ch in b"AAAAAAAAAAAA":
            for s in slow:
                try:
                    s.send(bytes([ch]))
                except OSError:
                    refused += 1
            time.sleep(0.25)
        held.extend(slow)
    elif phase == "subscribers":
        for _ in range(100):
            s = _connect(path)
            if s is None:
                refused += 1
                continue
            try:  # then asks for status again and again, and never reads
                s.sendall(b'{"cmd":"subscribe","levels":["LOW","CRITICAL","NORMAL"]}\n'
                          + b'{"cmd":"status"}\n' * 20)
            except OSError:
                refused += 1
            held.append(s)
    elif phase == "fuzz":
        rng = random.Random(10)
        s = None
        for _ in range(2000 // scale):
            if s is None:
                s = _connect(path)
                if s is None:
                    refused += 1
                    continue
            try:
                s.sendall(fuzz_line(rng))
                s.recv(65536)
            except OSError:
                s.close()
                s, refused = None, refused + 1
        if s is not None:
            s.close()
    elif phase == "registrations":
        from memagent.core import protocol

        name_bytes = getattr(protocol, "MAX_NAME_BYTES", 64)
        name = ("\U0001F600" * (name_bytes // 4))[:name_bytes]
        for _ in range(64):
            s = _connect(path)
            if s is None:
                refused += 1
                continue
            req = {"v": 1, "id": 1, "cmd": "register", "name": name, "class": "cached",
                   "estimate_kib": 1 << 20}
            if b'"ok":true' not in _ask(s, (json.dumps(req) + "\n").encode()).replace(b" ", b""):
                refused += 1
            held.append(s)
    return refused


class Attacker:
    """The attacker: a child forked before any thread, as ``nobody``,
    reading phase names from a pipe and answering ``done PHASE REFUSED``;
    at EOF it closes everything and exits."""

    def __init__(self, path: str, quick: bool) -> None:
        nobody = pwd.getpwnam("nobody")
        child_r, parent_w = os.pipe()
        parent_r, child_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(parent_w)
                os.close(parent_r)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                code = self._serve(path, quick, os.fdopen(child_r), os.fdopen(child_w, "w"))
            finally:
                os._exit(code)
        os.close(child_r)
        os.close(child_w)
        self.out = os.fdopen(parent_w, "w")
        self.inp = os.fdopen(parent_r)

    @staticmethod
    def _serve(path: str, quick: bool, inp: Any, out: Any) -> int:
        held: List[socket.socket] = []
        for line in inp:
            phase = line.strip()
            for s in held:  # the last phase's, measured with them open: let go
                s.close()
            held.clear()
            time.sleep(0.5)
            out.write("done %s %d\n" % (phase, attack(path, phase, held, quick)))
            out.flush()
        for s in held:
            s.close()
        return 0

    def phase(self, name: str) -> int:
        """Run phase ``name``.  Returns: the connections refused or dropped."""
        self.out.write(name + "\n")
        self.out.flush()
        words = self.inp.readline().split()
        return int(words[2]) if len(words) == 3 else -1

    def close(self) -> None:
        """Let the attacker release everything and exit; reap it."""
        try:
            self.out.close()
        except OSError:
            pass
        os.waitpid(self.pid, 0)


# -- the measurement (root) --------------------------------------------------------------


def memory_kib(pid: int) -> Dict[str, int]:
    """Return: VmRSS (status) and Rss, Anonymous (smaps_rollup) of ``pid``, KiB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["vmrss_kib"] = int(line.split()[1])
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            key = {"Rss:": "rss_kib", "Anonymous:": "anon_kib"}.get(line.split(":")[0] + ":")
            if key:
                out[key] = int(line.split()[1])
    return out


def fds(pid: int) -> int:
    """Return: the number of open fds of ``pid``."""
    return len(os.listdir("/proc/%d/fd" % pid))


def pressure_loop(group: memcg.Memcg, stop: threading.Event, max_mb: int) -> None:
    """Ramps in the memcg until ``stop``: each brings LOW, holds 1 s, exits."""
    opts = argparse.Namespace(rate_mib_s=40, hold_s=1)
    while not stop.is_set():
        tl._pressure(group, opts, max_mb)
        stop.wait(1.0)


def run(quick: bool, tmp: str) -> Result:
    """Run the battery against a fresh agent.  Returns: the figures."""
    os.chmod(tmp, 0o755)  # the attacker (nobody) reaches the socket
    sock = os.path.join(tmp, "agent.sock")
    events = os.path.join(tmp, "events.jsonl")
    config = os.path.join(tmp, "memagent.conf")
    with open(config, "w") as f:  # the defaults, release_caches alone
        f.write("[plugins]\nenable = release_caches\ndir = %s\n" % tmp)
    group = memcg.Memcg(limit_kib=64 * 1024)
    log = open(os.path.join(tmp, "agent.log"), "w")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "-c", config,
                              "--memcg", group.path, "--socket", sock, "--events-json", events],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    workers: "List[subprocess.Popen[str]]" = []
    attacker: "Optional[Attacker]" = None
    stop = threading.Event()
    rows: List[Result] = []
    try:
        tl._wait_for(sock, 15.0, agent)
        attacker = Attacker(sock, quick)  # forked before any thread
        workers = tl._start_workers(sock, 2, 2, 512)
        time.sleep(3.0)
        calm = dict(memory_kib(agent.pid), fds=fds(agent.pid))
        rows.append(dict(calm, phase="calm", refused=0))
        since_ms = int(time.monotonic() * 1000)
        presser = threading.Thread(target=pressure_loop, args=(group, stop, 52), daemon=True)
        presser.start()
        for phase in PHASES:
            t0 = time.monotonic()
            refused = attacker.phase(phase)
            rows.append(dict(memory_kib(agent.pid), fds=fds(agent.pid), phase=phase,
                             refused=refused, seconds=round(time.monotonic() - t0, 1)))
        attacker.close()
        attacker = None
        stop.set()
        presser.join(timeout=60)
        time.sleep(3.0)
        rows.append(dict(memory_kib(agent.pid), fds=fds(agent.pid), phase="after", refused=0))
        receipts = tl._stop_workers(workers)
        workers = []
        trims = tl.attribute(tl._read_events(events, since_ms), receipts, overlap_ms=500)
    finally:
        stop.set()
        if attacker is not None:
            os.kill(attacker.pid, signal.SIGKILL)
            attacker.close()
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        tl.stop_agent(agent)
        log.close()
        group.destroy()
    lat = [r["latency_ms"] for r in trims if not r["overlap"] and r["latency_ms"] is not None]
    return {"rows": rows, "trims": trims, "latencies_ms": lat,
            "growth_kib": rows[-1]["rss_kib"] - rows[0]["rss_kib"],
            "peak_growth_kib": max(r["rss_kib"] for r in rows) - rows[0]["rss_kib"],
            "quick": quick, "date": time.strftime("%Y-%m-%d")}


def table(result: Result) -> List[str]:
    """Return: the markdown tables and the goal lines."""
    out = ["### The agent under a hostile local user (%s%s)" % (
        result["date"], ", quick" if result["quick"] else ""), "",
        "| after | VmRSS KiB | smaps Rss KiB | Anonymous KiB | fds | refused or dropped |",
        "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        out.append("| %s | %d | %d | %d | %d | %d |" % (
            r["phase"], r["vmrss_kib"], r["rss_kib"], r["anon_kib"], r["fds"], r["refused"]))
    lat = sorted(result["latencies_ms"])
    out += ["", "Notifications during the battery: %d with a trim, median %s ms, max %s ms."
            % (len(lat), "%.1f" % lat[len(lat) // 2] if lat else "-",
               "%.1f" % lat[-1] if lat else "-"), ""]
    grow_ok = result["growth_kib"] <= GROWTH_GOAL_KIB
    lat_ok = bool(lat) and lat[len(lat) // 2] <= LATENCY_GOAL_MS
    out.append("%s growth %d KiB calm to after (peak %d KiB), goal <= %d KiB" % (
        "PASS" if grow_ok else "MISS", result["growth_kib"], result["peak_growth_kib"],
        GROWTH_GOAL_KIB))
    out.append("%s trims during the battery: median %s ms, goal <= %.0f ms" % (
        "PASS" if lat_ok else "MISS", "%.1f" % lat[len(lat) // 2] if lat else "-",
        LATENCY_GOAL_MS))
    return out


def main(argv: "Optional[List[str]]" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the connections and fuzz")
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args(argv)
    reason = memcg.available()
    if os.geteuid() != 0 or reason is not None:
        print("bench.hostile: needs root and a memcg (%s)" % (reason or "not root"),
              file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="hostile-")
    try:
        result = run(args.quick, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = table(result)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if all(line.startswith("PASS") for line in lines if line[:4] in ("PASS", "MISS")) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
