"""``memagent status`` and ``memagent events`` on the device: ask the agent
on its control socket (its status pages merged), say why it gave none (the
exit codes), and show the one screen (:mod:`memagent.core.statusview`) or
the schema's JSON (docs/status.md).  From a workstation the same commands
fetch through ssh, adb or the TCP listener: :mod:`memagent.fetchcli`.

Without asyncio: a support engineer's shell on a 64 MB handset, often at
the moment memory runs out (memagent.ipc.ask).
"""

import json
import sys
import time

from .core.config import Config, thresholds_from_config
from .core.levels import Monitor, level_name
from .ipc.ask import ReplyTooLarge, ask
from .sense import domains

try:
    from typing import Any, Callable, Dict, List, Optional, Tuple

    # (cmd, fields) -> the reply object: the control socket, or the TCP listener
    Asker = Callable[[str, Optional[Dict[str, Any]]], Dict[str, Any]]
except ImportError:  # MicroPython
    pass

# Exit codes (docs/status.md): the agent gave no status (the level computed
# from /proc now is shown instead: 3-6), or a remote one could not be had.
STATUS_NOT_RUNNING, STATUS_BUSY, STATUS_TOO_LARGE, STATUS_NO_ANSWER = 3, 4, 5, 6
STATUS_UNREACHABLE, STATUS_AUTH, STATUS_MISSING, STATUS_VERSION = 7, 8, 9, 10
MAX_STATUS_PAGES = 4096  # pages of the app list (one app each at worst)
EVENTS_POLL_MS = 1000  # memagent events --follow: one request a second


class AgentBusy(Exception):
    """The agent refused the connection: too many clients."""


class Refused(ValueError):
    """The agent answered with an error (its code and text)."""

    def __init__(self, code: str, text: str) -> None:
        ValueError.__init__(self, "%s: %s" % (code, text))
        self.code = code


def local_status(config: Config, why: str) -> "Dict[str, Any]":
    """Return: a status document (``running`` false, ``agent`` = ``why``)
    with the level computed from /proc (or the memcg) now, when no agent
    answers.  Raises: OSError, ParseError."""
    from . import aio  # its clock; only when no agent runs
    from .aio import unix

    memcg = config.get("agent", "memcg")
    domain = domains.open_domain(str(memcg) if memcg else None,
                                 config.get_str("agent", "proc_root"))
    reading = domain.read(aio.ticks_ms(), "status")
    monitor = Monitor(thresholds_from_config(config, reading.total_kib))
    monitor.update(reading)
    from . import __version__
    from .core.statusschema import STATUS_SCHEMA

    return {"schema": STATUS_SCHEMA, "version": __version__, "host": unix.hostname(),
            "wall": round(time.time(), 3), "running": False,
            "agent": "%s; computed from %s now" % (why, domain.name),
            "level": level_name(monitor.level), "reading": reading.to_dict(),
            "thresholds": monitor.thresholds.as_dict()}


def socket_asker(path: str, timeout_ms: int = 3000) -> "Asker":
    """Return: an Asker on the control socket at ``path``."""
    def asker(cmd: str, fields: "Optional[Dict[str, Any]]") -> "Dict[str, Any]":
        return ask(path, cmd, timeout_ms=timeout_ms, fields=fields)
    return asker


def _reply(asker: "Asker", cmd: str, fields: "Optional[Dict[str, Any]]") -> "Dict[str, Any]":
    """Return: a successful reply to ``cmd``.  Raises: AgentBusy; Refused
    for another error reply; as the asker (OSError, ValueError)."""
    reply = asker(cmd, fields)
    if not reply.get("ok"):
        if reply.get("code") == "busy":
            raise AgentBusy(str(reply.get("error", "busy")))
        raise Refused(str(reply.get("code", "error")), str(reply.get("error", "refused")))
    return reply


def _status_page(asker: "Asker", after: int) -> "Dict[str, Any]":
    """Return: one status reply's status, its app list from ``after`` on."""
    st = _reply(asker, "status", {"apps_after": after} if after else None).get("status")
    if not isinstance(st, dict):
        raise ValueError("a status reply without a status object")
    return st


