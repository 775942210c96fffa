"""Shared fixtures.  Keep small: other test files may append fixtures here."""

import os
import sys
from typing import Iterator

import pytest

from memagent import memcg as memcg_mod
from support import need  # noqa: F401  (re-exported for the test modules)

HELPERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
ALLOC = [sys.executable, "-u", os.path.join(HELPERS_DIR, "alloc.py")]
MEMCG_LIMIT_KIB = 64 * 1024


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
