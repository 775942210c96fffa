"""device_watch on a real 32-bit ARM kernel (qemu guest, no udev daemon):
real kernel uevents through pyudev, a real /dev/mem_notify served by the
product's provider (``memagent cuse``, the mem_notify_device plugin) under
real memory pressure, that appears, dies on ``kill -9`` and comes back on a
restart, and a real uinput device.  See scenarios/devices.py for the steps.
"""

import os
from typing import Any

import pytest
from test_guest import RIG_DIR, boot_script

SCENARIOS = os.path.join(RIG_DIR, "scenarios")

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_mem_notify_device_comes_and_goes(tmp_path: Any) -> None:
    _, facts = boot_script(os.path.join(SCENARIOS, "devices.py"), str(tmp_path))
    assert facts["source"] == "psi" and facts["monitor"] == "kernel"
    assert int(facts["input_events"]) >= 2  # a uinput device: add, remove
    # the provider: only its plugin, on psi (never on the device it serves)
    assert facts["provider_plugins"] == "mem_notify_device"
    assert facts["provider_source"] == "psi" and ":" in facts["provider_devnum"]
    assert float(facts["switch_to_mem_notify_s"]) < 5
    assert facts["provider_open_files"] == "1"  # the agent's file
    # real pressure, held at LOW: the agent wakes on mem_notify, the provider
    # counts the wakeups; none once the provider is back at NORMAL
    assert facts["provider_levels_held"] == "LOW"
    assert int(facts["mem_notify_wakes_under_pressure"]) >= 1
    assert int(facts["provider_wakeups"]) >= 1
    assert facts["mem_notify_wakes_1.5s_after_normal"] == "0"
    assert facts["provider_wakeups_1.5s_after_normal"] == "0"
    # kill -9 of the provider: a poller gets an error, the agent falls back
    assert facts["client_exit"] == "3" and float(facts["client_exit_s"]) < 5
    assert float(facts["fallback_s"]) < 5
    assert facts["low_source"] == "psi"
    # the provider restarts: the agent switches back to its device
    assert facts["switches"] == "psi>mem_notify;mem_notify>psi;psi>mem_notify"
    assert float(facts["switch_back_s"]) < 5
    # without the plugin's switch: the dead fd fails and the agent falls back itself
    assert facts["own_first_source"] == "mem_notify"
    assert "Errno" in facts["own_fallback_error"] and float(facts["own_fallback_s"]) < 5
