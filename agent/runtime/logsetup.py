"""Where the agent's log goes: stderr, syslog (``/dev/log``), or the
kernel's log (``/dev/kmsg``) when syslog is asked for and nobody listens.

``[agent] log = syslog`` is what the board profiles ship, and a device may
boot without a syslog daemon.  Python 3.11's SysLogHandler hides a failed
connect when it is made and then prints a ~28-line "--- Logging error ---"
traceback for every record instead of the record (31 of them in one guest
boot).  So :func:`open_syslog` connects itself, once, at start; when that
fails it says so once and logs to stderr, or to ``/dev/kmsg`` when stderr
goes nowhere (``start-stop-daemon -b`` gives ``/dev/null``).  A syslog
daemon that goes away later costs one line on stderr, not a traceback per
record.  CPython only (``logging``).
"""

import logging
import os
import socket
import sys
from logging.handlers import SysLogHandler

try:
    from typing import IO, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

SYSLOG_FORMAT = "memagent[%(process)d]: %(message)s"
STDERR_FORMAT = "memagent: %(levelname)s %(message)s"
# syslog severities for /dev/kmsg's "<N>" prefix (facility user: 8 + severity)
KMSG_PRIORITY = {logging.DEBUG: 15, logging.INFO: 14, logging.WARNING: 12,
                 logging.ERROR: 11, logging.CRITICAL: 10}


def syslog_reachable(address: str = "/dev/log") -> "Optional[str]":
    """Return: None if a datagram or stream socket connects to ``address``,
    else why not (the error of the datagram attempt)."""
    first: "Optional[str]" = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.connect(address)
            return None
        except OSError as e:
            first = first or "%s: %s" % (address, e.strerror or e)
        finally:
            s.close()
    return first


def stderr_is_null(stream: "IO[str]") -> bool:
    """Return: True if ``stream`` is closed, or is /dev/null: nobody reads it."""
    try:
        st, null = os.fstat(stream.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return True
    return (st.st_ino, st.st_dev) == (null.st_ino, null.st_dev)


class KmsgHandler(logging.Handler):
    """Writes each record of WARNING and above to /dev/kmsg as one
    ``<N>memagent[PID]: ...`` line.  The kernel lets a writer through in
    bursts of 10 lines per 5 s (printk_devkmsg=ratelimit, the default): the
    start's INFO lines would use the burst up, and the level changes and
    kills that follow (WARNING) would be lost."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        super().__init__(logging.WARNING)
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = "<%d>%s\n" % (KMSG_PRIORITY.get(record.levelno, 14), self.format(record))
            os.write(self._fd, line.encode("utf-8", "replace")[:1000])
        except OSError:
            pass  # the kernel's ring refuses: nowhere else to say it

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        super().close()


class QuietSysLogHandler(SysLogHandler):
    """A SysLogHandler that, when syslog goes away, says so once on
    ``fallback`` and hands it the records until syslog takes them again,
    instead of a traceback per record."""

    def __init__(self, fallback: logging.Handler, address: str = "/dev/log") -> None:
        super().__init__(address=address)
        self.fallback = fallback
        self.failing = False  # syslog refused the last record
        self._erred = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._erred = True
        if not self.failing:
            self.failing = True
            self.fallback.handle(logging.makeLogRecord({
                "name": record.name, "levelno": logging.ERROR, "levelname": "ERROR",
                "msg": "syslog stopped taking messages; logging here until it does"}))
        self.fallback.handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        self._erred = False
        super().emit(record)  # reconnects if it lost the socket; errors: handleError
        if not self._erred:
            self.failing = False


def stderr_handler(stream: "IO[str]") -> logging.Handler:
    """Return: a handler writing STDERR_FORMAT lines to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    return handler


def fallback_handler(stream: "IO[str]", kmsg: str = "/dev/kmsg") -> "Tuple[logging.Handler, str]":
    """Return: (handler, its name) for when syslog is out of reach: stderr,
    or ``kmsg`` when stderr goes nowhere and ``kmsg`` can be opened."""
    if stderr_is_null(stream):
        try:
            handler: logging.Handler = KmsgHandler(kmsg)
            handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
            return handler, kmsg
        except OSError:
            pass
    return stderr_handler(stream), "stderr"


def open_log(target: str, stream: "IO[str]" = sys.stderr, address: str = "/dev/log",
             kmsg: str = "/dev/kmsg") -> "Tuple[logging.Handler, List[str]]":
    """Return: (the handler for ``[agent] log = target``, the lines to log
    once it is installed: why syslog was not used, and where the log went)."""
    if target != "syslog":
        return stderr_handler(stream), []
    why = syslog_reachable(address)
    if why is None:
        fallback, _ = fallback_handler(stream, kmsg)
        handler: logging.Handler = QuietSysLogHandler(fallback, address)
        handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        return handler, []
    handler, where = fallback_handler(stream, kmsg)
    return handler, ["log = syslog, but %s; logging to %s instead" % (why, where)]
