"""The /dev/mem_notify device memagent serves through CUSE: what each
request gets back, as bytes to write to /dev/cuse.  No I/O here.

The interface (docs/cuse.md), beyond the 2008 patch's ``poll()``:

* **poll(POLLIN)** on an open file becomes readable when a pressure event
  chooses that file (:mod:`memagent.core.waiters`: at most N files per
  event at LOW, fair rotation, a rate limit; every file at CRITICAL), and
  stops being readable when the pressure ends.
* **read()** never blocks and returns one line (:func:`format_line`)::

      <level> <avail_kib> <total_kib> <eta_ms> <target_kib> <t_ms>\\n

  ``level`` normal|low|critical; ``eta_ms`` -1 when unknown; ``target_kib``
  how much to free (for a file with its own thresholds: up to its leave
  level); ``t_ms`` CLOCK_MONOTONIC milliseconds of the reading behind it,
  so that a reader can drop a stale line.  Reading acknowledges a wakeup:
  the file's POLLIN clears until a later event chooses it again.
* **write()** of ``low_kib E leave_kib L`` gives the file its own
  thresholds (woken at MemAvailable <= E KiB, cleared at >= L); ``global``
  follows the agent's levels again.  Anything else: EINVAL.
* **ioctl(fd, MEMNOTIFY_SETSIG, &signo)** (``_IOW('M', 1, int)``): each
  wakeup of that file also sends ``signo`` to the process that made the
  ioctl (0 turns it off).  FIOASYNC cannot reach a CUSE server, hence this.

:class:`Device` answers the kernel's requests (decoded by
:mod:`memagent.core.cusewire`) and turns the agent's pressure events into
poll wakeups; the server (:mod:`memagent.ipc.cuse`) does the reads, the
writes and the signals.  Pure and MicroPython-clean.
"""

from . import cusewire as wire
from .levels import NORMAL
from .waiters import Waiters

try:
    from typing import Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

# _IOW('M', 1, int): dir write (1) << 30 | size 4 << 16 | type 'M' << 8 | nr 1
MEMNOTIFY_SETSIG = 0x40044D01
SIGNAL_MAX = 64  # SIGRTMAX on Linux
LINE_LEVELS = ("normal", "low", "critical")
MAX_COMMAND_BYTES = 128
MAX_LINE_BYTES = 128
EINTR, EIO, ENFILE, ENOTTY, EINVAL, ENOSYS = 4, 5, 23, 25, 22, 38


def format_line(level: int, avail_kib: int, total_kib: int, eta_ms: "Optional[int]",
                target_kib: int, t_ms: int) -> bytes:
    """Return: the line a read() of the device gets, newline included.
    Raises: IndexError for an unknown level."""
    return ("%s %d %d %d %d %d\n" % (LINE_LEVELS[level], avail_kib, total_kib,
                                     -1 if eta_ms is None else eta_ms, max(0, target_kib),
                                     t_ms)).encode()


def parse_line(line: "bytes | str") -> "Dict[str, object]":
    """Return: the fields of a device line as a dict (``level`` a str, the
    rest ints).  Raises: ValueError for anything else."""
    text = line.decode() if isinstance(line, (bytes, bytearray)) else line
    parts = text.split()
    if len(parts) != 6 or parts[0] not in LINE_LEVELS:
        raise ValueError("not a mem_notify line: %r" % (text[:MAX_LINE_BYTES],))
    names = ("avail_kib", "total_kib", "eta_ms", "target_kib", "t_ms")
    out: "Dict[str, object]" = {"level": parts[0]}
    for name, value in zip(names, parts[1:]):
        out[name] = int(value)
    return out


def parse_command(data: bytes) -> "Optional[Tuple[int, int]]":
    """Decode what a client wrote to its file.

    Returns: ``(enter_kib, leave_kib)`` for ``low_kib E leave_kib L``, None
    for ``global``.  Raises: ValueError (with the reason) for anything else,
    including ``E >= L``, numbers that are not positive, or more than
    MAX_COMMAND_BYTES bytes."""
    if len(data) > MAX_COMMAND_BYTES:
        raise ValueError("a command is at most %d bytes" % MAX_COMMAND_BYTES)
    try:
        words = bytes(data).decode().split()
    except UnicodeError:
        raise ValueError("a command is ASCII text") from None
    if words == ["global"]:
        return None
    if len(words) != 4 or words[0] != "low_kib" or words[2] != "leave_kib":
        raise ValueError("expected 'low_kib E leave_kib L' or 'global'")
    try:
        enter_kib, leave_kib = int(words[1]), int(words[3])
    except ValueError:
        raise ValueError("thresholds are whole KiB") from None
    if not 0 < enter_kib < leave_kib:
        raise ValueError("need 0 < low_kib (%d) < leave_kib (%d)" % (enter_kib, leave_kib))
    return enter_kib, leave_kib


