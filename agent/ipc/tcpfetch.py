"""The client of the read-only TCP status listener (:mod:`.statustcp`,
docs/status-tcp.md): :func:`fetch` for ``memagent status --connect``
(CPython, blocking sockets), :func:`parse_hostport`, and :func:`read_token`,
which the listener uses too.  Failures are :class:`TcpStatusError` with
the exit code of the contract (docs/status.md).
"""

import json
import socket

from ..aio import unix
from ..core.protocol import MAX_LINE_BYTES

try:
    from typing import Any, Dict, Optional, Tuple
except ImportError:  # MicroPython
    pass

DEFAULT_PORT = 7767  # [status_tcp] port's default
MIN_TOKEN_CHARS = 16
_S_IFMT, _S_IFREG = 0o170000, 0o100000

# The exit codes of `memagent status --connect` (the contract's).
EXIT_USAGE, EXIT_BUSY, EXIT_TOO_LARGE, EXIT_GARBAGE = 2, 4, 5, 6
EXIT_UNREACHABLE, EXIT_AUTH, EXIT_VERSION = 7, 8, 10


class TcpStatusError(Exception):
    """Fetching over TCP failed: ``str()`` says why, ``exit_code`` is the
    CLI's (EXIT_UNREACHABLE, EXIT_AUTH, EXIT_BUSY, EXIT_TOO_LARGE,
    EXIT_GARBAGE, EXIT_VERSION)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TokenFileError(TcpStatusError):
    """The token file is missing, unsafe or too short (exit EXIT_AUTH), or
    not given (EXIT_USAGE)."""

    def __init__(self, message: str, exit_code: int = EXIT_AUTH) -> None:
        super().__init__(message, exit_code)


def read_token(path: "Optional[str]") -> str:
    """Return: the token in ``path``: its first line, stripped.  Raises:
    TokenFileError unless ``path`` is a regular file owned by root or this
    process's euid, without group or other permission bits (mode 0600 or
    0400), whose token has at least MIN_TOKEN_CHARS characters (exit
    EXIT_USAGE when ``path`` is None or empty: no --token-file)."""
    import os

    if not path:
        raise TokenFileError("--connect needs --token-file FILE: a copy of the device's "
                             "[status_tcp] token_file, mode 0600", EXIT_USAGE)
    try:
        st = os.stat(path)
        mode, uid = st[0], st[4]
    except OSError as e:
        raise TokenFileError("token file %s: %s" % (path, unix.strerror(e.args[0])))
    if mode & _S_IFMT != _S_IFREG:
        raise TokenFileError("token file %s: not a regular file" % path)
    if uid not in (0, unix.geteuid()):
        raise TokenFileError("token file %s: owned by uid %d, not by root or uid %d"
                             % (path, uid, unix.geteuid()))
    if mode & 0o077:
        raise TokenFileError("token file %s: mode %04o lets others read it; chmod 600 %s"
                             % (path, mode & 0o7777, path))
    try:
        with open(path) as f:
            token = f.readline().strip()
    except (OSError, UnicodeError) as e:
        raise TokenFileError("token file %s: cannot read it (%s)" % (path, e))
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError("token file %s: the token (its first line) has %d characters, "
                             "fewer than %d" % (path, len(token), MIN_TOKEN_CHARS))
    return token


def parse_hostport(text: "Optional[str]") -> "Tuple[str, int]":
    """Return: (host, port) of ``HOST:PORT``, ``[V6ADDR]:PORT`` or ``HOST``
    (DEFAULT_PORT).  Raises: TcpStatusError (EXIT_USAGE) for anything else."""
    text = (text or "").strip()
    host, port_text = text, None  # None: no port given
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1:]) if end > 0 else ("", "")
        if rest:
            port_text = rest[1:] if rest.startswith(":") else "x"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if port_text is None:
        port = DEFAULT_PORT
    else:
        port = int(port_text) if port_text.isdigit() else 0
    if not host or not 0 < port < 65536:
        raise TcpStatusError("--connect %r: give HOST:PORT (or [IPV6]:PORT)" % text, EXIT_USAGE)
    return host, port


def _classify(reply: "Dict[str, Any]", where: str) -> "Optional[TcpStatusError]":
    """Return: the error an ``ok: false`` reply means, None for ok."""
    if reply.get("ok") is True:
        return None
    code, text = reply.get("code"), reply.get("error")
    said = "%s: %s (%s)" % (where, text, code)
    if code in ("token_required", "bad_token"):
        return TcpStatusError(said + ": check --token-file against the agent's "
                              "[status_tcp] token_file", EXIT_AUTH)
    if code == "busy":
        return TcpStatusError(said, EXIT_BUSY)
    if code == "too_long":
        return TcpStatusError(said, EXIT_TOO_LARGE)
    if code in ("unknown_cmd", "bad_version"):
        return TcpStatusError(said + ": the device's memagent is older", EXIT_VERSION)
    return TcpStatusError(said, EXIT_GARBAGE)


def _read_reply(sock: "Any", where: str) -> bytes:
    """Return: the first line the agent sent.  Raises: TcpStatusError."""
    buf = b""
    while b"\n" not in buf:
        if len(buf) > MAX_LINE_BYTES:
            raise TcpStatusError("%s: the reply is longer than %d bytes"
                                 % (where, MAX_LINE_BYTES), EXIT_TOO_LARGE)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise TcpStatusError("%s: no answer in time" % where, EXIT_UNREACHABLE)
        except OSError as e:
            raise TcpStatusError("%s: connection lost (%s)" % (where, e), EXIT_GARBAGE)
        if not chunk:
            raise TcpStatusError("%s: the connection closed without %s reply"
                                 % (where, "a whole" if buf else "a"), EXIT_GARBAGE)
        buf += chunk
    return buf[:buf.index(b"\n") + 1]


def fetch(host: str, port: int, token: str, request: "Dict[str, Any]",
          timeout_ms: int = 5000) -> "Dict[str, Any]":
    """Send ``request`` (with ``token``) to the status listener at
    ``host``:``port`` and read its reply, within ``timeout_ms`` per step.

    Returns: the reply object (``ok`` true; for ``status``, one whose
    status has a ``schema``).  Raises: TcpStatusError: unreachable,
    refused or silent (EXIT_UNREACHABLE), a missing or wrong token
    (EXIT_AUTH), busy (EXIT_BUSY), a reply over MAX_LINE_BYTES
    (EXIT_TOO_LARGE), anything unusable (EXIT_GARBAGE), a status without a
    schema or an unknown request (EXIT_VERSION).
    """
    where = "%s:%d" % (host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout_ms / 1000.0)
    except (OSError, socket.timeout) as e:
        raise TcpStatusError("cannot reach the status listener at %s: %s (is [status_tcp] "
                             "enabled there?)" % (where, e), EXIT_UNREACHABLE)
    try:
        sock.sendall((json.dumps(dict(request, token=token)) + "\n").encode("utf-8"))
        line = _read_reply(sock, where)
    except OSError as e:
        raise TcpStatusError("%s: connection lost (%s)" % (where, e), EXIT_GARBAGE)
    finally:
        sock.close()
    try:
        reply = json.loads(line.decode("utf-8"))
    except ValueError:
        raise TcpStatusError("%s: the reply is not JSON" % where, EXIT_GARBAGE)
    if not isinstance(reply, dict):
        raise TcpStatusError("%s: the reply is not a JSON object" % where, EXIT_GARBAGE)
    err = _classify(reply, where)
    if err is not None:
        raise err
    status = reply.get("status")
    if request.get("cmd") == "status" and not (
            isinstance(status, dict) and isinstance(status.get("schema"), int)):
        raise TcpStatusError("%s: the status has no schema: the device's memagent is older "
                             "than this one" % where, EXIT_VERSION)
    return reply
