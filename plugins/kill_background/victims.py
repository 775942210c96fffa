"""Who may be killed, and who first: the candidates of ``kill_background``.

A candidate is a process in the watched domain (the processes of the
``[agent] memcg``, or the whole system), with a class:

- a registered app has the class it registered with (the app registry's word
  wins over anything else), as long as its pid still names the process that
  registered (same start time);
- any other process is classed by its ``/proc/PID/oom_score_adj``, the way
  Android's lmkd reads it: < 0 never eligible, 0-99 foreground, 100-199
  visible, 200-299 perceptible, 300-899 service, >= 900 cached.

Never eligible (:func:`why_not`): pid 1, kernel threads (PF_KTHREAD, or pid or
parent pid 2), zombies, the pids the caller names (the agent itself and its
ancestors, the foreground pid), foreground-class processes, a comm on the
protected list, and any class that ranks above what the level may reach.

The order (:func:`order`): lowest standing first (cached, then service...),
then the least recently used (a process the registry does not know counts
as the oldest), then the largest RSS.

The policy is pure (the parsers are :mod:`memagent.core.pidfs`);
:func:`scan`, :func:`memcg_pids` and :func:`ancestors` read /proc and
cgroupfs under a root the tests choose, and :func:`pick` puts it together.
Runs on MicroPython too (the pid comes from :mod:`memagent.aio.unix`).
"""

import os

from memagent.core.classes import class_of_adj, rank
from memagent.core.pidfs import (
    Stat,
    parse_int,
    parse_kib_fields,
    read_stat,
    read_text,
    resident_kib,
)
from memagent.core.pidref import ProcessRef

try:
    from typing import Dict, Iterable, List, Optional, Tuple

    # A registered app as the scan needs it: (class, last_active_ms,
    # started, the process bound at connect or None).
    AppInfo = Tuple[str, int, Optional[int], Optional[ProcessRef]]
    # (pid, class, last_active_ms, started, process): what pick is given.
    AppEntry = Tuple[int, str, int, Optional[int], Optional[ProcessRef]]
except ImportError:  # MicroPython
    pass

PF_KTHREAD = 0x00200000  # include/linux/sched.h
KTHREADD_PID = 2
MAX_CGROUP_DEPTH = 8  # how deep memcg_pids walks child groups


class Candidate:
    """A process that might be killed.

    ``cls``: its class (None: not eligible); ``registered``: the class came
    from the app registry; ``last_active_ms``: from the registry, None when
    unknown (counted as the oldest); ``started``: its start time (clock
    ticks since boot), which tells a reused pid apart; ``rss_kib``: None
    when unreadable; ``process``: a registered app's process, bound at
    connect (the kill signals through its pidfd), else None.
    """

    __slots__ = ("pid", "comm", "cls", "registered", "adj", "last_active_ms", "started",
                 "rss_kib", "ppid", "state", "flags", "process")

    def __init__(self, pid: int, comm: str, cls: "Optional[str]", started: int,
                 rss_kib: "Optional[int]" = None, last_active_ms: "Optional[int]" = None,
                 registered: bool = False, adj: "Optional[int]" = None, ppid: int = 1,
                 state: str = "S", flags: int = 0) -> None:
        self.pid, self.comm, self.cls, self.started = pid, comm, cls, started
        self.rss_kib, self.last_active_ms, self.registered = rss_kib, last_active_ms, registered
        self.adj, self.ppid, self.state, self.flags = adj, ppid, state, flags
        self.process: "Optional[ProcessRef]" = None

    def as_dict(self) -> "Dict[str, object]":
        """Return: the candidate, JSON-ready."""
        return {"pid": self.pid, "name": self.comm, "cls": self.cls,
                "registered": self.registered, "adj": self.adj,
                "last_active_ms": self.last_active_ms, "rss_kib": self.rss_kib}

    def __repr__(self) -> str:
        return "Candidate(%d %r %s)" % (self.pid, self.comm, self.cls)


