"""kill_background and its mechanics (memagent.pidkill), on real processes.

pidkill is tested directly on children of this test (fast, deterministic),
the pid-reuse race with a real reused pid (forced through ns_last_pid), and
the plugin end to end: a real ``memagent run`` on a 128 MiB memcg of the
test's own, victims and survivors started inside it (registered apps and
plain processes with an oom_score_adj), and real anonymous pressure.  Every
process signalled here was started here; the agent's scope is that memcg.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from plugrig import Rig

from memagent import aio
from memagent.core import pidfs
from memagent.core.config import ConfigError
from memagent.core.levels import CRITICAL, LOW, Notification
from memagent.core.protocol import PROTOCOL_VERSION
from memagent.demo import loadgen
from memagent.demo import memcg as memcg_mod
from memagent.ipc.control import query
from memagent.plugins.kill_background import pidkill, victims
from memagent.plugins.kill_background.plugin import KillBackground
from memagent.sense import domains
from support import exchange, need, package_layout, stop_agent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Victims run on Debian's python3 without site (3.4 MiB charged each, against
# 9 MiB for the dev python); memagent comes from a symlink to the tree.
SMALL_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"

VICTIM = r"""
import os, signal, sys, time
name, adj, mode, log, extra_mib, cls, sock = sys.argv[1:8]
with open("/proc/self/comm", "w") as f:
    f.write(name)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write(adj)
hold = bytearray(int(extra_mib) << 20)
for i in range(0, len(hold), 4096):
    hold[i] = 1
