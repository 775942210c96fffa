#!/bin/sh
# Smoke test: the guest boots, Python and memagent's path work, handback works.
set -e
uname -a
python3 -c 'import sys, asyncio; print("python", sys.version.split()[0])'
grep -E 'MemTotal|MemAvailable' /proc/meminfo
handback meminfo /proc/meminfo
echo "RESULT ok"
