"""Boot: the guest came up through its init scripts (`run --init`), as a
device does, and /etc/init.d/S60memagent started the agent with the board's
profile (/etc/memagent/memagent.conf).  Checks, in order:

- the pidfile names a live process called "memagent" running
  `/usr/bin/memagent run --config /etc/memagent/memagent.conf`;
- its control socket answers; the source is psi; the thresholds are the
  profile's; its oom_score_adj is -1000;
- `memagent status` answers in both forms (human, --json) with that pid;
- `S60memagent reload` sends SIGHUP: the log says "config reloaded", same pid;
- `restart` gives a new pid that answers; `status` says running;
- `stop` ends it and removes the pidfile and the socket; `status` exits 3;
- `start` again, so that the rig's shutdown (the scripts' stop, in reverse
  order) stops a running agent: the host checks "Stopping memagent: OK".

FACT lines: the agent's RSS (and a bare `import asyncio` for scale), the
time from kernel start to the first status answer, from the agent's exec to
it, and a restart's.  Every process here is the guest's own.
"""

import json
import os
import subprocess
import sys
import time

import rigguest
from rigguest import Checks, fact

from memagent import aio
from memagent.core.config import load_config, thresholds_from_config
from memagent.ipc import control
from memagent.plugins.kill_background.settings import SCHEMA as KILL_SCHEMA