def note(what):
    with open(log, "a") as f:  # one short O_APPEND write: atomic
        f.write("%s %s %d\n" % (what, name, time.monotonic_ns() // 1000000))
def on_term(signum, frame):
    note("TERM")
    if mode == "slow":
        time.sleep(1.0)
    elif mode == "linger":
        time.sleep(30)
    note("EXIT")
    os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore" else on_term)
client = None
if cls != "-":
    from memagent.client import Client
    client = Client(name, cls, socket_path=sock)
    client.connect()
print("ready", flush=True)
while True:
    if client is not None:
        client.poll(1000)
    else:
        time.sleep(1)
"""


@pytest.fixture(scope="module")
def victim_dir() -> Iterator[str]:
    """A directory with the victim program and ``memagent`` (a symlink)."""
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        with open(os.path.join(tmp, "victim.py"), "w") as f:
            f.write(VICTIM)
        yield tmp


class Procs:
    """The processes a test started, killed at the end whatever happens."""

    def __init__(self, vdir: str, log: str) -> None:
        self.vdir, self.log = vdir, log
        self.all: List["subprocess.Popen[str]"] = []
        self.by_name: Dict[str, "subprocess.Popen[str]"] = {}

    def victim(self, spawn: Any, name: str, adj: int, mode: str = "obey", extra_mib: int = 0,
               cls: str = "-", sock: str = "-") -> "subprocess.Popen[str]":
        """Start the victim program (through ``spawn``: Popen or Memcg.spawn)
        and wait for its "ready".  Returns: the Popen."""
        argv = [SMALL_PY, "-S", os.path.join(self.vdir, "victim.py"), name, str(adj), mode,
                self.log, str(extra_mib), cls, sock]
        child = spawn(argv, stdout=subprocess.PIPE, text=True,
                      env=dict(os.environ, PYTHONPATH=self.vdir))
        self.all.append(child)
        self.by_name[name] = child
        assert child.stdout.readline() == "ready\n", name
        return child

    def lines(self) -> List[List[str]]:
        """Return: the victims' log as [what, name, mono_ms] lists."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.split() for line in f]

    def close(self) -> None:
        for child in self.all:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def procs(victim_dir: str, tmp_path: Any) -> Iterator[Procs]:
    p = Procs(victim_dir, os.path.join(str(tmp_path), "victims.log"))
    yield p
    p.close()


def kill(pid: int, started: Optional[int], grace_ms: int, wait_ms: int = 3000) -> Any:
    return aio.run(pidkill.kill(pid, started, grace_ms, wait_ms))


# -- pidkill on our own children ------------------------------------------------------

def test_sigterm_obeyed_within_the_grace(procs: Procs) -> None:
    child = procs.victim(subprocess.Popen, "obeys", 0)
    result = kill(child.pid, pidfs.start_time(child.pid), grace_ms=3000)
    assert (result.outcome, result.sigkill, result.mrelease) == ("exited", False, None)
    assert result.ms < 2000 and child.wait(5) == 0
    assert [line[0] for line in procs.lines()] == ["TERM", "EXIT"]


def test_slow_exit_is_waited_for_not_killed(procs: Procs) -> None:
    child = procs.victim(subprocess.Popen, "slow", 0, mode="slow")
    result = kill(child.pid, pidfs.start_time(child.pid), grace_ms=3000)
    assert (result.outcome, result.sigkill) == ("exited", False)
    assert 900 <= result.ms < 3000 and child.wait(5) == 0


def test_sigterm_ignored_gets_sigkill_after_the_grace(procs: Procs) -> None:
    child = procs.victim(subprocess.Popen, "ignores", 0, mode="ignore", extra_mib=64)
    t0 = time.monotonic()
    result = kill(child.pid, pidfs.start_time(child.pid), grace_ms=500)
    took_ms = (time.monotonic() - t0) * 1000
    assert (result.outcome, result.sigkill) == ("killed", True)
    assert 500 <= result.ms <= took_ms < 3000, (result.ms, took_ms)
    assert child.wait(5) == -signal.SIGKILL
    assert result.mrelease is not None  # "ok", or why not (ESRCH: it was already gone)
    assert result.mrelease == "ok" or result.mrelease.split(":")[0] in (
        "ESRCH", "ENOSYS", "EINVAL", "unsupported"), result.mrelease


def test_no_grace_sends_sigkill_and_no_sigterm(procs: Procs) -> None:
    # critical_grace_ms = 0 (the 64 MB profile): the victim that would obey
    # SIGTERM never sees it.
    child = procs.victim(subprocess.Popen, "nograce", 0)
    result = kill(child.pid, pidfs.start_time(child.pid), grace_ms=0)
    assert (result.outcome, result.sigkill) == ("killed", True)
    assert child.wait(5) == -signal.SIGKILL
    assert "TERM" not in [line[0] for line in procs.lines()]


def test_an_exited_pid_is_never_signalled(procs: Procs) -> None:
    child = procs.victim(subprocess.Popen, "gone", 0)
    started = pidfs.start_time(child.pid)
    child.kill()
    child.wait()
    # Either the pid is free (gone) or something else took it (reused): no signal.
    result = kill(child.pid, started, grace_ms=100)
    assert result.outcome in ("gone", "reused") and not result.signalled


def fork_onto(pid: int, argv: List[str]) -> "Optional[subprocess.Popen[str]]":
    """Start ``argv`` as pid ``pid`` (ns_last_pid = pid - 1, then fork; other
    forks on the machine may take it first: retried).  Returns: the Popen,
    or None if the pid could not be had."""
    for _ in range(50):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        if child.pid == pid:
            return child
        child.kill()
        child.wait()
    return None


def test_pid_reuse_race_signals_nothing(procs: Procs, tmp_path: Any) -> None:
    if not os.access(NS_LAST_PID, os.W_OK):
        need("%s is not writable (needs root in the initial pid namespace)" % NS_LAST_PID)
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ndry_run = no\n", plugins=[plugin])
    aio.run(plugin.on_start(services=rig.services(plugin)))
    assert plugin.unavailable is None
    # The victim is scanned (pid and start time recorded), then exits and is reaped.
    first = procs.victim(subprocess.Popen, "victim", 950)
    scanned = victims.read_candidate(first.pid)
    assert scanned is not None and scanned.cls == "cached"
    time.sleep(0.05)  # the fresh process must start in a later clock tick
    first.kill()
    first.wait()
    # A fresh process of ours takes the pid, and would die of a SIGTERM.
    fresh = fork_onto(scanned.pid, [sys.executable, "-c",
                                    "import time; print('ready', flush=True); time.sleep(60)"])
    if fresh is None:
        pytest.skip("could not get pid %d back in 50 tries (a busy machine)" % scanned.pid)
    procs.all.append(fresh)
    assert fresh.stdout is not None and fresh.stdout.readline() == "ready\n"
    entry = aio.run(plugin.execute(scanned, CRITICAL, "CRITICAL test"))
    time.sleep(0.2)
    assert fresh.poll() is None, "the process that reused the pid was signalled"
    assert (entry["action"], entry["outcome"], entry["pid"], entry["sigkill"]) == (
        "kill", "reused", scanned.pid, False)
    assert (plugin.kills, plugin.skipped) == (0, 1) and rig.events.last_action is entry


# -- the plugin on its services: a captured /proc tree says the level, and
# the victims are real processes of this test, shown in that tree ------------------


def note(level: int, avail_kib: int = 1000, prev: Optional[int] = None) -> Notification:
    return Notification(0, level, level if prev is None else prev, "avail", avail_kib, 111220,
                        None, 20000)


async def until_idle(plugin: KillBackground) -> None:
    while plugin.running:
        await aio.sleep_ms(20)


def test_one_victim_at_a_time_and_on_stop_cancels(memcg: memcg_mod.Memcg, procs: Procs,
                                                 tmp_path: Any) -> None:
    # A victim that lingers after SIGTERM is dying (in its 5 s grace) when
    # more pressure comes; nothing else is signalled, and on_stop ends it all.
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ndry_run = no\ngrace_ms = 5000\n",
              plugins=[plugin])
    first = procs.victim(memcg.spawn, "first", 1000, mode="linger", extra_mib=8)
    second = procs.victim(memcg.spawn, "second", 1000)
    for child in (first, second):
        rig.tree.show(child.pid)
    fds_before = len(os.listdir("/proc/self/fd"))

    async def scenario() -> float:
        await rig.start()
        rig.set_level(avail_kib=5000)  # CRITICAL, and it stays so
        await plugin.on_pressure(level=CRITICAL, notification=note(CRITICAL), deficit_kib=20000)
        assert plugin.running
        for _ in range(5):
            await aio.sleep_ms(100)
            await plugin.on_pressure(level=CRITICAL, notification=note(CRITICAL),
                                     deficit_kib=20000)
        t0 = time.monotonic()
        await rig.close()  # on_stop
        return time.monotonic() - t0

    stop_s = aio.run(scenario())
    assert plugin.busy == 5 and plugin.sequences == 1 and not plugin.running
    assert stop_s < 0.5 and plugin.kills == 0  # cancelled in the grace: no record
    assert first.poll() is None and second.poll() is None
    assert [line[:2] for line in procs.lines()] == [["TERM", "first"]]
    assert len(os.listdir("/proc/self/fd")) == fds_before  # the pidfd was closed


def test_the_cooldown_holds_at_low_but_not_at_critical(memcg: memcg_mod.Memcg, procs: Procs,
                                                      tmp_path: Any) -> None:
    # After a sequence, LOW waits out cooldown_ms; CRITICAL does not (the
    # bench saw a 2 s cooldown hand a 10 MiB/s ramp to the kernel OOM killer).
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ndry_run = no\nkill_at_low = always\n"
              "cooldown_ms = 60000\nmax_kills = 1\n", plugins=[plugin])
    for name in ("first", "second", "third"):
        rig.tree.show(procs.victim(memcg.spawn, name, 1000).pid)

    async def scenario() -> "List[int]":
        await rig.start()
        rig.set_level(avail_kib=5000)
        seen = []
        for level in (CRITICAL, LOW, CRITICAL):
            await plugin.on_pressure(level=level, notification=note(level), deficit_kib=1)
            await until_idle(plugin)
            seen.append(plugin.kills)
        await rig.close()
        return seen

    assert aio.run(scenario()) == [1, 1, 2]
    assert plugin.cooling == 1 and plugin.sequences == 2
    assert len([line for line in procs.lines() if line[0] == "TERM"]) == 2


