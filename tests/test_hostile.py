"""Hostile plugins and clients against a real agent (issue: hardening).

Each section reproduces one defect found from outside, with the docs only,
as an app vendor or an attacker would, against a real ``memagent run``
process, in a real memcg where the scenario needs memory levels; every test
failed on the code before its fix.  Everything acted on is started here:
the agent, its memcg, the loads and the users made for a test (removed
after).
"""

import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import ALLOC
from memagent import aio
from memagent.core import pidfs
from memagent.demo import loadgen
from memagent.demo.memcg import Memcg
from memagent.ipc import session
from memagent.ipc.control import query
from memagent.plugins.kill_background import pidkill
from memagent.sense import domains
from memagent.sense.footprint import footprint_kib
from support import agent_command, need, stop_agent

# -- shared: an agent in the test's memcg, with drop-in plugins --------------------------


INTERPRETER = ["cpython"]  # what start_agent runs the agent on (the interp fixture)


@pytest.fixture
def interp(request: Any) -> "Iterator[str]":
    """The agent's interpreter for one test: "cpython" or "micropython"
    (the whole agent on Debian trixie's micropython 1.25, issue 11)."""
    INTERPRETER[0] = getattr(request, "param", "cpython")
    try:
        yield INTERPRETER[0]
    finally:
        INTERPRETER[0] = "cpython"


def both(fn: "Callable[..., None]") -> "Callable[..., None]":
    """Run the test against the agent on CPython and on MicroPython."""
    fn = pytest.mark.parametrize("interp", ["cpython", "micropython"], indirect=True)(fn)
    return pytest.mark.usefixtures("interp")(fn)  # type: ignore[no-any-return]


