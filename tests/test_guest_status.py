"""memagent status from the host into the qemu ARM guest over ssh, end to end.

The guest runs Debian's dropbear (the rig's ``ssh``: board/qemu-arm/rigssh.py),
qemu's user network forwards a free host loopback port to its port 22, and
root accepts a key this test makes with ssh-keygen (one per test).  The rig
runs in a thread; once the guest answers ssh, the test logs in from the host
with the system ``ssh`` client while the scenario runs:

* ``scenarios/ssh_login.py`` (through init, the qemu-arm profile, 128 MB):
  logins, ``memagent status --json`` over ssh answered by the guest's agent,
  and what dropbear and the remote command cost in the guest;
* ``scenarios/ssh_day.py``, the handset day (128 MB, twice in one boot):
  ``memagent status --ssh root@127.0.0.1:PORT`` on the host, again and again
  during the day, must show the guest agent's live state: its pid (the
  guest's pidfile, read over ssh), the level, the apps the day registered,
  PSI as the source, LOW or CRITICAL and the agent's kills as they happen;
  then ``memagent plot --ssh`` renders the guest's last minutes.

Both with the agent on CPython (contestant memagent) and on MicroPython
(memagent-mpy, ``--interpreter micropython``: the remote ``memagent status``
runs on MicroPython too).

The figures (levels seen, a round trip's latency) are printed (``pytest -s``)
and written to the run's directory as ssh-status.json.
"""

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
from test_guest import RIG_DIR, load_rig
from test_guest_boot import facts_of

from support import need

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

SCENARIOS = os.path.join(RIG_DIR, "scenarios")
PIDFILE = "/var/run/memagent.pid"
DAY_APPS = {"cached-old", "cached-new", "service"}  # registered by every handset day
LEVELS = ("NORMAL", "LOW", "CRITICAL")
POLL_TIMEOUT_S = 60.0
POLL_PAUSE_S = 1.0  # between two polls during the day, as `status --watch` would wait


def rigssh() -> Any:
    """Return: board/qemu-arm/rigssh.py (loaded with the rig)."""
    load_rig()
    sys.path.insert(0, RIG_DIR)
    try:
        import rigssh as mod
    finally:
        sys.path.pop(0)
    return mod


