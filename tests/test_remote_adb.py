"""``memagent status --adb``: memagent.remote through ``adb shell``.

There is no adb device here, and no Linux adbd: these tests put a STAND-IN
for the ``adb`` executable in its place (a shell script written into the
test's tmp directory, chosen with $MEMAGENT_ADB).  It records the argv it
was given, so the tests check the exact command built (``-s SERIAL``,
``shell``, the quoting, the exit-status marker), then either runs the
shell command locally with /bin/sh, so the real local memagent answers
(as adbd's shell would on the device), or prints what the real adb prints
for its error paths (no device, unauthorized, a wrong serial) and what an
old adbd does (stderr mixed into stdout, no exit status).  What is real:
the memagent run, its /proc state, the agent; what is not: adb itself.
"""

import os
import subprocess
import sys
import time
from typing import Any, List

import pytest

import memagent
from memagent import remote
from memagent.demo.memcg import Memcg
from memagent.remote import RemoteError, Transport
from support import stop_agent

MEMAGENT = "env PYTHONPATH=%s %s -m memagent" % (
    os.path.dirname(os.path.dirname(os.path.abspath(memagent.__file__))), sys.executable)
MARKER = '; echo "memagent-exit:$?"'

# The stand-in adb.  $ADB_STANDIN_MODE picks its behaviour.
STANDIN = r"""#!/bin/sh
# A test stand-in for adb (tests/test_remote_adb.py): not the real adb.
: > "$ADB_STANDIN_LOG"
for a in "$@"; do printf '%s\n' "$a" >> "$ADB_STANDIN_LOG"; done
case "$ADB_STANDIN_MODE" in
nodevice) echo "error: no devices/emulators found" >&2; exit 1 ;;
unauthorized) printf '%s\n' "error: device unauthorized." \
    "This adb server's \$ADB_VENDOR_KEYS is not set" \
    "Try 'adb kill-server' if that seems wrong." \
    "Otherwise check for a confirmation dialog on your device." >&2; exit 1 ;;
wrongserial) echo "error: device '$2' not found" >&2; exit 1 ;;
twodevices) echo "error: more than one device/emulator" >&2; exit 1 ;;
android) echo "/system/bin/sh: memagent: not found"; echo "memagent-exit:127"; exit 0 ;;
esac
while [ "$#" -gt 0 ] && [ "$1" != shell ]; do shift; done
shift
if [ "$ADB_STANDIN_MODE" = old ]; then  # old adbd: stderr on stdout, no exit status
    /bin/sh -c "$*" 2>&1
    exit 0
fi
exec /bin/sh -c "$*"
"""


@pytest.fixture
def adb(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Return: the log of the stand-in adb, installed as $MEMAGENT_ADB."""
    path = os.path.join(str(tmp_path), "adb")
    with open(path, "w") as f:
        f.write(STANDIN)
    os.chmod(path, 0o755)
    log = os.path.join(str(tmp_path), "adb.argv")
    monkeypatch.setenv("MEMAGENT_ADB", path)
    monkeypatch.setenv("ADB_STANDIN_LOG", log)
    monkeypatch.setenv("ADB_STANDIN_MODE", "device")
    return log


def argv_given(log: str) -> List[str]:
    """Return: the arguments the stand-in adb was run with."""
    with open(log) as f:
        return f.read().splitlines()


def fails(t: Transport, code: int) -> str:
    """Return: fetch_status's one-line message, asserting ``code``."""
    with pytest.raises(RemoteError) as info:
        remote.fetch_status(t)
    assert info.value.exit_code == code, info.value
    assert "\n" not in str(info.value)
    return str(info.value)


def test_adb_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMAGENT_ADB", raising=False)
    assert remote.adb_argv("emulator-5554", ["memagent", "status", "--socket", "/a b"]) == [
        "adb", "-s", "emulator-5554", "shell", "memagent status --socket '/a b'" + MARKER]
    assert remote.adb_argv("", ["memagent"]) == ["adb", "shell", "memagent" + MARKER]
    monkeypatch.setenv("MEMAGENT_ADB", "/opt/platform-tools/adb -H host")
    assert remote.adb_argv("192.168.1.5:5555", ["m"])[:5] == [
        "/opt/platform-tools/adb", "-H", "host", "-s", "192.168.1.5:5555"]
    for serial in ("-d", "a b", "x;reboot"):
        with pytest.raises(RemoteError) as info:
            remote.adb_argv(serial, ["m"])
        assert info.value.exit_code == remote.EXIT_USAGE


@pytest.mark.parametrize("mode", ["device", "old"])
def test_no_agent_on_the_device(adb: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                mode: str) -> None:
    monkeypatch.setenv("ADB_STANDIN_MODE", mode)
    sock = os.path.join(str(tmp_path), "no agent here.sock")
    t = Transport("adb", "emulator-5554", remote_memagent=MEMAGENT, remote_socket=sock)
    st, code = remote.fetch_status(t)
    assert argv_given(adb) == ["-s", "emulator-5554", "shell", MEMAGENT
                               + " status --json --socket '%s'" % sock + MARKER]
    assert code == remote.EXIT_NOT_RUNNING and st["running"] is False, st
    assert st["reading"]["total_kib"] > 0 and "not running" in st["agent"]
    assert "adb device emulator-5554" in remote.warning(t, code, st)


@pytest.mark.memcg
def test_status_of_the_real_agent(adb: str, memcg: Memcg, tmp_path: Any) -> None:
    sock = os.path.join(str(tmp_path), "ctl.sock")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", memcg.path,
                              "--socket", sock], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        st, code = remote.fetch_status(Transport("adb", None, remote_memagent=MEMAGENT,
                                                 remote_socket=sock))
    finally:
        stop_agent(agent)
    assert argv_given(adb)[0] == "shell"  # no -s: adb's only device
    assert code == 0 and st["pid"] == agent.pid and st["running"] is True, st


