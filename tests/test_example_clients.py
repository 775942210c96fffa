"""The clients of /dev/mem_notify: examples/mem_notify_poll.py and the qemu
guest's C programs (board/qemu-arm/clients/).

There is no /dev/cuse here, so the device is stood in for by a FIFO (a line
written into it makes it readable; closing the last writer is POLLHUP, as a
dead provider) or a plain file (always readable).  The C programs are built
twice: with the host's gcc, to run them, and with the armhf cross compiler
the rig uses, -Werror, to know the guest gets them.
"""

import gzip
import importlib.util
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from support import need

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mem_notify_poll.py"
RIG_DIR = ROOT / "board" / "qemu-arm"
LINE = "low 7800 60412 2500 16384 123456"


def load_module(path: Path) -> Any:
    """Return: the module at ``path``, imported under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


poll_client = load_module(EXAMPLE)
rigclients = load_module(RIG_DIR / "rigclients.py")


class Client:
    """A client process whose stdout is read line by line with a timeout."""

    def __init__(self, cmd: List[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pending = b""

    def line(self, timeout: float = 5.0) -> str:
        """Return: the next line of stdout ("" at its end).  Fails the test
        after ``timeout`` seconds without one."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                pytest.fail("no output line within %.0f s (so far %r)" % (timeout, self.pending))
            chunk = os.read(fd, 4096)
            if not chunk:
                rest, self.pending = self.pending, b""
                return rest.decode()
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()

    def finish(self, timeout: float = 5.0) -> Tuple[List[str], str, int]:
        """Return: (the remaining stdout lines, stderr, exit status)."""
        out, err = self.proc.communicate(timeout=timeout)
        lines = (self.pending + out).decode().splitlines()
        return lines, err.decode(), self.proc.returncode


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Tuple[str, int]]:
    """Yield (a FIFO's path, a write end held open): the client's open()
    does not block, and it sees no POLLHUP until the test closes it."""
    path = str(tmp_path / "mem_notify")
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR)  # Linux: opens at once, no reader needed
    try:
        yield path, writer
    finally:
        with_closed(writer)


def with_closed(fd: int) -> None:
    """Close ``fd`` unless the test already did."""
    try:
        os.close(fd)
    except OSError:
        pass


def mono_ms() -> int:
    """Return: CLOCK_MONOTONIC in ms, the clock of the clients' lines."""
    return int(time.monotonic() * 1000)


# ------------------------------------------------------------- the parser

def test_parse_line_gives_the_fields_as_ints() -> None:
    assert poll_client.parse_line(LINE + "\n") == {
        "level": "low", "avail_kib": 7800, "total_kib": 60412, "eta_ms": 2500,
        "target_kib": 16384, "t_ms": 123456}
    reading = poll_client.parse_line(b"critical 100 60412 -1 0 5\n")
    assert reading["level"] == "critical" and reading["eta_ms"] is None  # -1: unknown
    assert poll_client.parse_line("normal 60000 60412 -1 0 0")["avail_kib"] == 60000


@pytest.mark.parametrize("bad", [
    "", "low 1 2 3 4", "low 1 2 3 4 5 6", "medium 1 2 3 4 5", "low  1 2 3 4 5",
    "low 1 2 x 4 5", "low -1 2 3 4 5", "low 1 2 -2 4 5", "low 1 2 3 4 5.0", "LOW 1 2 3 4 5",
])
def test_parse_line_rejects_what_is_not_the_devices_line(bad: str) -> None:
    with pytest.raises(ValueError):
        poll_client.parse_line(bad)


# ------------------------------------------------------ the Python client

def python_client(*args: str) -> Client:
    return Client([sys.executable, "-u", str(EXAMPLE), *args])


def test_python_client_prints_the_line_of_a_wake(fifo: Tuple[str, int]) -> None:
    path, writer = fifo
    client = python_client("--device", path, "--timeout", "5")
    assert client.line() == "READY 1"
    before = mono_ms()
    os.write(writer, (LINE + "\n").encode())
    wake = client.line().split(" ", 2)
    assert wake[0] == "WAKE" and wake[2] == LINE
    assert before - 50 <= int(wake[1]) <= mono_ms() + 50  # CLOCK_MONOTONIC ms
    assert client.line() == "READING " + json.dumps(poll_client.parse_line(LINE))
    assert client.finish() == (["DONE wakes=1"], "", 0)


def test_python_client_reports_a_dead_provider_and_a_missing_device(
        fifo: Tuple[str, int], tmp_path: Path) -> None:
    path, writer = fifo
    client = python_client("--device", path, "--timeout", "5")
    assert client.line() == "READY 1"
    os.close(writer)  # the last writer gone: POLLHUP, as when the provider dies
    lines, _, status = client.finish()
    assert status == 3 and lines[0].startswith("ERROR ") and lines[0].endswith(" poll POLLHUP")
    lines, err, status = python_client("--device", str(tmp_path / "none")).finish()
    assert (lines, status) == ([], 2) and "No such file or directory" in err


