#!/bin/sh
# Smoke test: the guest boots, Python, memagent's path, PSI, cgroup v2,
# /dev/cuse and handback work.
set -e
uname -a
python3 -c 'import sys, asyncio; print("python", sys.version.split()[0])'
python3 -c 'import memagent; print("memagent from", memagent.__path__)' || echo "no memagent package"
grep -E 'MemTotal|MemAvailable' /proc/meminfo
cat /proc/pressure/memory
[ -f /sys/fs/cgroup/cgroup.controllers ] && echo "cgroup2: $(cat /sys/fs/cgroup/cgroup.controllers)"
[ -c /dev/cuse ] && echo "/dev/cuse present"
handback meminfo /proc/meminfo
echo "RESULT ok"