def test_low_kills_wait_for_an_absent_user_unless_the_domain_thrashes(tmp_path: Any) -> None:
    # kill_at_low = idle: with nobody known to be away, LOW defers; a PSI
    # full stall at the thrash threshold makes it urgent (the 64 MB guest
    # sat at LOW in a thrash for over 60 s while it deferred).  Dry run:
    # a sequence that may go records its choice (here: no victim in the tree).
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ncooldown_ms = 0\n", plugins=[plugin])

    async def at_low(psi_full: "Optional[float]") -> "Tuple[int, int]":
        if psi_full is None:
            rig.tree.load(avail_kib=15000)
            os.unlink(os.path.join(rig.tree.root, "pressure", "memory"))
            rig.sensor.read_now("test")
        else:
            rig.set_level(avail_kib=15000, psi_full=psi_full)
        await plugin.on_pressure(level=LOW, notification=note(LOW, 15000))
        await until_idle(plugin)
        return plugin.deferred, plugin.sequences

    async def scenario() -> "List[Tuple[int, int]]":
        await rig.start()
        services = rig.services(plugin)
        seen = [await at_low(2.0)]
        assert services.level == LOW and services.presence.state(aio.ticks_ms()) == "unknown"
        seen += [await at_low(12.5), await at_low(None)]
        rig.presence.configure(100, "")  # idle after 100 ms without input
        rig.presence.start_feeding("test", aio.ticks_ms() - 1000)
        seen.append(await at_low(2.0))
        await rig.close()
        return seen

    assert aio.run(scenario()) == [(1, 0), (1, 1), (2, 1), (2, 2)]
    assert plugin.no_victim == 2


