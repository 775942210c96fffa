"""Test helpers shared by the test modules."""

import json
import os
import socket
from typing import Any, Dict, List, NoReturn

import pytest


def need(reason: str) -> NoReturn:
    """A prerequisite is missing: skip with ``reason`` on a laptop, fail in CI
    (``CI=true``), where every prerequisite must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("prerequisite missing in CI: " + reason)
    pytest.skip(reason)


def exchange(s: socket.socket, data: bytes) -> "List[Dict[str, Any]]":
    """Send ``data`` on a connected control socket and close our side.
    Returns: every JSON reply line until the server closes."""
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines()]
