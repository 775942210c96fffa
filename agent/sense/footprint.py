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

from ..core.pidfs import parse_kib_fields, private_kib, read_text, start_time
from ..core.pidref import ProcessRef

try:
    from typing import Optional
except ImportError:  # MicroPython
    pass


def footprint_kib(pid: int, proc_root: str = "/proc", started: "Optional[int]" = None,
                  process: "Optional[ProcessRef]" = None) -> "Optional[int]":
    """Return: the footprint of process ``pid`` in KiB (see the module
    docstring), or None if it is gone, a zombie, or no longer the process
    meant: with ``process`` (an app's, bound at connect), unless that
    process is alive both before and after the read (so ``pid`` named it
    throughout); else, with ``started``, unless the pid's start time is
    ``started``.  Never raises."""
    if process is not None:
        if process.pid != pid or not process.alive():
            return None
    elif started is not None and start_time(pid, proc_root) != started:
        return None
    text = read_text("%s/%d/smaps_rollup" % (proc_root, pid))
    if text is None:
        text = read_text("%s/%d/status" % (proc_root, pid))
    if process is not None and not process.alive():
        return None
    return None if text is None else private_kib(parse_kib_fields(text))
