"""One connection of the control socket: who is at the other end, as the
kernel says, and a non-blocking way to send to it.

The peer's identity is SO_PEERCRED (pid, uid, gid), read once at connect;
the process's start time (:func:`process_start`) tells a reused pid apart.
Nothing a client sends can change either.
"""

import socket
import struct

from ..core.pidfs import parse_stat

try:
    from typing import TYPE_CHECKING, Any, List, Optional
except ImportError:  # MicroPython
    TYPE_CHECKING = False  # type: ignore[misc]
if TYPE_CHECKING:  # the registry's apps live in its sessions
    from .registry import App

# Bytes an event may find queued for a client before it is dropped.  A Unix
# socket also holds ~208 KiB in the kernel (wmem_default on the dev machine)
# before anything queues here, so only a client that stopped reading hits it.
OUT_BUFFER_BYTES = 65536


class Peer:
    """The kernel's word on who is at the other end of a connection."""

    __slots__ = ("pid", "uid", "gid")

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid


def peer_of(writer: "Any") -> "Optional[Peer]":
    """Return: the SO_PEERCRED of the writer's Unix socket, or None when
    the transport has no socket or the kernel gives no credentials."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid) if pid > 0 else None


class Session:
    """One connection: its peer, its app (if registered), its subscription."""

    def __init__(self, peer: "Optional[Peer]", writer: "Any") -> None:
        self.peer = peer
        self.writer = writer
        self.app: "Optional[App]" = None
        self.levels: "Optional[List[str]]" = None  # subscribed level names
        self.dropped = False

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


def process_start(pid: int, proc_root: str = "/proc") -> "Optional[int]":
    """Return: the start time of process ``pid`` (clock ticks since boot,
    field 22 of its stat), or None if it is gone or unreadable."""
    try:
        with open("%s/%d/stat" % (proc_root, pid)) as f:
            st = parse_stat(f.read())
    except (OSError, UnicodeError):
        return None
    return None if st is None else st.started
