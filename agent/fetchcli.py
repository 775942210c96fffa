"""From a workstation: ``memagent status``, ``events`` and ``plot`` of a
device, fetched through the system ``ssh`` (--ssh), ``adb shell`` (--adb)
or the agent's read-only TCP listener (--connect), then shown here.

The device runs its own ``memagent status --json`` (or ``events``) for ssh
and adb (:mod:`memagent.remote`); the TCP listener answers the control
socket's ``status`` and ``events`` requests (:mod:`memagent.ipc.statustcp`).
Each failure has its exit code and a message that names the device:
docs/status.md and docs/remote.md.  CPython only: a workstation's tool.
"""

import json
import sys

from . import statuscli
from .core.statusschema import SchemaMismatch, check_version

try:
    from typing import Any, Dict, Optional, Tuple
except ImportError:  # MicroPython
    pass

def _where(args: "Any") -> str:
    if args.ssh:
        return str(args.ssh)
    if args.adb:
        return "adb device %s" % args.serial if args.serial else "the adb device"
    return str(args.connect)


def _tcp_asker(args: "Any") -> "statuscli.Asker":
    """Return: an Asker on the TCP listener of ``args.connect``.  Raises:
    TcpStatusError (no or bad token file, bad HOST:PORT)."""
    from .ipc import statustcp

    host, port = statustcp.parse_hostport(args.connect)
    token = statustcp.read_token(args.token_file)
    timeout_ms = int(args.timeout_s * 1000)

    def asker(cmd: str, fields: "Optional[Dict[str, Any]]") -> "Dict[str, Any]":
        return statustcp.fetch(host, port, token, dict(fields or {}, cmd=cmd), timeout_ms)
    return asker


def _transport(args: "Any") -> "Any":
    """Return: the ssh or adb transport ``args`` describe."""
    from . import remote

    return remote.Transport(
        "ssh" if args.ssh else "adb", args.ssh or args.serial,
        options=list(args.ssh_option or []), remote_memagent=args.remote_memagent,
        remote_socket=args.remote_socket, timeout_s=args.timeout_s)


def _fetch_tcp(args: "Any") -> "Tuple[Dict[str, Any], int, Optional[str]]":
    """Return: as :func:`fetch_remote`, through the TCP listener."""
    from .ipc import statustcp

    try:
        doc = statuscli.ask_status(_tcp_asker(args))
        check_version(doc)
    except statustcp.TcpStatusError as e:
        return {}, e.exit_code, str(e)
    except (statuscli.AgentBusy, OSError, ValueError, SchemaMismatch) as e:
        code, why = statuscli.status_failure(_where(args), e)
        return {}, code, why
    return doc, 0, None


def fetch_remote(args: "Any") -> "Tuple[Dict[str, Any], int, Optional[str]]":
    """Return: (the device's status document, exit code, what went wrong
    or None).  When the device's agent did not answer (3-6) the document
    is the state its memagent computed from /proc, ``running`` false; when
    the device gave nothing (7-10, 6) it is ``{}``."""
    if args.connect:
        return _fetch_tcp(args)
    from . import remote

    try:
        t = _transport(args)
        doc, code = remote.fetch_status(t)
    except remote.RemoteError as e:
        return {}, e.exit_code, str(e)
    return doc, code, remote.warning(t, code, doc) if code else None


def cmd_status_remote(args: "Any") -> int:
    """``memagent status --ssh/--adb/--connect``.  Returns: the exit code."""
    if args.watch is not None:
        return statuscli.watch(lambda: fetch_remote(args), args)
    doc, code, why = fetch_remote(args)
    if why:
        print("memagent: %s" % why, file=sys.stderr)
    if doc:
        statuscli.show(doc, args)
    return code


def cmd_events_remote(args: "Any") -> int:
    """``memagent events --ssh/--adb/--connect``: the device's events as
    JSON lines here.  Returns: the exit code."""
    if args.connect:
        from .ipc import statustcp

        try:
            return statuscli.follow(_tcp_asker(args), args.after, args.follow,
                                    args.interval_ms, sys.stdout)
        except statustcp.TcpStatusError as e:
            print("memagent: %s" % e, file=sys.stderr)
            return int(e.exit_code)
        except (statuscli.AgentBusy, OSError, ValueError) as e:
            code, why = statuscli.status_failure(_where(args), e)
            print("memagent: %s" % why, file=sys.stderr)
            return code
    from . import remote

    try:
        for entry in remote.remote_events(_transport(args), args.follow, args.after):
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()
        return 0
    except remote.RemoteError as e:
        print("memagent: %s" % e, file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        return 0
