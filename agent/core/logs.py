"""Loggers for every module, on CPython and on MicroPython.

:func:`get_logger` is ``logging.getLogger`` where the ``logging`` module
exists.  MicroPython's unix port has none (micropython-lib's is optional),
so there it returns a small stand-in with the same methods that writes
``memagent: LEVEL message`` lines to stderr, at or above :func:`set_level`
(INFO by default), or hands them to the sink :func:`set_sink` installs
(:mod:`memagent.runtime.plainlog`: syslog or /dev/kmsg).
"""

import sys

try:
    import logging as _logging
except ImportError:  # MicroPython
    _logging = None  # type: ignore[assignment]

try:
    from typing import TYPE_CHECKING, Any, Callable, List
except ImportError:  # MicroPython
    TYPE_CHECKING = False  # type: ignore[misc]
if TYPE_CHECKING:
    from logging import Logger

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
_state = {"level": INFO}
_sink: "List[Callable[[int, str], None]]" = []


class PrintLogger:
    """The stand-in logger: what the agent calls of a ``logging.Logger``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        """Return: True if ``level`` is at or above the set level."""
        return level >= _state["level"]

    def log(self, level: int, fmt: str, *args: "Any") -> None:
        """Write one line to stderr if ``level`` is enabled."""
        if level < _state["level"]:
            return
        try:
            text = fmt % args if args else fmt
        except (TypeError, ValueError):  # a bad format must not stop the agent
            text = "%s %r" % (fmt, args)
        if _sink:
            _sink[0](level, text)
        else:
            sys.stderr.write("%s: %s %s\n" % (self.name, _NAMES.get(level, level), text))

    def debug(self, fmt: str, *args: "Any") -> None:
        """Log at DEBUG."""
        self.log(DEBUG, fmt, *args)

    def info(self, fmt: str, *args: "Any") -> None:
        """Log at INFO."""
        self.log(INFO, fmt, *args)

    def warning(self, fmt: str, *args: "Any") -> None:
        """Log at WARNING."""
        self.log(WARNING, fmt, *args)

    def error(self, fmt: str, *args: "Any") -> None:
        """Log at ERROR."""
        self.log(ERROR, fmt, *args)

    exception = error


def get_logger(name: str) -> "Logger":
    """Return: the logger called ``name`` (``logging.getLogger(name)`` where
    logging exists, else a :class:`PrintLogger`)."""
    if _logging is not None:
        return _logging.getLogger(name)
    return PrintLogger(name)  # type: ignore[return-value]


def set_sink(write: "Callable[[int, str], None]") -> None:
    """Send the stand-in loggers' lines to ``write(level, text)``."""
    _sink[:] = [write]


def set_level(level: int) -> None:
    """Set the level of the stand-in loggers (MicroPython); CPython's are
    set through ``logging`` as usual."""
    _state["level"] = level
