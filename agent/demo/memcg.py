"""Throw-away memory cgroups for the demo, the tests and the bench.

:class:`Memcg` creates a child memory cgroup named ``memagent-<pid>-<n>``,
limits it, starts processes inside it and, on :meth:`Memcg.destroy`, kills
what is left in it and removes it.  It is safe by construction: it only
creates groups with its own prefix, only ever signals the pids listed in the
``cgroup.procs`` of a group it created (processes the caller started there),
and never changes the settings of an existing group except enabling the
memory controller in a cgroup v2 parent's ``cgroup.subtree_control``.

The child goes under the caller's own memcg when that directory is visible,
so that whatever limits the caller runs under still apply to the child; else
under the hierarchy's root.  Both cgroup v1 (``/sys/fs/cgroup/memory``) and
v2 (a cgroup2 mount with ``memory`` in ``cgroup.controllers``) work.

CPython only (subprocess).
"""

import errno
import itertools
import os
import signal
import subprocess
import time
from typing import Any, Callable, List, Optional, Tuple

NAME_PREFIX = "memagent-"
V1_DEFAULT_ROOT = "/sys/fs/cgroup/memory"
_counter = itertools.count()


class MemcgError(OSError):
    """A memory cgroup could not be created, changed or removed."""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _mounts(mountinfo: str = "/proc/self/mountinfo") -> List[Tuple[str, str, str]]:
    """Return: (mount point, fs type, super options) of every cgroup mount."""
    out = []
    for line in _read(mountinfo).splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            out.append((fields[4], tail[0], tail[2]))
    return out


def _own_cgroup(version: str) -> str:
    """Return: this process's cgroup path ('/a/b') in the v1 memory or the v2 hierarchy."""
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if version == "v2" and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if version == "v1" and "memory" in parts[1].split(","):
            return parts[2]
    return "/"


def find_hierarchy() -> Tuple[str, str]:
    """Find the hierarchy that holds the memory controller.

    Returns: ("v1" or "v2", its mount point).
    Raises: MemcgError (ENOENT) naming what is missing.
    """
    try:
        mounts = _mounts()
    except OSError as e:
        raise MemcgError(errno.ENOENT, "cannot read /proc/self/mountinfo: %s" % e) from e
    for mount_point, fstype, options in mounts:
        if fstype == "cgroup" and "memory" in options.split(","):
            return "v1", mount_point
    for mount_point, fstype, _options in mounts:
        if fstype == "cgroup2":
            try:
                if "memory" in _read(mount_point + "/cgroup.controllers").split():
                    return "v2", mount_point
            except OSError:
                continue
    raise MemcgError(errno.ENOENT, "no memory controller: no cgroup v1 'memory' mount and no "
                     "cgroup2 mount with 'memory' in cgroup.controllers")


def available() -> Optional[str]:
    """Return: None if a Memcg can be created here, else the reason why not."""
    try:
        version, root = find_hierarchy()
    except MemcgError as e:
        return e.strerror
    if os.geteuid() != 0 and not os.access(root, os.W_OK):
        return "not root (euid %d) and %s is not writable: cannot create a memcg" % (
            os.geteuid(), root)
    return None


def _v2_parent(root: str) -> str:
    """Return: a v2 directory whose children get the memory controller, enabling
    +memory in its subtree_control if needed (own cgroup first, then the root).
    Raises: MemcgError if neither can be used."""
    own = root + _own_cgroup("v2").rstrip("/")
    reasons = []
    for parent in (own, root) if own != root else (root,):
        control = parent + "/cgroup.subtree_control"
        try:
            if "memory" not in _read(control).split():
                # EBUSY when the parent holds processes ("no internal processes").
                _write(control, "+memory")
            return parent
        except OSError as e:
            reasons.append("%s: %s" % (control, e.strerror))
    raise MemcgError(errno.EBUSY, "cannot enable +memory: " + "; ".join(reasons))


def _default_parent(version: str, root: str) -> str:
    if version == "v2":
        return _v2_parent(root)
    own = root + _own_cgroup("v1").rstrip("/")
    # Inside a container the path from /proc/self/cgroup may not be visible.
    return own if os.path.isdir(own) else root


