"""device_watch on a real 32-bit ARM kernel (qemu guest, no udev daemon):
real kernel uevents through pyudev, a real /dev/mem_notify made by the CUSE
test fixture (board/qemu-arm/scenarios/cuse_mem_notify.py) that appears and
goes away, and a real uinput device.  See scenarios/devices.py for the steps.
"""

import os
from typing import Any

import pytest
from test_guest import RIG_DIR, boot_script

SCENARIOS = os.path.join(RIG_DIR, "scenarios")

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_mem_notify_device_comes_and_goes(tmp_path: Any) -> None:
    # The rig ships the fixture beside the scenario.
    _, facts = boot_script(os.path.join(SCENARIOS, "devices.py"), str(tmp_path))
    assert facts["source"] == "psi" and facts["monitor"] == "kernel"
    assert facts["fixture"].startswith("READY ")
    assert int(facts["input_events"]) >= 2  # a uinput device: add, remove
    assert facts["switches"] == "psi>mem_notify;mem_notify>psi"
    assert facts["last_reading_event"] == "mem_notify"
    # level-triggered like the real device: ~10 wakes/s (MIN_GAP_MS), none once cleared
    assert int(facts["drains_1s_pressure"]) >= 3 and facts["drains_1.5s_after_clear"] == "0"
    assert facts["low_source"] == "psi"
    assert float(facts["switch_to_mem_notify_s"]) < 5 and float(facts["fallback_s"]) < 5
    # without the plugin's switch: the dead fd fails and the agent falls back itself
    assert facts["own_first_source"] == "mem_notify"
    assert "Errno" in facts["own_fallback_error"] and float(facts["own_fallback_s"]) < 5
