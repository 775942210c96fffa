#!/bin/sh
# Baseline figures for the README: memory right after boot and the resident
# size of an idle asyncio Python process.
set -u
read -r up _ < /proc/uptime
echo "MEASURE uptime_at_scenario_start=$up"
awk '/^(MemTotal|MemFree|MemAvailable):/ {print "MEASURE boot_" $1 " " $2 " kB"}' /proc/meminfo

python3 -c "import asyncio; import time; time.sleep(1)" &
pid=$!
usleep 1300000  # import takes ~0.8 s, then it sleeps 1 s
grep -E '^(VmPeak|VmSize|VmHWM|VmRSS|RssAnon|RssFile):' /proc/$pid/status | sed 's/^/MEASURE asyncio_/'
wait $pid

start=$(cut -d' ' -f1 /proc/uptime)
python3 -c "import asyncio"
end=$(cut -d' ' -f1 /proc/uptime)
echo "MEASURE import_asyncio_s=$(awk "BEGIN {print $end - $start}")"

start=$(cut -d' ' -f1 /proc/uptime)
python3 -c "pass"
end=$(cut -d' ' -f1 /proc/uptime)
echo "MEASURE python_startup_s=$(awk "BEGIN {print $end - $start}")"

if python3 -c "import memagent" 2>/dev/null; then
    echo "MEASURE import_memagent=ok"
else
    echo "MEASURE import_memagent=failed"
fi
echo "RESULT ok"