def test_low_kills_come_after_the_trims_even_with_always(tmp_path: Any) -> None:
    # kill_at_low = always, dry run: a lead-time LOW (the memory still above
    # the LOW threshold, no thrash) only trims, and so does a LOW whose newest
    # trims freed memory; a LOW below the threshold after trims that freed
    # nothing may kill (the 64 MB handset day's first kill hit a cached app
    # 0.4 s after its start, on the forecast, before any trim).
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\nkill_at_low = always\ncooldown_ms = 0\n",
              plugins=[plugin])

    async def at_low(avail_kib: int, freed_kib: "Optional[int]") -> "Tuple[int, int]":
        rig.set_level(avail_kib=avail_kib, psi_full=0.0)
        results = None if freed_kib is None else {
            "release_caches": {"freed_kib": freed_kib, "t_ms": aio.ticks_ms()}}
        await plugin.on_pressure(level=LOW, notification=note(LOW, avail_kib),
                                 results=results)
        await until_idle(plugin)
        return plugin.deferred, plugin.sequences

    async def scenario() -> "List[Tuple[int, int]]":
        await rig.start()
        th = rig.services(plugin).thresholds
        seen = [await at_low(th.low_kib + 2000, None),   # the forecast alone
                await at_low(th.low_kib - 2000, 1500),   # the trims still pay
                await at_low(th.low_kib - 2000, 0)]      # they freed nothing
        # Above LOW, a PSI full avg10 over the thrash threshold (it lags: the
        # 128 MB day killed on it 2 s after its growth had ended) is no reason.
        rig.set_level(avail_kib=th.low_kib + 2000, psi_full=25.0)
        await plugin.on_pressure(level=LOW, notification=note(LOW, th.low_kib + 2000),
                                 results={"release_caches": {"freed_kib": 0,
                                                             "t_ms": aio.ticks_ms()}})
        await until_idle(plugin)
        seen.append((plugin.deferred, plugin.sequences))
        await rig.close()
        return seen

    assert aio.run(scenario()) == [(1, 0), (2, 0), (2, 1), (3, 1)]


def test_a_thrash_at_low_kills_only_once_the_trims_free_nothing(tmp_path: Any) -> None:
    # A streaming reader's page-cache churn keeps PSI full high at LOW: while
    # the apps' trims still free memory, that alone is no reason to kill.
    # The trims come in the results of the plugins before this one.
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ncooldown_ms = 0\n", plugins=[plugin])

    async def at_low(results: "Dict[str, Any]") -> int:
        await plugin.on_pressure(level=LOW, notification=note(LOW, 15000), results=results)
        await until_idle(plugin)
        return plugin.deferred

    async def scenario() -> "List[int]":
        await rig.start()
        rig.set_level(avail_kib=15000, psi_full=12.5)
        trims = {"deficit_kib": 8000, "freed_kib": 2816, "asked": [], "ms": 40,
                 "t_ms": aio.ticks_ms()}
        renotify_ms = rig.services(plugin).thresholds.renotify_ms  # type: ignore[union-attr]
        seen = [await at_low({}),  # no trim event yet: the thrash counts
                await at_low({"release_caches": trims}),  # the trims pay: wait
                await at_low({"other": "not a trim event"}),  # the newest event still pays
                await at_low({"release_caches": dict(trims, freed_kib=0,
                                                     t_ms=aio.ticks_ms())})]  # caches gone
        old = dict(trims, t_ms=aio.ticks_ms() - 2 * renotify_ms - 2000)
        plugin2 = KillBackground()  # a fresh one: only the old event known
        await plugin2.on_start(services=rig.services(plugin2))
        await plugin2.on_pressure(level=LOW, notification=note(LOW, 15000),
                                  results={"release_caches": old})
        await until_idle(plugin2)
        seen.append(plugin2.deferred)  # an old event says nothing of now
        await rig.close()
        return seen

    assert aio.run(scenario()) == [0, 1, 2, 2, 0]
    assert plugin.sequences == 2


def test_a_notification_already_answered_kills_nothing(memcg: memcg_mod.Memcg, procs: Procs,
                                                       tmp_path: Any) -> None:
    # The notification says CRITICAL at 1000 KiB, but by the time the
    # plugin runs (after release_caches' trims) the domain has room: the
    # reading before the first kill finds it and nobody is signalled.
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ndry_run = no\n", plugins=[plugin])
    victim = procs.victim(memcg.spawn, "victim", 1000)
    rig.tree.show(victim.pid)

    async def scenario() -> None:
        await rig.start()
        rig.set_level(avail_kib=80000)
        await plugin.on_pressure(level=CRITICAL, notification=note(CRITICAL, prev=CRITICAL),
                                 deficit_kib=20000)
        await until_idle(plugin)
        await rig.close()

    aio.run(scenario())
    assert (plugin.sequences, plugin.relieved, plugin.kills) == (1, 1, 0)
    assert victim.poll() is None and procs.lines() == []


