"""The app class ladder, defined once (memagent.core.classes): ranks, who
may take which class, and how an unregistered process is classed."""

import pytest

from memagent.core import protocol
from memagent.core.classes import (
    ADJ_BANDS,
    CLASSES,
    PROTECTED_CLASSES,
    class_of_adj,
    may_register_as,
    may_set_class,
    parse_class,
    rank,
)
from memagent.plugins.release_caches import scheduler


def test_one_ladder_everywhere() -> None:
    assert CLASSES == ("foreground", "visible", "perceptible", "service", "cached")
    assert protocol.CLASSES is CLASSES and protocol.PROTECTED_CLASSES is PROTECTED_CLASSES
    assert scheduler.CLASSES is CLASSES


def test_rank_and_parse_class() -> None:
    assert [rank(c) for c in CLASSES] == [parse_class(c) for c in CLASSES] == [0, 1, 2, 3, 4]
    assert rank("cached") > rank("service") > rank("foreground")
    for bad in ("", "Cached", "background", None, 3):
        assert rank(bad) == -1  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown class"):
            parse_class(bad)


def test_class_of_adj_follows_lmkd_bands() -> None:
    assert [class_of_adj(a) for a in (-1000, -1, 0, 99, 100, 200, 299, 300, 899, 900, 1000)] == [
        None, None, "foreground", "foreground", "visible", "perceptible", "perceptible",
        "service", "service", "cached", "cached"]
    assert [cls for _, cls in ADJ_BANDS] == list(reversed(CLASSES))


def _expected_may(current: str, wanted: str, trusted: bool) -> bool:
    if trusted:
        return True
    lowers_or_keeps = CLASSES.index(wanted) >= CLASSES.index(current)
    return lowers_or_keeps and wanted not in PROTECTED_CLASSES


@pytest.mark.parametrize("trusted", [False, True])
def test_may_set_class_truth_table(trusted: bool) -> None:
    table = {(c, w): may_set_class(c, w, trusted) for c in CLASSES for w in CLASSES}
    assert table == {(c, w): _expected_may(c, w, trusted) for c in CLASSES for w in CLASSES}


def test_may_set_class_spelled_out() -> None:
    assert may_set_class("service", "cached", False)  # lowering: fine
    assert may_set_class("cached", "cached", False)  # staying: fine
    assert not may_set_class("cached", "service", False)  # raising: no
    assert not may_set_class("service", "perceptible", False)  # protected: no
    assert not may_set_class("foreground", "visible", False)  # protected even if lower
    assert may_set_class("foreground", "service", False)
    assert may_set_class("cached", "foreground", True)  # the shell may do anything
    with pytest.raises(ValueError):
        may_set_class("cached", "zombie", True)


def test_may_register_as() -> None:
    assert [may_register_as(c, False) for c in CLASSES] == [False, False, False, True, True]
    assert all(may_register_as(c, True) for c in CLASSES)
    with pytest.raises(ValueError):
        may_register_as("nope", True)
