"""What a process really holds: its memory footprint from /proc, for the
trim audit.

The measure is the memory only the app's death or its own effort returns on a
swapless handset: **proportional anonymous plus shmem** (``Pss_Anon +
Pss_Shmem`` of ``/proc/PID/smaps_rollup``).  File-backed pages are left out
(the kernel reclaims them itself, whatever the app does), and "proportional"
splits pages shared after fork() between their sharers, so two apps cannot
both claim the same page.

Older kernels lack the split fields (``Pss_Anon`` and ``Pss_Shmem`` came to
smaps_rollup in the 5.x series); there ``Anonymous`` is used (not
proportional), and without smaps_rollup (before 4.14) ``RssAnon + RssShmem``
of ``/proc/PID/status``, else its ``VmRSS`` (:func:`memagent.core.pidfs.private_kib`).
Measured on the dev machine (6.x kernel): reading smaps_rollup of a 28 MB
Python process takes 0.3 ms, cheap enough to do inline before and after
each trim.
"""

from ..core.pidfs import parse_kib_fields, parse_stat, private_kib

try:
    from typing import Optional
except ImportError:  # MicroPython
    pass


def _read(path: str) -> "Optional[str]":
    """Return: the file's text, or None if it cannot be read (gone, ESRCH)."""
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeError):
        return None


def start_time(pid: int, proc_root: str = "/proc") -> "Optional[int]":
    """Return: the process's start time (clock ticks since boot), or None if
    it is gone.  Together with the pid it names one process."""
    text = _read("%s/%d/stat" % (proc_root, pid))
    st = None if text is None else parse_stat(text)
    return None if st is None else st.started


def footprint_kib(pid: int, proc_root: str = "/proc",
                  started: "Optional[int]" = None) -> "Optional[int]":
    """Return: the footprint of process ``pid`` in KiB (see the module
    docstring), or None if it is gone, a zombie, or (when ``started`` is
    given) no longer the process that started then.  Never raises."""
    if started is not None and start_time(pid, proc_root) != started:
        return None
    text = _read("%s/%d/smaps_rollup" % (proc_root, pid))
    if text is None:
        text = _read("%s/%d/status" % (proc_root, pid))
    return None if text is None else private_kib(parse_kib_fields(text))