def ask_status(asker: "Asker") -> "Dict[str, Any]":
    """Return: the running agent's status, every page of its app list
    merged (an agent that does not page answers in one).  Raises:
    AgentBusy; Refused; ReplyTooLarge; FileNotFoundError or
    ConnectionRefusedError when no agent runs; other OSError or ValueError
    for no usable answer."""
    st = _status_page(asker, 0)
    apps = st.get("apps")
    after = 0
    for _ in range(MAX_STATUS_PAGES):
        if not isinstance(apps, dict) or not isinstance(apps.get("apps"), list):
            break
        nxt = apps.get("apps_next")
        if isinstance(nxt, bool) or not isinstance(nxt, int) or nxt <= after:
            break
        more = _status_page(asker, nxt).get("apps")
        if not isinstance(more, dict) or not isinstance(more.get("apps"), list):
            raise ValueError("a status page without its apps")
        apps["apps"].extend(more["apps"])
        apps["apps_next"], after = more.get("apps_next"), nxt
    return st


def status_failure(where: str, err: Exception) -> "Tuple[int, str]":
    """Return: (exit code, what went wrong) when the agent at ``where``
    gave no status."""
    from .core.statusschema import SchemaMismatch  # read only then: `memagent run` starts quicker

    if isinstance(err, AgentBusy):
        return STATUS_BUSY, "the agent at %s is busy (%s)" % (where, err)
    if isinstance(err, ReplyTooLarge):
        return STATUS_TOO_LARGE, "the agent at %s sent a reply too large (%s)" % (where, err)
    if isinstance(err, SchemaMismatch):
        return STATUS_VERSION, "version mismatch with the agent at %s: %s" % (where, err)
    if isinstance(err, Refused) and err.code == "bad_version":
        return STATUS_VERSION, "version mismatch with the agent at %s: %s" % (where, err)
    if isinstance(err, OSError) and err.args and err.args[0] in (2, 111):
        # ENOENT (no socket), ECONNREFUSED (nobody listens): by number, which
        # MicroPython's plain OSError carries too
        return STATUS_NOT_RUNNING, "not running at %s (%s)" % (where, err)
    return STATUS_NO_ANSWER, "the agent at %s did not answer (%s: %s)" % (
        where, type(err).__name__, err)


def fetch_local(config: Config, path: str) -> "Tuple[Dict[str, Any], int, Optional[str]]":
    """Return: (the status document, exit code, what went wrong or None):
    the agent's at ``path``, else the level computed from /proc now.
    Raises: OSError, ParseError when /proc cannot be read either."""
    from .core.statusschema import SchemaMismatch, check_version

    try:
        st = ask_status(socket_asker(path))
        check_version(st)
        return st, 0, None
    except (AgentBusy, OSError, ValueError, SchemaMismatch) as e:
        code, why = status_failure(path, e)
    return local_status(config, why), code, why


# -- showing it ------------------------------------------------------------------------

def screen_mode(forced: "Optional[str]", stream: "Any", term: "Optional[str]") -> str:
    """Return: "terminal" (colour, Unicode) or "plain" (ASCII, for serial
    consoles and pipes): ``forced`` if given, else terminal only on a tty
    whose TERM is set and not "dumb"."""
    if forced:
        return forced
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty() or not term or term == "dumb":
        return "plain"
    return "terminal"


def dump_json(doc: "Any") -> str:
    """Return: ``doc`` as indented, sorted JSON (one line on MicroPython,
    whose json takes no options)."""
    try:
        return json.dumps(doc, indent=1, sort_keys=True)
    except TypeError:
        return json.dumps(doc)


def render_screen(doc: "Dict[str, Any]", mode: str, width_cols: int, events_n: int) -> str:
    """Return: the one screen for ``doc``."""
    from .core.statusview import render

    return render(doc, mode, width_cols, events_n)


def terminal_width(mode: str, forced: "Optional[int]") -> int:
    """Return: the columns to render in: ``forced``, else the terminal's
    in terminal mode, else 80."""
    if forced:
        return max(forced, 40)
    if mode == "terminal":
        try:
            import shutil

            return max(shutil.get_terminal_size((80, 24)).columns, 40)
        except (ImportError, OSError, ValueError):
            pass
    return 80


