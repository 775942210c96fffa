"""Readers on a /proc tree laid out like a 2.6.24 kernel's (no MemAvailable,
no PSI): the poller path that works on any kernel, through the CLI too."""

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from memagent.core import memstate, procfs
from memagent.sense.domains import MemcgDomain, SystemDomain, open_domain

DATA = os.path.join(os.path.dirname(__file__), "data")


def old_proc(tmp: str) -> str:
    root = os.path.join(tmp, "proc")
    os.makedirs(root)
    shutil.copy(os.path.join(DATA, "legacy", "meminfo.2.6.24-nohighmem-pagecache"),
                os.path.join(root, "meminfo"))
    shutil.copy(os.path.join(DATA, "qemu-arm", "zoneinfo.64m-idle"),
                os.path.join(root, "zoneinfo"))
    return root


def test_system_domain_without_memavailable(tmp_path: Any) -> None:
    root = old_proc(str(tmp_path))
    reading = SystemDomain(root).read(123, "poll")
    with open(os.path.join(root, "meminfo")) as f:
        info = procfs.parse_meminfo(f.read())
    with open(os.path.join(root, "zoneinfo")) as f:
        zones = procfs.parse_zoneinfo(f.read())
    assert reading.total_kib == 895876 and reading.t_ms == 123
    assert reading.avail_kib == memstate.estimate_available_kib(info, zones)
    assert reading.psi_some_avg10 is None  # no /proc/pressure on 2.6


def test_status_and_poll_source_on_an_old_kernel_tree(tmp_path: Any) -> None:
    root = old_proc(str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "memagent", "status", "--json", "--proc-root",
                          root, "--socket", str(tmp_path) + "/none.sock"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 3, out.stderr  # 3: no agent runs; the level from the tree
    st = json.loads(out.stdout)
    assert st["level"] == "NORMAL" and st["reading"]["total_kib"] == 895876
    trace = os.path.join(str(tmp_path), "t.jsonl")
    out = subprocess.run([sys.executable, "-m", "memagent", "record", "--source", "poll",
                          "--proc-root", root, "--duration-s", "1", "-o", trace],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    with open(trace) as f:
        lines = f.read().splitlines()
    assert len(lines) >= 5 and json.loads(lines[1])["total_kib"] == 895876


def test_hostile_meminfo_in_the_tree_is_a_clear_error(tmp_path: Any) -> None:
    root = old_proc(str(tmp_path))
    shutil.copy(os.path.join(DATA, "hostile", "garbage.txt"), os.path.join(root, "meminfo"))
    out = subprocess.run([sys.executable, "-m", "memagent", "status", "--proc-root", root,
                          "--socket", str(tmp_path) + "/none.sock"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "MemTotal" in out.stderr and "Traceback" not in out.stderr


def test_memcg_domain_requires_a_memcg(tmp_path: Any) -> None:
    try:
        MemcgDomain(str(tmp_path))
    except OSError:
        pass
    else:
        raise AssertionError("a plain directory is not a memcg")
    assert open_domain(None).kind == "system"


def test_agent_survives_hostile_proc_mid_run(tmp_path: Any) -> None:
    # The agent reads a /proc tree that turns to garbage and back: it logs,
    # keeps serving, and recovers; it never dies of its input.
    import signal
    import time

    root = old_proc(str(tmp_path))
    sock = os.path.join(str(tmp_path), "ctl.sock")
    conf = os.path.join(str(tmp_path), "m.conf")
    with open(conf, "w") as f:
        f.write("[sources]\ncalm_interval_ms = 200\nmax_fill_kib_s = 1\n")
    agent = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--source", "poll",
                              "--proc-root", root, "--socket", sock, "-c", conf],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        good = os.path.join(root, "meminfo")
        shutil.copy(good, good + ".good")
        shutil.copy(os.path.join(DATA, "hostile", "garbage.txt"), good)
        time.sleep(1.5)
        assert agent.poll() is None
        os.replace(good + ".good", good)
        time.sleep(1.5)
        out = subprocess.run([sys.executable, "-m", "memagent", "status", "--json", "--socket",
                              sock], capture_output=True, text=True, timeout=30)
        st = json.loads(out.stdout)
        assert st["read_errors"] >= 1 and st["reading"]["total_kib"] == 895876
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=10)
    assert agent.returncode == 0
    assert "reading failed (meminfo: no MemTotal line)" in err
