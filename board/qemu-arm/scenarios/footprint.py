"""The tools' footprint side by side in one boot: memagent on CPython, memagent
on MicroPython, earlyoom; calm, and after a battery of hostile clients.

    board/qemu-arm/run --mem 128 --board zaurus-c3000 --interpreter micropython \
        board/qemu-arm/scenarios/footprint.py

(the MicroPython guest has both interpreters; the 64 MB profile's settings,
in 128 MB: at 64 MB the CPython agent, 17.6 MB, and 200 clients' sockets
ran the guest out of memory, and the kernel killed this scenario).  For each tool in turn, with
nothing else running: start it, time its exec to its first answer (the
agents: a status reply on their control socket; earlyoom: its first line),
measure /proc/PID/smaps_rollup 3 s later (calm), then for the agents run
the hostile battery against its socket and measure again once the clients
are gone; the peak Rss is sampled every 50 ms meanwhile.  The battery:

- 200 connections that subscribe and stay (the slots fill; the rest get "busy");
- 64 apps registering the longest names allowed (64 bytes: 16 emoji);
- 40 clients each sending 60 KiB without a newline, then vanishing;
- 200 lines of garbage and 200 clients that connect and hang up at once;
- 300 status requests, one connection each.

FACT lines per tool (``cpython_*``, ``micropython_*``, ``earlyoom_*``):
``ready_ms``, ``calm_rss_kib``, ``calm_anon_kib``, ``peak_rss_kib``,
``after_rss_kib``, ``after_anon_kib``, ``answers_after`` (the agent still
answers status).  RESULT fails only if a tool did not start.
"""

import json
import os
import socket
import subprocess
import threading
import time

import rigguest
from rigguest import fact

CONFIG = "/etc/memagent/memagent.conf"
SOCKET = "/run/memagent-footprint.sock"
INIT = "/etc/init.d/S60memagent"
EMOJI_NAME = "\U0001F600" * 16  # 64 bytes of UTF-8


def status(path, timeout_s=3.0):
    """Return: the agent's status reply (a dict), or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(path)
            s.sendall(b'{"v": 1, "id": 1, "cmd": "status"}\n')
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf.split(b"\n")[0])
    except (OSError, ValueError):
        return None


def connect(path, timeout_s=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    s.connect(path)
    return s


def request(s, obj):
    s.sendall((json.dumps(obj) + "\n").encode())
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf.split(b"\n")[0]) if b"\n" in buf else {}


def battery(path):
    """The hostile clients (see the module's doc).  Returns: counts."""
    held, counts = [], {"subscribed": 0, "busy": 0, "registered": 0, "errors": 0,
                        "status_failed": 0}
    for _ in range(200):
        try:
            s = connect(path)
            reply = request(s, {"cmd": "subscribe", "levels": ["CRITICAL"], "id": 1})
            if reply.get("ok"):
                counts["subscribed"] += 1
                held.append(s)
            else:
                counts["busy"] += 1
                s.close()
        except OSError:
            counts["errors"] += 1
    for s in held:  # room for the apps
        s.close()
    time.sleep(1)  # for the agent to see them go
    apps = []
    for i in range(64):
        try:
            s = connect(path)
            name = EMOJI_NAME[:15] + chr(0x1F600 + i % 64)
            if request(s, {"cmd": "register", "name": name, "class": "cached"}).get("ok"):
                counts["registered"] += 1
                apps.append(s)
            else:
                s.close()
        except OSError:
            counts["errors"] += 1
    for _ in range(40):
        try:
            s = connect(path)
            s.sendall(b'{"cmd": "status", "pad": "' + b"x" * 60000)
            s.close()
        except OSError:
            counts["errors"] += 1
    for i in range(200):
        try:
            s = connect(path)
            if i % 2:
                s.sendall(os.urandom(200).replace(b"\n", b" ") + b"\n")
            s.close()
        except OSError:
            counts["errors"] += 1
    for _ in range(300):
        if status(path) is None:
            counts["status_failed"] += 1
    for s in apps:
        s.close()
    return counts


class Peak:
    """Samples a process's smaps_rollup Rss every 50 ms in a thread."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            self.peak = max(self.peak, rigguest.proc_kib(self.pid).get("Rss", 0))
            time.sleep(0.05)

    def stop(self):
        self.done = True
        self.thread.join()
        return self.peak


def start_agent(argv, env, sock=SOCKET, timeout_s=60):
    """Exec an agent that serves ``sock`` and poll it every 20 ms for a
    status answer.  Returns: (its Popen, ms from exec to the answer or None)."""
    try:
        os.unlink(sock)
    except OSError:
        pass
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.monotonic() - t0 < timeout_s and p.poll() is None:
        if os.path.exists(sock) and status(sock, 2.0) is not None:
            return p, round((time.monotonic() - t0) * 1000)
        time.sleep(0.02)
    return p, None


def measure_agent(tag, argv, env):
    """Start an agent, time it, measure it calm and after the battery."""
    p, ready = start_agent(argv, env)
    fact(tag + "_ready_ms", ready)
    if ready is None:
        p.kill()
        p.wait()
        return False
    time.sleep(3)
    calm = rigguest.proc_kib(p.pid)
    fact(tag + "_calm_rss_kib", calm.get("Rss"))
    fact(tag + "_calm_anon_kib", calm.get("Anonymous"))
    peak = Peak(p.pid)
    counts = battery(SOCKET)
    time.sleep(2)
    fact(tag + "_peak_rss_kib", peak.stop())
    after = rigguest.proc_kib(p.pid)
    fact(tag + "_after_rss_kib", after.get("Rss"))
    fact(tag + "_after_anon_kib", after.get("Anonymous"))
    fact(tag + "_battery", json.dumps(counts, sort_keys=True))
    answer = status(SOCKET)
    fact(tag + "_answers_after", bool(answer and answer.get("ok")))
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return True


def measure_earlyoom():
    """earlyoom with Debian's defaults: its first line, then its Rss."""
    t0 = time.monotonic()
    p = subprocess.Popen(["earlyoom"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    line = p.stdout.readline()
    fact("earlyoom_ready_ms", round((time.monotonic() - t0) * 1000) if line else None)
    time.sleep(3)
    calm = rigguest.proc_kib(p.pid)
    fact("earlyoom_calm_rss_kib", calm.get("Rss"))
    fact("earlyoom_calm_anon_kib", calm.get("Anonymous"))
    p.terminate()
    p.wait(10)
    return bool(line)


def main():
    if os.path.exists(INIT):
        subprocess.run([INIT, "stop"], capture_output=True)  # the agent init started
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    args = ["run", "--config", CONFIG, "--socket", SOCKET, "--log", "stderr"]
    ok = measure_agent("cpython", ["python3", "-m", "memagent"] + args,
                       dict(base, PYTHONPATH="/opt/memagent"))
    ok = measure_agent("micropython", ["/usr/bin/memagent"] + args, base) and ok
    ok = measure_earlyoom() and ok
    with open("/proc/meminfo") as f:
        fact("memtotal_kib", f.readline().split()[1])
    rigguest.result(ok, "footprint measured" if ok else "a tool did not start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
