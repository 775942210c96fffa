"""Parsers of one process's /proc files: ``stat``, ``status`` and
``smaps_rollup``, and the one reader of them (:func:`read_text`,
:func:`read_stat`, :func:`start_time`, :func:`effective_uid`).

One place for each, used by the app identity (:mod:`memagent.core.pidref`:
an app's start time and uid), the trim audit (what an app really holds) and
the kill policy (candidates, their RSS).  Whole-system and cgroup files are
:mod:`memagent.core.procfs`.  Nothing here raises for hostile text or a
vanished process: a file that is not what it should be, or cannot be read,
gives None or an empty dict.

MicroPython-clean.
"""

try:
    from typing import Dict, Optional
except ImportError:  # MicroPython
    pass


class Stat:
    """The fields of ``/proc/PID/stat`` the agent needs.

    ``started``: field 22, the start time in clock ticks since boot; with
    the pid it names one process (pids are reused).  ``flags``: field 9
    (PF_KTHREAD tells a kernel thread).
    """

    __slots__ = ("pid", "comm", "state", "ppid", "flags", "started")

    def __init__(self, pid: int, comm: str, state: str, ppid: int, flags: int,
                 started: int) -> None:
        self.pid, self.comm, self.state = pid, comm, state
        self.ppid, self.flags, self.started = ppid, flags, started


def is_int(word: str) -> bool:
    """Return: True if ``word`` is a decimal integer, maybe negative."""
    return (word[1:] if word[:1] == "-" else word).isdigit()


def parse_int(text: "Optional[str]") -> "Optional[int]":
    """Return: the one integer ``text`` holds (blanks around it allowed), or
    None (``/proc/PID/oom_score_adj``)."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if is_int(text) else None


def parse_stat(text: str) -> "Optional[Stat]":
    """Return: the Stat of one ``/proc/PID/stat`` line, or None if the text
    is not one.  The comm sits between the first '(' and the last ')' and
    may itself hold spaces and parentheses; fields are counted after it."""
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 1 or close_at < open_at:
        return None
    head = text[:open_at].strip()
    rest = text[close_at + 1:].split()
    # rest[0] is field 3 (state); flags is field 9, starttime field 22.
    if not head.isdigit() or len(rest) < 20 or len(rest[0]) != 1:
        return None
    for i in (1, 6, 19):
        if not is_int(rest[i]):
            return None
    return Stat(int(head), text[open_at + 1:close_at], rest[0], int(rest[1]),
                int(rest[6]), int(rest[19]))


def parse_euid(text: str) -> "Optional[int]":
    """Return: the effective uid of a ``/proc/PID/status`` text (the second
    number of its ``Uid:`` line: the uid SO_PEERCRED reports), or None."""
    for line in text.split("\n"):
        if line.startswith("Uid:"):
            words = line[4:].split()
            return int(words[1]) if len(words) >= 2 and words[1].isdigit() else None
    return None


def read_text(path: str) -> "Optional[str]":
    """Return: the text of the file at ``path``, or None if it cannot be
    read (gone, ESRCH, EACCES, not UTF-8)."""
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeError):
        return None


def read_stat(pid: int, proc_root: str = "/proc") -> "Optional[Stat]":
    """Return: the Stat of process ``pid``, or None if it is gone or its
    stat is unreadable or not a stat line."""
    text = read_text("%s/%d/stat" % (proc_root, pid))
    return None if text is None else parse_stat(text)


def start_time(pid: int, proc_root: str = "/proc") -> "Optional[int]":
    """Return: the start time of process ``pid`` (clock ticks since boot,
    field 22 of its stat), or None if it is gone or unreadable.  With the
    pid it names one process (pids are reused)."""
    st = read_stat(pid, proc_root)
    return None if st is None else st.started


def effective_uid(pid: int, proc_root: str = "/proc") -> "Optional[int]":
    """Return: the effective uid of process ``pid`` (its status), or None
    if it is gone or unreadable."""
    text = read_text("%s/%d/status" % (proc_root, pid))
    return None if text is None else parse_euid(text)


def parse_kib_fields(text: str) -> "Dict[str, int]":
    """Return: ``{"VmRSS": 1234, ...}`` for every ``Name:  N kB`` line of a
    status or smaps_rollup text; other lines (the rollup header, fields
    without a kB size) are skipped."""
    out: "Dict[str, int]" = {}
    for line in text.split("\n"):
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[name.strip()] = int(parts[0])
    return out


def resident_kib(status: "Dict[str, int]") -> "Optional[int]":
    """Return: the resident set in KiB of parsed ``status`` fields:
    ``RssAnon + RssFile + RssShmem``, else ``VmRSS``; None if neither (a
    zombie, a kernel thread)."""
    if "RssAnon" in status:
        return status["RssAnon"] + status.get("RssFile", 0) + status.get("RssShmem", 0)
    return status.get("VmRSS")


def private_kib(fields: "Dict[str, int]") -> "Optional[int]":
    """Return: the memory only the process's death or its own effort gives
    back on a swapless board, from parsed smaps_rollup or status fields:
    ``Pss_Anon + Pss_Shmem`` (smaps_rollup, 5.x kernels), else
    ``Anonymous`` (older smaps_rollup), else ``RssAnon + RssShmem``
    (status), else ``VmRSS``; None if none is there."""
    if "Pss_Anon" in fields:
        return fields["Pss_Anon"] + fields.get("Pss_Shmem", 0)
    if "Anonymous" in fields:
        return fields["Anonymous"]
    if "RssAnon" in fields:
        return fields["RssAnon"] + fields.get("RssShmem", 0)
    return fields.get("VmRSS")
