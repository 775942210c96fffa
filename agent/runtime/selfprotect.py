"""The agent protects itself: it must be the last process the OOM killer
picks, (by configuration) its pages must never be reclaimed, and what a
burst of hostile clients made it allocate goes back to the kernel.

Each step reports what it did rather than raising, so that a container or an
unprivileged run logs a clear warning and carries on.
"""

try:
    from typing import List
except ImportError:  # MicroPython
    pass

from ..aio import unix

MCL_CURRENT = unix.MCL_CURRENT
MCL_FUTURE = unix.MCL_FUTURE
MCL_ONFAULT = unix.MCL_ONFAULT  # Linux 4.4: lock pages as they are touched, never populate the rest


def set_oom_score_adj(value: int, proc_root: str = "/proc") -> str:
    """Write ``value`` to our own oom_score_adj.

    Returns: a line for the log saying what happened (set, or why not).
    """
    path = "%s/%d/oom_score_adj" % (proc_root, unix.getpid())
    try:
        with open(path, "w") as f:
            f.write("%d\n" % value)
    except OSError as e:
        return "oom_score_adj %d not set: %s (needs CAP_SYS_RESOURCE to go below 0)" % (
            value, unix.why(e))
    return "oom_score_adj set to %d" % value


def set_nice(value: int) -> str:
    """Set this process's nice value (``[agent] nice``; -20 is the highest
    priority).  Returns: a line for the log saying what happened.

    Why: a handset is busiest when its memory runs out, and the agent shares
    the CPU with the reclaim it is there to stop.  In the 64 MB guest, under a
    page-cache thrash, the MicroPython agent's start took 1,680-2,087 ms at
    nice 0, 978-1,260 ms at -10 and 825-977 ms at -20 (3 starts each,
    2026-12-07).  earlyoom's ``-p`` sets -20 too; lmkd runs SCHED_FIFO."""
    try:
        unix.set_nice(value)
    except (ImportError, AttributeError) as e:
        return "nice unavailable: %s" % e
    except OSError as e:
        return "nice %d not set: %s (needs CAP_SYS_NICE to go below 0)" % (value, unix.why(e))
    return "nice set to %d" % value


def lock_memory(onfault: bool = False) -> str:
    """mlockall(MCL_CURRENT|MCL_FUTURE), plus MCL_ONFAULT when ``onfault``,
    through libc.  Plain mlockall faults in every mapped page (all of
    libpython, unused heap); MCL_ONFAULT locks only the pages the agent
    touches.

    Returns: a line for the log saying what happened.
    """
    flags = MCL_CURRENT | MCL_FUTURE | (MCL_ONFAULT if onfault else 0)
    try:
        unix.mlockall(flags)
    except (ImportError, AttributeError) as e:
        return "mlockall unavailable: %s" % e
    except OSError as e:
        err = e.args[0] if e.args else 0
        hint = " (MCL_ONFAULT needs Linux 4.4)" if onfault and err == 22 else \
            " (RLIMIT_MEMLOCK or CAP_IPC_LOCK)"
        return "mlockall failed: %s%s" % (unix.why(e), hint)
    return "memory locked (mlockall current+future%s)" % ("+onfault" if onfault else "")


# glibc's mallopt parameters, and the values the agent sets: a buffer of
# MMAP_THRESHOLD_BYTES or more (a connection's half-read 64 KiB line, a
# status reply) gets its own mapping, unmapped when freed, and the heap's
# free top goes back past TRIM_THRESHOLD_BYTES.  Measured with
# bench/hostile.py (2026-12-07): the agent grew by 4,264 KiB through the
# battery and kept it after; with these, by 1,512 KiB.
PROCESS_NAME = "memagent"
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32768
TRIM_THRESHOLD_BYTES = 131072


def return_freed_memory() -> str:
    """Tell the C allocator to give large freed buffers back to the kernel
    (mallopt; glibc.  musl and uClibc accept and ignore it).  Returns: a
    line for the log."""
    try:
        ok = unix.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and \
            unix.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    except (ImportError, OSError) as e:
        return "mallopt unavailable: %s" % e
    if not ok:
        return "mallopt refused the thresholds: freed buffers may stay in the heap"
    return "malloc: buffers of %d KiB and more are unmapped when freed" % (
        MMAP_THRESHOLD_BYTES // 1024)


def protect(oom_score_adj: int, mlockall: str, proc_root: str = "/proc") -> "List[str]":
    """Apply the protections; ``mlockall`` is "no", "all" or "onfault"
    (``[agent] mlockall``).  Returns: one log line per step."""
    lines = [set_oom_score_adj(oom_score_adj, proc_root), return_freed_memory()]
    # The comm that ps, pidof, start-stop-daemon -n and OOM reports show:
    # "python3" or, for MicroPython run through its loader, "ld-linux-armhf.".
    if not unix.set_process_name(PROCESS_NAME):
        lines.append("process name not set (no prctl)")
    if mlockall != "no":
        lines.append(lock_memory(onfault=mlockall == "onfault"))
    return lines
