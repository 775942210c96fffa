"""``memagent status --ssh`` / ``--adb``: the device's own memagent, asked
through the system ``ssh`` client or ``adb shell``, its answer classified.

The device needs nothing beyond its ssh server (dropbear on Buildroot
boards) or adbd: this module runs ``memagent status --json`` (or ``memagent
events``) there and reads the JSON it prints.  The API the CLI uses::

    t = Transport("ssh", "root@board:2222", options=["IdentityFile=~/.ssh/board"])
    try:
        st, code = fetch_status(t)   # code 0, or 3/4/5/6: st computed from /proc there
    except RemoteError as e:         # e.exit_code (2, 5..10), str(e) one line naming the host
        ...
    if code:
        print(warning(t, code, st))  # then render st as usual, exit with code
    for event in remote_events(t, follow=True, after=0): ...

A top-level (CLI layer) module: CPython only, standard library only.
"""

import os
import shlex
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .core.statusschema import STATUS_SCHEMA, SchemaMismatch, check_version
from .remoteio import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_MISSING,
    EXIT_NO_ANSWER,
    EXIT_NOT_RUNNING,
    EXIT_TOO_LARGE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_VERSION,
    RemoteError,
    last_line,
    parse_json,
    run_lines,
    run_remote,
)

__all__ = ["RemoteError", "Transport", "fetch_status", "fetch_json", "remote_events",
           "warning", "classify", "parse_ssh_target", "ssh_argv", "adb_argv", "run_remote",
           "status_args", "events_args", "SCHEMA_MAX", "EXIT_USAGE", "EXIT_NOT_RUNNING",
           "EXIT_BUSY", "EXIT_TOO_LARGE", "EXIT_NO_ANSWER", "EXIT_UNREACHABLE", "EXIT_AUTH",
           "EXIT_MISSING", "EXIT_VERSION"]

SCHEMA_MAX = STATUS_SCHEMA  # the newest status schema this reader renders
EXIT_MARKER = "memagent-exit:"  # adb: old adbd drops the exit status; the shell echoes it
KIND_SSH, KIND_ADB = "ssh", "adb"
# What ssh (exit 255) says when it did not reach the host, or was refused.
SSH_UNREACHABLE = ("Connection refused", "No route to host", "Could not resolve hostname",
                   "Connection timed out", "Network is unreachable", "Connection closed",
                   "Connection reset", "kex_exchange_identification", "timed out")
SSH_ARG_FLAGS = "BbcDEeFIiJLlmOoPpQRSWw"  # ssh's options that take an argument
SSH_AUTH = ("Permission denied", "Too many authentication failures",
            "No supported authentication methods")


def _check_word(what: str, value: str, allowed: str) -> str:
    """Return: ``value`` if it is a plain word of ``allowed`` characters.
    Raises: RemoteError (exit 2) for an empty one, one starting with "-"
    (ssh or adb would take it for an option) or any other character."""
    if not value:
        raise RemoteError(EXIT_USAGE, "an empty %s" % what)
    if value.startswith("-"):
        raise RemoteError(EXIT_USAGE, "refused %s %r: it starts with '-' and would be read as "
                          "an option" % (what, value))
    bad = sorted(set(c for c in value if not (c.isascii() and (c.isalnum() or c in allowed))))
    if bad:
        raise RemoteError(EXIT_USAGE, "refused %s %r: it may not contain %s"
                          % (what, value, " ".join(repr(c) for c in bad)))
    return value