def start_agent(group: Memcg, tmp: str, conf: str = "", sock: "Optional[str]" = None,
                prelude: str = "") -> "subprocess.Popen[str]":
    """Return: ``memagent run`` watching ``group``, with ``conf`` as its
    config file's text, its socket ``sock`` (default tmp/ctl.sock), its
    events tmp/events.jsonl.  ``prelude``: Python run in the agent's process
    before the CLI (to turn a module flag).  Fails the test (the agent
    killed) if it does not serve its socket within 15 s."""
    sock = sock or os.path.join(tmp, "ctl.sock")
    path = os.path.join(tmp, "m.conf")
    with open(path, "w") as f:
        f.write(conf)
    args = ["run", "--memcg", group.path, "--config", path, "--socket", sock,
            "--events-json", os.path.join(tmp, "events.jsonl")]
    head, env = agent_command(INTERPRETER[0], prelude)
    proc = subprocess.Popen(head + args, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("agent did not start: " + proc.communicate()[1][-3000:])
        time.sleep(0.05)
    return proc


def dropins(tmp: str, sources: "Dict[str, str]") -> str:
    """Write each plugin source to tmp/plugins.d/NAME.py.  Returns: the
    [plugins] section enabling exactly them, in this order."""
    where = os.path.join(tmp, "plugins.d")
    os.makedirs(where, exist_ok=True)
    for name, source in sources.items():
        with open(os.path.join(where, name + ".py"), "w") as f:
            f.write(source)
    names = ", ".join(sources)
    return "[plugins]\nenable = %s\norder = %s\ndir = %s\n" % (names, names, where)


def agent_status(tmp: str) -> "Dict[str, Any]":
    """Return: the running agent's status (fails the test if it does not answer)."""
    reply = aio.run(query(os.path.join(tmp, "ctl.sock")))
    assert reply["ok"], reply
    st: Dict[str, Any] = reply["status"]
    return st


def timed_stop(agent: "subprocess.Popen[str]") -> "tuple[float, str]":
    """SIGTERM the agent.  Returns: (seconds until it exited, its stderr)."""
    t0 = time.monotonic()
    err = stop_agent(agent, timeout_s=10)
    return time.monotonic() - t0, err


# -- defect 1: a hook that swallows its cancellation ------------------------------------

SWALLOW = """
from memagent import aio
name = "swallow"
async def on_level_change(level, **kw):
    pass
async def on_pressure(level, **kw):
    while True:
        try:
            await aio.sleep_ms(3600 * 1000)
        except BaseException:
            pass
async def on_stop(**kw):
    while True:
        try:
            await aio.sleep_ms(3600 * 1000)
        except BaseException:
            pass
"""

AFTER = """
name = "after"
LOG = %r
async def on_pressure(level, **kw):
    with open(LOG, "a") as f:
        f.write("%%d\\n" %% level)
"""


@pytest.mark.memcg
@both
def test_a_hook_that_swallows_its_cancellation_is_abandoned(memcg: Memcg,
                                                            tmp_path: Any) -> None:
    # Before: wait_for waited on the cancelled hook for good: no "timed out"
    # line, the plugin after it never called again, and the agent hung after
    # SIGTERM until SIGKILL.
    tmp = str(tmp_path)
    log = os.path.join(tmp, "after.log")
    conf = dropins(tmp, {"swallow": SWALLOW, "after": AFTER % log})
    agent = start_agent(memcg, tmp, conf + "hook_timeout_ms = 100\n")
    try:
        hog = memcg.spawn(ALLOC + ["--rate", "10"], stdout=subprocess.DEVNULL)
        hog.wait(timeout=60)
        time.sleep(1.0)
        plugins = {p["name"]: p for p in agent_status(tmp)["plugins"]}
    finally:
        stop_s, err = timed_stop(agent)
    assert "plugin swallow: on_pressure timed out after 100 ms, abandoned" in err, err[-3000:]
    with open(log) as f:
        levels = [int(line) for line in f]
    assert 1 in levels and 2 in levels, levels  # LOW and CRITICAL reached the next plugin
    assert "ignored its cancellation" in plugins["swallow"].get("disabled", ""), plugins
    assert "plugin swallow disabled" in err
    assert "disabled" not in plugins["after"]
    assert stop_s < 2.0, "stopped %.1f s after SIGTERM" % stop_s


# -- defect 5: smaller ones ---------------------------------------------------------------


def events_of(tmp: str) -> "List[Dict[str, Any]]":
    """Return: the notifications in tmp/events.jsonl (actions left out)."""
    path = os.path.join(tmp, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [obj for obj in map(json.loads, f) if "action" not in obj]


@pytest.mark.memcg
@both
def test_status_rereads_a_stale_reading(memcg: Memcg, tmp_path: Any) -> None:
    # A calm event-driven source does not read: status showed the same
    # avail_kib and t_ms 6 s after the memcg had changed by 60 MiB (memory
    # given back crosses no threshold the kernel watches).
    tmp = str(tmp_path)
    agent = start_agent(memcg, tmp)
    try:
        hog = memcg.spawn(ALLOC + ["--rate", "200", "--max-mb", "30", "--hold", "60"],
                          stdout=subprocess.PIPE, text=True)
        assert hog.stdout is not None
        while "done" not in hog.stdout.readline():
            pass
        time.sleep(4.0)  # calm again: no timer
        before = agent_status(tmp)["reading"]
        hog.kill()
        hog.wait()
        time.sleep(2.0)
        after = agent_status(tmp)["reading"]
    finally:
        stop_agent(agent)
    assert after["t_ms"] - before["t_ms"] >= 2000, (before, after)
    assert after["avail_kib"] >= before["avail_kib"] + 25 * 1024, (before, after)


@pytest.mark.memcg
@both
def test_a_held_level_is_reminded_every_remind_ms(memcg: Memcg, tmp_path: Any) -> None:
    # LOW held ~11 s of unchanging memory (cgroup1) with no reminder at all:
    # memory sat between LOW and its recover threshold (the hysteresis).
    # Here one hog holds 20 MB; another brings LOW and leaves.
    tmp = str(tmp_path)
    agent = start_agent(memcg, tmp, "[levels]\nlow_pct = 40\n")
    try:
        holder = memcg.spawn(ALLOC + ["--rate", "100", "--max-mb", "20", "--hold", "60"],
                             stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        while "done" not in holder.stdout.readline():
            pass
        spike = memcg.spawn(ALLOC + ["--rate", "100", "--max-mb", "16", "--hold", "1"],
                            stdout=subprocess.DEVNULL)
        spike.wait(timeout=30)
        left = time.time()
        time.sleep(12)
        st = agent_status(tmp)
        holder.kill()
        holder.wait()
    finally:
        stop_agent(agent)
    assert st["level"] == "LOW", st["reading"]  # held: inside the hysteresis band
    held = [e for e in events_of(tmp) if e["wall"] > left + 1]
    assert len(held) >= 2 and all(e["reason"] == "still" for e in held), held
    walls = [left + 1] + [e["wall"] for e in held]
    gaps = [b - a for a, b in zip(walls, walls[1:])]
    assert max(gaps) <= 6.5, gaps  # remind_ms 5 s, read at least every second


GROWS = """
import mmap, sys
from memagent.client import Client
held = []
def on_trim(level, target_kib):
    for _ in range(8):  # allocates instead of freeing: 4 MiB
        m = mmap.mmap(-1, 512 * 1024)
        m.write(b"x" * (512 * 1024))
        held.append(m)
    return 0
client = Client("grower", cls="cached", estimate_kib=8192, on_trim=on_trim,
                socket_path=sys.argv[1])
print("ready", flush=True)
while True:
    client.poll(1000)
"""


@pytest.mark.memcg
@both
def test_a_trim_that_grows_the_app_is_measured_as_zero(memcg: Memcg, tmp_path: Any) -> None:
    # The log showed a trim's measured amount as (2, 8686, -4).
    tmp = str(tmp_path)
    conf = "[release_caches]\n[plugins]\nenable = release_caches\n"
    agent = start_agent(memcg, tmp, conf)
    app = memcg.spawn([sys.executable, "-c", GROWS, os.path.join(tmp, "ctl.sock")],
                      stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        hog = memcg.spawn(ALLOC + ["--rate", "10", "--max-mb", "48", "--hold", "3"],
                          stdout=subprocess.DEVNULL)
        hog.wait(timeout=60)
        apps = agent_status(tmp)["apps"]["apps"]
    finally:
        app.kill()
        app.wait()
        err = stop_agent(agent)
    grower = [a for a in apps if a["name"] == "grower"][0]
    assert grower["compliance"]["asked"] >= 1, grower
    assert grower["compliance"]["measured_kib"] == 0, grower
    events = [line for line in err.splitlines() if "trim event:" in line]
    assert events and not any(", -" in line for line in events), events


ORDER_SLOW = """
from memagent import aio
name = "slow"
calls = []
async def on_pressure(level, **kw):
    calls.append(level)
    if len(calls) == 1:
        await aio.sleep_ms(9000)  # the agent moves on meanwhile
"""

ORDER_WATCH = """
name = "watch"
LOG = %r
services = None
async def on_start(services, **kw):
    globals()["services"] = services
def note(*words):
    with open(LOG, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")
async def on_level_change(level, prev_level, **kw):
    note("change", prev_level, level, services.level)
async def on_pressure(level, **kw):
    note("pressure", level, services.level)
"""


@pytest.mark.memcg
@both
def test_each_plugin_sees_a_consistent_level_sequence(memcg: Memcg, tmp_path: Any) -> None:
    # Plugins saw LOW->CRITICAL, then LOW->NORMAL, and a stale CRITICAL
    # on_pressure after the agent had logged NORMAL (coalescing behind a
    # slow plugin).
    tmp = str(tmp_path)
    log = os.path.join(tmp, "watch.log")
    conf = dropins(tmp, {"slow": ORDER_SLOW, "watch": ORDER_WATCH % log})
    agent = start_agent(memcg, tmp, conf + "hook_timeout_ms = 15000\n")
    try:
        for wait_s in (11, 7):  # past the slow first call; back to NORMAL (quiet_ms 5 s)
            hog = memcg.spawn(ALLOC + ["--rate", "20"], stdout=subprocess.DEVNULL)
            hog.wait(timeout=60)
            time.sleep(wait_s)
    finally:
        stop_agent(agent)
    with open(log) as f:
        calls = [line.split() for line in f]
    changes = [(int(c[1]), int(c[2])) for c in calls if c[0] == "change"]
    assert changes and changes[0][0] == 0, calls
    for (_, last), (prev, _) in zip(changes, changes[1:]):
        assert prev == last, calls  # prev_level is the level it was last given
    stale = [c for c in calls if c[0] == "pressure" and int(c[2]) < int(c[1])]
    assert not stale, calls


# -- defect 2: identity bound at connect --------------------------------------------------
#
# An app's identity must be bound when its connection is accepted.  The
# attack: an unprivileged user connects, forks, lets the parent exit and
# keeps the socket in the child; a root process takes the parent's pid
# (forced through /proc/sys/kernel/ns_last_pid), and the child sends
# ``register cached``.  On the code before the fix, ``status`` showed the
# root process as the user's app, the kill_background dry run chose it at
# CRITICAL, and trims were audited against its memory.

ID_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"

# A client driven line by line from stdin, answering one JSON line per
# command on stdout: ``connect PATH``, ``ask JSON`` (a request; events that
# arrive before its reply are returned with it), ``euid N`` (setresuid(-1,
# N, -1): the saved uid stays, so it can go back), ``fork`` (the parent
# prints both pids and exits at once; the child carries on with the
# socket), ``listen`` (print every line the agent sends until it hangs up).
ID_DRIVER = r"""
import json, os, socket, sys
sock, buf = None, b""
def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
def line():
    global buf
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return {"eof": True}
        buf += chunk
    one, buf = buf.split(b"\n", 1)
    return json.loads(one)
while True:
    cmd, _, arg = sys.stdin.readline().strip().partition(" ")
    if cmd == "connect":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(arg)
        out({"pid": os.getpid(), "euid": os.geteuid()})
    elif cmd == "ask":
        sock.sendall(arg.encode() + b"\n")
        events = []
        reply = line()
        while "cmd" in reply:
            events.append(reply)
            reply = line()
        out({"reply": reply, "events": events})
    elif cmd == "euid":
        os.setresuid(-1, int(arg), -1)
        out({"euid": os.geteuid()})
    elif cmd == "fork":
        child = os.fork()
        if child:
            out({"parent": os.getpid(), "child": child})
            os._exit(0)
    elif cmd == "listen":
        while True:
            event = line()
            out(event)
            if event.get("eof"):
                break
    else:
        break
"""

# The attacker's registration: an estimate makes release_caches trim it.
INNOCENT = {"name": "innocent", "class": "cached", "estimate_kib": 8192}

ID_CONF = """
[plugins]
enable = release_caches, kill_background
[levels]
renotify_ms = 500
[kill_background]
dry_run = yes
kill_at_low = always
low_class = cached
critical_class = cached
"""


class IdDriver:
    """A running :data:`ID_DRIVER`: ``do`` a command, get its JSON answer."""

    def __init__(self, proc: "subprocess.Popen[bytes]") -> None:
        self.proc = proc
        self.buf = b""
        assert proc.stdin is not None and proc.stdout is not None
        self.out_fd = proc.stdout.fileno()

    def read(self, timeout_s: float = 10) -> "Dict[str, Any]":
        """Return: the next JSON line of the driver.  Fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "the driver said nothing: %r" % self.buf
            if select.select([self.out_fd], [], [], left)[0]:
                chunk = os.read(self.out_fd, 65536)
                assert chunk, "the driver hung up: %r" % self.buf
                self.buf += chunk
        one, self.buf = self.buf.split(b"\n", 1)
        obj: Dict[str, Any] = json.loads(one)
        return obj

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def do(self, command: str) -> "Dict[str, Any]":
        self.send(command)
        return self.read()

    def ask(self, **request: Any) -> "Dict[str, Any]":
        """Return: the agent's reply to ``request`` (events before it dropped)."""
        reply: Dict[str, Any] = self.do("ask " + json.dumps(request))["reply"]
        return reply

    def rest(self) -> "List[Dict[str, Any]]":
        """Return: every line still to come, once whoever holds the pipe is gone."""
        os.set_blocking(self.out_fd, True)
        data = self.buf
        while True:
            chunk = os.read(self.out_fd, 65536)
            if not chunk:
                break
            data += chunk
        return [json.loads(one) for one in data.splitlines() if one.strip()]


@pytest.fixture(scope="module")
def id_user() -> "Iterator[Tuple[str, int, int]]":
    """Yield: (name, uid, gid) of an unprivileged user made for these tests;
    it is removed afterwards."""
    if os.geteuid() != 0:
        need("needs root (useradd, ns_last_pid, setuid)")
    if shutil.which("useradd") is None:
        need("needs useradd")
    name = "memagent-hostile-%s" % uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield name, entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def id_sockdir() -> "Iterator[str]":
    """Yield: a directory every user can reach (the test's tmp_path is
    root's alone), for the control socket."""
    path = tempfile.mkdtemp(prefix="memagent-hostile-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def id_start_agent(group: Memcg, tmp: str, sock: str, peerpidfd: bool = True,
                   conf_text: str = ID_CONF) -> "subprocess.Popen[str]":
    """Return: :func:`start_agent` listening on ``sock``.  ``peerpidfd``
    False starts it with SO_PEERPIDFD turned off
    (``memagent.ipc.session.PEERPIDFD``): the pidfd_open fallback of a
    kernel before 6.5, the kernel calls themselves real."""
    return start_agent(group, tmp, conf_text, sock,
                       "import memagent.ipc.session as s; s.PEERPIDFD = %r" % peerpidfd)


def id_driver(group: Memcg, user: "Optional[Tuple[str, int, int]]") -> IdDriver:
    """Return: a client driver in ``group``, running as ``user`` (None: root)."""
    def drop() -> None:
        if user is not None:
            os.setgroups([])
            os.setresgid(user[2], user[2], user[2])
            os.setresuid(user[1], user[1], user[1])

    proc = group.spawn([ID_PY, "-S", "-c", ID_DRIVER], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, bufsize=0, preexec_fn=drop)
    return IdDriver(proc)


def id_status(sock: str) -> "Dict[str, Any]":
    reply = aio.run(query(sock))
    assert reply["ok"], reply
    st: Dict[str, Any] = reply["status"]
    return st


def take_pid(target: int, spawn: "Callable[[List[str]], subprocess.Popen[Any]]",
             tries: int = 50) -> "subprocess.Popen[Any]":
    """Return: a root ``sleep`` that took pid ``target`` (free now): write
    ``target - 1`` to ns_last_pid, fork, retry when another process won the
    race.  Fails after ``tries``."""
    for _ in range(tries):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(target - 1))
        proc = spawn(["sleep", "1000"])
        if proc.pid == target:
            return proc
        proc.kill()
        proc.wait()
    pytest.fail("could not take pid %d in %d tries" % (target, tries))


def id_avail_mib(group: Memcg) -> int:
    return domains.MemcgDomain(group.path).read(0).avail_kib // 1024


def id_kill_state(sock: str) -> "Dict[str, Any]":
    (entry,) = [p for p in id_status(sock)["plugins"] if p["name"] == "kill_background"]
    assert entry["unavailable"] is None, entry
    state: Dict[str, Any] = entry["state"]
    return state


def id_actions(tmp: str) -> "List[Dict[str, Any]]":
    path = os.path.join(tmp, "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [e for e in (json.loads(one) for one in f) if "action" in e]


def to_critical(group: Memcg, sock: str) -> "subprocess.Popen[Any]":
    """Fill ``group`` into CRITICAL and hold it there until kill_background
    has looked for a victim (chosen one, or found none).  Returns: the
    allocator (adj 0: never a victim itself)."""
    hog = group.spawn([ID_PY, "-S", loadgen.__file__, "anon", "--rate", "0", "--max-mb",
                       str(max(id_avail_mib(group) - 8, 1)), "--hold", "-1"],
                      stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        state = id_kill_state(sock)
        if state["no_victim"] + state["dry_run_choices"] >= 1:
            return hog
        assert time.monotonic() < deadline, ("no kill decision at CRITICAL", state)
        time.sleep(0.1)


def id_user_apps(st: "Dict[str, Any]", pid: int) -> "List[Dict[str, Any]]":
    """Return: the apps (or their last trims) that ``status`` ties to ``pid``."""
    apps = st["apps"]["apps"]
    return [a for a in apps if a["pid"] == pid or (a["last_trim"] or {}).get("pid") == pid]


def reuse_attack(group: Memcg, tmp: str, sock: str, user: "Tuple[str, int, int]",
                 register_first: bool) -> "Dict[str, Any]":
    """Run the attack on the agent at ``sock``: the user connects (and, with
    ``register_first``, registers as "innocent"), forks, the parent exits,
    a root sleep takes its pid, the child registers "innocent" (unless it
    did), then the memcg goes to CRITICAL while the child listens.
    Returns: what happened, for the caller's assertions."""
    attacker = id_driver(group, user)
    assert attacker.do("connect " + sock)["euid"] == user[1]
    assert attacker.ask(cmd="ping")["ok"]  # accepted: the identity is bound
    if register_first:
        early = attacker.ask(cmd="register", **INNOCENT)
        assert early["ok"], early
    pids = attacker.do("fork")
    parent, child = pids["parent"], pids["child"]
    attacker.proc.wait(10)  # the parent is reaped: its pid is free
    try:
        root = take_pid(parent, group.spawn)
        late = None if register_first else attacker.ask(
            cmd="register", **INNOCENT)
        st_before = id_status(sock)
        attacker.send("listen")
        hog = to_critical(group, sock)
        time.sleep(1.5)  # reminders at CRITICAL: more trims and kill decisions
        st_after = id_status(sock)
        alive = root.poll() is None and hog.poll() is None
    finally:
        os.kill(child, signal.SIGKILL)  # the one holding the socket and the pipe
    return {"root": root.pid, "late": late, "status": [st_before, st_after],
            "heard": attacker.rest(), "actions": id_actions(tmp), "alive": alive}


def assert_root_untouched(seen: "Dict[str, Any]") -> None:
    """The root process was never the user's app: not in ``status``, no
    trim sent to the attacker's connection, no kill choice on it."""
    root = seen["root"]
    for st in seen["status"]:
        assert id_user_apps(st, root) == [], st["apps"]
    assert [e for e in seen["heard"] if e.get("cmd") == "trim"] == []
    assert [a for a in seen["actions"] if a.get("pid") == root] == []
    assert seen["alive"]


@pytest.mark.memcg
@pytest.mark.slow
@both
def test_a_reused_pid_registered_later_is_refused(memcg: Memcg, tmp_path: Any,
                                                   id_user: Tuple[str, int, int],
                                                   id_sockdir: str) -> None:
    tmp, sock = str(tmp_path), os.path.join(id_sockdir, "ctl.sock")
    agent = id_start_agent(memcg, tmp, sock)
    try:
        seen = reuse_attack(memcg, tmp, sock, id_user, register_first=False)
    finally:
        err = stop_agent(agent)
    assert seen["late"]["ok"] is False and seen["late"]["code"] == "peer_changed", seen["late"]
    assert "exited" in seen["late"]["error"]
    assert_root_untouched(seen)
    assert seen["status"][1]["apps"]["peers_changed"] >= 1
    assert "Traceback" not in err


@pytest.mark.memcg
@pytest.mark.slow
@both
def test_an_app_whose_process_exited_is_not_its_reused_pid(memcg: Memcg, tmp_path: Any,
                                                           id_user: Tuple[str, int, int],
                                                           id_sockdir: str) -> None:
    # The app registered while its process was there; the process exits,
    # a child keeps the connection, root takes the pid: the app is gone.
    tmp, sock = str(tmp_path), os.path.join(id_sockdir, "ctl.sock")
    agent = id_start_agent(memcg, tmp, sock)
    try:
        seen = reuse_attack(memcg, tmp, sock, id_user, register_first=True)
    finally:
        stop_agent(agent)
    assert_root_untouched(seen)


@pytest.mark.memcg
@pytest.mark.slow
@both
def test_the_pidfd_open_fallback_refuses_a_reused_pid(memcg: Memcg, tmp_path: Any,
                                                      id_user: Tuple[str, int, int],
                                                      id_sockdir: str) -> None:
    # The 6.1 guest has no SO_PEERPIDFD: the agent pins the peer with
    # pidfd_open(SO_PEERCRED pid) at accept.  Forced here, the kernel real.
    tmp, sock = str(tmp_path), os.path.join(id_sockdir, "ctl.sock")
    agent = id_start_agent(memcg, tmp, sock, peerpidfd=False)
    try:
        honest = id_driver(memcg, id_user)
        honest.do("connect " + sock)
        assert honest.ask(cmd="register", **{"name": "honest", "class": "cached"})["ok"]
        (app,) = id_status(sock)["apps"]["apps"]
        seen = reuse_attack(memcg, tmp, sock, id_user, register_first=False)
    finally:
        stop_agent(agent)
    assert seen["late"]["code"] == "peer_changed", seen["late"]
    assert_root_untouched(seen)
    assert (app["name"], app["identity"], app["uid"]) == ("honest", "pidfd_open", id_user[1])


@pytest.mark.memcg
@both
def test_a_uid_changed_since_connect_is_refused(memcg: Memcg, tmp_path: Any,
                                                id_user: Tuple[str, int, int],
                                                id_sockdir: str) -> None:
    # A root client connects, then runs as the user: SO_PEERCRED still says
    # uid 0, but the process is not root any more and gets no root trust.
    tmp, sock = str(tmp_path), os.path.join(id_sockdir, "ctl.sock")
    agent = id_start_agent(memcg, tmp, sock)
    try:
        client = id_driver(memcg, None)
        assert client.do("connect " + sock)["euid"] == 0
        assert client.ask(cmd="ping")["ok"]
        assert client.do("euid %d" % id_user[1])["euid"] == id_user[1]
        refused = [client.ask(cmd="register", **{"name": "sneaky", "class": "perceptible"}),
                   client.ask(cmd="foreground", pid=os.getpid())]
        # Changed before the accept: bound as changed, even once it is root again.
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            late = id_driver(memcg, None)
            late.do("connect " + sock)
            late.do("euid %d" % id_user[1])
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        assert late.ask(cmd="ping")["ok"]
        assert late.do("euid 0")["euid"] == 0
        refused.append(late.ask(cmd="register", **{"name": "sneaky", "class": "perceptible"}))
        st = id_status(sock)
        client.proc.kill()
        late.proc.kill()
    finally:
        err = stop_agent(agent)
    assert [r.get("code") for r in refused] == ["peer_changed"] * 3, refused
    assert "uid %d, not 0" % id_user[1] in refused[0]["error"]
    assert st["apps"]["apps"] == [] and st["apps"]["peers_changed"] == 3
    assert "changed before its connection was accepted" in err


def settled_fds(path: str, timeout_s: float = 10) -> int:
    """Return: the number of entries of ``path`` (a /proc/PID/fd) once it
    held still for 300 ms (a status query's connection is closed by then)."""
    deadline = time.monotonic() + timeout_s
    counts = [len(os.listdir(path))]
    while time.monotonic() < deadline and (len(counts) < 4 or len(set(counts[-4:])) > 1):
        time.sleep(0.1)
        counts.append(len(os.listdir(path)))
    return counts[-1]


@pytest.mark.memcg
@both
def test_pidfds_are_closed_with_their_sessions(memcg: Memcg, tmp_path: Any,
                                               id_user: Tuple[str, int, int],
                                               id_sockdir: str) -> None:
    # Every session holds a pidfd from accept to close: none may outlive it.
    tmp, sock = str(tmp_path), os.path.join(id_sockdir, "ctl.sock")
    agent = id_start_agent(memcg, tmp, sock)
    fds = "/proc/%d/fd" % agent.pid
    try:
        id_status(sock)
        baseline = settled_fds(fds)
        clients = [id_driver(memcg, id_user if i % 2 else None) for i in range(12)]
        for i, client in enumerate(clients):
            client.do("connect " + sock)
            if i % 3:
                assert client.ask(cmd="register", **{"name": "app%d" % i,
                                                      "class": "cached"})["ok"]
        st = id_status(sock)
        during = settled_fds(fds)
        for client in clients:
            client.proc.kill()
            client.proc.wait()
        deadline = time.monotonic() + 10
        while id_status(sock)["apps"]["connections"] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = settled_fds(fds)
    finally:
        stop_agent(agent)
    assert len(st["apps"]["apps"]) == 8
    assert {a["identity"] for a in st["apps"]["apps"]} == {"SO_PEERPIDFD"}
    assert during >= baseline + 2 * 12  # a socket and a pidfd each
    assert after == baseline, (baseline, during, after)


def id_accept(peer_argv: "List[str]", sockdir: str) -> "Tuple[Any, subprocess.Popen[Any]]":
    """Return: (our accepted socket, the peer process) for a real connection
    from a child that runs ``peer_argv`` + the socket path and stays."""
    path = os.path.join(sockdir, "pair.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    peer = subprocess.Popen(peer_argv + [path], stdout=subprocess.PIPE)
    try:
        server.settimeout(10)
        conn, _ = server.accept()
    finally:
        server.close()
    return conn, peer


ID_PEER = ["-S", "-c", "import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
           "s.connect(sys.argv[1]); print('in', flush=True); time.sleep(1000)"]


@pytest.mark.parametrize("peerpidfd, via", [(True, "SO_PEERPIDFD"), (False, "pidfd_open")])
def test_a_bound_process_is_acted_on_only_while_it_lives(
        peerpidfd: bool, via: str, id_sockdir: str, monkeypatch: Any) -> None:
    # Both ways of binding, on real connections and a real pid reuse: once
    # the bound process is gone its pid's new owner is never measured or
    # signalled through the app.

    if os.geteuid() != 0:
        need("needs root (ns_last_pid)")
    monkeypatch.setattr(session, "PEERPIDFD", peerpidfd)
    conn, peer = id_accept([ID_PY] + ID_PEER, id_sockdir)
    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"in\n"
        creds, process, why = session.identify(conn)
        assert process is not None and creds is not None and why == "", why
        assert (process.pid, process.uid, process.via) == (peer.pid, 0, via)
        assert process.started == pidfs.start_time(peer.pid)
        assert process.alive() and process.changed() is None
        assert (footprint_kib(peer.pid, process=process) or 0) > 0
        peer.kill()
        peer.wait()
        root = take_pid(peer.pid, lambda argv: subprocess.Popen(argv))
        try:
            assert not process.alive() and process.changed() == "exited"
            assert process.dup() is None
            assert footprint_kib(peer.pid, process=process) is None
            result = aio.run(pidkill.kill(peer.pid, None, process=process))
            assert result.outcome == pidkill.GONE and not result.signalled
            assert root.poll() is None
        finally:
            root.kill()
            root.wait()
    finally:
        conn.close()
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        if process is not None:
            process.close()
    assert process.closed and not process.alive()


def test_a_registered_app_is_killed_through_its_bound_pidfd(id_sockdir: str) -> None:

    conn, peer = id_accept([ID_PY] + ID_PEER, id_sockdir)
    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"in\n"
        _, process, _ = session.identify(conn)
        assert process is not None
        fds_before = len(os.listdir("/proc/self/fd"))
        result = aio.run(pidkill.kill(peer.pid, None, grace_ms=3000, process=process))
        assert result.outcome == pidkill.EXITED and peer.wait(5) == -signal.SIGTERM
        assert len(os.listdir("/proc/self/fd")) == fds_before  # the dup was closed
        assert not process.alive()
        process.close()
    finally:
        conn.close()
        if peer.poll() is None:
            peer.kill()
            peer.wait()


# -- defects 3 and 4: helpers (a real agent and its control socket) -------------------

@pytest.fixture
def ipc_user() -> Iterator[pwd.struct_passwd]:
    """Yield an unprivileged system user made for the test; removed after."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    name = "memagent-hostile-%s" % uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def ipc_open_dir() -> Iterator[str]:
    """Yield a directory every user may reach (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="memagent-hostile-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ipc_agent(group: Memcg, tmp: str, conf: str = "") -> "subprocess.Popen[str]":
    """Return: :func:`start_agent` on ``tmp``/ctl.sock with ``conf`` after
    the plugins that do not matter here are disabled."""
    return start_agent(group, tmp, "[plugins]\ndisable = notify_ui, device_watch, "
                       "user_activity\n" + conf)


def ipc_request(sock: socket.socket, obj: "Dict[str, Any]") -> "Dict[str, Any]":
    """Send one request on an open connection.  Returns: the next line, parsed."""
    sock.sendall((json.dumps(obj) + "\n").encode())
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return {"closed": True}
        buf += chunk
    reply: Dict[str, Any] = json.loads(buf.split(b"\n")[0])
    return reply


def ipc_take_every_slot(path: str, slots: int = 72) -> "List[socket.socket]":
    """Return: ``slots`` connections as root (the default 64 + 8: root may
    take the ones kept for it too), each answered a ``ping``."""
    held = []
    for _ in range(slots):
        s = ipc_connect(path)
        assert ipc_request(s, {"cmd": "ping"})["ok"] is True
        held.append(s)
    return held


def ipc_connect(path: str, timeout_s: float = 5) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    s.connect(path)
    return s


def ipc_hog(user: pwd.struct_passwd, path: str,
            count: int) -> "Tuple[subprocess.Popen[str], Dict[str, int]]":
    """Start ``count`` subscribed, idle connections as ``user``.  Returns:
    the process holding them (close its stdin to let go) and its counts."""
    proc = subprocess.Popen(["/usr/bin/python3", "-c", HOG, path, str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the hog process failed"
    return proc, json.loads(line)


def ipc_status_cli(path: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "memagent", "status", "--json", "--socket",
                           path], capture_output=True, text=True, timeout=60)


def ipc_root_gets_in(path: str) -> None:
    """Assert that root's `memagent status` and `register` are served."""
    out = ipc_status_cli(path)
    assert out.returncode == 0, out.stderr
    assert "not running" not in json.loads(out.stdout).get("agent", "")
    s = ipc_connect(path)
    try:
        reply = ipc_request(s, {"cmd": "register", "name": "root-app", "class": "service"})
        assert reply.get("ok") is True, reply
    finally:
        s.close()



# -- defect 3: one local user takes every control-socket slot ---------------------------
#
# 200 connections from one unprivileged uid, each subscribed to CRITICAL and
# idle, had taken all 72 slots (max_apps 64 + 8 spare) and locked root's
# `memagent status` and `register` out.  Now: at most [apps] max_per_uid
# (default 32) per untrusted uid, 8 slots only root and the UI uid may take,
# and a subscriber that did not register is closed after
# [apps] subscriber_idle_ms of silence.

HOG = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held, admitted, busy, other = [], 0, 0, 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b'{"cmd": "subscribe", "levels": ["CRITICAL"], "id": 1}\n')
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        reply = json.loads(buf.split(b"\n")[0]) if b"\n" in buf else {}
    except OSError:
        reply = {}
    if reply.get("ok"):
        admitted += 1
        held.append(s)
    else:
        busy += reply.get("code") == "busy"
        other += reply.get("code") != "busy"
        s.close()
print(json.dumps({"admitted": admitted, "busy": busy, "other": other}), flush=True)
sys.stdin.read()  # hold the connections until the test closes our stdin
"""


@pytest.mark.memcg
@both
def test_one_uid_gets_max_per_uid_and_root_still_gets_in(
        memcg: Memcg, ipc_open_dir: str, ipc_user: pwd.struct_passwd) -> None:
    agent = ipc_agent(memcg, ipc_open_dir)
    path = os.path.join(ipc_open_dir, "ctl.sock")
    held: "Optional[subprocess.Popen[str]]" = None
    try:
        held, counts = ipc_hog(ipc_user, path, 200)
        # before: 72 admitted, 0 refused, root locked out
        assert counts == {"admitted": 32, "busy": 168, "other": 0}, counts
        ipc_root_gets_in(path)
        control = json.loads(ipc_status_cli(path).stdout)["control"]
        assert control["refused"] == 168 and control["max_per_uid"] == 32, control
    finally:
        if held is not None:
            held.communicate("", timeout=30)
        stop_agent(agent)


@pytest.mark.memcg
@both
def test_slots_reserved_for_root_when_untrusted_fill_the_rest(
        memcg: Memcg, ipc_open_dir: str, ipc_user: pwd.struct_passwd) -> None:
    agent = ipc_agent(memcg, ipc_open_dir, "[apps]\nmax_per_uid = 4096\n")
    path = os.path.join(ipc_open_dir, "ctl.sock")
    held: "Optional[subprocess.Popen[str]]" = None
    try:
        held, counts = ipc_hog(ipc_user, path, 200)
        # every slot but the 8 kept for root and the UI shell
        assert counts["admitted"] == 64 and counts["busy"] == 136, counts
        ipc_root_gets_in(path)
    finally:
        if held is not None:
            held.communicate("", timeout=30)
        stop_agent(agent)


@pytest.mark.memcg
@both
def test_silent_subscriber_is_closed_and_a_pinging_one_kept(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    agent = ipc_agent(memcg, tmp, "[apps]\nsubscriber_idle_ms = 1000\n")
    path = os.path.join(tmp, "ctl.sock")
    try:
        silent, pinging, app = (ipc_connect(path, 10) for _ in range(3))
        for s in (silent, pinging):
            assert ipc_request(s, {"cmd": "subscribe", "levels": ["CRITICAL"]})["ok"] is True
        assert ipc_request(app, {"cmd": "register", "name": "idle-app", "class": "cached"})["ok"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            assert ipc_request(pinging, {"cmd": "ping"})["ok"] is True
            time.sleep(0.4)
        silent.settimeout(0.5)
        try:
            assert silent.recv(100) == b""
        except socket.timeout:
            pytest.fail("a subscriber silent for 3 s (subscriber_idle_ms 1 s) is still connected")
        assert ipc_request(app, {"cmd": "ping"})["ok"] is True  # registered apps may idle
        for s in (silent, pinging, app):
            s.close()
    finally:
        stop_agent(agent)



@pytest.mark.memcg
@both
def test_refused_flood_lingers_at_most_a_few(memcg: Memcg, tmp_path: Any) -> None:
    # A refused connection lingered 200 ms (half-closed, to let the client
    # read "busy"), each of them, with no cap: a flood held a socket and a
    # task per refused connection.  Now at most 8 linger at once and the
    # others are closed at once, their "busy" still delivered.
    tmp = str(tmp_path)
    path = os.path.join(tmp, "ctl.sock")
    agent = ipc_agent(memcg, tmp)
    fd_dir = "/proc/%d/fd" % agent.pid
    held: "List[socket.socket]" = []
    flood: "List[socket.socket]" = []
    try:
        held = ipc_take_every_slot(path)
        fds_full = len(os.listdir(fd_dir))
        t0 = time.monotonic()
        for _ in range(100):
            flood.append(ipc_connect(path))  # and send nothing
        replies = []
        for s in flood:  # "busy", then EOF (the agent's half-close)
            buf = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            replies.append(json.loads(buf) if buf else None)
        # the fewest the agent holds while a refused one may still linger (200 ms)
        fds_flood = len(os.listdir(fd_dir))
        while time.monotonic() - t0 < 0.15:
            time.sleep(0.01)
            fds_flood = min(fds_flood, len(os.listdir(fd_dir)))
    finally:
        for s in held + flood:
            s.close()
        stop_agent(agent)
    assert all(r is not None and r["code"] == "busy" for r in replies), replies[:3]
    # before: about 100 more (every refused connection still open)
    assert fds_flood - fds_full <= 30, (fds_full, fds_flood)


# -- defect 4: status breaks with many apps ----------------------------------------------
#
# 64 registered apps, each named with 64 emoji (64 characters, 256 bytes of
# UTF-8, 768 bytes of escaped JSON), made the status reply longer than the
# 64 KiB line; the agent refused its own reply and `memagent status` said
# "not running".  Now names are at most 64 bytes of UTF-8 without control,
# line-separator or bidi characters, the status reply pages its app list and
# always fits one line, and the CLI tells busy (exit 4), reply too large (5)
# and not running (3) apart.

EMOJI = "\U0001F600"


def _register_all(path: str, names: "List[str]") -> "Tuple[List[socket.socket], List[Any]]":
    """Connect and register one app per name.  Returns: the connections
    (left open) and the replies."""
    conns, replies = [], []
    for name in names:
        s = ipc_connect(path)
        conns.append(s)
        replies.append(ipc_request(s, {"cmd": "register", "name": name, "class": "cached"}))
    return conns, replies


def _raw_status(path: str, **fields: "Any") -> "Tuple[int, Dict[str, Any]]":
    """Returns: (the status reply line's length in bytes, the reply)."""
    s = ipc_connect(path)
    try:
        s.sendall((json.dumps(dict(fields, cmd="status")) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    line = buf.split(b"\n")[0] + b"\n"
    return len(line), json.loads(line)


NAMES = [  # (name, accepted)
    (EMOJI * 16, True),  # 64 bytes: the most
    ("x" * 64, True),
    ("Photos \u2013 viewer", True),
    (EMOJI * 17, False),  # 68 bytes
    (EMOJI * 64, False),  # 256 bytes (accepted before: 64 characters)
    ("x" * 65, False),
    ("photos\u2028viewer", False),  # line separator
    ("photos\u2029viewer", False),  # paragraph separator
    ("gpj.\u202eexe", False),  # right-to-left override
    ("a\u202ab\u202c", False),  # embedding, pop
    ("a\u2066b\u2069", False),  # isolates
    ("a\u0085b", False),  # C1 next line
    ("a\x7fb", False),
    ("a\x1bb", False),
]


@pytest.mark.memcg
@both
def test_names_bounded_in_bytes_without_controls(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    agent = ipc_agent(memcg, tmp)
    wrong = []
    try:
        for name, accepted in NAMES:
            s = ipc_connect(os.path.join(tmp, "ctl.sock"))
            reply = ipc_request(s, {"cmd": "register", "name": name, "class": "cached",
                                    "id": 1})
            s.close()
            if accepted:
                ok = reply["ok"] is True
            else:
                ok = (reply["ok"], reply.get("code"), reply.get("id")) == \
                    (False, "bad_field", 1) and "'name' must be" in reply["error"]
            if not ok:
                wrong.append((name, reply))
    finally:
        stop_agent(agent)
    assert not wrong, wrong


def _fill(path: str, count: int) -> "List[socket.socket]":
    """Register ``count`` apps with the longest names: 64 characters of
    emoji as before, else (refused now) the most that 64 bytes hold.
    Returns: their connections."""
    conns, replies = _register_all(path, ["%02x%s" % (i, EMOJI * 62) for i in range(count)])
    if not all(r["ok"] for r in replies):
        for s in conns:
            s.close()
        conns, replies = _register_all(path, ["%02x%s" % (i, EMOJI * 15)
                                              for i in range(count)])
    assert all(r["ok"] for r in replies), replies[:2]
    return conns


@pytest.mark.memcg
@pytest.mark.parametrize("count", [64, 160])
@both
def test_status_with_maximum_apps_fits_and_pages(memcg: Memcg, tmp_path: Any,
                                                 count: int) -> None:
    tmp = str(tmp_path)
    path = os.path.join(tmp, "ctl.sock")
    agent = ipc_agent(memcg, tmp, "[apps]\nmax_apps = %d\n" % count)
    conns: "List[socket.socket]" = []
    try:
        conns = _fill(path, count)
        size, reply = _raw_status(path)
        assert reply["ok"] is True and size <= 65536, (size, reply.get("code"))
        apps = reply["status"]["apps"]
        assert apps["apps_total"] == count
        print("%d apps: status reply %d bytes, %d apps in it, apps_next %s"
              % (count, size, len(apps["apps"]), apps["apps_next"]))
        # a page of at most 5, from a cursor
        size, reply = _raw_status(path, apps_after=apps["apps"][0]["app_id"], apps_max=5)
        page = reply["status"]["apps"]
        assert [a["app_id"] for a in page["apps"]] == [a["app_id"] for a in apps["apps"][1:6]]
        assert page["apps_next"] == page["apps"][-1]["app_id"]
        out = ipc_status_cli(path)  # every page, merged
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        names = sorted(app["name"][:2] for app in st["apps"]["apps"])
        assert names == ["%02x" % i for i in range(count)]
    finally:
        for s in conns:
            s.close()
        stop_agent(agent)


@pytest.mark.memcg
@both
def test_status_cli_says_busy_then_not_running(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    path = os.path.join(tmp, "ctl.sock")
    agent = ipc_agent(memcg, tmp)
    held = []
    try:
        held = ipc_take_every_slot(path)
        busy = ipc_status_cli(path)
    finally:
        for s in held:
            s.close()
        stop_agent(agent)
    gone = ipc_status_cli(path)
    assert busy.returncode == 4 and "busy" in busy.stderr, (busy.returncode, busy.stderr)
    assert "not running" not in busy.stderr + busy.stdout
    assert json.loads(busy.stdout)["level"] in ("NORMAL", "LOW", "CRITICAL")  # from /proc
    assert gone.returncode == 3 and "not running" in gone.stderr, (gone.returncode, gone.stderr)


def test_status_cli_says_reply_too_large(tmp_path: Any) -> None:
    # The agent's status now fits one line by construction; an older agent's
    # did not.  A socket that answers with a 70,000-byte line stands for it.
    path = os.path.join(str(tmp_path), "old.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        big = {"ok": True, "v": 1, "status": {"apps": {"apps": ["x" * 70000]}}}
        try:
            conn.sendall((json.dumps(big) + "\n").encode())
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    out = ipc_status_cli(path)
    thread.join(5)
    server.close()
    assert out.returncode == 5 and "too large" in out.stderr, (out.returncode, out.stderr)
    assert "not running" not in out.stderr + out.stdout
