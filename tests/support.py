"""Test helpers shared by the test modules."""

import os
from typing import NoReturn

import pytest


def need(reason: str) -> NoReturn:
    """A prerequisite is missing: skip with ``reason`` on a laptop, fail in CI
    (``CI=true``), where every prerequisite must be installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("prerequisite missing in CI: " + reason)
    pytest.skip(reason)