def show(doc: "Dict[str, Any]", args: "Any", out: "Any" = None) -> None:
    """Print ``doc`` as ``args`` ask: --json, or the screen (--plain,
    --color, --width, --events N)."""
    out = out or sys.stdout
    if args.json:
        out.write(dump_json(doc) + "\n")
        return
    forced = "plain" if args.plain else ("terminal" if args.color else None)
    import os

    mode = screen_mode(forced, out, os.getenv("TERM"))  # MicroPython's os has no environ
    text = render_screen(doc, mode, terminal_width(mode, args.width), args.events)
    if args.watch is not None and mode == "terminal":
        text = "\x1b[H\x1b[2J" + text  # refresh in place
    out.write(text if text.endswith("\n") else text + "\n")
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()


def watch(fetch: "Callable[[], Tuple[Dict[str, Any], int, Optional[str]]]", args: "Any") -> int:
    """Show ``fetch()``'s document every ``args.watch`` seconds until
    interrupted (or ``args.count`` times).  Returns: the last exit code
    (0 on ^C)."""
    code, shown = 0, 0
    interval_s = max(float(args.watch), 0.2)
    try:
        while True:
            doc, code, why = fetch()
            if why:
                doc = dict(doc, problem=why)
            show(doc, args)
            shown += 1
            if args.count and shown >= args.count:
                return code
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0


# -- events ----------------------------------------------------------------------------

def events_since(asker: "Asker", after_seq: int) -> "Tuple[List[Dict[str, Any]], int, int]":
    """Return: (the agent's events numbered above ``after_seq``, a gap
    entry first where some were lost; the ``after`` to ask next; the
    agent's newest number, below ``after_seq`` when it restarted).
    Raises: as :func:`_reply`."""
    reply = _reply(asker, "events", {"after": after_seq} if after_seq else None)
    got = reply.get("events")
    if not isinstance(got, list):
        raise ValueError("an events reply without its events")
    out: "List[Dict[str, Any]]" = []
    expect = after_seq + 1
    for entry in got:
        seq = entry.get("seq") if isinstance(entry, dict) else None
        if not isinstance(seq, int) or seq < expect:
            continue
        if seq > expect and after_seq:
            out.append({"kind": "gap", "lost": seq - expect, "after_seq": expect - 1})
        out.append(entry)
        expect = seq + 1
    nxt, last = reply.get("next"), reply.get("last")
    nxt = nxt if isinstance(nxt, int) and nxt >= expect - 1 else expect - 1
    return out, nxt, last if isinstance(last, int) else nxt


def follow(asker: "Asker", after_seq: int, forever: bool, interval_ms: int,
           out: "Any") -> int:
    """Print the agent's events as JSON lines, from ``after_seq`` on; with
    ``forever``, ask again every ``interval_ms`` until interrupted, through
    the agent's restarts: ``{"kind": "disconnected", "why": ...}`` once
    when it goes, ``{"kind": "restart", ...}`` when one answers again (its
    numbers begin again: followed from its first).  Returns: 0.  Raises:
    as :func:`events_since` for the first request."""
    lost: "Optional[str]" = None
    first = True
    try:
        while True:
            try:
                got, nxt, last = events_since(asker, after_seq)
            except (AgentBusy, OSError, ValueError) as e:
                if first or not forever:
                    raise
                if lost is None:
                    lost = "%s: %s" % (type(e).__name__, e)
                    _line(out, {"kind": "disconnected", "why": lost, "after_seq": after_seq})
                time.sleep(interval_ms / 1000.0)
                continue
            if lost is not None or last < after_seq:  # its numbers begin again
                _line(out, {"kind": "restart", "after_seq": after_seq})
                got, nxt, last = events_since(asker, 0)
                lost = None
            first = False
            for entry in got:
                _line(out, entry)
            after_seq = nxt
            if not forever:
                return 0
            time.sleep(interval_ms / 1000.0)
    except KeyboardInterrupt:
        return 0


def _line(out: "Any", obj: "Dict[str, Any]") -> None:
    """Write ``obj`` as one JSON line to ``out``, flushed."""
    out.write(json.dumps(obj) + "\n")
    out.flush()
