#!/usr/bin/env python3
"""Wait for memory-pressure wakeups on /dev/mem_notify (stdlib only).

Each open() of the device is its own file: poll() says POLLIN when the
agent picks this file for a memory-pressure event, and one read() returns
one line (which also acknowledges the wakeup)::

    <level> <avail_kib> <total_kib> <eta_ms> <target_kib> <t_ms>

level is normal, low or critical; eta_ms is -1 when unknown; t_ms is the
CLOCK_MONOTONIC milliseconds of the reading behind it.  Writing
``low_kib X leave_kib Y`` gives the file its own thresholds (``global``
follows the agent's levels again).  Run it::

    python3 examples/mem_notify_poll.py --count 3 --timeout 60 \\
        --thresholds "low_kib 8192 leave_kib 16384"

Output, one line each (mono_ms: time.monotonic(), CLOCK_MONOTONIC, in ms,
taken when poll() returned), as board/qemu-arm/clients/mem_notify_wait.c
prints them::

    READY 1
    WAKE <mono_ms> <line>
    READING {"level": "low", "avail_kib": ..., "eta_ms": null, ...}
    DONE wakes=<n>

``ERROR <mono_ms> <what>`` (exit 3) when the device fails: POLLERR, POLLHUP
(the provider died), a failed read or a line that does not parse.  Exit 2
when the device cannot be opened or refuses the thresholds.
"""

import argparse
import json
import os
import select
import sys
import time
from typing import Dict, List, Optional, Union

DEVICE = "/dev/mem_notify"
LEVELS = ("normal", "low", "critical")
FIELDS = ("level", "avail_kib", "total_kib", "eta_ms", "target_kib", "t_ms")
EXIT_SETUP, EXIT_DEVICE = 2, 3

Reading = Dict[str, Union[str, int, None]]


def parse_line(line: Union[str, bytes]) -> Reading:
    """Parse one line read from the device (the newline is optional).

    Returns: {"level": "normal"|"low"|"critical", "avail_kib": int,
    "total_kib": int, "eta_ms": int or None (the device's -1: unknown),
    "target_kib": int, "t_ms": int}.
    Raises: ValueError when the line is not six fields of that form.
    """
    if isinstance(line, bytes):
        line = line.decode("ascii")
    if line.endswith("\n"):
        line = line[:-1]
    parts = line.split(" ")
    if len(parts) != len(FIELDS):
        raise ValueError("expected %d fields, got %d: %r" % (len(FIELDS), len(parts), line))
    if parts[0] not in LEVELS:
        raise ValueError("unknown level %r in %r" % (parts[0], line))
    reading: Reading = {"level": parts[0]}
    for name, text in zip(FIELDS[1:], parts[1:]):
        if not text.lstrip("-").isdigit():
            raise ValueError("%s is not an integer: %r" % (name, line))
        value = int(text)
        if name == "eta_ms" and value == -1:
            reading[name] = None
            continue
        if value < 0:
            raise ValueError("%s is negative: %r" % (name, line))
        reading[name] = value
    return reading


def mono_ms() -> int:
    """Return: CLOCK_MONOTONIC in whole milliseconds (as the device's t_ms)."""
    return int(time.monotonic() * 1000)


def say(text: str) -> None:
    """Print one line and flush it at once (the guest tests read it live)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class DeviceError(Exception):
    """The device failed: ``t_ms`` is when it was seen, ``what`` says how."""

    def __init__(self, t_ms: int, what: str) -> None:
        super().__init__(what)
        self.t_ms = t_ms
        self.what = what


def wait(fd: int, count: int, timeout_s: Optional[float]) -> int:
    """Poll ``fd`` and print a WAKE and a READING line per wakeup until
    ``count`` wakes (0: no limit) or ``timeout_s`` seconds have passed.
    Returns: the number of wakes.  Raises: DeviceError when the device fails."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wakes = 0
    while count == 0 or wakes < count:
        left_ms = None
        if deadline is not None:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            if left_ms == 0:
                break
        events = poller.poll(left_ms)
        t = mono_ms()
        for _fd, revents in events:
            if revents & select.POLLIN:
                try:
                    data = os.read(fd, 256)
                except OSError as e:
                    raise DeviceError(t, "read: %s" % e.strerror)
                if not data:
                    raise DeviceError(t, "read: end of file")
                text = data.decode("ascii", "replace").rstrip("\r\n")
                say("WAKE %d %s" % (t, text))
                try:
                    reading = parse_line(text)
                except ValueError as e:
                    raise DeviceError(t, "bad line: %s" % e)
                say("READING " + json.dumps(reading))
                wakes += 1
                if wakes == count:
                    return wakes
            if revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                names = [n for n, bit in (("POLLERR", select.POLLERR),
                                          ("POLLHUP", select.POLLHUP),
                                          ("POLLNVAL", select.POLLNVAL)) if revents & bit]
                raise DeviceError(t, "poll " + " ".join(names))
    return wakes


def main(argv: Optional[List[str]] = None) -> int:
    """Run the client.  Returns: the exit status (0 done, 2 set-up failure,
    3 device error)."""
    ap = argparse.ArgumentParser(description="wait for wakeups on /dev/mem_notify")
    ap.add_argument("--device", default=DEVICE, help="default %(default)s")
    ap.add_argument("--count", type=int, default=1,
                    help="exit after this many wakes (default 1, 0: no limit)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="give up after this many seconds (prints DONE, exit 0)")
    ap.add_argument("--thresholds", default=None,
                    help='write this to the file first, e.g. "low_kib 8192 leave_kib 16384" '
                         'or "global"')
    args = ap.parse_args(argv)
    if args.count < 0 or (args.timeout is not None and args.timeout < 0):
        ap.error("--count and --timeout must not be negative")
    try:
        fd = os.open(args.device, os.O_RDONLY)
    except OSError as e:
        print("mem_notify_poll: cannot open %s: %s" % (args.device, e.strerror), file=sys.stderr)
        return EXIT_SETUP
    if args.thresholds is not None:
        try:
            os.write(fd, args.thresholds.encode())
        except OSError as e:
            print("mem_notify_poll: %s refused %r: %s" % (args.device, args.thresholds,
                                                          e.strerror), file=sys.stderr)
            os.close(fd)
            return EXIT_SETUP
    say("READY 1")
    try:
        wakes = wait(fd, args.count, args.timeout)
    except DeviceError as e:
        say("ERROR %d %s" % (e.t_ms, e.what))
        return EXIT_DEVICE
    finally:
        os.close(fd)
    say("DONE wakes=%d" % wakes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
