"""One connection of the control socket: who is at the other end, as the
kernel says, and a non-blocking way to send to it.

The peer's identity is bound when the connection is accepted
(:func:`identify`), never when a request arrives: SO_PEERCRED (pid, uid,
gid, as they were at connect) and a pidfd of that process
(:class:`memagent.core.pidref.ProcessRef`).  The pidfd comes from
``SO_PEERPIDFD`` (Linux 6.5+), which names the very process that called
connect(); on older kernels from ``pidfd_open`` of SO_PEERCRED's pid, with
the start time read at accept.  Either way the process's effective uid must
still be SO_PEERCRED's.  A peer that exited or changed by accept time gets
a session with no process and a ``changed`` reason, and app requests that
need an identity are refused (``peer_changed``).  Nothing a client sends
can change any of it.

The fallback has one window SO_PEERPIDFD closes: a client that connects,
exits and has its pid reused, all before the agent accepts, is bound to
the new process if it has the same uid.
"""

import socket

from ..aio import unix
from ..core.pidref import ProcessRef, bind

try:
    from typing import TYPE_CHECKING, Any, List, Optional, Tuple
except ImportError:  # MicroPython
    TYPE_CHECKING = False  # type: ignore[misc]
if TYPE_CHECKING:  # the registry's apps live in its sessions
    from .app import App

# Bytes an event may find queued for a client before it is dropped.  A Unix
# socket also holds ~208 KiB in the kernel (wmem_default on the dev machine)
# before anything queues here, so only a client that stopped reading hits it.
OUT_BUFFER_BYTES = 65536

# SO_PEERPIDFD (Linux 6.5): 77 in asm-generic/socket.h (x86, arm, arm64,
# riscv...); sparc and parisc number it their own way.  Python 3.11 does not
# name it.  PEERPIDFD False forces the pidfd_open fallback (the tests do).
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", None) or {
    "sparc": 0x0056, "sparc64": 0x0056, "parisc": 0x404B, "parisc64": 0x404B,
}.get(unix.machine(), 77)
PEERPIDFD = True


class Peer:
    """The kernel's word on who is at the other end of a connection."""

    __slots__ = ("pid", "uid", "gid")

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid


def peer_of(sock: "Any") -> "Optional[Peer]":
    """Return: the SO_PEERCRED of the Unix socket ``sock``, or None when
    there is no socket or the kernel gives no credentials."""
    if sock is None:
        return None
    cred = unix.peer_credentials(sock)
    if cred is None:
        return None
    pid, uid, gid = cred
    return Peer(pid, uid, gid) if pid > 0 else None


def peer_pidfd(sock: "Any") -> "Tuple[Optional[int], str]":
    """Return: ``(pidfd, "")`` of the process that connected ``sock``
    (SO_PEERPIDFD); ``(None, "")`` where the kernel has no SO_PEERPIDFD (or
    PEERPIDFD is off): use the fallback; ``(None, why)`` when the kernel
    has it but gives no pidfd (the peer is gone): never fall back then, the
    pid may name another process already."""
    if not PEERPIDFD:
        return None, ""
    try:
        pidfd: int = unix.getsockopt_int(sock, unix.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as e:
        if e.args and e.args[0] == unix.ENOPROTOOPT:
            return None, ""  # a kernel before 6.5 (6.5-6.8 say EINVAL for a reaped peer)
        return None, "exited (SO_PEERPIDFD: %s)" % (e.args[-1] if e.args else e)
    return pidfd, ""


def identify(sock: "Any") -> "Tuple[Optional[Peer], Optional[ProcessRef], str]":
    """Bind the identity of the peer of ``sock``, at accept.  Returns:
    ``(peer, process, "")``; ``(peer, None, why)`` if the process exited or
    its uid is no longer SO_PEERCRED's; ``(None, None, "")`` without
    credentials (no Unix socket).  Raises: OSError (EMFILE) from the
    fallback's pidfd_open."""
    peer = peer_of(sock)
    if peer is None:
        return None, None, ""
    pidfd, why = peer_pidfd(sock)
    if why:
        return peer, None, why
    if pidfd is not None:
        process, why = bind(peer.pid, peer.uid, pidfd, "SO_PEERPIDFD", calls=unix)
    else:
        process, why = bind(peer.pid, peer.uid, calls=unix)
    return peer, process, why


class Session:
    """One connection: its peer, the process bound at accept (None if it
    had changed by then: ``changed`` says how), its app (if registered),
    its subscription.  :meth:`close` releases the process's pidfd."""

    def __init__(self, peer: "Optional[Peer]", writer: "Any",
                 process: "Optional[ProcessRef]" = None, changed: str = "") -> None:
        self.peer = peer
        self.process = process
        self.changed = changed
        self.writer = writer
        self.app: "Optional[App]" = None
        self.levels: "Optional[List[str]]" = None  # subscribed level names
        self.dropped = False

    def close(self) -> None:
        """Release the bound process (its pidfd); idempotent."""
        if self.process is not None:
            self.process.close()

    def attached(self) -> bool:
        """Return: True if the client registered or subscribed (it may idle)."""
        return self.app is not None or self.levels is not None

    def send(self, data: bytes) -> bool:
        """Queue ``data`` without waiting.  Returns: False (and drops the
        client) if it cannot take it: closed, or OUT_BUFFER_BYTES queued."""
        if self.dropped or self.writer.is_closing():
            return False
        transport = self.writer.transport
        if transport.get_write_buffer_size() + len(data) > OUT_BUFFER_BYTES:
            self.drop()
            return False
        self.writer.write(data)
        return True

    def drop(self) -> None:
        """Abort the connection now (discarding what is queued); the server's
        read loop then sees EOF and closes the session."""
        self.dropped = True
        self.writer.transport.abort()
