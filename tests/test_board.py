"""The board files on the host: the profiles (board/<name>/memagent.conf),
the default config and the init files of the rootfs overlay, the systemd
unit, and the rig's payload for a guest that boots through init.

What they do on a running system is tested in the ARM guest
(tests/test_guest_boot.py); here: they load with memagent's own loader,
set what a board needs, and pass the checks a Buildroot tree runs
(sh -n, shellcheck, the start-script rules of check-package).
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import pytest

from memagent.core.config import Config, ConfigError, Section, load_config, thresholds_from_config
from memagent.plugins.kill_background.settings import Settings
from memagent.runtime.pluginload import load_plugins
from support import need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD = os.path.join(ROOT, "board")
OVERLAY = os.path.join(BOARD, "common", "rootfs-overlay")
INIT_SCRIPT = os.path.join(OVERLAY, "etc", "init.d", "S60memagent")
DEFAULTS_FILE = os.path.join(OVERLAY, "etc", "default", "memagent")
DEFAULT_CONF = os.path.join(OVERLAY, "etc", "memagent", "memagent.conf")
UNIT = os.path.join(BOARD, "common", "systemd", "memagent.service")
RIG_DIR = os.path.join(BOARD, "qemu-arm")
TRACE = os.path.join(ROOT, "agent", "demo", "ramp-128m.jsonl")

# board -> (RAM in MB, UI processes its protect list must name)
BOARDS = {
    "openmoko-gta02": (128, ["Xglamo", "enlightenment", "qpe", "fsogsmd", "dbus-daemon"]),
    "zaurus-c3000": (64, ["qpe", "Xfbdev"]),
    "qemu-arm": (128, ["syslogd"]),
}
HANDSETS = ["openmoko-gta02", "zaurus-c3000"]
EXEC_START = "/usr/bin/memagent run --config /etc/memagent/memagent.conf"


def profile(board: str) -> str:
    return os.path.join(BOARD, board, "memagent.conf")


def checked(path: str) -> Config:
    """Return: the config at ``path``, its plugin sections checked against the
    built-in plugins' schemas, as the agent checks them at start.
    Raises: ConfigError."""
    config = load_config(path)
    result = load_plugins(config, dropin_dir="/nonexistent", entry_points=[])
    config.claim(result.schemas(), result.absent)
    return config


def load(board: str) -> Config:
    return checked(profile(board))


def kill_settings(config: Config) -> Settings:
    return Settings(Section(config, "kill_background"))


# -- the profiles -----------------------------------------------------------------


def test_every_board_directory_with_a_profile_is_tested() -> None:
    found = sorted(d for d in os.listdir(BOARD) if os.path.isfile(profile(d)))
    assert found == sorted(BOARDS)


def test_each_board_is_documented() -> None:
    table = open(os.path.join(ROOT, "docs", "boards.md")).read()
    for board in BOARDS:
        assert "| %s" % board in table or "[%s]" % board in table, board
        assert os.path.isfile(os.path.join(BOARD, board, "README.md")), board


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_profile_loads_with_known_keys_only(board: str, tmp_path: Any) -> None:
    config = load(board)
    for section, keys in config.values.items():
        for key in keys:
            config.get(section, key)  # typed: raises on a malformed value
    # The loader this relies on refuses a key it does not know, naming the line.
    bad = tmp_path / "typo.conf"
    bad.write_text(open(profile(board)).read() + "[kill_background]\ndry_runn = no\n")
    with pytest.raises(ConfigError, match="typo.conf:[0-9]+: unknown setting 'dry_runn' in "
                                          "\\[kill_background\\]"):
        checked(str(bad))


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_profile_sets_what_a_board_needs(board: str) -> None:
    mem_mb, ui = BOARDS[board]
    config = load(board)
    values = config.values
    assert values["agent"]["source"] == "auto"
    assert values["agent"]["log"] == "syslog"  # stderr is /dev/null under the init script
    # explicit thresholds, consistent at the board's size
    assert {"low_pct", "critical_pct"} <= set(values["levels"])
    th = thresholds_from_config(config, mem_mb * 1024 * 3 // 4)
    assert 0 < th.critical_kib < th.low_kib < th.recover_kib
    # the kill ladder, armed, with every key set and valid
    kill = kill_settings(config)
    assert set(values["kill_background"]) >= {"dry_run", "low_class", "critical_class",
                                              "kill_at_low", "grace_ms", "max_kills",
                                              "protect"}
    assert kill.dry_run is False
    assert "init" in kill.protect and set(ui) <= set(kill.protect)
    assert all(len(name) <= 15 for name in kill.protect)  # a comm is at most 15 characters
    assert "ui_uid" in values["apps"]


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_profile_plugins_load_without_errors(board: str) -> None:
    result = load_plugins(load(board), dropin_dir="/nonexistent", entry_points=[])
    assert result.errors == []
    names = [p.name for p in result.plugins]
    assert "kill_background" in names and "release_caches" in names
    if board == "openmoko-gta02":
        assert "notify_ui" in names and load(board).get_str("notify_ui", "bus") == "system"
    else:  # no D-Bus under Qtopia/OPIE, no dbus-daemon in the guest
        assert "notify_ui" not in names


def first_low_pct(conf: str) -> int:
    """Run ``memagent replay`` on the bundled 128 MB ramp with ``conf``.
    Returns: the % available at the first LOW."""
    p = subprocess.run([sys.executable, "-m", "memagent", "replay", TRACE, "-c", conf],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    m = re.search(r"LOW\s+<- NORMAL.*\(\s*(\d+)%\)", p.stdout)
    assert m, p.stdout
    return int(m.group(1))


def test_cli_accepts_each_profile_and_the_64_mb_one_warns_earlier() -> None:
    pct = {board: first_low_pct(profile(board)) for board in BOARDS}
    assert pct["openmoko-gta02"] == pct["qemu-arm"] == 19
    # zaurus-c3000's LOW at 25% comes with more headroom on the same ramp
    assert pct["zaurus-c3000"] >= pct["openmoko-gta02"] + 4


def test_default_config_is_the_safe_one() -> None:
    config = checked(DEFAULT_CONF)
    assert config.values == {"agent": {"source": "auto", "log": "syslog"},
                             "kill_background": {"dry_run": "yes"}}
    assert kill_settings(config).dry_run is True
    assert load_plugins(config, dropin_dir="/nonexistent", entry_points=[]).errors == []
    assert first_low_pct(DEFAULT_CONF) == 19


# -- the init script and its defaults ----------------------------------------------


def shellcheck(path: str) -> None:
    if shutil.which("shellcheck") is None:
        need("shellcheck is not installed (apt-get install shellcheck)")
    p = subprocess.run(["shellcheck", "-s", "sh", path], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("path", [INIT_SCRIPT, DEFAULTS_FILE,
                                  os.path.join(RIG_DIR, "guest", "rig-init")])
def test_scripts_are_posix_sh_and_pass_shellcheck(path: str) -> None:
    p = subprocess.run(["sh", "-n", path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    shellcheck(path)


def test_shellcheck_catches_what_it_should(tmp_path: Any) -> None:
    bad = tmp_path / "S60bad"
    bad.write_text("#!/bin/sh\nfor f in $(ls /etc); do echo $f; done\n")
    if shutil.which("shellcheck") is None:
        need("shellcheck is not installed (apt-get install shellcheck)")
    assert subprocess.run(["shellcheck", "-s", "sh", str(bad)],
                          capture_output=True).returncode != 0


def test_init_script_follows_buildroots_start_script_rules() -> None:
    # Buildroot's utils/checkpackagelib/lib_sysv.py: tabs, DAEMON without a
    # path, PIDFILE="/var/run/$DAEMON.pid", the file named S<NN>$DAEMON.
    text = open(INIT_SCRIPT).read()
    assert os.access(INIT_SCRIPT, os.X_OK)
    assert text.startswith("#!/bin/sh\n") and text.endswith("\n") and "\n\n\n" not in text
    for line in text.splitlines():
        assert not re.match(r"^\t* ", line), "indent with tabs: %r" % line
        assert line == line.rstrip(), "trailing space: %r" % line
    assert re.search(r'^DAEMON="memagent"$', text, re.M)
    assert re.search(r'^PIDFILE="/var/run/\$DAEMON.pid"$', text, re.M)
    assert re.match(r"S\d\dmemagent$", os.path.basename(INIT_SCRIPT))
    # memagent does not daemonize: start-stop-daemon backgrounds it and writes
    # the pidfile; reload is SIGHUP; stop/reload match the pidfile and the name
    assert re.search(r"start-stop-daemon -S -b -m -q -p \"\$PIDFILE\" -x \"/usr/bin/\$DAEMON\"",
                     text)
    assert 'start-stop-daemon -K -s HUP -q -p "$PIDFILE" -n "$DAEMON"' in text
    assert '. "/etc/default/$DAEMON"' in text
    for action in ("start", "stop", "restart", "reload", "status"):
        assert re.search(r"^%s\(\) \{$" % action, text, re.M)


def test_defaults_file_names_the_config() -> None:
    out = subprocess.run(["sh", "-c", '. "$1"; echo "$MEMAGENT_CONFIG|$MEMAGENT_ARGS"',
                          "sh", DEFAULTS_FILE], capture_output=True, text=True, check=True)
    assert out.stdout == "/etc/memagent/memagent.conf|\n"


def test_dbus_policy_is_in_the_overlay() -> None:
    import xml.etree.ElementTree as ET

    path = os.path.join(OVERLAY, "etc", "dbus-1", "system.d", "memagent.conf")
    owners = [a.get("own") for a in ET.parse(path).getroot().iter("allow") if a.get("own")]
    assert owners == ["org.freedesktop.LowMemoryMonitor", "org.memagent.Agent1"]


# -- the systemd unit -----------------------------------------------------------------


def unit_keys(text: str) -> "Dict[Tuple[str, str], List[str]]":
    """A minimal systemd unit parse.  Returns: {(section, key): [values]}."""
    keys: "Dict[Tuple[str, str], List[str]]" = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, "not a unit line: %r" % line
        keys.setdefault((section, key.strip()), []).append(value.strip())
    return keys


def test_unit_runs_and_reloads_the_agent() -> None:
    keys = unit_keys(open(UNIT).read())
    assert keys[("Service", "Type")] == ["simple"]
    assert keys[("Service", "ExecStart")] == [EXEC_START]
    assert keys[("Service", "ExecReload")] == ["/bin/kill -HUP $MAINPID"]
    assert keys[("Service", "OOMScoreAdjust")] == ["-1000"]
    assert keys[("Service", "Restart")] == ["on-failure"]
    assert keys[("Install", "WantedBy")] == ["multi-user.target"]
    # what would break the agent: /proc/sys or cgroupfs read-only, a device allow-list
    for key in ("ProtectKernelTunables", "ProtectControlGroups", "PrivateDevices",
                "DevicePolicy", "ProtectClock", "CapabilityBoundingSet"):
        assert ("Service", key) not in keys, key
    assert keys[("Service", "RestrictAddressFamilies")] == ["AF_UNIX AF_NETLINK"]


def verify(unit_text: str, tmp: Any) -> str:
    """``systemd-analyze verify`` on ``unit_text`` with ExecStart pointing at a
    stub (verify wants the binary to exist).  Returns: its output."""
    stub = tmp / "memagent"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp / "memagent.service"
    unit.write_text(unit_text.replace("/usr/bin/memagent", str(stub)))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    return "rc=%d %s%s" % (p.returncode, p.stdout, p.stderr)


def test_unit_passes_systemd_analyze_verify(tmp_path: Any) -> None:
    if shutil.which("systemd-analyze") is None:  # optional: the parse above stands in
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); "
                    "test_unit_runs_and_reloads_the_agent parses the unit without it")
    text = open(UNIT).read()
    assert verify(text, tmp_path) == "rc=0 "
    # it does notice a misspelt key
    assert "Unknown key" in verify(text.replace("ExecReload", "ExecRelaod"), tmp_path)


# -- the rig's payload for a guest that boots through init ---------------------------


def cpio_entries(data: bytes) -> "Dict[str, Tuple[int, bytes]]":
    """Parse gzip'd "newc" cpio archives (concatenated).
    Returns: {name: (mode, content)}."""
    raw = gzip.decompress(data)
    out: "Dict[str, Tuple[int, bytes]]" = {}
    pos = 0
    while pos + 110 <= len(raw):
        if raw[pos:pos + 6] != b"070701":
            pos += 1  # padding between archives
            continue
        fields = [int(raw[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = raw[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        content = raw[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            continue
        out[name] = (mode, content)
    return out


def rig() -> Any:
    sys.path.insert(0, RIG_DIR)
    try:
        import rig as rig_module
    finally:
        sys.path.pop(0)
    return rig_module


def test_payload_carries_the_init_files_only_when_asked() -> None:
    r = rig()
    scenario = os.path.join(RIG_DIR, "scenarios", "hello.sh")
    plain, _ = r.build_payload(scenario, [], ROOT, 128)
    names = cpio_entries(plain)
    assert "payload/rig/run-scenario" in names
    for absent in ("payload/etc/init.d/S60memagent", "payload/etc/memagent/memagent.conf",
                   "payload/usr/bin/memagent", "payload/rig/boot-init"):
        assert absent not in names  # the scenarios that start their own agent see no change
    data, _ = r.build_payload(scenario, [], ROOT, 64, board="zaurus-c3000")
    entries = cpio_entries(data)
    mode, script = entries["payload/etc/init.d/S60memagent"]
    assert mode & 0o777 == 0o755 and script == open(INIT_SCRIPT, "rb").read()
    assert entries["payload/etc/memagent/memagent.conf"][1] == \
        open(profile("zaurus-c3000"), "rb").read()
    assert entries["payload/etc/default/memagent"][1] == open(DEFAULTS_FILE, "rb").read()
    assert "payload/etc/dbus-1/system.d/memagent.conf" in entries
    mode, entry = entries["payload/usr/bin/memagent"]
    assert mode & 0o777 == 0o755 and entry.startswith(b"#!/usr/bin/python3\n")
    assert entries["payload/rig/boot-init"][1] == b"zaurus-c3000\n"
    with pytest.raises(r.RigError, match="no board profile"):
        r.build_payload(scenario, [], ROOT, 64, board="nokia-n900")


def test_entry_point_runs_memagent(tmp_path: Any) -> None:
    # The guest's /usr/bin/memagent, pointed at this tree instead of
    # /opt/memagent; python -S: no site-packages, so only the script's own
    # sys.path entry can find memagent.
    pkgroot = tmp_path / "opt"
    pkgroot.mkdir()
    os.symlink(os.path.join(ROOT, "agent"), pkgroot / "memagent")
    entry = tmp_path / "memagent"
    entry.write_bytes(rig().ENTRY_POINT.replace(b"/opt/memagent", str(pkgroot).encode()))
    p = subprocess.run([sys.executable, "-S", str(entry), "--version"], capture_output=True,
                       text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert p.returncode == 0 and p.stdout.startswith("memagent "), p.stderr
    broken = tmp_path / "broken"
    broken.write_bytes(rig().ENTRY_POINT.replace(b"/opt/memagent", b"/nonexistent"))
    assert subprocess.run([sys.executable, "-S", str(broken), "--version"],
                          capture_output=True).returncode != 0
