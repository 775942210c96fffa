"""``memagent status --ssh``: memagent.remote against a real OpenSSH server.

The tests start Debian's openssh-server ``sshd`` on a free loopback port,
with a host key and a user key generated here, and ask a real agent
through the system ``ssh`` client, as root (the tests' user): its real pid
and level come back; a bad key, a closed port, a missing memagent, no agent
running, a changed or unknown host key each give their own exit code and
message.  The device's "memagent" is this checkout's, run by this Python;
a few error cases put a small script in its place (an older memagent, one
that hangs), named so where they do.  Without sshd they skip (fail with
CI=true).
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator, List, Tuple

import pytest

import memagent
from conftest import ALLOC
from memagent import remote
from memagent.demo.memcg import Memcg
from memagent.ipc.ask import ask
from memagent.remote import RemoteError, Transport
from support import need, stop_agent

SSHD = "/usr/sbin/sshd"
# The device's memagent: this checkout's package, run by this interpreter
# (an ssh session has none of this process's environment).
REMOTE_MEMAGENT = "env PYTHONPATH=%s %s -m memagent" % (
    os.path.dirname(os.path.dirname(os.path.abspath(memagent.__file__))), sys.executable)


def free_port() -> int:
    """Return: a loopback TCP port nobody listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: str) -> str:
    """Make an ed25519 key pair at ``path``.  Returns: its public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", path],
                   check=True, capture_output=True)
    with open(path + ".pub") as f:
        return f.read()


SSHD_CONFIG = """Port %(port)d
ListenAddress 127.0.0.1
%(listen6)s
HostKey %(dir)s/host_key
AuthorizedKeysFile %(dir)s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile none
"""


class Sshd:
    """A running sshd, its keys and the options of a client that trusts it."""

    def __init__(self, tmp: str) -> None:
        self.dir, self.port = tmp, free_port()
        self.host_pub = keygen(os.path.join(tmp, "host_key"))
        with open(os.path.join(tmp, "authorized_keys"), "w") as f:
            f.write(keygen(os.path.join(tmp, "user_key")))
        keygen(os.path.join(tmp, "bad_key"))  # not in authorized_keys
        self.ipv6 = socket.has_ipv6 and _can_bind6()
        conf = os.path.join(tmp, "sshd_config")
        with open(conf, "w") as f:
            f.write(SSHD_CONFIG % {"port": self.port, "dir": tmp,
                                   "listen6": "ListenAddress ::1" if self.ipv6 else ""})
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation
        self.log = os.path.join(tmp, "sshd.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", conf], stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while "Server listening on 127.0.0.1" not in self.log_text():
            assert self.proc.poll() is None, "sshd exited: " + self.log_text()
            assert time.monotonic() < deadline, "sshd did not listen: " + self.log_text()
            time.sleep(0.05)

    def log_text(self) -> str:
        with open(self.log) as f:
            return f.read()

    def options(self, key: str = "user_key", known_hosts: str = "known_hosts",
                checking: str = "accept-new") -> List[str]:
        """Return: --ssh-option values, in each form the CLI accepts."""
        return ["-F /dev/null", "-i " + os.path.join(self.dir, key),
                "-o UserKnownHostsFile=" + os.path.join(self.dir, known_hosts),
                "StrictHostKeyChecking=" + checking, "IdentitiesOnly=yes",
                "GlobalKnownHostsFile=/dev/null"]

    def transport(self, **kw: Any) -> Transport:
        """Return: a Transport to root at this sshd (``options``, ``target``
        and Transport's own arguments may be given)."""
        options = kw.pop("options", None) or self.options()
        target = kw.pop("target", "root@127.0.0.1:%d" % self.port)
        kw.setdefault("remote_memagent", REMOTE_MEMAGENT)
        return Transport("ssh", target, options=options, timeout_s=kw.pop("timeout_s", 60), **kw)


def _can_bind6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """Yield: a real sshd on a loopback port; stopped after the module."""
    for exe in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not exe or not os.access(exe, os.X_OK):
            need("openssh-server and openssh-client are not installed (sshd, ssh, ssh-keygen)")
    if os.geteuid() != 0:
        need("the ssh tests run sshd and log in as root")
    server = Sshd(str(tmp_path_factory.mktemp("sshd")))
    try:
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(10)


@pytest.fixture(autouse=True)
def system_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system ssh, whatever $MEMAGENT_SSH the caller has."""
    monkeypatch.delenv("MEMAGENT_SSH", raising=False)


def start_agent(memcg: Memcg, tmp: str) -> "Tuple[subprocess.Popen[str], str]":
    """Return: (a real agent on ``memcg``, its control socket), started."""
    sock = os.path.join(tmp, "ctl.sock")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", memcg.path,
                              "--socket", sock], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        assert agent.poll() is None and time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return agent, sock


def script(tmp: str, name: str, body: str) -> str:
    """Return: the path of an executable shell script ``body`` in ``tmp``."""
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def fails(t: Transport, code: int) -> str:
    """Return: fetch_status's message, asserting it failed with ``code``."""
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as info:
        remote.fetch_status(t)
    assert info.value.exit_code == code, info.value
    assert time.monotonic() - t0 < 20
    message = str(info.value)
    assert "\n" not in message and t.target in message, message
    return message


# -- the target and the command built (no server needed) ---------------------------------

@pytest.mark.parametrize("target, parsed", [
    ("board", (None, "board", None)),
    ("root@board", ("root", "board", None)),
    ("root@10.0.2.15:2222", ("root", "10.0.2.15", 2222)),
    ("u_1.x@my-board.local:22", ("u_1.x", "my-board.local", 22)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("root@[fe80::1%eth0]", ("root", "fe80::1%eth0", None)),
    ("::1", (None, "::1", None)),
])
def test_parse_ssh_target(target: str, parsed: Any) -> None:
    assert remote.parse_ssh_target(target) == parsed


@pytest.mark.parametrize("target", [
    "", "root@", "@board", "-oProxyCommand=touch /tmp/x", "root@-oProxyCommand=x",
    "-l@board", "board:0", "board:99999", "board:22x", "bo ard", "board;reboot",
    "[::1", "[::1]x", "[::1]:", "a@b@c", "b\u00f6rd", "board\n",
])
def test_parse_ssh_target_refuses(target: str) -> None:
    with pytest.raises(RemoteError) as info:
        remote.parse_ssh_target(target)
    assert info.value.exit_code == remote.EXIT_USAGE


def test_ssh_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = remote.ssh_argv("admin@[::1]:2222", ["memagent", "status", "--socket", "/x y;z"],
                           connect_timeout_s=5,
                           extra=["-i /k", "IdentitiesOnly=yes", "-J", "gw", "-o", "A=b c"])
    assert argv == ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-i", "/k",
                    "-o", "IdentitiesOnly=yes", "-J", "gw", "-o", "A=b c",
                    "-p", "2222", "-l", "admin", "--", "::1",
                    "memagent status --socket '/x y;z'"]
    monkeypatch.setenv("MEMAGENT_SSH", "/opt/ssh -F /etc/board.conf")
    assert remote.ssh_argv("b", ["m"])[:4] == ["/opt/ssh", "-F", "/etc/board.conf", "-T"]
    t = Transport("ssh", "b", remote_memagent="python3 -m memagent",
                  remote_socket="/run/m.sock")
    assert t.argv(remote.status_args(t))[-1] == \
        "python3 -m memagent status --json --socket /run/m.sock"
    assert t.argv(remote.events_args(t, True, 7))[-1] == \
        "python3 -m memagent events --after 7 --follow --socket /run/m.sock"


# -- against sshd ------------------------------------------------------------------------

@pytest.mark.memcg
def test_status_over_ssh_is_the_real_agents(sshd: Sshd, memcg: Memcg, tmp_path: Any) -> None:
    agent, sock = start_agent(memcg, str(tmp_path))
    try:
        st, code = remote.fetch_status(sshd.transport(remote_socket=sock))
        local = ask(sock, "status")["status"]
        if sshd.ipv6:
            st6, code6 = remote.fetch_status(sshd.transport(
                remote_socket=sock, target="root@[::1]:%d" % sshd.port))
            assert code6 == 0 and st6["pid"] == agent.pid
    finally:
        stop_agent(agent)
    assert code == 0, st
    assert st["pid"] == agent.pid and st["level"] == local["level"] == "NORMAL"
    assert st["schema"] == 1 and st["running"] is True
    assert st["reading"]["total_kib"] == memcg.limit_kib()


def test_agent_not_running_keeps_the_proc_status(sshd: Sshd, tmp_path: Any) -> None:
    t = sshd.transport(remote_socket=os.path.join(str(tmp_path), "none.sock"))
    st, code = remote.fetch_status(t)
    assert code == remote.EXIT_NOT_RUNNING
    assert st["running"] is False and st["level"] in ("NORMAL", "LOW", "CRITICAL")
    assert st["reading"]["total_kib"] > 0 and "not running" in st["agent"]
    message = remote.warning(t, code, st)
    assert "not running" in message and t.target in message and "/proc" in message


def test_bad_key_is_authentication(sshd: Sshd) -> None:
    message = fails(sshd.transport(options=sshd.options(key="bad_key")), remote.EXIT_AUTH)
    assert "Permission denied" in message and "authentication" in message


def test_closed_port_is_unreachable(sshd: Sshd) -> None:
    message = fails(sshd.transport(target="root@127.0.0.1:%d" % free_port()),
                    remote.EXIT_UNREACHABLE)
    assert "Connection refused" in message


def test_unresolvable_host_is_unreachable(sshd: Sshd) -> None:
    message = fails(sshd.transport(target="root@no-such-board.invalid"), remote.EXIT_UNREACHABLE)
    assert "Could not resolve hostname" in message


def test_missing_memagent(sshd: Sshd) -> None:
    message = fails(sshd.transport(remote_memagent="/nonexistent/memagent"),
                    remote.EXIT_MISSING)
    assert "memagent is missing" in message and "/nonexistent/memagent" in message


def test_changed_host_key(sshd: Sshd, tmp_path: Any) -> None:
    other = keygen(os.path.join(str(tmp_path), "other_host_key")).split()
    with open(os.path.join(sshd.dir, "changed_hosts"), "w") as f:
        f.write("[127.0.0.1]:%d %s %s\n" % (sshd.port, other[0], other[1]))
    message = fails(sshd.transport(options=sshd.options(known_hosts="changed_hosts",
                                                        checking="yes")), remote.EXIT_AUTH)
    assert "host key" in message and "CHANGED" in message


def test_unknown_host_key(sshd: Sshd) -> None:
    open(os.path.join(sshd.dir, "empty_hosts"), "w").close()
    message = fails(sshd.transport(options=sshd.options(known_hosts="empty_hosts",
                                                        checking="yes")), remote.EXIT_AUTH)
    assert "host key" in message and "unknown" in message


# The device's "memagent" below is a small script in its place: an older
# memagent, a newer one, a broken one, one that hangs.

@pytest.mark.parametrize("body, code, said", [
    ('echo \'{"level": "NORMAL", "version": "0.1.0"}\'\n', remote.EXIT_VERSION, "predates"),
    ('echo \'{"schema": 2, "level": "NORMAL"}\'\n', remote.EXIT_VERSION, "schema 2"),
    ("echo 'Traceback (most recent call last):'\nexit 0\n", remote.EXIT_NO_ANSWER,
     "Traceback"),
    ("echo 'memagent: error: argument COMMAND: invalid choice' >&2\nexit 2\n",
     remote.EXIT_VERSION, "invalid choice"),
    ("echo 'Killed' >&2\nexit 137\n", remote.EXIT_NO_ANSWER, "exit status 137"),
    ("head -c 5000000 /dev/zero\n", remote.EXIT_TOO_LARGE, "bytes"),
])
def test_device_answers_that_are_no_status(sshd: Sshd, tmp_path: Any, body: str, code: int,
                                           said: str) -> None:
    fake = script(str(tmp_path), "memagent", body)
    assert said in fails(sshd.transport(remote_memagent=fake), code)


def test_a_hanging_device_times_out(sshd: Sshd, tmp_path: Any) -> None:
    t0 = time.monotonic()
    fails(sshd.transport(remote_memagent=script(str(tmp_path), "memagent", "sleep 8\n"),
                         timeout_s=2), remote.EXIT_NO_ANSWER)
    assert time.monotonic() - t0 < 5


def test_events_stream_as_they_come(sshd: Sshd, tmp_path: Any) -> None:
    pid_file = os.path.join(str(tmp_path), "device.pid")
    fake = script(str(tmp_path), "memagent",  # its pid, its argv, then events, slowly
                  'echo $$ > %s\necho "{\\"argv\\": \\"$*\\"}"\necho not-json >&2\n'
                  'sleep 3\necho \'{"seq": 2, "kind": "level"}\'\nsleep 60\n' % pid_file)
    t0 = time.monotonic()
    t = sshd.transport(remote_memagent=fake, remote_socket="/s")
    events = remote.remote_events(t, True, 5)
    first = next(events)
    assert time.monotonic() - t0 < 2.5, "the first line waited for the second"
    assert first == {"argv": "events --after 5 --follow --socket /s"}
    assert next(events) == {"seq": 2, "kind": "level"}
    with open(pid_file) as f:
        device_pid = int(f.read())
    t1 = time.monotonic()
    events.close()  # ends ssh, not waiting for the device's sleep
    assert time.monotonic() - t1 < 2
    while os.path.exists("/proc/%d" % device_pid):  # the device's command ends too
        assert time.monotonic() - t1 < 5, "the device's events --follow lingers"
        time.sleep(0.05)


def test_events_end_with_the_device_status(sshd: Sshd, tmp_path: Any) -> None:
    fake = script(str(tmp_path), "memagent", 'echo \'{"seq": 1}\'\necho "not running" >&2\n'
                  "exit 3\n")
    got: List[Any] = []
    with pytest.raises(RemoteError) as info:
        for event in remote.remote_events(sshd.transport(remote_memagent=fake), False, 0):
            got.append(event)
    assert got == [{"seq": 1}] and info.value.exit_code == remote.EXIT_NOT_RUNNING


def _too_long(signum: int, frame: Any) -> None:
    raise TimeoutError("no LOW event from the agent in 60 s")


@pytest.mark.memcg
def test_events_of_the_real_agent_follow(sshd: Sshd, memcg: Memcg, tmp_path: Any) -> None:
    agent, sock = start_agent(memcg, str(tmp_path))
    hog = None
    old = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(60)  # next() below waits for the agent: bound it
    try:
        events = remote.remote_events(sshd.transport(remote_socket=sock), True, 0)
        hog = memcg.spawn(ALLOC + ["--rate", "20", "--max-mb", "60", "--hold", "30"],
                          stdout=subprocess.DEVNULL)
        got = []
        for event in events:
            got.append(event)
            if event.get("kind") == "level" and event.get("level") == "LOW":
                break
        events.close()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if hog is not None:
            hog.kill()
            hog.wait()
        stop_agent(agent)
    assert [e["seq"] for e in got] == sorted(e["seq"] for e in got) and got[-1]["seq"] >= 1
    assert got[-1]["prev_level"] == "NORMAL" and got[-1]["total_kib"] == memcg.limit_kib()


# -- the CLI: memagent status / events --ssh ---------------------------------------------

def cli(sshd: Sshd, *args: str, options: Any = None) -> "subprocess.CompletedProcess[str]":
    """Return: ``memagent ARGS --ssh root@127.0.0.1:PORT`` run to its end,
    with the options of ``sshd.options()`` (or ``options``)."""
    opts = ["--ssh-option=" + o for o in (options or sshd.options())]
    return subprocess.run([sys.executable, "-m", "memagent", *args, *opts,
                           "--remote-memagent", REMOTE_MEMAGENT], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.memcg
def test_cli_status_over_ssh(sshd: Sshd, memcg: Memcg, tmp_path: Any) -> None:
    agent, sock = start_agent(memcg, str(tmp_path))
    target = "root@127.0.0.1:%d" % sshd.port
    try:
        out = cli(sshd, "status", "--json", "--ssh", target, "--remote-socket", sock)
        screen = cli(sshd, "status", "--ssh", target, "--remote-socket", sock)
        png = os.path.join(str(tmp_path), "device.png")
        plotted = cli(sshd, "plot", "--ssh", target, "--remote-socket", sock, "-o", png)
        bad = cli(sshd, "status", "--ssh", target, "--remote-socket", sock,
                  options=sshd.options(key="bad_key"))
    finally:
        stop_agent(agent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pid"] == agent.pid
    # the screen rendered here from the device's document: plain (a pipe), its pid
    assert screen.returncode == 0 and "\x1b" not in screen.stdout, screen.stderr
    assert str(agent.pid) in screen.stdout and "NORMAL" in screen.stdout, screen.stdout
    if importlib.util.find_spec("matplotlib") is not None:  # test_plot needs it in CI
        assert plotted.returncode == 0, plotted.stderr
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert bad.returncode == remote.EXIT_AUTH and bad.stdout == ""
    assert bad.stderr.startswith("memagent: ssh authentication to " + target), bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_errors_over_ssh(sshd: Sshd, tmp_path: Any) -> None:
    none = os.path.join(str(tmp_path), "none.sock")
    closed = cli(sshd, "status", "--ssh", "root@127.0.0.1:%d" % free_port())
    assert closed.returncode == remote.EXIT_UNREACHABLE and "Connection refused" in closed.stderr
    idle = cli(sshd, "status", "--json", "--ssh", "root@127.0.0.1:%d" % sshd.port,
               "--remote-socket", none)
    assert idle.returncode == remote.EXIT_NOT_RUNNING, idle.stderr
    assert json.loads(idle.stdout)["running"] is False and "not running" in idle.stderr
    events = cli(sshd, "events", "--ssh", "root@127.0.0.1:%d" % sshd.port,
                 "--remote-socket", none)
    assert events.returncode == remote.EXIT_NOT_RUNNING, events.stderr
    bad = cli(sshd, "status", "--ssh", "-oProxyCommand=touch %s/x" % tmp_path)
    assert bad.returncode == remote.EXIT_USAGE and "starts with '-'" in bad.stderr, bad.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "x"))
