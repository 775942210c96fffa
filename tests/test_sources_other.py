"""The sources that do not need a memcg: psi (unavailable on the build
machine), mem_notify (mechanics against a FIFO stand-in), cgroup2 (reasons and
counter logic only: no v2 memory controller here), poll, trace, and choose()."""

import json
import os
from typing import Any, Awaitable, List, Tuple, TypeVar

import pytest

from memagent import aio
from memagent.core.reading import Reading
from memagent.sense.domains import SystemDomain
from memagent.sense.sources import SourceOptions, SourceUnavailable, choose, mem_notify
from memagent.sense.sources.cgroup2 import Cgroup2Source, grown_event
from memagent.sense.sources.mem_notify import MemNotifySource
from memagent.sense.sources.poll import PollSource
from memagent.sense.sources.psi import PsiSource

T = TypeVar("T")


def run(aw: Awaitable[T]) -> T:
    async def main() -> T:
        return await aw

    return aio.run(main())


def timed(aw: Awaitable[T]) -> Tuple[T, int]:
    """Return: (result, elapsed ms)."""
    start_ms = aio.ticks_ms()
    result = run(aw)
    return result, aio.ticks_ms() - start_ms


class V1Domain:
    """Stands for a cgroup v1 MemcgDomain (only kind and path are looked at)."""

    kind = "memcg-v1"
    name = path = "/sys/fs/cgroup/memory/nowhere"

    def read(self, t_ms: int, event: str = "poll") -> Reading:
        return Reading(t_ms, 1024, 512, event=event)


# -- psi ---------------------------------------------------------------------

def test_psi_reason_names_the_errno() -> None:
    try:
        source, _ = choose("psi", SystemDomain(), SourceOptions())
    except SourceUnavailable as e:
        reason = str(e)
    else:  # a kernel that accepts triggers: nothing to check here
        source.close()
        pytest.skip("this kernel accepts PSI triggers")
    assert reason.startswith("psi: /proc/pressure/memory: ")
    # Measured on the build machine: readable file, trigger write -> EINVAL.
    if os.path.exists("/proc/pressure/memory"):
        assert "kernel rejected trigger (EINVAL)" in reason, reason


def test_psi_missing_file_and_v1_memcg(tmp_path: Any) -> None:
    with pytest.raises(SourceUnavailable, match=r"psi: cannot open .*ENOENT.*CONFIG_PSI"):
        PsiSource(SystemDomain(str(tmp_path)), SourceOptions()).open()
    with pytest.raises(SourceUnavailable, match="psi: a memcg-v1 domain has no memory.pressure"):
        PsiSource(V1Domain(), SourceOptions()).open()


# -- mem_notify, against a FIFO standing in for /dev/mem_notify ---------------

@pytest.fixture
def fifo_source(tmp_path: Any) -> Any:
    """Yield (source, writer fd): a MemNotifySource on a FIFO.  A FIFO polls
    like the device (POLLIN when "memory is low" = data written); unlike the
    device it has data, which the source's drain reads away.  The writer is
    kept open: a FIFO whose writer closed reports POLLHUP for ever."""
    path = os.path.join(str(tmp_path), "mem_notify")
    os.mkfifo(path)
    source = MemNotifySource(SystemDomain(), SourceOptions(device_path=path))
    source.open()
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    yield source, writer
    source.close()
    os.close(writer)


def test_mem_notify_wakes_on_pollin_and_drains(fifo_source: Any) -> None:
    source, writer = fifo_source
    assert source.event_driven
    assert timed(source.wait(150))[0] is None  # calm: nothing to read
    os.write(writer, b"x" * 100)
    event, elapsed_ms = timed(source.wait(2000))
    assert event == "mem_notify" and elapsed_ms < 500
    event, elapsed_ms = timed(source.wait(300))  # drained: the wake was consumed
    assert event is None and elapsed_ms >= 250


def test_mem_notify_keeps_a_gap_after_each_wake(fifo_source: Any) -> None:
    source, writer = fifo_source

    async def two_wakes() -> List[int]:
        os.write(writer, b"x")
        await source.wait(1000)
        first_ms = aio.ticks_ms()
        os.write(writer, b"x")  # ready again at once: level-triggered device
        await source.wait(1000)
        return [first_ms, aio.ticks_ms()]

    first_ms, second_ms = run(two_wakes())
    assert second_ms - first_ms >= mem_notify.MIN_GAP_MS - 5


def test_mem_notify_unavailable_reasons(tmp_path: Any) -> None:
    missing = os.path.join(str(tmp_path), "nope")
    with pytest.raises(SourceUnavailable, match="mem_notify: .*nope does not exist"):
        MemNotifySource(SystemDomain(), SourceOptions(device_path=missing)).open()
    plain = os.path.join(str(tmp_path), "plain")
    open(plain, "w").close()
    with pytest.raises(SourceUnavailable, match="is not a character device"):
        MemNotifySource(SystemDomain(), SourceOptions(device_path=plain)).open()


# -- cgroup2 -----------------------------------------------------------------

def test_cgroup2_needs_a_v2_memcg() -> None:
    with pytest.raises(SourceUnavailable, match="cgroup2: needs a cgroup v2 memcg.*system"):
        Cgroup2Source(SystemDomain(), SourceOptions()).open()


def test_cgroup2_reports_the_most_severe_counter_that_grew() -> None:
    before = {"low": 0, "high": 3, "max": 7, "oom": 0, "oom_kill": 0}
    assert grown_event(before, dict(before)) is None
    assert grown_event(before, dict(before, high=4)) == "events:high"
    assert grown_event(before, dict(before, high=9, max=8)) == "events:max"
    assert grown_event(before, dict(before, max=8, oom=1, oom_kill=1)) == "events:oom_kill"


