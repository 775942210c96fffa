"""memagent.sense.presence: the user's presence from input times and the backlight."""

import os
from typing import Any

from memagent.sense.presence import (
    ACTIVE,
    IDLE,
    SCREEN_OFF,
    UNKNOWN,
    Activity,
    expand_star,
    screen_off,
)


def backlight(root: str, name: str, value: str) -> str:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    path = os.path.join(root, name, "bl_power")
    with open(path, "w") as f:
        f.write(value)
    return path


def test_expand_star_matches_one_component(tmp_path: Any) -> None:
    root = str(tmp_path)
    a = backlight(root, "lcd0", "0\n")
    b = backlight(root, "lcd1", "4\n")
    os.makedirs(os.path.join(root, "empty"))  # no bl_power: not matched
    assert expand_star(root + "/*/bl_power") == [a, b]
    assert expand_star(root + "/lcd*/bl_power") == [a, b]
    assert expand_star(root + "/*1/bl_power") == [b]
    assert expand_star(root + "/missing/*/x") == []
    assert expand_star(a) == [a] and expand_star(a + "x") == []


def test_screen_off_needs_every_backlight_off(tmp_path: Any) -> None:
    root = str(tmp_path)
    pattern = root + "/*/bl_power"
    assert screen_off(pattern) is None  # no backlight: unknown
    backlight(root, "a", "4\n")
    assert screen_off(pattern) is True
    backlight(root, "b", "0\n")
    assert screen_off(pattern) is False  # one panel is lit
    assert screen_off("") is None


def test_screen_off_ignores_hostile_files(tmp_path: Any) -> None:
    root = str(tmp_path)
    pattern = root + "/*/bl_power"
    backlight(root, "garbage", "on\x00\xff")
    assert screen_off(pattern) is None  # unreadable as a number: no evidence
    os.makedirs(os.path.join(root, "dir", "bl_power"))  # a directory, not a file
    assert screen_off(pattern) is None
    backlight(root, "real", "1")
    assert screen_off(pattern) is True


def test_states_follow_input_and_feeder(tmp_path: Any) -> None:
    act = Activity(idle_after_ms=1000, backlight=str(tmp_path) + "/*/bl_power")
    assert act.state(0) == UNKNOWN and not act.user_away(0)
    act.start_feeding("evdev", 10_000)
    assert act.state(10_500) == ACTIVE  # counts from the start until a first input
    assert act.state(11_000) == IDLE and act.user_away(11_000)
    act.note_input(12_000)
    assert act.state(12_999) == ACTIVE and act.idle_ms(12_999) == 999
    assert act.state(13_000) == IDLE
    backlight(str(tmp_path), "lcd", "4")
    act.note_input(14_000)
    assert act.state(14_001) == SCREEN_OFF and act.user_away(14_001)
    act.stop_feeding()
    assert act.as_dict(14_001) == {"state": SCREEN_OFF, "idle_ms": 1, "feeder": None,
                                   "inputs": 2}