def test_a_fake_proc_tree_never_leads_to_a_real_signal(procs: Procs, tmp_path: Any) -> None:
    # [agent] proc_root points at a test's tree that names a real child of
    # ours with a made-up start time: the kill checks the real /proc, skips.
    child = procs.victim(subprocess.Popen, "real", 0)
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ndry_run = no\n", plugins=[plugin])
    fake = os.path.join(rig.tree.root, str(child.pid))
    os.makedirs(fake)
    real_start = pidfs.start_time(child.pid)
    assert real_start is not None
    with open(os.path.join(fake, "stat"), "w") as f:
        f.write("%d (fake) S 1 %s%d 0 0\n" % (child.pid, "0 " * 17, real_start + 1))
    with open(os.path.join(fake, "oom_score_adj"), "w") as f:
        f.write("1000\n")
    aio.run(plugin.on_start(services=rig.services(plugin)))
    chosen = plugin.pick(CRITICAL)
    assert chosen is not None and (chosen.pid, chosen.comm) == (child.pid, "fake")
    entry = aio.run(plugin.execute(chosen, CRITICAL, "CRITICAL test"))
    assert entry["outcome"] == "reused" and child.poll() is None and procs.lines() == []


def test_a_sequence_s_later_picks_read_only_its_candidates(procs: Procs,
                                                            tmp_path: Any) -> None:
    # The first pick reads every process and keeps its candidates; a pick
    # with that pool re-reads only them (in the 64 MB thrash a full scan took
    # 0.4-1.2 s before each kill), so a process that came since is not seen
    # until the next full pick.  Dry run: nothing is signalled.
    plugin = KillBackground()
    rig = Rig(str(tmp_path), plugins=[plugin])
    old = procs.victim(subprocess.Popen, "old", 500)
    rig.tree.show(old.pid)
    aio.run(plugin.on_start(services=rig.services(plugin)))
    first = plugin.pick(CRITICAL)
    assert first is not None and first.pid == old.pid
    assert plugin.last_pool == (CRITICAL, [old.pid])
    new = procs.victim(subprocess.Popen, "new", 1000)  # cached: it would go first
    rig.tree.show(new.pid)
    again = plugin.pick(CRITICAL, pool=plugin.last_pool)
    assert again is not None and again.pid == old.pid
    full = plugin.pick(CRITICAL)
    assert full is not None and full.pid == new.pid
    assert plugin.last_pool is not None and set(plugin.last_pool[1]) == {old.pid, new.pid}
    assert procs.lines() == []


@pytest.mark.parametrize("text, key", [
    ("low_class = bogus", "low_class"),
    ("low_class = foreground", "low_class"),
    ("kill_at_low = sometimes", "kill_at_low"),
    ("grace_ms = -1", "grace_ms"),
    ("critical_grace_ms = -2", "critical_grace_ms"),
    ("max_kills = 0", "max_kills"),
    ("critical_margin_pct = 101", "critical_margin_pct"),
])
def test_a_bad_value_is_a_config_error_naming_its_line(text: str, key: str,
                                                       tmp_path: Any) -> None:
    # The section is checked against the plugin's schema when the plugins load.
    with pytest.raises(ConfigError, match=r"test.conf:\d+: \[kill_background\] %s: " % key):
        Rig(str(tmp_path), "[kill_background]\ndry_run = no\n%s\n" % text,
            plugins=[KillBackground()])


@pytest.mark.parametrize("text, low_ms, critical_ms", [
    ("grace_ms = 700", 700, 700),  # critical_grace_ms -1: grace_ms's
    ("grace_ms = 700\ncritical_grace_ms = 0", 700, 0),
])
def test_the_grace_at_each_level(text: str, low_ms: int, critical_ms: int,
                                 tmp_path: Any) -> None:
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\n%s\n" % text, plugins=[plugin])
    aio.run(plugin.on_start(services=rig.services(plugin)))
    assert plugin.settings is not None
    assert (plugin.settings.grace_for(LOW), plugin.settings.grace_for(CRITICAL)) == \
        (low_ms, critical_ms)


