"""What an app really holds: its memory footprint from /proc, for trim audits.

The measure is the memory only the app's death or its own effort returns on a
swapless handset: **proportional anonymous plus shmem** (``Pss_Anon +
Pss_Shmem`` of ``/proc/PID/smaps_rollup``).  File-backed pages are left out
(the kernel reclaims them itself, whatever the app does), and "proportional"
splits pages shared after fork() between their sharers, so two apps cannot
both claim the same page.

Older kernels lack the split fields (``Pss_Anon`` and ``Pss_Shmem`` came to
smaps_rollup in the 5.x series); there ``Anonymous`` is used (not proportional), and without
smaps_rollup (before 4.14) ``RssAnon + RssShmem`` of ``/proc/PID/status``,
else its ``VmRSS``.  Measured on the dev machine (6.x kernel): reading
smaps_rollup of a 28 MB Python process takes 0.3 ms, cheap enough to do
inline before and after each trim.

The parsers are pure; :func:`footprint_kib` and :func:`start_time` read /proc.
"""

try:
    from typing import Dict, Optional
except ImportError:  # MicroPython
    pass


def parse_kib_fields(text: str) -> "Dict[str, int]":
    """Return: ``{"Pss_Anon": 1234, ...}`` for every ``Name:  N kB`` line of
    smaps_rollup or status text; other lines (the rollup header, ``Name:``
    lines without a kB size) are skipped.  Never raises."""
    out: "Dict[str, int]" = {}
    for line in text.split("\n"):
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[name.strip()] = int(parts[0])
    return out


def parse_smaps_rollup(text: str) -> "Optional[int]":
    """Return: the app's footprint in KiB from smaps_rollup text:
    ``Pss_Anon + Pss_Shmem`` when the kernel gives them, else ``Anonymous``;
    None when the text holds neither (a process without memory)."""
    fields = parse_kib_fields(text)
    if "Pss_Anon" in fields:
        return fields["Pss_Anon"] + fields.get("Pss_Shmem", 0)
    return fields.get("Anonymous")


def parse_status_rss(text: str) -> "Optional[int]":
    """Return: the footprint in KiB from /proc/PID/status text: ``RssAnon +
    RssShmem``, else ``VmRSS``; None when neither is there (a zombie, a
    kernel thread)."""
    fields = parse_kib_fields(text)
    if "RssAnon" in fields:
        return fields["RssAnon"] + fields.get("RssShmem", 0)
    return fields.get("VmRSS")


def parse_start_time(text: str) -> "Optional[int]":
    """Return: field 22 (starttime, clock ticks since boot) of /proc/PID/stat
    text, or None if the text is not a stat line.  The command name may hold
    spaces and parentheses, so fields are counted after the last ')'."""
    fields = text[text.rfind(")") + 1:].split()
    if text.rfind(")") < 0 or len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


def _read(path: str) -> "Optional[str]":
    """Return: the file's text, or None if it cannot be read (gone, ESRCH)."""
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeError):
        return None


def start_time(pid: int, proc_root: str = "/proc") -> "Optional[int]":
    """Return: the process's start time (clock ticks), or None if it is gone.
    Together with the pid it names one process (pids are reused)."""
    text = _read("%s/%d/stat" % (proc_root, pid))
    return None if text is None else parse_start_time(text)


def footprint_kib(pid: int, proc_root: str = "/proc",
                  started: "Optional[int]" = None) -> "Optional[int]":
    """Return: the footprint of process ``pid`` in KiB (see the module
    docstring), or None if it is gone, a zombie, or (when ``started`` is
    given) no longer the process that started then.  Never raises."""
    if started is not None and start_time(pid, proc_root) != started:
        return None
    text = _read("%s/%d/smaps_rollup" % (proc_root, pid))
    if text is not None:
        return parse_smaps_rollup(text)
    text = _read("%s/%d/status" % (proc_root, pid))
    return None if text is None else parse_status_rss(text)
