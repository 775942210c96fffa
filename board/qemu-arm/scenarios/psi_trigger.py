"""Check that a PSI memory trigger fires in the guest under page-cache thrash.

psi_trigger.py [FILE] [TRIGGER]
  FILE     pressure file to watch (default /proc/pressure/memory;
           /sys/fs/cgroup/thrash/memory.pressure watches the thrashing group)
  TRIGGER  default "some 150000 1000000" (150 ms stall in a 1 s window)

A background shell (in cgroup "thrash", limited to 60% of MemAvailable)
holds anonymous memory in a Python process and streams a file larger than
RAM through the page cache while a Python loop keeps importing modules.
We poll the trigger fd for POLLPRI and report how many events arrived.
"""
import os
import select
import subprocess
import sys
import time

import rigguest

path = sys.argv[1] if len(sys.argv) > 1 else "/proc/pressure/memory"
trigger = sys.argv[2] if len(sys.argv) > 2 else "some 150000 1000000"
WATCH_S = 20

with open("/proc/meminfo") as f:
    avail_mb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable")) // 1024
limit_mb = avail_mb * 6 // 10
cg = "/sys/fs/cgroup/thrash"
with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
    f.write("+memory")
os.makedirs(cg, exist_ok=True)
with open(cg + "/memory.max", "w") as f:
    f.write("%dM" % limit_mb)
fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
os.write(fd, trigger.encode() + b"\0")
p = select.poll()
p.register(fd, select.POLLPRI)
print("trigger %r armed on %s" % (trigger, path), flush=True)

hold_mb = limit_mb * 7 // 10
fill_mb = int(os.environ.get("RIG_MEM_MB", "64")) * 3 // 2
thrash = r"""
echo $$ > %(cg)s/cgroup.procs
python3 -m memagent.demo.loadgen anon --rate 0 --max-mb %(hold)d --hold 600 >/dev/null &
dd if=/dev/zero of=/var/tmp/thrash bs=1M count=%(fill)d 2>/dev/null; sync
while :; do python3 -c 'import asyncio, json, email.parser, argparse'; done &
while :; do dd if=/var/tmp/thrash of=/dev/null bs=1M 2>/dev/null; done
""" % {"cg": cg, "hold": hold_mb, "fill": fill_mb}
print("thrash: MemAvailable=%dM memory.max=%dM holder=%dM file=%dM"
      % (avail_mb, limit_mb, hold_mb, fill_mb), flush=True)

t0 = time.monotonic()
child = subprocess.Popen(["sh", "-c", thrash], start_new_session=True)
events = []
while time.monotonic() - t0 < WATCH_S:
    for _fd, ev in p.poll(1000):
        if ev & select.POLLERR:
            rigguest.result(False, "POLLERR: trigger file went away")
            sys.exit(1)
        if ev & select.POLLPRI:
            t = time.monotonic() - t0
            events.append(t)
            with open(path) as f:
                some = f.readline().strip()
            print("PSI event %d at %.2f s: %s" % (len(events), t, some), flush=True)
    if len(events) >= 5:
        break
os.killpg(child.pid, 9)
child.wait()
os.unlink("/var/tmp/thrash")

print("PSI-TRIGGER events=%d first_after_s=%s"
      % (len(events), "%.2f" % events[0] if events else "none"), flush=True)
rigguest.result(bool(events), "psi trigger fired %d times" % len(events))
