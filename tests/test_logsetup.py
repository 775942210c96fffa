"""Where the log goes when ``log = syslog`` and nobody listens on /dev/log
(the board profiles ship it; a device may boot without a syslogd).

This machine has no /dev/log: the agent here is the one that booted with
31 tracebacks in the guest, one per record, on Python 3.11.
"""

import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any, List

import pytest

from memagent.demo.memcg import Memcg
from memagent.runtime.logsetup import QuietSysLogHandler, open_log, syslog_reachable
from support import stop_agent


def run_agent(group: Memcg, tmp: str, stderr: Any) -> "subprocess.Popen[str]":
    sock = os.path.join(tmp, "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", group.path,
                             "--socket", sock, "--log", "syslog"], stderr=stderr, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    time.sleep(0.5)
    return proc


@pytest.mark.memcg
def test_syslog_without_dev_log_says_so_once_and_logs_to_stderr(memcg: Memcg,
                                                                 tmp_path: Any) -> None:
    if os.path.exists("/dev/log"):
        pytest.skip("this machine has a syslog daemon on /dev/log")
    err = stop_agent(run_agent(memcg, str(tmp_path), subprocess.PIPE))
    assert "Logging error" not in err, err[:3000]
    assert err.count("log = syslog, but /dev/log: No such file or directory; "
                     "logging to stderr instead") == 1, err
    assert "memagent: INFO source: cgroup1" in err and "memagent: INFO stopped" in err


@pytest.mark.memcg
def test_syslog_without_dev_log_and_stderr_to_null_logs_to_kmsg(memcg: Memcg,
                                                                tmp_path: Any) -> None:
    # As under start-stop-daemon -b: stderr is /dev/null.
    if os.path.exists("/dev/log"):
        pytest.skip("this machine has a syslog daemon on /dev/log")
    agent = run_agent(memcg, str(tmp_path), subprocess.DEVNULL)
    pid = agent.pid
    agent.terminate()
    assert agent.wait(timeout=10) == 0
    kmsg = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in kmsg.splitlines() if "memagent[%d]: " % pid in line]
    assert any("logging to /dev/kmsg instead" in line for line in mine), mine
    # WARNING and above only: the kernel passes a writer 10 lines per 5 s
    assert not any("source: cgroup1" in line for line in mine), mine


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_syslog_daemon_that_goes_away_costs_one_line_not_a_traceback(tmp_path: Any,
                                                                      capsys: Any) -> None:
    address = os.path.join(str(tmp_path), "log")
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(address)
    assert syslog_reachable(address) is None
    fallback = Collect()
    handler, notes = open_log("syslog", sys.stderr, address=address)
    assert notes == [] and isinstance(handler, QuietSysLogHandler)
    handler.fallback = fallback
    logger = logging.getLogger("memagent.test-syslog")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.error("one")
    assert b"one" in daemon.recv(4096)
    daemon.close()
    os.unlink(address)  # the daemon is gone
    logger.error("two")
    logger.error("three")
    assert fallback.lines == ["syslog stopped taking messages; logging here until it does",
                              "two", "three"]
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(address)  # back
    logger.error("four")
    assert b"four" in daemon.recv(4096)
    assert not handler.failing and fallback.lines[-1] == "three"
    daemon.close()
    handler.close()
    assert "Logging error" not in capsys.readouterr().err