# -- poll --------------------------------------------------------------------

def test_poll_sleeps_and_returns_none() -> None:
    source = PollSource(SystemDomain(), SourceOptions(calm_interval_ms=100))
    source.open()
    assert not source.event_driven
    event, elapsed_ms = timed(source.wait(200))
    assert event is None and 190 <= elapsed_ms < 1000
    event, elapsed_ms = timed(source.wait(None))  # the calm interval
    assert event is None and 90 <= elapsed_ms < 1000
    assert source.read(aio.ticks_ms(), "poll").total_kib > 0


def test_poll_unavailable_when_the_domain_is_unreadable(tmp_path: Any) -> None:
    with pytest.raises(SourceUnavailable, match="poll: cannot read system"):
        PollSource(SystemDomain(str(tmp_path)), SourceOptions()).open()


# -- trace -------------------------------------------------------------------

def write_trace(path: str, lines: List[Any]) -> str:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def test_trace_plays_in_scaled_real_time(tmp_path: Any) -> None:
    path = write_trace(os.path.join(str(tmp_path), "t.jsonl"), [
        {"memagent_trace": 1, "domain": "system", "source": "cgroup1"},
        {"t_ms": 5000, "total_kib": 1000, "avail_kib": 900},
        {"t_ms": 5200, "total_kib": 1000, "avail_kib": 500, "event": "threshold"},
        {"t_ms": 5600, "total_kib": 1000, "avail_kib": 90, "event": "vmpressure:critical"},
    ])
    source, skipped = choose("trace", SystemDomain(),
                             SourceOptions(trace_path=path, trace_speed=2.0))
    assert source.name == "trace" and source.event_driven and skipped == []

    async def play() -> List[Any]:
        start_ms = aio.ticks_ms()
        out: List[Any] = []
        assert await source.wait(20) == "poll"  # the first reading is due at once
        out.append((aio.ticks_ms() - start_ms, source.read(aio.ticks_ms(), "poll")))
        assert await source.wait(20) is None  # the next is due 100 ms later
        for expected in ("threshold", "vmpressure:critical"):
            event = await source.wait(None)
            assert event == expected
            out.append((aio.ticks_ms() - start_ms, source.read(aio.ticks_ms(), event)))
        with pytest.raises(EOFError):
            await source.wait(None)
        return out

    played = run(play())
    times_ms = [t for t, _ in played]
    assert times_ms[0] < 50
    assert 90 <= times_ms[1] < 300 and 290 <= times_ms[2] < 600  # 200 and 600 ms / 2
    last = played[-1][1]
    assert last.avail_kib == 90 and last.event == "vmpressure:critical"
    assert abs(last.t_ms - aio.ticks_ms()) < 1000  # shifted to now, not 5600


def test_trace_bad_line_is_named(tmp_path: Any) -> None:
    path = write_trace(os.path.join(str(tmp_path), "bad.jsonl"), [
        {"t_ms": 0, "total_kib": 1000, "avail_kib": 900},
        "",
        "{not json",
    ])
    with pytest.raises(SourceUnavailable, match=r"trace: .*bad.jsonl: line 3: not JSON"):
        choose("trace", SystemDomain(), SourceOptions(trace_path=path))
    write_trace(path, [{"t_ms": 0, "total_kib": 1000}])
    with pytest.raises(SourceUnavailable, match="line 1: avail_kib must be"):
        choose("trace", SystemDomain(), SourceOptions(trace_path=path))


def test_trace_needs_a_file_and_a_positive_speed(tmp_path: Any) -> None:
    with pytest.raises(SourceUnavailable, match="trace: no trace file given"):
        choose("trace", SystemDomain(), SourceOptions())
    path = write_trace(os.path.join(str(tmp_path), "t.jsonl"),
                       [{"t_ms": 0, "total_kib": 1, "avail_kib": 1}])
    with pytest.raises(SourceUnavailable, match="trace_speed must be > 0"):
        choose("trace", SystemDomain(), SourceOptions(trace_path=path, trace_speed=0))


# -- choose ------------------------------------------------------------------

def test_choose_unknown_and_forced_names() -> None:
    with pytest.raises(SourceUnavailable, match="unknown source 'psy'.*mem_notify, psi"):
        choose("psy", SystemDomain(), SourceOptions())
    with pytest.raises(SourceUnavailable, match="mem_notify: /nonexistent/mem_notify does not"):
        choose("mem_notify", SystemDomain(),
               SourceOptions(device_path="/nonexistent/mem_notify"))


def test_choose_auto_falls_back_to_poll_without_kernel_events() -> None:
    # A v1 memcg path that does not exist: only the poller (reading via the domain) opens.
    domain = V1Domain()
    source, skipped = choose("auto", domain, SourceOptions(device_path="/nonexistent"))
    assert source.name == "poll"
    assert [name for name, _ in skipped] == ["mem_notify", "psi", "cgroup2", "cgroup1"]
    assert all(reason.startswith(name + ": ") for name, reason in skipped)


def test_choose_auto_fails_with_every_reason_when_nothing_opens(tmp_path: Any) -> None:
    domain = SystemDomain(str(tmp_path))  # no meminfo: even the poller cannot run
    with pytest.raises(SourceUnavailable, match="no source can run: mem_notify: .*poll: "):
        choose("auto", domain, SourceOptions(device_path="/nonexistent"))
