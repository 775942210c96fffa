#!/bin/sh
# capture_proc.sh [idle|pressure|oom]
#
# Hands back /proc and cgroup v2 memory files from the guest, named
# <file>.<RAM>m-<mode> (e.g. meminfo.64m-pressure):
#   idle      right after boot, test cgroup created but empty
#   pressure  a Python process in cgroup "test" holds anonymous memory while
#             dd writes a file bigger than RAM to the ext4 root and reads it
#             back twice; the group has memory.max so it reclaims on its own
#             and the whole 64 MB machine is short of memory too
#   oom       a dd in cgroup "test" allocates past memory.max and is
#             OOM-killed (memory.events oom/oom_kill become non-zero)
set -u
mode=${1:-idle}
tag="${RIG_MEM_MB}m-$mode"
CG=/sys/fs/cgroup
TEST=$CG/test
fail() { echo "RESULT fail $*"; exit 1; }

echo +memory > $CG/cgroup.subtree_control || fail "cannot enable memory controller"
mkdir -p $TEST
[ -f $TEST/memory.max ] || fail "no memory.max in $TEST"

# "in_test CMD..." runs CMD inside the test cgroup; it execs CMD, so after
# "in_test CMD &" $! is CMD's pid
printf '#!/bin/sh\necho $$ > %s/cgroup.procs && exec "$@"\n' $TEST > /tmp/in_test
chmod +x /tmp/in_test
in_test() { /tmp/in_test "$@"; }

mb_avail() { awk '/^MemAvailable/ {print int($2/1024)}' /proc/meminfo; }

holder_pid=
start_holder() {  # start_holder MB -- Python process keeping MB of touched anonymous memory
    /tmp/in_test python3 -c '
import sys, time
b = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
print("holder ready", flush=True)
time.sleep(600)' "$1" &
    holder_pid=$!
    # wait until the memory is touched (holder prints "holder ready")
    i=0
    while [ $i -lt 100 ]; do
        rss=$(awk '/^RssAnon/ {print $2}' /proc/$holder_pid/status 2>/dev/null)
        [ -n "$rss" ] && [ "$rss" -ge $(( $1 * 1000 )) ] && return 0
        i=$((i + 1))
        usleep 100000
    done
    return 1
}

case "$mode" in
idle)
    sleep 2
    ;;
pressure)
    # limit the group to a bit more than half of what is available at boot
    avail=$(mb_avail)
    limit=$(( avail * 6 / 10 ))
    hold=$(( limit * ${HOLD_PCT:-70} / 100 ))
    fill=$(( RIG_MEM_MB * 3 / 2 ))
    echo "pressure: MemAvailable=${avail}M memory.max=${limit}M holder=${hold}M file=${fill}M"
    echo "${limit}M" > $TEST/memory.max
    start_holder $hold || fail "anon holder did not start"
    t0=$(cut -d' ' -f1 /proc/uptime)
    in_test dd if=/dev/zero of=/var/tmp/fill bs=1M count=$fill 2>&1 | tail -n 1
    in_test sync
    # while a Python loop in the group keeps importing modules (its code and
    # .pyc pages get evicted and read again), stream the file through the
    # page cache, in the group and then from the root group
    in_test sh -c 'while :; do python3 -c "import asyncio, json, email.parser, argparse"; done' &
    importer=$!
    for pass in 1 2 3; do
        in_test dd if=/var/tmp/fill of=/dev/null bs=1M 2>&1 | tail -n 1
    done
    dd if=/var/tmp/fill of=/dev/null bs=1M 2>&1 | tail -n 1
    kill $importer
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "pressure: workload ran from uptime $t0 to $t1"
    ;;
oom)
    echo "16M" > $TEST/memory.max
    # busybox dd fills one 32 MB buffer from /dev/zero in a single read():
    # the charge fails inside the kernel and the memcg OOM killer fires at
    # once (a Python allocator in a 16 MB group can instead thrash on its own
    # code pages for minutes before the OOM killer gives up on reclaim)
    in_test dd if=/dev/zero of=/dev/null bs=32M count=1 && fail "dd was not OOM-killed"
    echo "oom: dd exited with status $? as expected"
    ;;
*)
    fail "unknown mode $mode"
    ;;
esac

# hand everything back while the holder (if any) still holds its memory
handback "meminfo.$tag" /proc/meminfo
handback "zoneinfo.$tag" /proc/zoneinfo
handback "vmstat.$tag" /proc/vmstat
handback "buddyinfo.$tag" /proc/buddyinfo
handback "pressure-memory.$tag" /proc/pressure/memory
handback "pressure-cpu.$tag" /proc/pressure/cpu
handback "pressure-io.$tag" /proc/pressure/io
handback "proc-self-status.$tag" /proc/self/status
for f in memory.stat memory.events memory.events.local memory.pressure \
         memory.current memory.max memory.high memory.low memory.min \
         memory.swap.current memory.swap.max memory.swap.events; do
    [ -r $TEST/$f ] && handback "cgv2-$f.$tag" $TEST/$f
done
[ -r $CG/memory.stat ] && handback "cgv2-root-memory.stat.$tag" $CG/memory.stat
[ -r $CG/memory.pressure ] && handback "cgv2-root-memory.pressure.$tag" $CG/memory.pressure
ls $CG | handback "cgv2-root-files.$tag"
ls $TEST | handback "cgv2-test-files.$tag"
if [ -n "$holder_pid" ]; then
    handback "proc-pid-status-python.$tag" /proc/$holder_pid/status
    handback "proc-pid-smaps_rollup-python.$tag" /proc/$holder_pid/smaps_rollup
fi
{
    echo "kernel: $(uname -a)"
    echo "cmdline: $(cat /proc/cmdline)"
    echo "ram: ${RIG_MEM_MB} MB (qemu -m), mode: $mode"
    echo "python: $(python3 -c 'import sys; print(sys.version.split()[0])')"
    echo "uptime: $(cat /proc/uptime)"
} | handback "env.$tag"
dmesg | handback "dmesg.$tag"

[ -n "$holder_pid" ] && kill $holder_pid
rm -f /var/tmp/fill

# sanity checks on what we captured
some_total=$(awk '/^some/ {sub("total=", "", $5); print $5}' /proc/pressure/memory)
cg_some=$(awk '/^some/ {sub("total=", "", $5); print $5}' $TEST/memory.pressure)
echo "psi some total: system=$some_total us, test cgroup=$cg_some us"
case "$mode" in
pressure)
    [ "$cg_some" -gt 0 ] || fail "no memory pressure recorded in the test cgroup"
    max_events=$(awk '$1 == "max" {print $2}' $TEST/memory.events)
    [ "$max_events" -gt 0 ] || fail "memory.events max is 0"
    ;;
oom)
    grep -q '^oom_kill [1-9]' $TEST/memory.events || fail "no oom_kill in memory.events"
    ;;
esac
echo "RESULT ok capture_proc $tag"