class GuestRun:
    """A rig run with ssh in a thread: ``start`` boots it and waits until
    dropbear answers, ``finish`` waits for the scenario's end."""

    def __init__(self, tmp: str, key: str) -> None:
        self.rig, self.ssh = load_rig(), rigssh()
        self.tmp, self.key = tmp, key
        self.port = self.ssh.free_port()
        self.result: List[Any] = []
        self.error: List[BaseException] = []
        self.qemu: List[Any] = []
        self.thread: Optional[threading.Thread] = None

    def start(self, script: str, args: Tuple[str, ...], **kw: Any) -> float:
        """Boot ``script`` with ``args`` (rig.run keywords ``kw``).  Returns:
        seconds from qemu's start until ssh answered.  Skips when the rig
        cannot build its image."""
        spec = self.ssh.spec(self.port, self.key)

        def body() -> None:
            try:
                self.result.append(self.rig.run(script, args=args, out_dir=self.tmp, ssh=spec,
                                                on_start=self.qemu.append, **kw))
            except BaseException as e:  # noqa: B036 - handed to the test's thread
                self.error.append(e)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()
        while not self.qemu:
            if self.error:
                if isinstance(self.error[0], self.rig.RigError):
                    need("the qemu rig cannot build its image here: %s" % self.error[0])
                raise self.error[0]
            time.sleep(0.1)
        t0 = time.monotonic()
        self.ssh.wait_ready(self.port, self.key, 120, alive=self.qemu[0],
                            console=os.path.join(self.tmp, "console.log"))
        return time.monotonic() - t0

    def run_ssh(self, command: str, timeout_s: float = POLL_TIMEOUT_S) -> str:
        """Run ``command`` in the guest.  Returns: its stdout.  Fails the test
        if it exits non-zero."""
        proc = subprocess.run(self.ssh.ssh_argv(self.port, self.key, [command]),
                              capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (command, proc.returncode, proc.stderr)
        return proc.stdout

    def console(self) -> str:
        """Return: the guest's console so far (the rig writes it as it comes)."""
        with open(os.path.join(self.tmp, "console.log"), errors="replace") as f:
            return f.read()

    def finish(self, timeout_s: float) -> Any:
        """Wait for the run's end.  Returns: its RunResult."""
        assert self.thread is not None
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the rig run did not end in %.0f s" % timeout_s
        if self.error:
            raise self.error[0]
        return self.result[0]


def client_key(tmp: str) -> str:
    """Return: a new ed25519 key made with ssh-keygen in ``tmp`` (skips, or
    fails under CI=true, without ssh-keygen or ssh)."""
    mod = rigssh()
    for tool in ("ssh", "ssh-keygen"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode:
            need("no %s on the host (apt-get install -y openssh-client)" % tool)
    return str(mod.ensure_key(os.path.join(tmp, "id_ed25519")))


def ssh_config(tmp: str, key: str) -> str:
    """Return: an ssh_config for the guest at 127.0.0.1 (its host key is new
    at every boot), as a user would write one, for ``--ssh-option=-F``."""
    path = os.path.join(tmp, "ssh_config")
    with open(path, "w") as f:
        f.write("Host 127.0.0.1\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                "  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 20\n" % key)
    return path


def status_argv(port: int, config: str, json_out: bool = True) -> List[str]:
    """Return: the host's ``memagent status [--json] --ssh root@127.0.0.1:PORT``
    with the ssh_config (``--ssh-option=-F --ssh-option=CONFIG``)."""
    return ([sys.executable, "-m", "memagent", "status"] + ["--json"] * json_out
            + ["--ssh", "root@127.0.0.1:%d" % port, "--ssh-option=-F",
               "--ssh-option=" + config])


def timed(argv: List[str], timeout_s: float = POLL_TIMEOUT_S) -> Tuple[Any, str, str, int]:
    """Run ``argv``.  Returns: (exit status, or "timeout"; stdout; stderr's
    end; wall ms)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timeout", "", "", round((time.monotonic() - t0) * 1000)
    return proc.returncode, proc.stdout, proc.stderr[-300:], round((time.monotonic() - t0) * 1000)


def poll_status(guest: GuestRun, argv: List[str]) -> Dict[str, Any]:
    """One ``status --json`` round trip, then the guest's pidfile over ssh.
    Returns: {"ms" (the status round trip), "rc", "st" (the JSON, or None),
    "pidfile" (the agent's pid after it, None if absent), "err", "t_s" (host
    monotonic seconds at the start)}."""
    t_s = time.monotonic()
    rc, out, err, ms = timed(argv)
    try:
        st = json.loads(out) if out.strip() else None
    except ValueError:
        st = None
    pid = timed(guest.ssh.ssh_argv(guest.port, guest.key, ["cat %s" % PIDFILE]))[1].strip()
    return {"t_s": round(t_s, 1), "ms": ms, "rc": rc, "st": st,
            "pidfile": int(pid) if pid.isdigit() else None, "err": err}


def kills_in(st: Dict[str, Any]) -> List[str]:
    """Return: the names of the agent's kills a status shows (its events, or
    the older "actions")."""
    entries = list(st.get("events") or []) + list(st.get("actions") or [])
    return sorted({str(e.get("name")) for e in entries if e.get("action") == "kill"})


def answered(polls: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Return: the polls the agent itself answered (a pid in the status)."""
    return [p for p in polls if p["st"] is not None and p["st"].get("running")
            and p["st"].get("pid")]


def summarise(polls: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Return: the figures of the polls: the levels seen in order, the apps and
    kills seen, the round trip's median and max (answered polls)."""
    good = answered(polls)
    levels: List[str] = []
    for p in good:
        if not levels or levels[-1] != p["st"]["level"]:
            levels.append(p["st"]["level"])
    apps = {a.get("name") for p in good for a in (p["st"].get("apps") or {}).get("apps", [])}
    kills = sorted({k for p in good for k in kills_in(p["st"])})
    ms = [p["ms"] for p in good]
    return {"polls": len(polls), "answered": len(good), "levels": levels,
            "apps": sorted(a for a in apps if a), "kills": kills,
            "sources": sorted({str(p["st"].get("source")) for p in good}),
            "rtt_median_ms": statistics.median(ms) if ms else None,
            "rtt_max_ms": max(ms) if ms else None,
            "exits": sorted({p["rc"] for p in polls})}


def plot_over_ssh(port: int, config: str, out: str) -> int:
    """``memagent plot --ssh root@127.0.0.1:PORT -o OUT`` on the host: the
    guest agent's history ring as a PNG.  Returns: its wall ms.  Skips (fails
    under CI=true) without matplotlib, the [plot] extra."""
    if importlib.util.find_spec("matplotlib") is None:
        need("no matplotlib on the host (pip install memagent[plot])")
    rc, _out, err, ms = timed([sys.executable, "-m", "memagent", "plot", "--ssh",
                               "root@127.0.0.1:%d" % port, "--ssh-option=-F",
                               "--ssh-option=" + config, "-o", out], 120)
    assert rc == 0, err
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", out
    assert os.path.getsize(out) > 10000, os.path.getsize(out)  # a picture, not an empty frame
    return ms


def screen_during(port: int, config: str, polls: List[Dict[str, Any]],
                  screens: List[str]) -> None:
    """The first time a poll saw LOW or CRITICAL, ask once more for the
    human screen (``memagent status --ssh``, plain: not a terminal) into
    ``screens``."""
    if screens or not polls or (polls[-1]["st"] or {}).get("level") not in ("LOW", "CRITICAL"):
        return
    rc, out, err, _ms = timed(status_argv(port, config, json_out=False))
    screens.append(out if rc == 0 else "exit %s: %s" % (rc, err))


@pytest.mark.parametrize("interpreter", ["python3", "micropython"])
def test_status_over_ssh_during_a_handset_day(tmp_path: Any, interpreter: str) -> None:
    tmp = str(tmp_path)
    key = client_key(tmp)
    config = ssh_config(tmp, key)
    guest = GuestRun(tmp, key)
    argv = status_argv(guest.port, config)
    # two days in one boot: polls land in both growths (a day is ~30 s here)
    spec = "memagent-mpy" if interpreter == "micropython" else "memagent"
    ready_s = guest.start(os.path.join(SCENARIOS, "ssh_day.py"), (spec, "runs=2"),
                          mem_mb=128, timeout_s=420, boot_init=True, board="qemu-arm",
                          interpreter=interpreter)
    polls: List[Dict[str, Any]] = []
    screens: List[str] = []
    while "ssh_day: the day is over" not in guest.console():
        assert guest.thread is not None and guest.thread.is_alive(), "the run ended early"
        polls.append(poll_status(guest, argv))
        screen_during(guest.port, config, polls, screens)
        time.sleep(POLL_PAUSE_S)
    plot_out = os.path.join(tmp, "guest.png")
    plot_ms = plot_over_ssh(guest.port, config, plot_out)
    last = poll_status(guest, argv)  # after the day: the agent still runs
    guest.run_ssh("touch /tmp/rig-ssh-done")
    res = guest.finish(120)
    figures = summarise(polls)
    figures.update(ready_s=round(ready_s, 1), plot_ms=plot_ms, facts=facts_of(res.console))
    with open(os.path.join(tmp, "ssh-status.json"), "w") as f:
        json.dump({"figures": figures, "polls": polls, "last": last, "screens": screens}, f,
                  indent=1)
    print("status over ssh during the handset day: %s" % json.dumps(
        {k: v for k, v in figures.items() if k != "facts"}))
    facts = figures["facts"]
    # The day's checks but one hold under the polls.  Each poll loads the
    # guest: an ssh session (dropbear's child, 1.6 MB), the remote memagent
    # (CPython 14.7 MB of Rss, where CRITICAL is 11 MB available; MicroPython
    # 1-2 MB) and a status the agent builds (history, events).  In the boots
    # measured (2026-12-07) the kernel's OOM killer acted in 7 of 12 days on
    # CPython and 4 of 10 on MicroPython; the unpolled days measured had none
    # (test_guest_handset.py, bench/board.py): figures["facts"]["oom_kills"].
    assert "host_done" in facts, guest.rig.explain(res.console)
    assert facts["fg_survived"] == "True;True", facts
    assert facts["trims_first"] == "True;True", facts
    assert facts["class_order"] == "True;True", facts
    good = answered(polls)
    assert len(good) >= 5, figures
    # each answer is the guest agent's: its pid is in the guest's pidfile
    # (read over ssh just after; the day restarts the agent once, early)
    same = [p for p in good if p["st"]["pid"] == p["pidfile"]]
    assert len(same) >= len(good) - 1, [(p["st"]["pid"], p["pidfile"]) for p in good]
    assert all(p["st"]["level"] in LEVELS for p in good), figures
    assert figures["sources"] == ["psi"], figures
    assert DAY_APPS <= set(figures["apps"]), figures
    assert set(figures["levels"]) & {"LOW", "CRITICAL"}, figures  # pressure, seen live
    # the agent's kills, seen live: some, if the agent killed in the days
    # (under the polls the MicroPython agent once only trimmed at CRITICAL
    # and the kernel killed instead)
    tool_kills = sum(int(n) for n in facts["tool_kills"].split(";"))
    assert bool(figures["kills"]) == (tool_kills > 0), (tool_kills, figures)
    assert last["st"] is not None and last["st"]["pid"] == last["pidfile"], last
    assert last["st"]["host"] == "memagent-arm" and last["st"]["schema"] == 1, last["st"]
    # the screen, rendered here from the guest's answer, at LOW or CRITICAL
    # (once this tree has the renderer, memagent.core.statusview: the
    # screen's own tests are tests/test_statusview.py)
    if importlib.util.find_spec("memagent.core.statusview") is not None:
        assert screens and re.search(r"\b(LOW|CRITICAL)\b", screens[0]), screens


@pytest.mark.parametrize("interpreter", ["python3", "micropython"])
def test_ssh_into_the_guest_and_what_it_costs(tmp_path: Any, interpreter: str) -> None:
    tmp = str(tmp_path)
    key = client_key(tmp)
    guest = GuestRun(tmp, key)
    argv = status_argv(guest.port, ssh_config(tmp, key))
    ready_s = guest.start(os.path.join(SCENARIOS, "ssh_login.py"), ("240",), mem_mb=128,
                          timeout_s=300, boot_init=True, board="qemu-arm",
                          interpreter=interpreter)
    uname_ms = []
    for _ in range(5):
        rc, out, err, ms = timed(guest.ssh.ssh_argv(guest.port, key, ["uname -m"]))
        assert (rc, out.strip()) == (0, "armv7l"), err  # the guest, not this host
        uname_ms.append(ms)
    polls = [poll_status(guest, argv)]
    while not answered(polls) and len(polls) < 30:  # the agent starts after dropbear
        polls.append(poll_status(guest, argv))
    polls += [poll_status(guest, argv) for _ in range(5)]
    guest.run_ssh("sleep 1.5")  # a session long enough for the guest's sampling
    guest.run_ssh("touch /tmp/rig-ssh-done")
    res = guest.finish(120)
    facts = facts_of(res.console)
    assert res.ok, guest.rig.explain(res.console)
    assert "RIG-SSH dropbear up" in res.console
    good = answered(polls)
    assert len(good) >= 5, polls
    assert all(p["st"]["pid"] == p["pidfile"] for p in good), polls
    assert all(p["st"]["level"] in LEVELS for p in good), polls
    assert {p["st"]["host"] for p in good} == {"memagent-arm"}, polls  # the guest's nodename
    assert int(facts["dropbear_rss_kib"]) > 0 and int(facts["session_rss_kib"]) > 0, facts
    if interpreter == "python3":  # MicroPython's status ends inside the 100 ms sampling
        assert "memagent" in facts["remote_comms"].split(","), facts
    print("ssh (%s): ready %.1f s after qemu started; `uname -m` round trip median %.0f ms, "
          "max %.0f ms; `status --json` median %.0f ms, max %.0f ms; guest: %s"
          % (interpreter, ready_s, statistics.median(uname_ms), max(uname_ms),
             statistics.median(p["ms"] for p in good), max(p["ms"] for p in good),
             {k: v for k, v in facts.items() if k != "kernel"}))