class Effects:
    """What the server must do after one request or event: ``woken`` (fh
    woken), ``writes`` (each one write() to /dev/cuse, in order),
    ``signals`` (fh whose registered signal is due), ``registered`` ((fh,
    pid, signo) to bind to a pidfd now, while the caller waits in its
    ioctl), ``released`` (fh whose pidfd to close), ``thresholds`` (a file
    set its own: readings matter now even while the agent is calm)."""

    __slots__ = ("woken", "writes", "signals", "registered", "released", "thresholds")

    def __init__(self) -> None:
        self.woken: "List[int]" = []
        self.writes: "List[bytes]" = []
        self.signals: "List[int]" = []
        self.registered: "List[Tuple[int, int, int]]" = []
        self.released: "List[int]" = []
        self.thresholds = False


class _Open:
    """One open file: its poll handle, its opener and its signal."""

    __slots__ = ("kh", "pid", "uid", "signo", "reads", "opened_ms")

    def __init__(self, pid: int, uid: int, now_ms: int) -> None:
        self.kh: "Optional[int]" = None
        self.pid, self.uid, self.opened_ms = pid, uid, now_ms
        self.signo = 0
        self.reads = 0


class Device:
    """The device's state: open files, the current line, the wakeup policy.

    ``waiters`` carries the policy (N per event, rate limit, max files).
    Raises: nothing at construction.
    """

    def __init__(self, waiters: Waiters) -> None:
        self.waiters = waiters
        self.files: "Dict[int, _Open]" = {}
        self.next_fh = 1
        self.level = NORMAL
        self.avail_kib = self.total_kib = self.target_kib = self.t_ms = 0
        self.eta_ms: "Optional[int]" = None
        self.opens = self.refused = self.bad = self.wakeups = 0

    # -- the agent's events --------------------------------------------------------

    def update(self, level: int, avail_kib: int, total_kib: int, eta_ms: "Optional[int]",
               target_kib: int, t_ms: int, now_ms: int, pressure: bool) -> Effects:
        """Take a reading or notification of the agent.

        ``pressure``: it is a pressure event (a LOW or CRITICAL notification:
        change or reminder), so files are chosen; otherwise only the state
        is recorded, what the pressure left is cleared, and files with
        their own thresholds may wake.  Returns: the Effects (poll wakeups
        and signals of the files woken).  Raises: ValueError for an
        unknown level."""
        self.level, self.avail_kib, self.total_kib = level, avail_kib, total_kib
        self.eta_ms, self.target_kib, self.t_ms = eta_ms, target_kib, t_ms
        self.waiters.level_changed(level, avail_kib, now_ms)
        if pressure:
            return self._wake(self.waiters.pressure(level, avail_kib, now_ms))
        return self._wake(self._own_thresholds(now_ms))

    def _own_thresholds(self, now_ms: int) -> "List[int]":
        """Return: the files woken by their own thresholds at the current
        reading (not an event: at "NORMAL" only such files want waking; the
        global level is kept for late openers)."""
        woken = self.waiters.pressure(NORMAL, self.avail_kib, now_ms)
        self.waiters.level = self.level
        return woken

    def _wake(self, woken: "List[int]") -> Effects:
        out = Effects()
        for fh in woken:
            f = self.files.get(fh)
            if f is None:
                continue
            self.wakeups += 1
            out.woken.append(fh)
            if f.kh is not None:
                out.writes.append(wire.poll_wakeup(f.kh))
            if f.signo:
                out.signals.append(fh)
        return out

    def line(self, fh: int) -> bytes:
        """Return: the line for ``fh`` (its own target if it has thresholds)."""
        own = self.waiters.thresholds(fh) if fh in self.waiters else None
        target = max(0, own[1] - self.avail_kib) if own else self.target_kib
        return format_line(self.level, self.avail_kib, self.total_kib, self.eta_ms, target,
                           self.t_ms)

    # -- the kernel's requests ---------------------------------------------------

    def handle(self, req: wire.Request, now_ms: int) -> Effects:
        """Answer one request (not CUSE_INIT: the server's handshake).

        Returns: the Effects; every request but INTERRUPT gets exactly one
        reply.  Raises: nothing for what a client can cause (bad writes,
        unknown fh or opcode are error replies)."""
        out = Effects()
        op = req.opcode
        if op == wire.FUSE_OPEN:
            out.writes.append(self._open(req, now_ms))
        elif op == wire.FUSE_POLL:
            out.writes.append(self._poll(req))
        elif op == wire.FUSE_READ:
            out.writes.append(self._read(req))
        elif op == wire.FUSE_WRITE:
            out.writes.append(self._write(req, out))
            if out.thresholds and self.total_kib:  # judge the new thresholds now
                woken = self._wake(self._own_thresholds(now_ms))
                out.woken, out.signals = woken.woken, woken.signals
                out.writes.extend(woken.writes)
        elif op == wire.FUSE_IOCTL:
            out.writes.append(self._ioctl(req, out))
        elif op == wire.FUSE_RELEASE:
            self.waiters.remove(req.fh)
            if self.files.pop(req.fh, None) is not None:
                out.released.append(req.fh)
            out.writes.append(wire.reply(req.unique))
        elif op == wire.FUSE_FLUSH:
            out.writes.append(wire.reply(req.unique))
        elif op == wire.FUSE_INTERRUPT:
            # Every request is answered at once, so the one interrupted is
            # normally answered already (the kernel then drops this reply).
            out.writes.append(wire.reply_error(req.interrupted_unique, EINTR))
        else:
            self.bad += 1
            out.writes.append(wire.reply_error(
                req.unique, ENOSYS if wire.may_answer_enosys(op) else EIO))
        return out

    def _open(self, req: wire.Request, now_ms: int) -> bytes:
        fh = self.next_fh
        try:
            self.waiters.add(fh, now_ms)
        except OverflowError:
            self.refused += 1
            return wire.reply_error(req.unique, ENFILE)
        self.next_fh += 1
        self.opens += 1
        self.files[fh] = _Open(req.pid, req.uid, now_ms)
        return wire.open_reply(req.unique, fh)

    def _poll(self, req: wire.Request) -> bytes:
        f = self.files.get(req.fh)
        if f is None:  # never for a file the kernel opened through us
            return wire.poll_reply(req.unique, wire.POLLERR)
        if req.flags & wire.FUSE_POLL_SCHEDULE_NOTIFY:
            f.kh = req.kh
        ready = self.waiters.is_ready(req.fh)
        return wire.poll_reply(req.unique, wire.POLLIN | wire.POLLRDNORM if ready else 0)

    def _read(self, req: wire.Request) -> bytes:
        f = self.files.get(req.fh)
        if f is None:
            return wire.reply_error(req.unique, EIO)
        f.reads += 1
        data = self.line(req.fh)[:req.size]
        self.waiters.ack(req.fh)
        return wire.read_reply(req.unique, data)

    def _write(self, req: wire.Request, out: Effects) -> bytes:
        if req.fh not in self.files:
            return wire.reply_error(req.unique, EIO)
        try:
            own = parse_command(req.data)
        except ValueError:
            self.bad += 1
            return wire.reply_error(req.unique, EINVAL)
        if own is None:
            self.waiters.clear_thresholds(req.fh)
        else:
            self.waiters.set_thresholds(req.fh, own[0], own[1])
            out.thresholds = True
        return wire.write_reply(req.unique, len(req.data))

    def _ioctl(self, req: wire.Request, out: Effects) -> bytes:
        f = self.files.get(req.fh)
        if f is None:
            return wire.reply_error(req.unique, EIO)
        if req.cmd != MEMNOTIFY_SETSIG:
            return wire.reply_error(req.unique, ENOTTY)
        if len(req.data) < 4:
            return wire.reply_error(req.unique, EINVAL)
        signo = int.from_bytes(req.data[:4], "little")
        if signo > SIGNAL_MAX:
            return wire.reply_error(req.unique, EINVAL)
        f.signo = signo
        out.registered.append((req.fh, req.pid, signo))
        if signo and self.waiters.is_ready(req.fh):  # opened in pressure: tell it now
            out.signals.append(req.fh)
        return wire.ioctl_reply(req.unique, 0)

    def status(self) -> "Dict[str, object]":
        """Return: counters and the current state, JSON-ready."""
        return {"open_files": len(self.files), "opens": self.opens, "refused": self.refused,
                "bad_requests": self.bad, "wakeups": self.wakeups,
                "level": LINE_LEVELS[self.level],
                "with_signal": sum(1 for f in self.files.values() if f.signo),
                "own_thresholds": sum(1 for fh in self.files
                                      if self.waiters.thresholds(fh) is not None)}
