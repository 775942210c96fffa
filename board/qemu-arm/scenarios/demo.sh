#!/bin/sh
# memagent demo on cgroup v2 (the guest), as a fresh Debian 12 would run it.
cd /tmp
# --apps 0: three cooperative Python apps (~12 MB each) do not fit beside a
# 40 MiB handset in this 128 MB guest; the apps mode is tested on the host.
python3 -m memagent demo --apps 0 --memcg-mib 40 --rate-mib-s 10 > /tmp/demo.out 2>&1
rc=$?
cat /tmp/demo.out
python3 -m memagent demo --apps 0 --memcg-mib 40 --json > /tmp/demo.json 2>/tmp/demo.err
rc2=$?
cat /tmp/demo.json /tmp/demo.err
ls /sys/fs/cgroup | grep memagent && echo "LEFTOVER memcg"
if [ $rc = 0 ] && [ $rc2 = 0 ] && grep -Eq "LOW +from NORMAL" /tmp/demo.out && grep -q '"mode": "live"' /tmp/demo.json; then
  echo "RESULT ok demo live on cgroup v2"
else
  echo "RESULT fail demo rc=$rc rc2=$rc2"
fi
