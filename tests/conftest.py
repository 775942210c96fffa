"""Shared fixtures.  Keep small: other test files may append fixtures here."""

import os
import sys
from typing import Iterator

import pytest

from memagent.demo import memcg as memcg_mod
from support import need  # noqa: F401  (re-exported for the test modules)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # bench/ is not installed; tests import it from the tree

LOADGEN = [sys.executable, "-u", "-m", "memagent.demo.loadgen"]
ALLOC = LOADGEN + ["anon"]  # + --rate MB/s, --chunk MB, --max-mb MB, --hold S
CACHE_FILL = LOADGEN + ["cache"]  # + FILE and the same options
MEMCG_LIMIT_KIB = 64 * 1024

# Agents started by the tests must never reach the machine's own D-Bus: a
# test memcg under pressure would warn the desktop's real GTK apps through
# notify_ui.  Tests that want a bus start their own dbus-daemon.
os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/memagent-tests"
os.environ["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/nonexistent/memagent-tests"


@pytest.fixture
def memcg() -> Iterator[memcg_mod.Memcg]:
    """Yield a fresh memcg limited to 64 MiB; it is always destroyed."""
    reason = memcg_mod.available()
    if reason is not None:
        need(reason)
    group = memcg_mod.Memcg(limit_kib=MEMCG_LIMIT_KIB)
    try:
        yield group
    finally:
        group.destroy()
