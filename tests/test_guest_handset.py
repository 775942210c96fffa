"""Handset day, in the ARM guest booted through init with a board profile
(`board/qemu-arm/run --board NAME scenarios/handset_day.py memagent`): the
agent S60memagent started asks the registered apps to trim first, then kills
in class order (the unregistered hog and the cached apps before the
service), the kernel's OOM killer never acts, and the foreground lives.

Judged by the guest's RESULT and FACT lines; each case is one boot (128 MB:
about 40 s of guest time here, 64 MB: about 60 s).
"""

import os
from typing import Any, Dict

import pytest
from test_guest import RIG_DIR, load_rig
from test_guest_boot import facts_of

from support import need

SCENARIO = os.path.join(RIG_DIR, "scenarios", "handset_day.py")

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def day(board: str, mem_mb: int, tmp: str) -> "Any":
    """Boot through init with ``board``'s profile and run the handset day
    with memagent.  Returns: the rig's RunResult."""
    rig = load_rig()
    try:
        return rig.run(SCENARIO, args=("memagent",), mem_mb=mem_mb, timeout_s=300, out_dir=tmp,
                       boot_init=True, board=board)
    except rig.RigError as e:
        need("the qemu rig cannot build its image here: %s" % e)


def check_day(res: "Any") -> "Dict[str, str]":
    """What a handset day with memagent must show.  Returns: the FACTs."""
    facts = facts_of(res.console)
    results = [msg for status, msg in res.results]
    assert res.ok, "%s\n%s" % (results, res.console[-3000:])
    # trims first: apps answered trims, and before the agent's first kill
    assert int(facts["trims"]) >= 1 and int(facts["trimmed_kib"]) > 0, facts
    assert facts["trims_first"] == "True", facts
    # kills in class order, every one the agent's (the kernel's are "name(kernel)")
    assert facts["class_order"] == "True", facts
    victims = facts["kills"].split(",") if facts["kills"] != "-" else []
    assert all("(" not in v for v in victims), victims
    assert "foreground" not in victims and "service" not in victims[:1], victims
    # no kernel OOM kill: /proc/vmstat, dmesg and the console
    assert facts["oom_kills"] == "0" and facts["dmesg_ooms"] == "0", facts
    assert "Out of memory" not in res.console
    assert facts["fg_survived"] == "True" and facts["fg_class"] == "foreground", facts
    assert facts["recovery_ms"] != "None", facts  # above CRITICAL again by the end
    return facts


def test_handset_day_128mb(tmp_path: Any) -> None:
    facts = check_day(day("qemu-arm", 128, str(tmp_path)))
    assert int(facts["tool_kills"]) >= 1  # the day is sized so that trims alone do not do
    assert 0 < int(facts["psi_some_ms"]) < 60000  # loose: the thrash is seen at all


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured 2026-11-25: at 64 MB the CPython agent (RssAnon ~10.5 MiB of ~29 MiB "
    "available) leaves too little for the apps: the guest thrashes while they start, "
    "the kernel OOM-kills 3-4 of them and the foreground, and no trim is answered"))
def test_handset_day_64mb(tmp_path: Any) -> None:
    check_day(day("zaurus-c3000", 64, str(tmp_path)))
