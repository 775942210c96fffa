"""The user_activity plugin on real evdev devices: uinput keyboards, a touch
screen and an accelerometer in the qemu ARM guest (this machine has no
/dev/uinput; the guest has it, and python-evdev to make the devices and to
check the plugin's own reader against).  Judged by the FACT and RESULT lines
of scenarios/input.py.
"""

import os
from typing import Any

import pytest
from test_guest import RIG_DIR, boot_script

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

SCENARIO = os.path.join(RIG_DIR, "scenarios", "input.py")


def test_user_activity_on_uinput_keyboards(tmp_path: Any) -> None:
    _, facts = boot_script(SCENARIO, str(tmp_path))
    # Phase 0: the reader parses what python-evdev parses (checked in the
    # guest, record by record), from 16-byte records; its ioctls work on ARM.
    assert facts["event_size"] == "16"
    assert facts["kbd_name"] == "memagent-capture-kbd" and facts["kbd_events"] == "18"
    assert facts["kbd_bytes"] == "288" and facts["touch_events"] == "50"
    assert facts["kbd_props"] == "" and facts["touch_props"] == "1"  # INPUT_PROP_DIRECT
    assert facts["accel_props"] == "6"  # INPUT_PROP_ACCELEROMETER
    assert facts["not_evdev"] == "25 Inappropriate ioctl for device"  # /dev/null: ENOTTY
    assert facts["ignored_at_start"].endswith(":accelerometer")
    assert "memagent-kbd1" in facts["devices_at_start"].split(",")
    # Loose bounds: the guest runs under TCG.
    assert int(facts["key_to_active_ms"]) < 1000
    assert 1000 <= int(facts["key_to_idle_ms"]) < 3000  # idle_after_ms = 1500
    assert facts["inputs_after_one_key"] == "2"  # a press and a release
    assert facts["backlight_off_state"] == "screen-off"
    assert int(facts["unplug_dropped_ms"]) < 2000
    assert facts["rescan"].startswith("opened=/dev/input/event")
    assert facts["agent_exit"] == "0"
    # The cost: nothing while calm; under 200 reports/s, about one wakeup a
    # second with the quiet period against one per report without it.
    assert float(facts["quiet_calm_switches_per_s"]) < 0.5
    assert float(facts["quiet_flood_switches_per_s"]) < 10
    assert float(facts["eager_flood_switches_per_s"]) > 50