def test_contradicting_settings_leave_the_plugin_idle(tmp_path: Any, caplog: Any) -> None:
    plugin = KillBackground()
    rig = Rig(str(tmp_path), "[kill_background]\ndry_run = no\ncritical_class = cached\n"
              "low_class = service\n", plugins=[plugin])
    with caplog.at_level(logging.ERROR):
        aio.run(plugin.on_start(services=rig.services(plugin)))
    assert plugin.unavailable and "critical_class" in plugin.unavailable
    assert any("kill_background" in r.getMessage() and "critical_class" in r.getMessage()
               for r in caplog.records), caplog.text
    assert plugin.status()["running"] is False and plugin.settings is None


# -- end to end: a real agent, a real memcg, real pressure ------------------------------

AGENT_CONF = """
[plugins]
enable = kill_background
[levels]
renotify_ms = 500
[kill_background]
dry_run = %(dry_run)s
kill_at_low = always
low_class = cached
critical_class = service
grace_ms = 1200
wait_ms = 3000
cooldown_ms = 300
max_kills = 8
protect = keepme
"""


def start_agent(group: memcg_mod.Memcg, tmp: str, conf_text: str) -> "subprocess.Popen[str]":
    """Run ``memagent run`` on ``group`` with ``conf_text`` as its config file,
    its socket and event log in ``tmp``.  Returns: the agent, once it listens."""
    conf = os.path.join(tmp, "m.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    sock = os.path.join(tmp, "ctl.sock")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", group.path,
                              "--socket", sock, "--events-json", os.path.join(tmp, "ev.jsonl"),
                              "-c", conf], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return agent