@pytest.mark.parametrize("mode, code, said", [
    ("nodevice", remote.EXIT_UNREACHABLE, "error: no devices/emulators found"),
    ("wrongserial", remote.EXIT_UNREACHABLE, "error: device 'SER1' not found"),
    ("unauthorized", remote.EXIT_AUTH, "unauthorized"),
    ("twodevices", remote.EXIT_USAGE, "-s SERIAL"),
    ("android", remote.EXIT_MISSING, "/system/bin/sh: memagent: not found"),
])
def test_adb_errors(adb: str, monkeypatch: pytest.MonkeyPatch, mode: str, code: int,
                    said: str) -> None:
    monkeypatch.setenv("ADB_STANDIN_MODE", mode)
    message = fails(Transport("adb", "SER1"), code)
    assert said in message and ("SER1" in message or mode == "twodevices"), message
    assert argv_given(adb)[:3] == ["-s", "SER1", "shell"]


@pytest.mark.parametrize("mode", ["device", "old"])
def test_missing_memagent_by_the_shells_status(adb: str, monkeypatch: pytest.MonkeyPatch,
                                               mode: str) -> None:
    monkeypatch.setenv("ADB_STANDIN_MODE", mode)  # /bin/sh really runs it: status 127
    message = fails(Transport("adb", "SER1", remote_memagent="/nonexistent/memagent"),
                    remote.EXIT_MISSING)
    assert "/nonexistent/memagent" in message and "adb device SER1" in message


def test_adb_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMAGENT_ADB", "/nonexistent/adb")
    assert "cannot run /nonexistent/adb" in fails(Transport("adb", "SER1"),
                                                  remote.EXIT_UNREACHABLE)


def test_events_through_adb(adb: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADB_STANDIN_MODE", "old")
    fake = os.path.join(str(tmp_path), "memagent")  # a device memagent stand-in, too
    with open(fake, "w") as f:
        f.write("#!/bin/sh\necho '{\"seq\": 4}'\necho 'warning: gap' >&2\n"
                "echo '{\"seq\": 5}'\nexit 3\n")
    os.chmod(fake, 0o755)
    got: List[Any] = []
    with pytest.raises(RemoteError) as info:
        t = Transport("adb", "SER1", remote_memagent=fake)
        for event in remote.remote_events(t, False, 3):
            got.append(event)
    assert got == [{"seq": 4}, {"seq": 5}]
    assert info.value.exit_code == remote.EXIT_NOT_RUNNING
    assert argv_given(adb)[-1] == fake + " events --after 3" + MARKER


def test_marker_after_output_without_a_newline(adb: str, tmp_path: Any) -> None:
    fake = os.path.join(str(tmp_path), "memagent")  # a device memagent stand-in
    with open(fake, "w") as f:
        f.write("#!/bin/sh\nprintf '{\"schema\": 1, \"level\": \"LOW\"}'\nexit 3\n")
    os.chmod(fake, 0o755)
    st, code = remote.fetch_status(Transport("adb", "SER1", remote_memagent=fake))
    assert (st, code) == ({"schema": 1, "level": "LOW"}, remote.EXIT_NOT_RUNNING)