# --------------------------------------------------------------- the C clients

@pytest.fixture(scope="module")
def host_bins(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Return: {client name: its host build (gcc, same warnings, -Werror)}."""
    if shutil.which("gcc") is None:
        need("no gcc on this machine (apt-get install gcc libc6-dev)")
    out = tmp_path_factory.mktemp("clients")
    bins = {}
    for name, src in zip(rigclients.CLIENTS, rigclients.sources()):
        rigclients.compile_client("gcc", src, out / name, flags=[])
        bins[name] = str(out / name)
    return bins


def test_mem_notify_wait_prints_the_line_of_a_wake(host_bins: Dict[str, str],
                                                   fifo: Tuple[str, int]) -> None:
    path, writer = fifo
    client = Client([host_bins["mem_notify_wait"], "-d", path, "-t", "2"])
    assert client.line() == "READY 1"
    before = mono_ms()
    os.write(writer, (LINE + "\n").encode())
    wake = client.line().split(" ", 3)
    assert wake[0] == "WAKE" and wake[2:] == ["0", LINE]
    assert before - 50 <= int(wake[1]) <= mono_ms() + 50
    assert client.finish() == (["DONE wakes=1"], "", 0)


def test_mem_notify_wait_times_out_and_sees_a_dead_provider(host_bins: Dict[str, str],
                                                            fifo: Tuple[str, int]) -> None:
    path, writer = fifo
    t0 = time.monotonic()
    assert Client([host_bins["mem_notify_wait"], "-d", path, "-t", "0.2"]).finish() == (
        ["READY 1", "DONE wakes=0"], "", 0)
    assert 0.15 < time.monotonic() - t0 < 2
    client = Client([host_bins["mem_notify_wait"], "-d", path, "-n", "0"])
    assert client.line() == "READY 1"
    os.close(writer)
    lines, _, status = client.finish()
    assert status == 3 and len(lines) == 1
    assert lines[0].startswith("ERROR ") and lines[0].endswith(" 0 poll POLLHUP")


def test_mem_notify_wait_polls_many_files_at_once(host_bins: Dict[str, str],
                                                  tmp_path: Path) -> None:
    plain = tmp_path / "always-readable"
    plain.write_text(LINE + "\n")
    lines, err, status = Client([host_bins["mem_notify_wait"], "-d", str(plain),
                                 "-c", "1500", "-n", "1500", "-t", "5"]).finish()
    assert (status, err) == (0, "")
    assert lines[0] == "READY 1500" and lines[-1] == "DONE wakes=1500"
    wakes = [line.split(" ", 3) for line in lines[1:-1]]
    assert [int(w[2]) for w in wakes] == list(range(1500))  # all in the first poll()
    assert all(w[0] == "WAKE" and w[3] == LINE for w in wakes)


def test_mem_notify_wait_without_reading_stops_polling_the_file(host_bins: Dict[str, str],
                                                                tmp_path: Path) -> None:
    plain = tmp_path / "always-readable"
    plain.write_text(LINE + "\n")
    proc = subprocess.Popen([host_bins["mem_notify_wait"], "-d", str(plain), "-q", "-c", "3",
                             "-n", "0", "-t", "0.5"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    _pid, status, usage = os.wait4(proc.pid, 0)
    lines = proc.stdout.read().decode().splitlines()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    assert [line.split(" ")[::2] for line in lines[1:-1]] == [["WAKE", "0"], ["WAKE", "1"],
                                                              ["WAKE", "2"]]
    assert all(line.endswith(" -") for line in lines[1:-1])  # nothing read
    assert lines[0] == "READY 3" and lines[-1] == "DONE wakes=3"
    assert usage.ru_utime + usage.ru_stime < 0.2  # half a second of waiting, no spinning


@pytest.mark.parametrize("args, message", [
    (["-c", "2001"], "bad count 2001"),
    (["-n", "x"], "bad wakes x"),
    (["-t", "-1"], "bad timeout"),
    (["-s", "9"], "SIGKILL"),
    (["-s", "32"], "libc's own"),
    (["-d", "/nonexistent/mem_notify"], "/nonexistent/mem_notify (file 0): No such file"),
    (["-w", "low_kib 8192 leave_kib 16384"], "(file 0): Bad file descriptor"),  # read-only
    (["-s", "10"], "MEMNOTIFY_SETSIG"),
])
def test_mem_notify_wait_set_up_failures_exit_2(host_bins: Dict[str, str], tmp_path: Path,
                                                args: List[str], message: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text(LINE + "\n")
    lines, err, status = Client([host_bins["mem_notify_wait"], "-d", str(plain), *args]).finish()
    assert (lines, status) == ([], 2)
    assert message in err


def test_alloc_test_prints_what_it_had_allocated_when_notified(host_bins: Dict[str, str],
                                                               fifo: Tuple[str, int]) -> None:
    path, writer = fifo
    client = Client([host_bins["alloc_test"], "-d", path, "-r", "50", "-m", "50"])
    assert client.line().startswith("START ")
    time.sleep(0.1)  # ~5 chunks of 1 MiB
    os.write(writer, (LINE + "\n").encode())
    lines, err, status = client.finish()
    assert (status, err) == (0, ""), lines
    fields = lines[-1].split(" ", 4)
    assert fields[0] == "NOTIFIED" and fields[4] == "line=" + LINE
    assert fields[2].startswith("allocated_mb=") and 1 <= int(fields[2][13:]) < 50
    assert fields[3].startswith("mem_available_kib=") and int(fields[3][18:]) > 0


def test_alloc_test_gives_up_at_its_maximum(host_bins: Dict[str, str],
                                            fifo: Tuple[str, int]) -> None:
    path, writer = fifo
    lines, _, status = Client([host_bins["alloc_test"], "-d", path, "-r", "200",
                               "-m", "20"]).finish()
    assert status == 1
    assert [line.split(" ")[0] for line in lines] == ["START", "ALLOC", "ALLOC", "GAVE_UP"]
    assert lines[1].endswith(" 10") and lines[2].endswith(" 20")
    assert lines[3].endswith(" allocated_mb=20 reason=max_mb")
    client = Client([host_bins["alloc_test"], "-d", path, "-r", "1"])
    assert client.line().startswith("START ")
    os.close(writer)
    lines, _, status = client.finish()
    assert status == 3 and lines[0].startswith("ERROR ") and lines[0].endswith(" poll POLLHUP")
    lines, err, status = Client([host_bins["alloc_test"], "-r", "0"]).finish()
    assert status == 2 and "bad rate" in err


# -------------------------------------------------- the guest's cross build

def need_cross_compiler() -> None:
    """Skip (fail under CI=true) without the armhf cross compiler."""
    if shutil.which(rigclients.CROSS_CC) is None:
        need("no %s (apt-get install %s libc6-dev-armhf-cross)"
             % (rigclients.CROSS_CC, rigclients.CROSS_PACKAGE))


def test_the_clients_cross_build_static_for_the_guest(tmp_path: Path) -> None:
    need_cross_compiler()
    logged: List[str] = []
    built = rigclients.build_clients(tmp_path / "cache", logged.append)
    assert sorted(built) == sorted(rigclients.CLIENTS) and len(logged) == 1
    for data in built.values():
        assert data[:5] == b"\x7fELF\x01"  # 32-bit
        assert struct.unpack_from("<H", data, 18)[0] == 40  # EM_ARM
        phnum, phoff = struct.unpack_from("<H", data, 44)[0], struct.unpack_from("<I", data, 28)[0]
        types = [struct.unpack_from("<I", data, phoff + 32 * i)[0] for i in range(phnum)]
        assert 3 not in types  # no PT_INTERP: static
    again = rigclients.build_clients(tmp_path / "cache", logged.append)
    assert again == built and len(logged) == 1  # cached: not built again


def test_without_the_cross_compiler_nothing_ships_but_ci_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logged: List[str] = []
    monkeypatch.delenv("CI", raising=False)
    assert rigclients.build_clients(tmp_path, logged.append, cc="no-such-gcc") == {}
    assert len(logged) == 1 and "gcc-arm-linux-gnueabihf" in logged[0]
    monkeypatch.setenv("CI", "true")
    with pytest.raises(rigclients.ClientsError, match="gcc-arm-linux-gnueabihf"):
        rigclients.build_clients(tmp_path, logged.append, cc="no-such-gcc")


def test_every_payload_carries_the_clients(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    need_cross_compiler()
    sys.path.insert(0, str(RIG_DIR))
    try:
        import rig
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(rig, "CACHE", tmp_path)
    data, _ = rig.build_payload(RIG_DIR / "scenarios" / "hello.sh", [], None, 128)
    raw = gzip.decompress(data)
    built = rigclients.build_clients(tmp_path / "clients", lambda _msg: None)
    shipped = dict(built, **{EXAMPLE.name: EXAMPLE.read_bytes()})
    for name, content in shipped.items():
        at = raw.index(b"payload/rig/bin/%s\0" % name.encode())
        mode = int(raw[at - 110 + 14:at - 110 + 22], 16)  # newc header: c_mode
        assert mode & 0o777 == 0o755 and content in raw