SCRIPT = "/etc/init.d/S60memagent"
PIDFILE = "/var/run/memagent.pid"
CONFIG = "/etc/memagent/memagent.conf"
SOCKET = "/run/memagent.sock"
SYSLOG = "/var/log/messages"
# The init scripts run with init's bare environment (rig-init does the same).
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def uptime_s():
    """Return: seconds since the kernel started."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def read_pid():
    """Return: the pid in the pidfile, or None."""
    try:
        with open(PIDFILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    """Return: True while ``pid`` exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def proc_text(pid, name):
    """Return: /proc/PID/NAME as text (NULs as spaces), "" if gone."""
    try:
        with open("/proc/%d/%s" % (pid, name), "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def started_s(pid):
    """Return: when ``pid`` was exec'd, in seconds since the kernel started."""
    fields = proc_text(pid, "stat").rpartition(")")[2].split()
    return int(fields[19]) / CLK_TCK  # field 22, starttime


def status_kib(pid, key):
    """Return: a "kB" field of /proc/PID/status, or -1."""
    for line in proc_text(pid, "status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def query(timeout_s):
    """Ask the agent on SOCKET until it answers.  Returns: its status dict,
    or None if it never did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = aio.run(control.query(SOCKET, "status", timeout_ms=3000))
            if reply.get("ok") and isinstance(reply.get("status"), dict):
                return reply["status"]
        except (OSError, ValueError, aio.TimeoutError):
            pass
        time.sleep(0.1)
    return None


def initscript(action):
    """Run ``S60memagent ACTION`` as init would.  Returns: (exit code, output)."""
    p = subprocess.run([SCRIPT, action], env=BARE_ENV, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=60)
    print("S60memagent %s -> %d: %s" % (action, p.returncode, p.stdout.strip()), flush=True)
    return p.returncode, p.stdout


def cli(*args):
    """Run /usr/bin/memagent ARGS.  Returns: (exit code, stdout)."""
    p = subprocess.run(["/usr/bin/memagent"] + list(args), env=BARE_ENV,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if p.returncode:
        print("memagent %s -> %d: %s" % (" ".join(args), p.returncode, p.stderr), flush=True)
    return p.returncode, p.stdout


def syslog_text():
    """Return: the syslog so far ("" if there is none)."""
    try:
        with open(SYSLOG, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def vmstat(key):
    """Return: the kernel's counter ``key`` from /proc/vmstat, or None."""
    with open("/proc/vmstat") as f:
        for line in f:
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return None


def wait_for(predicate, timeout_s, step_s=0.1):
    """Return: True once ``predicate()`` is true, False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def check_started(check):
    """The agent the init script started.  Returns: (pid, status) or (None, None)."""
    if not check(wait_for(lambda: read_pid() is not None, 30), "pidfile %s" % PIDFILE):
        return None, None
    pid = read_pid()
    check(proc_text(pid, "comm") == "memagent", "comm is %r" % proc_text(pid, "comm"))
    cmdline = proc_text(pid, "cmdline")
    # CPython runs the script /usr/bin/memagent; the MicroPython launcher
    # execs `micropython ... -m memagent`
    check(cmdline.endswith(("/usr/bin/memagent run --config " + CONFIG,
                            "-m memagent run --config " + CONFIG)), "cmdline %r" % cmdline)
    st = query(60)
    if not check(st is not None, "status on %s within 60 s of the first check" % SOCKET):
        return pid, None
    up = uptime_s()
    fact("board", open("/rig/boot-init").read().strip())
    fact("boot_to_status_s", "%.1f" % up)
    fact("exec_to_status_s", "%.1f" % (up - started_s(pid)))
    # The agent answers while its plugins still start (its peak memory):
    # at 64 MB, a `memagent status` beside that peak left too little.
    check(wait_for(lambda: "plugins started in" in syslog_text(), 60),
          "no 'plugins started' in %s" % SYSLOG)
    fact("exec_to_plugins_started_s", "%.1f" % (uptime_s() - started_s(pid)))
    return pid, query(60) or st


def check_status(check, pid, st):
    """What the running agent reports, and what /proc says of it."""
    fact("source", st.get("source"))
    check(st.get("source") == "psi", "source %r, not psi (skipped: %s)"
          % (st.get("source"), st.get("unavailable")))
    check(st.get("pid") == pid, "status pid %s, pidfile %s" % (st.get("pid"), pid))
    total_kib = (st.get("reading") or {}).get("total_kib") or 0
    want = thresholds_from_config(load_config(CONFIG), total_kib)
    th = st.get("thresholds") or {}
    check((th.get("low_kib"), th.get("critical_kib")) == (want.low_kib, want.critical_kib),
          "thresholds %s, the profile says %d/%d" % (th, want.low_kib, want.critical_kib))
    fact("low_kib", th.get("low_kib"))
    fact("critical_kib", th.get("critical_kib"))
    adj = proc_text(pid, "oom_score_adj")
    fact("oom_score_adj", adj)
    check(adj == "-1000", "oom_score_adj %s" % adj)
    plugins = {p.get("name"): p for p in st.get("plugins") or []}
    fact("plugins", ",".join(sorted(plugins)))
    for name, p in sorted(plugins.items()):
        if p.get("unavailable"):
            fact("plugin_unavailable_" + name, p["unavailable"])
    kb = (plugins.get("kill_background") or {}).get("state") or {}
    fact("kill_background_dry_run", kb.get("dry_run"))
    # The plugin owns its section: check the profile against its schema, as the agent does.
    config = load_config(CONFIG)
    config.claim({"kill_background": KILL_SCHEMA},
                 {s: "not checked here" for s in config.unclaimed() if s != "kill_background"})
    want_dry = config.get("kill_background", "dry_run")
    check(kb.get("dry_run") == want_dry,
          "kill_background dry_run %r, the profile says %r" % (kb.get("dry_run"), want_dry))


def check_cli(check, pid):
    """`memagent status`, as an operator types it."""
    rc, out = cli("status")
    check(rc == 0 and "source psi:" in out and "agent pid %d," % pid in out,
          "memagent status (%d): %r" % (rc, out[:300]))
    rc, out = cli("status", "--json")
    try:
        js = json.loads(out)
    except ValueError:
        js = {}
    check(rc == 0 and js.get("pid") == pid and js.get("source") == "psi",
          "memagent status --json (%d): %r" % (rc, out[:300]))


def check_memory(pid):
    """FACT the agent's RSS, beside a bare `import asyncio` for scale."""
    time.sleep(2)
    for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
        fact("agent_%s_kib" % key.lower(), status_kib(pid, key))
    bare = subprocess.Popen([sys.executable, "-c", "import asyncio, time; time.sleep(3)"])
    time.sleep(2)
    fact("python_asyncio_vmrss_kib", status_kib(bare.pid, "VmRSS"))
    bare.wait()
    # MemAvailable here also excludes this scenario's own Python
    fact("scenario_vmrss_kib", status_kib(os.getpid(), "VmRSS"))
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("MemTotal:", "MemAvailable:")):
                fact(line.split(":")[0].lower() + "_kib", line.split()[1])


def check_reload(check, pid):
    """reload: SIGHUP, the config is re-read, the process stays."""
    seen = syslog_text().count("config reloaded")
    rc, out = initscript("reload")
    check(rc == 0 and "OK" in out, "reload said %r" % out)
    ok = wait_for(lambda: syslog_text().count("config reloaded") > seen, 15)
    check(ok, "no 'config reloaded' in %s after reload" % SYSLOG)
    check(read_pid() == pid and alive(pid), "reload changed the process")


def check_restart(check, pid):
    """restart: a new process, which answers.  Returns: its pid."""
    t0 = time.monotonic()
    rc, out = initscript("restart")
    check(rc == 0 and out.count("OK") == 2, "restart said %r" % out)
    new = read_pid()
    check(new is not None and new != pid, "restart: pid %s -> %s" % (pid, new))
    check(not alive(pid), "the old agent %d still runs after restart" % pid)
    st = query(60)
    check(st is not None and st.get("pid") == new, "the restarted agent does not answer")
    fact("restart_to_status_s", "%.1f" % (time.monotonic() - t0))
    rc, out = initscript("status")
    check(rc == 0 and "running" in out, "status after restart: %d %r" % (rc, out))
    return new


def check_stop(check, pid):
    """stop: the agent ends, the pidfile and the socket go."""
    rc, out = initscript("stop")
    check(rc == 0 and "OK" in out, "stop said %r" % out)
    check(not alive(pid), "agent %d still runs after stop" % pid)
    check(not os.path.exists(PIDFILE), "pidfile left after stop")
    check(not os.path.exists(SOCKET), "socket left after stop")
    rc, out = initscript("status")
    check(rc == 3, "status after stop: %d %r" % (rc, out))
    rc, out = initscript("stop")
    check(rc != 0 and "FAIL" in out, "a second stop said %d %r" % (rc, out))


def main():
    check = Checks()
    pid, st = check_started(check)
    if st is None:
        rigguest.handback("messages", data=syslog_text())
        check.finish("")
        return 1
    check_status(check, pid, st)
    check_cli(check, pid)
    check_memory(pid)
    check_reload(check, pid)
    pid = check_restart(check, pid)
    check_stop(check, pid)
    rc, out = initscript("start")
    check(rc == 0 and "OK" in out and query(60) is not None, "start again: %r" % out)
    log = syslog_text()
    # Whoever killed what during the boot: the kernel (vmstat) or the agent.
    fact("kernel_oom_kills", vmstat("oom_kill"))
    fact("agent_kills", sum(1 for ln in log.splitlines()
                            if "action kill:" in ln and "dry_run=False" in ln))
    errors = [ln for ln in log.splitlines() if "memagent[" in ln and ".err" in ln]
    fact("syslog_errors", len(errors))
    check(not errors, "errors in the log: %s" % errors[:3])
    rigguest.handback("messages", data=log)
    check.finish("booted through S60memagent: psi, status, reload, restart, stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
