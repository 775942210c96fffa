"""memagent.demo.memcg against the real kernel: every process here is one the test
started, inside the test's own memcg."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ALLOC, MEMCG_LIMIT_KIB
from memagent.demo import memcg as memcg_mod
from memagent.sense.domains import MemcgDomain

pytestmark = pytest.mark.memcg


def test_create_limit_and_destroy(memcg: memcg_mod.Memcg) -> None:
    assert os.path.basename(memcg.path).startswith(memcg_mod.NAME_PREFIX)
    assert memcg.limit_kib() == MEMCG_LIMIT_KIB
    memcg.set_limit_kib(32 * 1024)
    assert memcg.limit_kib() == 32 * 1024
    memcg.set_limit_kib(96 * 1024)  # growing: memsw must be raised first on v1
    assert memcg.limit_kib() == 96 * 1024
    assert memcg.pids() == []
    assert memcg.oom_kill_count() == 0
    assert MemcgDomain(memcg.path).kind == "memcg-" + memcg.version
    memcg.destroy()
    assert not os.path.exists(memcg.path)
    memcg.destroy()  # idempotent


def test_spawn_starts_inside_the_group(memcg: memcg_mod.Memcg) -> None:
    child = memcg.spawn([sys.executable, "-c", "print(open('/proc/self/cgroup').read())"],
                        stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=10)
    assert child.returncode == 0
    assert os.path.basename(memcg.path) in out


def test_add_pid_kill_all_and_destroy_reaps(memcg: memcg_mod.Memcg) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        memcg.add_pid(sleeper.pid)
        assert memcg.pids() == [sleeper.pid]
        assert memcg.kill_all() == 1
        assert sleeper.wait(timeout=5) == -9
    finally:
        sleeper.kill()
        sleeper.wait()
    held = memcg.spawn(["sleep", "60"])
    memcg.destroy()
    assert held.returncode == -9
    assert not os.path.exists(memcg.path)


def test_context_manager_removes_the_group() -> None:
    reason = memcg_mod.available()
    if reason is not None:
        pytest.skip(reason)
    with memcg_mod.Memcg(limit_kib=16 * 1024) as group:
        path = group.path
        group.spawn(["sleep", "60"])
        assert len(group.pids()) == 1
    assert not os.path.exists(path)


def test_oom_kill_counts_a_child_over_the_limit(memcg: memcg_mod.Memcg) -> None:
    # No swap here, and memsw is limited too: 80 MB in a 64 MiB group must be killed.
    start = time.monotonic()
    child = memcg.spawn(ALLOC + ["--rate", "0", "--max-mb", "80", "--hold", "5"],
                        stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=15)
    assert child.returncode == -9, out
    assert memcg.oom_kill_count() == 1
    assert "done" not in out
    assert time.monotonic() - start < 10
    assert not memcg.under_oom()


def test_a_child_under_the_limit_lives(memcg: memcg_mod.Memcg) -> None:
    child = memcg.spawn(ALLOC + ["--rate", "0", "--max-mb", "16"],
                        stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=15)
    assert child.returncode == 0, out
    assert memcg.oom_kill_count() == 0
    assert memcg.usage_kib() < MEMCG_LIMIT_KIB


def test_available_explains_itself() -> None:
    reason = memcg_mod.available()
    assert reason is None or "memory" in reason or "root" in reason
