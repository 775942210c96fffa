"""The agent protects itself: it must be the last process the OOM killer
picks, and (by configuration) its pages must never be reclaimed.

Each step reports what it did rather than raising, so that a container or an
unprivileged run logs a clear warning and carries on.
"""

import os

try:
    from typing import List
except ImportError:  # MicroPython
    pass

MCL_CURRENT = 1
MCL_FUTURE = 2


def set_oom_score_adj(value: int, proc_root: str = "/proc") -> str:
    """Write ``value`` to our own oom_score_adj.

    Returns: a line for the log saying what happened (set, or why not).
    """
    path = "%s/%d/oom_score_adj" % (proc_root, os.getpid())
    try:
        with open(path, "w") as f:
            f.write("%d\n" % value)
    except OSError as e:
        return "oom_score_adj %d not set: %s (needs CAP_SYS_RESOURCE to go below 0)" % (
            value, e.strerror or e)
    return "oom_score_adj set to %d" % value


def lock_memory() -> str:
    """mlockall(MCL_CURRENT|MCL_FUTURE) through libc.

    Returns: a line for the log saying what happened.
    """
    try:
        import ctypes

        # The process's own symbols: whatever libc it runs on (glibc, musl,
        # uClibc on a Buildroot image, where find_library("c") finds nothing).
        libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError) as e:
        return "mlockall unavailable: %s" % e
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        return "mlockall failed: %s (RLIMIT_MEMLOCK or CAP_IPC_LOCK)" % os.strerror(err)
    return "memory locked (mlockall current+future)"


def protect(oom_score_adj: int, mlockall: bool, proc_root: str = "/proc") -> "List[str]":
    """Apply both protections.  Returns: one log line per step."""
    lines = [set_oom_score_adj(oom_score_adj, proc_root)]
    if mlockall:
        lines.append(lock_memory())
    return lines