def why_not(c: Candidate, reach_rank: int, protect: "Iterable[str]" = (),
            never: "Optional[Dict[int, str]]" = None) -> "Optional[str]":
    """Return: why ``c`` may not be killed, or None if it may.
    ``reach_rank``: the lowest-standing class the level may reach, as a rank
    (rank("service") = 3 lets service and cached go); ``protect``: comm names
    never killed; ``never``: pid -> reason (the agent, the foreground pid)."""
    if c.pid <= 1:
        return "pid 1"
    if c.pid == KTHREADD_PID or c.ppid == KTHREADD_PID or c.flags & PF_KTHREAD:
        return "kernel thread"
    if c.state in ("Z", "X", "x"):
        return "zombie"
    if never and c.pid in never:
        return never[c.pid]
    if c.cls is None:
        return "oom_score_adj < 0" if c.adj is not None and c.adj < 0 else "no class"
    if c.cls == "foreground":
        return "foreground"
    if c.comm in protect:
        return "protected"
    if rank(c.cls) < reach_rank:
        return "class %s above the level's reach" % c.cls
    return None


def sort_key(c: Candidate) -> "Tuple[int, int, int, int, int]":
    """Return: the key that sorts the first victim first: lowest standing,
    then least recently used (unknown first), then largest RSS, then the
    pid (MicroPython's sort is not stable)."""
    known = 0 if c.last_active_ms is None else 1
    return (-rank(c.cls), known, c.last_active_ms or 0, -(c.rss_kib or 0), c.pid)


def order(candidates: "Iterable[Candidate]") -> "List[Candidate]":
    """Return: the candidates, first victim first (see :func:`sort_key`)."""
    return sorted(candidates, key=sort_key)


def choose(candidates: "Iterable[Candidate]", reach_rank: int, protect: "Iterable[str]" = (),
           never: "Optional[Dict[int, str]]" = None) -> "Optional[Candidate]":
    """Return: the first eligible victim, or None if none is eligible."""
    protected = set(protect)
    for c in order(candidates):
        if why_not(c, reach_rank, protected, never) is None:
            return c
    return None


# -- reading /proc and cgroupfs ---------------------------------------------------

def list_pids(proc_root: str = "/proc") -> "List[int]":
    """Return: the numeric entries of ``proc_root``, sorted (empty if it
    cannot be listed)."""
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def memcg_pids(path: str, depth: int = MAX_CGROUP_DEPTH) -> "List[int]":
    """Return: the pids of the memory cgroup at ``path`` and of its child
    groups (their memory is the group's too), sorted, without duplicates;
    garbage lines are skipped.  Raises: OSError if ``path`` has no
    readable ``cgroup.procs`` (the group is gone)."""
    with open(path + "/cgroup.procs") as f:
        pids = set(int(w) for w in f.read().split() if w.isdigit())
    if depth > 0:
        try:
            names = os.listdir(path)
        except OSError:
            names = []
        for name in names:
            try:
                pids.update(memcg_pids(path + "/" + name, depth - 1))
            except OSError:  # a plain file, or a child removed meanwhile
                pass
    return sorted(pids)


def ancestors(pid: int, proc_root: str = "/proc", limit: int = 64) -> "List[int]":
    """Return: ``pid`` and its ancestors up to pid 1, nearest first (as
    far as /proc can be read; at most ``limit``)."""
    out: "List[int]" = []
    while pid > 0 and len(out) < limit and pid not in out:
        out.append(pid)
        st = read_stat(pid, proc_root)
        if st is None:
            break
        pid = st.ppid
    return out


def read_candidate(pid: int, proc_root: str = "/proc",
                   apps: "Optional[Dict[int, AppInfo]]" = None) -> "Optional[Candidate]":
    """Return: the candidate for ``pid``, or None if it is gone or its
    stat is not a stat line.  A registered app (``apps``: pid -> AppInfo)
    that is still its pid's process (:func:`still_bound`) gets its
    registered class and process; otherwise the class comes from
    oom_score_adj.  Never raises."""
    st = read_stat(pid, proc_root)
    if st is None or st.pid != pid:
        return None
    base = "%s/%d/" % (proc_root, pid)
    adj = parse_int(read_text(base + "oom_score_adj"))
    status = read_text(base + "status")
    rss_kib = None if status is None else resident_kib(parse_kib_fields(status))
    c = Candidate(pid, st.comm, None if adj is None else class_of_adj(adj), st.started,
                  rss_kib=rss_kib, adj=adj, ppid=st.ppid, state=st.state, flags=st.flags)
    app = (apps or {}).get(pid)
    if app is not None and still_bound(app, pid, st):
        c.cls, c.last_active_ms, c.registered, c.process = app[0], app[1], True, app[3]
    return c