def _port(text: str, target: str) -> int:
    """Return: the port number ``text``.  Raises: RemoteError (exit 2)."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise RemoteError(EXIT_USAGE, "bad port %r in ssh target %r (1..65535)" % (text, target))
    return int(text)


def parse_ssh_target(target: str) -> Tuple[Optional[str], str, Optional[int]]:
    """Parse ``[user@]host[:port]``; an IPv6 host with a port is written
    ``[::1]:2222`` (bare ``::1`` is a host without a port).

    Returns: (user or None, host, port or None).
    Raises: RemoteError (exit 2, usage) for junk, an empty part, or a user
    or host starting with "-" (an option for ssh).
    """
    user: Optional[str] = None
    rest = target
    if "@" in target:
        user, rest = target.split("@", 1)
        _check_word("ssh user", user, "._-")
    port: Optional[int] = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0 or rest[end + 1:] not in ("",) and not rest[end + 1:].startswith(":"):
            raise RemoteError(EXIT_USAGE, "bad ssh target %r: write an IPv6 host with a port "
                              "as [::1]:2222" % target)
        host, tail = rest[1:end], rest[end + 2:]
        _check_word("IPv6 address", host, ":.%")
        if rest[end + 1:]:
            port = _port(tail, target)
        return user, host, port
    if rest.count(":") == 1:
        rest, tail = rest.split(":")
        port = _port(tail, target)
    return user, _check_word("ssh host", rest, "._-:%"), port


def remote_command(remote_argv: Sequence[str]) -> str:
    """Return: ``remote_argv`` as one shell command line, each word quoted
    (ssh and adb both hand the device's shell one string)."""
    return " ".join(shlex.quote(a) for a in remote_argv)


def ssh_options(values: Sequence[str]) -> List[str]:
    """Return: ssh arguments from ``--ssh-option`` values.  A value is one
    option with its argument (``-i key``, ``-o Name=value``, split like
    shell words) or ssh_config's form (``Name=value``, given as ``-o``);
    or the options come a word per value (``-i``, then ``key``): a value
    after a lone flag that takes an argument is that argument."""
    out: List[str] = []
    wants_arg = False
    for value in values:
        if wants_arg:
            out.append(value)
            wants_arg = False
            continue
        words = shlex.split(value)
        if words and not words[0].startswith("-"):
            words = ["-o", " ".join(words)]
        out.extend(words)
        wants_arg = (len(words) == 1 and len(words[0]) == 2
                     and words[0][0] == "-" and words[0][1] in SSH_ARG_FLAGS)
    return out


def ssh_argv(target: str, remote_argv: Sequence[str], ssh: Optional[str] = None,
             connect_timeout_s: int = 10, extra: Sequence[str] = (),
             tty: bool = False) -> List[str]:
    """Return: the system ssh's argv running ``remote_argv`` on ``target``
    (``[user@]host[:port]``).  BatchMode=yes comes first, so nothing, not
    even ``extra`` (``--ssh-option`` values), makes ssh prompt; ``--``
    ends the options before the host.  ``ssh``: the client command (default
    $MEMAGENT_SSH, else ``ssh``), split like shell words.
    ``tty``: force a pseudo-terminal (``-tt``), so the device's command
    gets SIGHUP when the connection ends (``events --follow`` would
    otherwise linger there until its next write); its stderr then comes
    on stdout, its lines end in CRLF.
    Raises: RemoteError (exit 2) for a bad target."""
    user, host, port = parse_ssh_target(target)
    argv = shlex.split(ssh or os.environ.get("MEMAGENT_SSH") or "ssh")
    argv += ["-tt" if tty else "-T", "-o", "BatchMode=yes",
             "-o", "ConnectTimeout=%d" % connect_timeout_s]
    argv += ssh_options(extra)
    if port is not None:
        argv += ["-p", str(port)]
    if user is not None:
        argv += ["-l", user]
    return argv + ["--", host, remote_command(remote_argv)]


def adb_argv(serial: Optional[str], remote_argv: Sequence[str],
             adb: Optional[str] = None) -> List[str]:
    """Return: ``adb [-s SERIAL] shell 'CMD; echo "memagent-exit:$?"'``:
    old adbd does not return the command's exit status, so the device's
    shell prints it as the last line.  ``adb``: the client command (default
    $MEMAGENT_ADB, else ``adb``).  Raises: RemoteError (exit 2) for a bad
    serial."""
    argv = shlex.split(adb or os.environ.get("MEMAGENT_ADB") or "adb")
    if serial:
        argv += ["-s", _check_word("adb serial", serial, "._-:")]
    return argv + ["shell", remote_command(remote_argv) + '; echo "%s$?"' % EXIT_MARKER]


class Transport:
    """How to reach the device's memagent: ``kind`` "ssh" (``target``
    ``[user@]host[:port]``, ``options`` the ``--ssh-option`` values) or
    "adb" (``target`` the serial, None or "" for adb's only device).
    ``remote_memagent``: the device's memagent command (split like shell
    words: "python3 -m memagent" works); ``remote_socket``: the agent's
    control socket there (None: its config's).  ``timeout_s`` bounds a
    whole fetch, ``connect_timeout_s`` ssh's connection.
    Raises: RemoteError (exit 2) for a bad kind or target."""

    def __init__(self, kind: str, target: Optional[str] = None, options: Sequence[str] = (),
                 remote_memagent: str = "memagent", remote_socket: Optional[str] = None,
                 timeout_s: float = 30.0, connect_timeout_s: int = 10) -> None:
        if kind not in (KIND_SSH, KIND_ADB):
            raise RemoteError(EXIT_USAGE, "unknown transport %r (ssh or adb)" % kind)
        self.kind, self.target, self.options = kind, target or "", list(options)
        self.remote_memagent = shlex.split(remote_memagent) or ["memagent"]
        self.remote_socket = remote_socket
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.argv([])  # check the target now

    @property
    def name(self) -> str:
        """Return: the device as messages name it ("root@board:2222", "adb device SERIAL")."""
        if self.kind == KIND_SSH:
            return self.target
        return "adb device %s" % self.target if self.target else "the adb device"

    def argv(self, remote_argv: Sequence[str], tty: bool = False) -> List[str]:
        """Return: the local argv running ``remote_argv`` on the device
        (``tty``: ssh's pseudo-terminal, see :func:`ssh_argv`; adb: none)."""
        if self.kind == KIND_SSH:
            return ssh_argv(self.target, remote_argv, None, self.connect_timeout_s, self.options,
                            tty)
        return adb_argv(self.target, remote_argv)


def status_args(t: Transport) -> List[str]:
    """Return: the device's ``memagent status --json [--socket X]``."""
    socket = ["--socket", t.remote_socket] if t.remote_socket else []
    return t.remote_memagent + ["status", "--json"] + socket


def events_args(t: Transport, follow: bool, after: int) -> List[str]:
    """Return: the device's ``memagent events --after N [--follow] [--socket X]``."""
    return (t.remote_memagent + ["events", "--after", str(after)]
            + (["--follow"] if follow else [])
            + (["--socket", t.remote_socket] if t.remote_socket else []))


def split_marker(kind: str, rc: int, out: str) -> Tuple[Optional[int], str]:
    """Return: (the device command's exit status, stdout without the
    marker line).  ssh: ``rc`` itself; adb: the ``memagent-exit:N`` line's
    N, or None without one (adb failed before the shell ran it)."""
    if kind == KIND_SSH:
        return rc, out
    lines = out.replace("\r\n", "\n").rstrip().split("\n")
    at = lines[-1].rfind(EXIT_MARKER)  # the echo runs last: its line is the last one
    number = lines[-1][at + len(EXIT_MARKER):].strip()
    if at < 0 or not (number.isascii() and number.isdigit()):
        return None, out
    return int(number), "\n".join(lines[:-1] + [lines[-1][:at]]) + "\n"


def _ssh_failure(t: Transport, err: str) -> RemoteError:
    """Return: the error for ssh's own exit 255, from what it said."""
    if "IDENTIFICATION HAS CHANGED" in err or "has changed and you have requested" in err:
        return RemoteError(EXIT_AUTH, "the ssh host key of %s has CHANGED (reinstalled, or "
                           "someone in between): check it, then ssh-keygen -R the host" % t.name)
    if "host key is known for" in err:
        return RemoteError(EXIT_AUTH, "the ssh host key of %s is unknown (not in known_hosts) "
                           "and ssh may not ask: connect once with ssh, or pass --ssh-option "
                           "StrictHostKeyChecking=accept-new" % t.name)
    if "Host key verification failed" in err:
        return RemoteError(EXIT_AUTH, "ssh could not verify the host key of %s (%s)"
                           % (t.name, last_line(err, "")))
    denied = [s.strip() for s in err.splitlines() if any(a in s for a in SSH_AUTH)]
    if denied:
        return RemoteError(EXIT_AUTH, "ssh authentication to %s failed: %s (no password is "
                           "asked: use a key, ssh-agent or --ssh-option IdentityFile=KEY)"
                           % (t.name, denied[0]))
    said = [s.strip() for s in err.splitlines() if any(u in s for u in SSH_UNREACHABLE)]
    return RemoteError(EXIT_UNREACHABLE, "cannot reach %s: %s" % (
        t.name, said[0] if said else last_line(err, "ssh failed with exit status 255")))


def _adb_failure(t: Transport, rc: int, err: str) -> RemoteError:
    """Return: the error for adb failing before the device's shell ran."""
    said = [s.strip() for s in err.splitlines() if s.strip().startswith(("error:", "adb:"))]
    line = said[0] if said else last_line(err, "adb exited with status %d, no answer" % rc)
    if "unauthorized" in err:
        return RemoteError(EXIT_AUTH, "%s is unauthorized: accept this computer's key on its "
                           "screen (%s)" % (t.name, line))
    if "more than one device" in err:
        return RemoteError(EXIT_USAGE, "more than one adb device: choose one with -s SERIAL")
    return RemoteError(EXIT_UNREACHABLE, "cannot reach %s: %s" % (t.name, line))


def classify(t: Transport, rc: int, out: str, err: str) -> Tuple[Optional[int], str,
                                                                 Optional[RemoteError]]:
    """Classify how running a device command went before reading its answer.

    Returns: (the device command's exit status, its stdout without adb's
    marker, None) when the device's memagent ran; else (status or None, out,
    the RemoteError): 7 unreachable, 8 authentication (or host key), 9
    memagent missing on the device (shell status 127/126), 10 a device
    memagent that does not know the command (older), 2 usage.
    """
    code, out = split_marker(t.kind, rc, out)
    if t.kind == KIND_SSH and rc == 255:
        return code, out, _ssh_failure(t, err)
    if code is None:
        if rc == 0 and "error:" not in err:
            return None, out, RemoteError(EXIT_NO_ANSWER, "%s: adb shell ended without the "
                                          "command's exit status: %r" % (t.name, out[:80]))
        return None, out, _adb_failure(t, rc, err + out)
    text = err + out if t.kind == KIND_ADB or not err.strip() else err  # adbd, a pty: mixed
    if code in (126, 127):
        return code, out, RemoteError(EXIT_MISSING, "memagent is missing on %s: %s (install it, "
                                      "or name it with --remote-memagent)" % (
            t.name, last_line(text, "%r not found" % " ".join(t.remote_memagent))))
    if code == 2 and ("invalid choice" in text or "unrecognized arguments" in text):
        return code, out, RemoteError(EXIT_VERSION, "the memagent on %s is older and does not "
                                      "know this command (%s)" % (t.name, last_line(text, "")))
    return code, out, None


def fetch_json(t: Transport, remote_argv: Sequence[str]) -> Tuple[Dict[str, Any], int]:
    """Run ``remote_argv`` on the device and read the JSON object it prints.

    Returns: (the object, the device command's exit status): 0, or 3/4/5/6
    when the device's memagent printed an object and said by its status
    that its agent did not answer (``memagent status`` then prints the
    state computed from /proc).
    Raises: RemoteError: 7/8/9/10/2 as :func:`classify`; 5 for an answer
    over MAX_STDOUT_BYTES; 6 for a timeout, another exit status, or
    output that is no JSON object (its first bytes are shown).
    """
    rc, raw_out, raw_err = run_remote(t.argv(remote_argv), t.timeout_s, t.name)
    out = raw_out.decode("utf-8", "replace").replace("\r\n", "\n")
    err = raw_err.decode("utf-8", "replace")
    code, out, failure = classify(t, rc, out, err)
    if failure is not None:
        raise failure
    obj = parse_json(out)
    if code in (0, EXIT_NOT_RUNNING, EXIT_BUSY, EXIT_TOO_LARGE, EXIT_NO_ANSWER) and \
            obj is not None:
        return obj, int(code or 0)
    if code == 0:
        raise RemoteError(EXIT_NO_ANSWER, "no usable answer from %s: %r" % (t.name, out[:80]))
    raise RemoteError(int(code) if code in (3, 4, 5, 6) else EXIT_NO_ANSWER,
                      "the memagent on %s failed (exit status %s): %s"
                      % (t.name, code, last_line(err + out, "it said nothing")))


def check_schema(t: Transport, st: Dict[str, Any]) -> None:
    """Raises: RemoteError (exit 10) unless ``st`` carries a status schema
    this reader knows (statusschema.check_version: 1..SCHEMA_MAX)."""
    try:
        check_version(st)
    except SchemaMismatch as e:
        raise RemoteError(EXIT_VERSION, "version mismatch with %s: %s" % (t.name, e))


def fetch_status(t: Transport) -> Tuple[Dict[str, Any], int]:
    """Run ``memagent status --json`` on the device.

    Returns: (the status, schema 1..SCHEMA_MAX, exit code): 0 when its
    agent answered; 3 not running, 4 busy, 5 too large or 6 no answer when
    it did not, with the state the device computed from /proc now
    ("running": false, "agent" says why): show it with :func:`warning`,
    then exit with that code.
    Raises: RemoteError (see :func:`fetch_json`; 10 for a status without
    a schema or with a newer one).
    """
    st, code = fetch_json(t, status_args(t))
    check_schema(t, st)
    return st, code


def warning(t: Transport, code: int, st: Dict[str, Any]) -> str:
    """Return: the one-line warning for a status fetched with exit ``code``
    (3..6): its agent did not answer, and what the state shown is."""
    why = {EXIT_NOT_RUNNING: "is not running", EXIT_BUSY: "is busy (too many clients)",
           EXIT_TOO_LARGE: "sent a reply too large",
           EXIT_NO_ANSWER: "did not answer"}.get(code, "did not answer")
    return "the agent on %s %s (%s); the state shown was computed from /proc there now" % (
        t.name, why, st.get("agent", "no reason given"))


def remote_events(t: Transport, follow: bool, after: int = 0) -> Iterator[Dict[str, Any]]:
    """Run ``memagent events --after AFTER [--follow]`` on the device.

    Yields: each event object as its line arrives (lines that are not a
    JSON object, such as stderr mixed in, are skipped); closing the
    generator ends the client and, over ssh with ``follow``, the device's
    command (SIGHUP of its pseudo-terminal).
    Raises: RemoteError at the end: as :func:`classify`, 3 when no agent
    runs there, 5 for a line over MAX_LINE_BYTES, 6 for another failure
    (or a timeout, without ``follow``).
    """
    status: List[int] = []
    err = bytearray()
    skipped: List[str] = []
    argv = t.argv(events_args(t, follow, after), tty=follow)
    for raw in run_lines(argv, None if follow else t.timeout_s, t.name, status, err):
        line = raw.decode("utf-8", "replace").rstrip("\r")
        obj = parse_json(line) if line.startswith("{") else None
        if obj is not None:
            yield obj
        else:
            skipped = (skipped + [line])[-20:]
    text = err.decode("utf-8", "replace")
    code, _, failure = classify(t, status[0], "\n".join(skipped), text)
    if failure is not None:
        raise failure
    if code:
        raise RemoteError(code if code in (3, 4, 5, 6) else EXIT_NO_ANSWER,
                          "memagent events on %s failed (exit status %s): %s"
                          % (t.name, code, last_line(text + "\n".join(skipped), "")))
