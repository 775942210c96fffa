"""The /dev/mem_notify provider where this machine can run it: its refusals
and their messages (this host has no /dev/cuse; the device itself is tested
in the qemu guest, tests/test_guest_cuse.py), a kernel's own device, the
node's group, and the plugin's off and unavailable states in the runtime."""

import os
import subprocess
import sys
from typing import Any

import pytest
from plugrig import Rig

from memagent import aio
from memagent.ipc.cuse import CuseError, gid_of, kernel_device, taken_by_cuse
from memagent.plugins.mem_notify_device import MemNotifyDevice


def test_a_kernel_device_turns_the_provider_off(tmp_path: Any) -> None:
    dev, sys_dir = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    (sys_dir / "class" / "cuse").mkdir(parents=True)
    assert kernel_device("mem_notify", str(dev), str(sys_dir)) is None  # no node
    os.mkfifo(str(dev / "mem_notify"))  # a node that is no CUSE device
    why = kernel_device("mem_notify", str(dev), str(sys_dir))
    assert why is not None and "not served through CUSE" in why
    (sys_dir / "class" / "cuse" / "mem_notify").mkdir()  # another CUSE server's
    assert kernel_device("mem_notify", str(dev), str(sys_dir)) is None
    assert taken_by_cuse("mem_notify", str(sys_dir))


def test_the_nodes_group_by_name_or_number(tmp_path: Any) -> None:
    group = tmp_path / "group"
    group.write_text("root:x:0:\nbroken\nmemapps:x:1234:alice,bob\n")
    assert gid_of("memapps", str(group)) == 1234 and gid_of("55", str(group)) == 55
    with pytest.raises(CuseError, match="not in"):
        gid_of("nobody-here", str(group))
    with pytest.raises(CuseError, match="cannot read"):
        gid_of("memapps", str(tmp_path / "missing"))


def test_memagent_cuse_says_why_it_cannot_serve(tmp_path: Any) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[mem_notify_device]\ncuse_path = %s\n" % (tmp_path / "no-cuse"))
    p = subprocess.run([sys.executable, "-m", "memagent", "cuse", "-c", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "no-cuse does not exist (modprobe cuse" in p.stderr


def test_off_by_default_and_unavailable_without_cuse(tmp_path: Any) -> None:
    off, on = MemNotifyDevice(), MemNotifyDevice()

    async def start(plugin: MemNotifyDevice, conf: str) -> None:
        rig = Rig(str(tmp_path / plugin.name / str(id(plugin))), conf, plugins=[plugin])
        await rig.start()
        await rig.close()

    aio.run(start(off, ""))
    assert off.unavailable is not None and off.unavailable.startswith("off")
    aio.run(start(on, "[mem_notify_device]\nenabled = yes\ncuse_path = %s\n"
                  % (tmp_path / "no-cuse")))
    assert on.unavailable is not None and "modprobe cuse" in on.unavailable
    assert on.status() == {} or on.status()["open_files"] == 0
