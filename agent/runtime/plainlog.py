"""Where the log goes where there is no ``logging`` (MicroPython): the
stand-in loggers of :mod:`memagent.core.logs` get a sink here, with the
same choices as :mod:`.logsetup` makes on CPython: stderr, syslog
(``/dev/log``, one datagram per line), or ``/dev/kmsg`` (WARNING and up,
within the kernel's rate limit) when syslog is asked for but nobody
listens and stderr goes to /dev/null (``start-stop-daemon -b``).
"""

import socket

from ..aio import unix
from ..core import logs

try:
    from typing import Callable, List, Optional
except ImportError:  # MicroPython
    pass

# syslog priority (facility user, 8, plus the severity) per level
PRIORITY = {logs.DEBUG: 15, logs.INFO: 14, logs.WARNING: 12, logs.ERROR: 11}
MAX_LINE_BYTES = 1000


def _syslog(address: str) -> "Optional[Callable[[int, str], None]]":
    """Return: a sink sending to the syslog socket ``address``, or None if
    nothing listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(unix.sockaddr(address))
    except OSError:
        sock.close()
        return None
    pid = unix.getpid()

    def write(level: int, text: str) -> None:
        line = "<%d>memagent[%d]: %s" % (PRIORITY.get(level, 14), pid, text)
        try:
            sock.send(line.encode()[:MAX_LINE_BYTES])
        except OSError:
            pass  # syslog went away: nowhere else to say it
    return write


def _kmsg(path: str) -> "Optional[Callable[[int, str], None]]":
    """Return: a sink writing WARNING and up to ``path``, or None."""
    try:
        fd = unix.open_fd(path, unix.O_WRONLY)
    except OSError:
        return None
    pid = unix.getpid()

    def write(level: int, text: str) -> None:
        if level < logs.WARNING:
            return
        line = "<%d>memagent[%d]: %s\n" % (PRIORITY.get(level, 14), pid, text)
        try:
            unix.write(fd, line.encode()[:MAX_LINE_BYTES])
        except OSError:
            pass
    return write


def open_plain_log(target: str, level: int, address: str = "/dev/log",
                   kmsg: str = "/dev/kmsg") -> "List[str]":
    """Install the sink for ``[agent] log = target`` at ``level``.
    Returns: the lines to log once it is installed."""
    logs.set_level(level)
    if target != "syslog":
        return []
    sink = _syslog(address)
    if sink is not None:
        logs.set_sink(sink)
        return []
    where = "stderr"
    if unix.stderr_is_null():
        sink = _kmsg(kmsg)
        if sink is not None:
            logs.set_sink(sink)
            where = kmsg
    return ["log = syslog, but nothing listens on %s; logging to %s instead" % (address, where)]
