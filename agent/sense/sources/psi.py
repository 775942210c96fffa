"""PSI memory triggers (Linux 4.20+, CONFIG_PSI).

Writing ``some <stall_us> <window_us>`` to a pressure file makes its fd
report POLLPRI once per window in which tasks stalled on memory for at least
``stall_us``.  System-wide the file is ``/proc/pressure/memory``; for a cgroup
v2 memcg it is the group's ``memory.pressure``.

Kernels may show the pressure file yet refuse triggers: this build machine
(6.18, in a VM) reads /proc/pressure/memory but the trigger write fails with
EINVAL.  Unprivileged triggers also need a window that is a multiple of 2 s
(5.x+: EINVAL otherwise).  Either way the source reports itself unavailable.

Used defensively (core/psicheck.py): the trigger string ends with a NUL
(some kernels reject it otherwise); each event is confirmed by the file's
``some`` total (a trigger can fire once, falsely, at the first stall after
it is armed: such an event is read as ``psi:unconfirmed``, not a kernel
shortage); and a "full" line that never moves while "some" stalls 10 s (a
6.12 bug) is replaced by "some".
"""

import errno

try:
    from typing import Dict, Optional
except ImportError:  # MicroPython
    pass

from ...aio import unix
from ...core import procfs
from ...core.logs import get_logger
from ...core.psicheck import FULL_CHECK_US, PsiCheck
from ...core.reading import Reading
from .base import Domain, SourceOptions, SourceUnavailable, domain_path
from .fdsource import FdSource

log = get_logger("memagent.psi")

_REASONS = {
    errno.EINVAL: "kernel rejected trigger (EINVAL)",
    errno.EOPNOTSUPP: "kernel does not support triggers (EOPNOTSUPP)",
    errno.ENOENT: "no such file (ENOENT): kernel without CONFIG_PSI, or booted with psi=0",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "not permitted (EPERM)",
    getattr(errno, "EBUSY", 16): "a trigger is already set on this fd (EBUSY)",
}


def _reason(e: OSError) -> str:
    """Return: why the kernel refused, for the log."""
    code = e.errno or 0
    known = _REASONS.get(code)
    return known if known else "%s (%s)" % (unix.why(e), unix.errno_name(code))


class PsiSource(FdSource):
    """Wakes on POLLPRI of a PSI trigger; event "psi".  close() closes the
    trigger fd, which removes the trigger."""

    name = "psi"
    event_driven = True
    urgent = True

    def __init__(self, domain: Domain, opts: SourceOptions) -> None:
        super().__init__(domain, opts)
        self.path = ""
        self.check = PsiCheck(opts.psi_stall_us)

    def _pressure_path(self) -> str:
        """Return: the domain's pressure file.  Raises: SourceUnavailable (v1 memcg)."""
        kind = self.domain.kind
        if kind == "memcg-v2":
            return domain_path(self.domain) + "/memory.pressure"
        if kind == "system":
            root = getattr(self.domain, "proc_root", None) or self.opts.proc_root
            return str(root).rstrip("/") + "/pressure/memory"
        raise SourceUnavailable("psi: a %s domain has no memory.pressure file" % kind)

    def open(self) -> None:
        """Open the pressure file and write the trigger.
        Raises: SourceUnavailable naming the errno when the kernel refuses."""
        self.path = self._pressure_path()
        trigger = b"some %d %d\0" % (self.opts.psi_stall_us, self.opts.psi_window_us)
        try:
            self.fd = unix.open_fd(self.path, unix.O_RDWR | unix.O_NONBLOCK)
        except OSError as e:
            raise SourceUnavailable("psi: cannot open %s: %s" % (self.path, _reason(e))) from e
        before = self._pressure()  # the stall so far: an event must add stall_us to it
        try:
            unix.write(self.fd, trigger)
        except OSError as e:
            self.close()
            raise SourceUnavailable("psi: %s: %s for %r" % (
                self.path, _reason(e), trigger.rstrip(b"\0").decode())) from e
        if before is not None:
            self.check.arm(before)

    def _pressure(self) -> "Optional[Dict[str, Dict[str, float]]]":
        """Return: the pressure file, parsed; None if it cannot be read."""
        try:
            with open(self.path) as f:
                return procfs.parse_pressure(f.read())
        except (OSError, ValueError):
            return None

    def read(self, t_ms: int, event: str) -> Reading:
        """Return: the domain's reading; a trigger event the ``some`` total
        does not confirm is tagged ``psi:unconfirmed`` (not a shortage), and
        a broken "full" is replaced by "some" (both logged once).
        Raises: OSError or ValueError from the domain's files."""
        reading = self.domain.read(t_ms, event)
        psi = self._pressure()
        if psi is None:
            return reading
        if self.check.watch_full(psi):
            log.warning("psi: 'full' has not moved while 'some' stalled %d s: using "
                        "'some' for thrashing (a kernel bug broke 'full' on 6.12)",
                        FULL_CHECK_US // 1000000)
        if event == "psi" and not self.check.confirm(psi):
            reading.event = "psi:unconfirmed"
            if self.check.unconfirmed == 1:
                log.info("psi: an event without %d us of new stall: not taken as a "
                         "shortage (a trigger may fire once at the first stall after "
                         "it is armed)", self.check.stall_us)
        if self.check.full_broken:
            reading.psi_full_avg10 = self.check.full_avg10(psi)
        return reading

    async def wait(self, timeout_ms: Optional[int]) -> Optional[str]:
        """Returns: "psi" when the trigger fired, None on timeout.
        Raises: OSError if the source is not open."""
        return "psi" if await self._watch_fd().wait(timeout_ms) else None