class Memcg:
    """A child memory cgroup that this process created and will remove.

    ``limit_kib``: set at once if given.  ``parent``: a cgroup directory to
    create the child in (default: see the module docstring).
    Raises: MemcgError if no memory controller is usable or mkdir fails.
    """

    def __init__(self, limit_kib: Optional[int] = None, parent: Optional[str] = None) -> None:
        self.version, root = find_hierarchy()
        parent_dir = parent if parent is not None else _default_parent(self.version, root)
        name = "%s%d-%d" % (NAME_PREFIX, os.getpid(), next(_counter))
        self.path = os.path.join(parent_dir, name)
        try:
            os.mkdir(self.path)
        except OSError as e:
            raise MemcgError(e.errno, "cannot create %s: %s" % (self.path, e.strerror)) from e
        self._children: List["subprocess.Popen[Any]"] = []
        self.destroyed = False
        if limit_kib is not None:
            try:
                self.set_limit_kib(limit_kib)
            except MemcgError:
                os.rmdir(self.path)
                raise

    def _file(self, name: str) -> str:
        return self.path + "/" + name

    def set_limit_kib(self, limit_kib: int) -> None:
        """Limit the group to ``limit_kib`` of memory (and of memory+swap on
        v1 when the kernel accounts swap, or of swap = 0 on v2), so that
        going over the limit means OOM, not swapping.
        Raises: MemcgError if the kernel refuses (e.g. usage above the limit)."""
        limit = str(limit_kib * 1024)
        try:
            if self.version == "v1":
                self._set_v1_limits(limit_kib * 1024)
            else:
                _write(self._file("memory.max"), limit)
                if os.path.exists(self._file("memory.swap.max")):
                    _write(self._file("memory.swap.max"), "0")
        except OSError as e:
            raise MemcgError(e.errno, "cannot limit %s to %d KiB: %s"
                             % (self.path, limit_kib, e.strerror)) from e

    def _set_v1_limits(self, limit_bytes: int) -> None:
        memsw = self._file("memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        # memsw must stay >= the memory limit: raise memsw first when growing.
        current = int(_read(self._file("memory.limit_in_bytes")))
        if has_memsw and limit_bytes > current:
            _write(memsw, str(limit_bytes))
        _write(self._file("memory.limit_in_bytes"), str(limit_bytes))
        if has_memsw:
            _write(memsw, str(limit_bytes))

    def limit_kib(self) -> Optional[int]:
        """Return: the memory limit in KiB, None if unlimited.  Raises: OSError."""
        text = _read(self._file("memory.max" if self.version == "v2"
                                else "memory.limit_in_bytes")).strip()
        if text == "max" or int(text) >= 1 << 62:  # v1 "unlimited" is ~2**63
            return None
        return int(text) // 1024

    def usage_kib(self) -> int:
        """Return: the memory charged to the group, in KiB.  Raises: OSError."""
        name = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
        return int(_read(self._file(name))) // 1024

    def pids(self) -> List[int]:
        """Return: the pids in the group (empty once it is destroyed)."""
        try:
            return [int(w) for w in _read(self._file("cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` (one the caller started) into the group.
        Raises: MemcgError if the kernel refuses."""
        try:
            _write(self._file("cgroup.procs"), str(pid))
        except OSError as e:
            raise MemcgError(e.errno, "cannot move pid %d into %s: %s"
                             % (pid, self.path, e.strerror)) from e

    def _preexec(self, chained: Optional[Callable[[], None]]) -> Callable[[], None]:
        procs = self._file("cgroup.procs")

        def enter() -> None:
            # Runs in the child between fork and exec: raw syscalls only.
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" means the writing process itself
            finally:
                os.close(fd)
            if chained is not None:
                chained()

        return enter

    def spawn(self, argv: List[str], **popen_kw: Any) -> "subprocess.Popen[Any]":
        """Start ``argv`` inside the group from its first instruction: the
        child joins cgroup.procs between fork and exec (``preexec_fn``, which
        is unsafe if the caller runs threads that hold locks at fork time).
        A ``preexec_fn`` of the caller runs after that.

        Returns: the Popen (reaped by :meth:`destroy`).
        Raises: OSError (subprocess.SubprocessError) if the child cannot start.
        """
        if self.destroyed:
            raise MemcgError(errno.ENOENT, "%s was destroyed" % self.path)
        popen_kw["preexec_fn"] = self._preexec(popen_kw.get("preexec_fn"))
        child = subprocess.Popen(argv, **popen_kw)
        self._children.append(child)
        return child

    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every process in the group, by pidfd: a pid is
        signalled only if, once pinned by its pidfd, it is still listed in
        this group, so a pid reused meanwhile outside it is never hit.

        Returns: how many were signalled (pids that exited meanwhile are skipped).
        """
        sent = 0
        for pid in self.pids():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if pid in self.pids():
                    signal.pidfd_send_signal(pidfd, sig)
                    sent += 1
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
        return sent

    def oom_kill_count(self) -> int:
        """Return: how many processes the kernel OOM-killed in the group
        ('oom_kill N' of v1 memory.oom_control, 4.13+, or v2 memory.events).
        Raises: MemcgError if the kernel has no such counter."""
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        for line in _read(self._file(name)).splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "oom_kill":
                return int(words[1])
        raise MemcgError(errno.ENOTSUP, "%s has no oom_kill line (kernel < 4.13)" % name)

    def under_oom(self) -> bool:
        """Return: True while the v1 group is in OOM ('under_oom 1'); False on v2."""
        if self.version == "v2":
            return False
        return "under_oom 1" in _read(self._file("memory.oom_control"))

    def _reap(self, deadline: float) -> None:
        for child in self._children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                pass

    def destroy(self, timeout_ms: int = 5000) -> None:
        """Kill what is left in the group, reap the children spawn() started,
        wait for the group to empty, and remove it.  Idempotent.
        Raises: MemcgError if the group is still busy after ``timeout_ms``."""
        if self.destroyed:
            return
        deadline = time.monotonic() + timeout_ms / 1000.0
        self.kill_all()
        self._reap(deadline)
        while True:
            self.kill_all()
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise MemcgError(e.errno, "cannot remove %s: %s (pids %s)"
                                     % (self.path, e.strerror, self.pids())) from e
                time.sleep(0.01)
        self.destroyed = True

    def __enter__(self) -> "Memcg":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return "Memcg(%r, %s)" % (self.path, self.version)