def actions(tmp: str) -> List[Dict[str, Any]]:
    path = os.path.join(tmp, "ev.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [e for e in (json.loads(line) for line in f) if e.get("action") == "kill"]


def plugin_state(tmp: str) -> Dict[str, Any]:
    st = aio.run(query(os.path.join(tmp, "ctl.sock")))["status"]
    (entry,) = [p for p in st["plugins"] if p["name"] == "kill_background"]
    assert entry["unavailable"] is None
    state: Dict[str, Any] = entry["state"]
    return state


def hog(group: memcg_mod.Memcg, mib: int, rate: int) -> "subprocess.Popen[str]":
    """Start an allocator of ``mib`` MiB at ``rate`` MB/s that holds until
    killed (adj 0: a foreground process, never a victim)."""
    argv = [SMALL_PY, "-S", loadgen.__file__, "anon", "--rate", str(rate),
            "--max-mb", str(max(mib, 1)), "--hold", "-1"]
    return group.spawn(argv, stdout=subprocess.PIPE, text=True)


def avail_mib(group: memcg_mod.Memcg) -> int:
    return domains.MemcgDomain(group.path).read(0).avail_kib // 1024


def rss_anon_mib(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


def wait_done(child: "subprocess.Popen[str]", timeout_s: float = 30) -> None:
    """Wait for a loadgen's "done" line."""
    deadline = time.monotonic() + timeout_s
    assert child.stdout is not None
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        assert line, "the allocator died"
        if line.startswith("done"):
            return
    pytest.fail("the allocator did not finish")


@pytest.fixture
def group128() -> Iterator[memcg_mod.Memcg]:
    """A memcg of 128 MiB: room for ten small victims and the pressure."""
    reason = memcg_mod.available()
    if reason is not None:
        need(reason)
    with memcg_mod.Memcg(limit_kib=128 * 1024) as group:
        yield group


@pytest.mark.memcg
@pytest.mark.slow
def test_kills_in_order_under_real_pressure(group128: memcg_mod.Memcg, procs: Procs,
                                            tmp_path: Any) -> None:
    tmp = str(tmp_path)
    sock = os.path.join(tmp, "ctl.sock")
    agent = start_agent(group128, tmp, AGENT_CONF % {"dry_run": "no"})
    try:
        v = procs.victim
        spawn = group128.spawn
        # Survivors: protected name, perceptible adj, the foreground pid, a
        # registered foreground app (whose adj alone would say cached).
        v(spawn, "keepme", 1000)
        v(spawn, "u250", 250)
        fgpid = v(spawn, "fgpid", 1000)
        v(spawn, "reg_fg", 1000, cls="foreground", sock=sock)
        # Victims, in the order expected.
        order = ["slow", "u950", "reg_old", "reg_new", "u500", "reg_service"]
        v(spawn, "slow", 1000, mode="slow", extra_mib=4)  # cached, unknown use, largest
        v(spawn, "u950", 950)                               # cached, unknown use
        v(spawn, "reg_old", 0, cls="cached", sock=sock)     # registered first: older
        time.sleep(0.05)
        v(spawn, "reg_new", 0, cls="cached", sock=sock)
        v(spawn, "u500", 500, mode="ignore")                # service: CRITICAL only
        v(spawn, "reg_service", 1000, cls="service", sock=sock)
        reply = exchange(_connect(sock), (json.dumps(
            {"cmd": "foreground", "v": PROTOCOL_VERSION, "id": 1, "pid": fgpid.pid}) +
            "\n").encode())
        assert reply and reply[0]["ok"], reply
        victims_mib = sum(rss_anon_mib(procs.by_name[n].pid) for n in order)
        # Pressure: fill to just above LOW, then a slow ramp that, once every
        # victim is gone, leaves the group at CRITICAL (8 MiB available).
        base = hog(group128, avail_mib(group128) - 36, 0)
        wait_done(base)
        ramp = hog(group128, int(avail_mib(group128) - 4 + victims_mib - 8), 3)
        deadline = time.monotonic() + 60
        while any(procs.by_name[n].poll() is None for n in order):
            assert ramp.poll() is None, "the ramp was killed"
            assert time.monotonic() < deadline, (actions(tmp), procs.lines())
            time.sleep(0.2)
        time.sleep(0.5)
        state = plugin_state(tmp)
        oom_kills = group128.oom_kill_count()
        survivors = {n: procs.by_name[n].poll() for n in ("keepme", "u250", "fgpid", "reg_fg")}
        hogs_alive = (base.poll(), ramp.poll())
    finally:
        err = stop_agent(agent)
    kills = [e for e in actions(tmp) if e["outcome"] in ("exited", "killed")]
    pids = {procs.by_name[n].pid: n for n in procs.by_name}
    assert [pids.get(e["pid"]) for e in kills] == order, (kills, err[-3000:])
    assert oom_kills == 0 and hogs_alive == (None, None)
    assert survivors == dict.fromkeys(survivors), survivors
    assert not [e for e in actions(tmp) if pids.get(e["pid"]) in survivors or e["dry_run"]]
    by_name = {pids[e["pid"]]: e for e in kills}
    assert [by_name[n]["cls"] for n in order] == ["cached"] * 4 + ["service"] * 2
    assert by_name["reg_service"]["registered"] and not by_name["u500"]["registered"]
    # The slow victim was waited for (no SIGKILL); nobody else was signalled
    # while it was dying.
    assert not by_name["slow"]["sigkill"] and by_name["slow"]["ms"] >= 900
    log = procs.lines()
    slow_term, slow_exit = [int(t) for what, name, t in log if name == "slow"]
    others = [int(t) for what, name, t in log if what == "TERM" and name != "slow"]
    assert len(others) == 4 and min(others) >= slow_exit > slow_term, log
    # SIGTERM ignored: SIGKILL after the grace.
    assert by_name["u500"]["sigkill"] and by_name["u500"]["ms"] >= 1200
    assert procs.by_name["u500"].returncode == -signal.SIGKILL
    assert all(procs.by_name[n].returncode == 0 for n in order if n != "u500")
    assert all(e["rss_kib"] > 1000 and e["freed_kib"] is not None and
               e["reason"].split()[0] in ("LOW", "CRITICAL") for e in kills), kills
    assert [e["level"] for e in kills][-2:] == ["CRITICAL", "CRITICAL"]
    assert state["kills"] == 6 and (state["running"] is False or state["watching"]), state
    print("kill_background: %s; busy notes while dying %d" % (
        [(pids[e["pid"]], e["level"], e["ms"], e["freed_kib"]) for e in kills], state["busy"]))


MARGIN_CONF = """
[plugins]
enable = kill_background
[levels]
critical_kib = 16384
low_kib = 65536
[kill_background]
dry_run = no
kill_at_low = never
low_class = cached
critical_class = cached
grace_ms = 1000
critical_margin_pct = %d
"""


@pytest.mark.memcg
@pytest.mark.parametrize("margin_pct, expect_kills", [(10, 1), (100, 2)])
def test_a_critical_sequence_stops_once_above_critical_by_its_margin(
        group128: memcg_mod.Memcg, procs: Procs, tmp_path: Any, margin_pct: int,
        expect_kills: int) -> None:
    # Three cached victims of about 19 MiB, then a fill to about 12 MiB
    # available: CRITICAL (16 MiB).  One kill leaves about 30 MiB, above
    # CRITICAL + 10% of the gap to LOW (20.8 MiB): the sequence stops there,
    # as earlyoom does, and LOW (never kills here) does not go on.  With the
    # margin at 100% it aims at LOW: a second victim goes (measured: the
    # victims' RSS is 25.6 MiB, and two kills cover the notification's deficit).
    tmp = str(tmp_path)
    for name in ("v1", "v2", "v3"):
        procs.victim(group128.spawn, name, 1000, extra_mib=16)
    agent = start_agent(group128, tmp, MARGIN_CONF % margin_pct)
    try:
        fill = hog(group128, avail_mib(group128) - 12, 0)
        wait_done(fill)
        deadline = time.monotonic() + 20
        while len(actions(tmp)) < expect_kills and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # no more kills to come
        after_mib = avail_mib(group128)
        alive = [n for n in ("v1", "v2", "v3") if procs.by_name[n].poll() is None]
        oom_kills = group128.oom_kill_count()
    finally:
        err = stop_agent(agent)
    kills = [e for e in actions(tmp) if e["outcome"] in ("exited", "killed")]
    assert len(kills) == expect_kills, (kills, err[-3000:])
    assert all(e["level"] == "CRITICAL" for e in kills) and oom_kills == 0
    assert len(alive) == 3 - expect_kills and fill.poll() is None
    assert after_mib > 16 + (64 - 16) * margin_pct // 100 or margin_pct == 100, after_mib


@pytest.mark.memcg
def test_a_ramp_that_crosses_critical_again_gets_its_next_kill_at_once(
        group128: memcg_mod.Memcg, procs: Procs, tmp_path: Any) -> None:
    # As above, margin 10%: the first kill leaves about 30 MiB.  Then a ramp
    # takes the memcg below CRITICAL again.  The level is still CRITICAL (its
    # hysteresis), so no new notification comes: the sequence's watch must
    # see the crossing and kill the next victim without waiting for a reminder.
    tmp = str(tmp_path)
    for name in ("v1", "v2", "v3"):
        procs.victim(group128.spawn, name, 1000, extra_mib=16)
    # reminders 30 s apart: only the watch can explain a prompt second kill
    agent = start_agent(group128, tmp, (MARGIN_CONF % 10).replace(
        "[levels]\n", "[levels]\nrenotify_ms = 30000\n"))
    try:
        fill = hog(group128, avail_mib(group128) - 12, 0)
        wait_done(fill)
        deadline = time.monotonic() + 20
        while not actions(tmp) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        ramp = hog(group128, avail_mib(group128) - 8, 20)  # 20 MB/s to 8 MiB available
        deadline = time.monotonic() + 20
        while len(actions(tmp)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        state = plugin_state(tmp)
        oom_kills = group128.oom_kill_count()
    finally:
        err = stop_agent(agent)
    kills = [e for e in actions(tmp) if e["outcome"] in ("exited", "killed")]
    assert len(kills) == 2 and [e["level"] for e in kills] == ["CRITICAL"] * 2, (
        kills, err[-3000:])
    assert state["rewatched"] == 1 and state["sequences"] == 1, state
    assert oom_kills == 0 and ramp.poll() is None and fill.poll() is None


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


@pytest.mark.memcg
def test_dry_run_records_the_choice_and_kills_nothing(memcg: memcg_mod.Memcg, procs: Procs,
                                                      tmp_path: Any) -> None:
    tmp = str(tmp_path)
    agent = start_agent(memcg, tmp, AGENT_CONF % {"dry_run": "yes"})
    try:
        victim = procs.victim(memcg.spawn, "cachedapp", 950)
        procs.victim(memcg.spawn, "service", 500)
        pressure = hog(memcg, avail_mib(memcg) - 8, 0)  # into CRITICAL (6.4 MiB)
        # Wait until the same choice came again (a reminder): still nothing signalled.
        deadline = time.monotonic() + 20
        while plugin_state(tmp)["dry_run_repeats"] < 1:
            assert time.monotonic() < deadline, ("no repeated dry-run choice", actions(tmp))
            time.sleep(0.1)
        time.sleep(0.3)
        state = plugin_state(tmp)
        alive = (victim.poll(), pressure.poll())
    finally:
        err = stop_agent(agent)
    chosen = actions(tmp)
    assert alive == (None, None) and procs.lines() == []
    assert {(e["pid"], e["dry_run"], e["outcome"], e["sigkill"]) for e in chosen} == {
        (victim.pid, True, "dry-run", False)}, chosen
    # Once per level and episode (at most LOW and CRITICAL), not at every reminder.
    assert state["kills"] == 0 and state["dry_run_choices"] == len(chosen) in (1, 2), state
    assert "dry run" in err