def still_bound(app: "AppInfo", pid: int, st: Stat) -> bool:
    """Return: True if ``pid`` (whose stat ``st`` was just read) is still
    the registered app's process: its bound process has that pid and is
    alive now, after the read; without a bound process, the start time is
    the app's."""
    process = app[3]
    if process is not None:
        return process.pid == pid and process.alive()
    return app[2] == st.started


def below_reach(pid: int, proc_root: str, reach_rank: int) -> bool:
    """Return: True if ``pid``'s oom_score_adj alone rules it out at
    ``reach_rank`` (a class of higher standing, or negative); False if it may
    be eligible or cannot be read (the full read decides)."""
    adj = parse_int(read_text("%s/%d/oom_score_adj" % (proc_root, pid)))
    return adj is not None and rank(class_of_adj(adj)) < reach_rank


def scan(proc_root: str = "/proc", pids: "Optional[Iterable[int]]" = None,
         apps: "Optional[Dict[int, AppInfo]]" = None,
         reach_rank: "Optional[int]" = None) -> "List[Candidate]":
    """Return: a candidate for each of ``pids`` (default: every process in
    ``proc_root``) that can be read; missing files and garbage are skipped.
    With ``reach_rank``, unregistered processes whose oom_score_adj rules
    them out are skipped after one small read (measured in the 128 MB ARM
    guest: reading stat and status of every process put 190-300 ms between
    CRITICAL and the SIGTERM).  Never raises."""
    out: "List[Candidate]" = []
    for pid in list_pids(proc_root) if pids is None else pids:
        if reach_rank is not None and pid not in (apps or {}) and \
                below_reach(pid, proc_root, reach_rank):
            continue
        c = read_candidate(pid, proc_root, apps)
        if c is not None:
            out.append(c)
    return out


def merge_apps(entries: "Iterable[AppEntry]") -> "Dict[int, AppInfo]":
    """Return: pid -> (class, last_active_ms, started, process) from (pid,
    class, last_active_ms, started, process) entries.  A process with
    several registered apps keeps its highest standing and its latest use."""
    out: "Dict[int, AppInfo]" = {}
    for pid, cls, last_ms, started, process in entries:
        have = out.get(pid)
        if have is not None:
            if rank(have[0]) < rank(cls):
                cls = have[0]
            last_ms = max(last_ms, have[1])
            process = process or have[3]
        out[pid] = (cls, last_ms, started, process)
    return out


def never_map(agent_pids: "Iterable[int]", foreground_pid: "Optional[int]") -> "Dict[int, str]":
    """Return: pid -> reason for the pids that are never killed whatever
    their class: the agent and its ancestors, the foreground pid."""
    out: "Dict[int, str]" = {}
    for pid in agent_pids:
        out[pid] = "the agent or its ancestor"
    if foreground_pid is not None:
        out[foreground_pid] = "foreground pid"
    return out


def pick(proc_root: str, pids: "Optional[Iterable[int]]",
         apps: "Iterable[AppEntry]",
         foreground_pid: "Optional[int]", reach_rank: int, protect: "Iterable[str]",
         exclude: "Optional[Dict[int, str]]" = None,
         found: "Optional[List[Candidate]]" = None) -> "Optional[Candidate]":
    """Return: the first victim among ``pids`` (None: every process of
    ``proc_root``) at ``reach_rank``, or None.  ``apps``: the registered apps
    as (pid, class, last_active_ms, started, process); never the agent or its
    ancestors, the foreground pid, a ``protect``ed name or a pid of
    ``exclude``.  ``found``, if given, receives every candidate read."""
    from memagent.aio import unix  # the policy above imports without the shim

    never = never_map(ancestors(unix.getpid(), proc_root), foreground_pid)
    never.update(exclude or {})
    candidates = scan(proc_root, pids, merge_apps(apps), reach_rank)
    if found is not None:
        found[:] = candidates
    return choose(candidates, reach_rank, protect, never)
