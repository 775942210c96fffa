"""The options of ``memagent status``, ``events`` and ``plot`` that fetch
from a device (--ssh, --adb, --connect), apart from the code that uses them
(:mod:`memagent.fetchcli`, :mod:`memagent.statuscli`): ``memagent run``
builds the same parser and reads neither, which counts on the 64 MB board's
MicroPython start.
"""

try:
    from typing import Any
except ImportError:  # MicroPython
    pass

EVENTS_POLL_MS = 1000  # memagent events --follow: one request a second
REMOTE_TIMEOUT_S = 20.0  # --ssh, --adb, --connect: give up on the device after this


def add_remote_args(p: "Any") -> None:
    """Add the options that fetch from a device to parser ``p``."""
    p.add_argument("--ssh", metavar="[USER@]HOST[:PORT]",
                   help="ask the device through the system ssh client (its keys, "
                   "~/.ssh/config and jump hosts apply)")
    p.add_argument("--ssh-option", action="append", metavar="OPT",
                   help="pass OPT to ssh (repeat: --ssh-option=-i --ssh-option=KEY)")
    p.add_argument("--adb", action="store_true", help="ask the device through adb shell")
    p.add_argument("-s", "--serial", help="with --adb: the device's serial")
    p.add_argument("--connect", metavar="HOST:PORT",
                   help="ask the agent's read-only TCP status listener")
    p.add_argument("--token-file", help="with --connect: the listener's token (a 0600 file)")
    p.add_argument("--remote-memagent", default="memagent", metavar="PATH",
                   help="the device's memagent command (default: memagent on its PATH)")
    p.add_argument("--remote-socket", metavar="PATH",
                   help="the device agent's control socket (default: its config's)")
    p.add_argument("--timeout-s", type=float, default=REMOTE_TIMEOUT_S,
                   help="give up on the device after this long (default 20)")


def remote_asked(args: "Any") -> bool:
    """Return: True if ``args`` ask for a device's state, not this machine's."""
    return bool(getattr(args, "ssh", None) or getattr(args, "adb", False)
                or getattr(args, "connect", None))
