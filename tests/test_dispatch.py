"""The dispatcher: hooks called by keyword, isolation, timeouts, coalescing."""

from typing import Any, List

from memagent import aio
from memagent.core.levels import CRITICAL, LOW, NORMAL, Notification
from memagent.runtime.dispatch import MAX_EVENTS, Dispatcher


def note(level: int, prev: int, t_ms: int = 0) -> Notification:
    return Notification(t_ms, level, prev, "avail", 100, 1000, None)


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.calls: List[Any] = []

    async def on_level_change(self, level: int, prev_level: int, **_: Any) -> None:
        self.calls.append(("change", level, prev_level))

    async def on_pressure(self, level: int, **_: Any) -> None:
        self.calls.append(("pressure", level))


class Raises:
    name = "raises"

    async def on_level_change(self, **_: Any) -> None:
        raise RuntimeError("boom")


class Hangs:
    name = "hangs"

    async def on_pressure(self, **_: Any) -> None:
        await aio.sleep_ms(10**9)


def test_bad_plugins_do_not_stop_the_others(caplog: Any) -> None:
    rec = Recorder()
    d = Dispatcher([Raises(), Hangs(), rec], hook_timeout_ms=100)
    aio.run(d.dispatch(note(LOW, NORMAL)))
    assert rec.calls == [("change", LOW, NORMAL), ("pressure", LOW)]
    assert d.hook_errors == 2
    text = caplog.text
    assert "plugin raises: on_level_change raised RuntimeError: boom" in text
    assert "plugin hangs: on_pressure timed out after 100 ms" in text


def test_reminders_coalesce_but_changes_are_kept() -> None:
    rec = Recorder()
    d = Dispatcher([rec])

    async def main() -> None:
        task = aio.create_task(d.run())
        d.submit(note(LOW, NORMAL, 0))
        d.submit(note(LOW, LOW, 1))  # a reminder does not replace a pending change
        d.submit(note(CRITICAL, LOW, 2))  # a newer change does
        await aio.sleep_ms(50)
        task.cancel()

    aio.run(main())
    # The plugin never saw LOW: its prev_level is the NORMAL it was last given.
    assert rec.calls == [("change", CRITICAL, NORMAL), ("pressure", CRITICAL)]
    assert d.coalesced == 2


class Devices:
    """Hears devices (slowly) but not apps."""

    name = "devices"

    def __init__(self) -> None:
        self.seen: List[str] = []

    async def on_device(self, devnode: str, **_: Any) -> None:
        await aio.sleep_ms(20)
        self.seen.append(devnode)


class Apps:
    name = "apps"

    def __init__(self) -> None:
        self.seen = 0

    async def on_app_registered(self, **_: Any) -> None:
        self.seen += 1


def test_events_no_plugin_hears_are_not_queued() -> None:
    d = Dispatcher([Devices()])
    d.post("on_app_registered", app=None)
    d.post("on_app_gone", app=None)
    assert d.backlog == 0 and d.events_dropped == 0
    d.post("on_device", action="add", subsystem="input", devnode="/dev/input/event0")
    assert d.backlog == 1


def test_an_app_flood_cannot_push_out_a_device_event() -> None:
    # Any local user can connect and hang up in a loop: each is an app event.
    devices, apps = Devices(), Apps()
    d = Dispatcher([devices, apps])
    d.post("on_device", action="add", subsystem="input", devnode="/dev/input/event3")
    for _ in range(MAX_EVENTS * 3):
        d.post("on_app_registered", app=None)
    assert d.backlog == MAX_EVENTS and d.events_dropped == MAX_EVENTS * 2 + 1

    async def main() -> None:
        task = aio.create_task(d.run())
        while d.backlog:
            await aio.sleep_ms(5)
        await aio.cancel_and_wait(task)

    aio.run(main())
    assert devices.seen == ["/dev/input/event3"] and apps.seen == MAX_EVENTS - 1


def test_the_backlog_counts_the_hook_still_running() -> None:
    # What waits includes what runs: a test (or the agent) that waits for
    # backlog 0 does not cut a hook short.
    devices = Devices()
    d = Dispatcher([devices])

    async def main() -> List[int]:
        task = aio.create_task(d.run())
        d.post("on_device", action="add", subsystem="input", devnode="/dev/input/event1")
        seen = []
        while d.backlog:
            seen.append(d.backlog)
            await aio.sleep_ms(2)
        await aio.cancel_and_wait(task)
        return seen

    seen = aio.run(main())
    assert devices.seen == ["/dev/input/event1"] and len(seen) > 3 and set(seen) == {1}


class Swallows:
    """A hook that catches its cancellation and carries on (hostile; not
    GeneratorExit, so that the test process can still collect it: the
    live agent's test swallows that too, tests/test_hostile.py)."""

    name = "swallows"

    def __init__(self) -> None:
        self.ran = 0

    async def on_pressure(self, **_: Any) -> None:
        self.ran += 1
        while True:
            try:
                await aio.sleep_ms(10**6)
            except aio.CancelledError:
                pass


class CancelsItself:
    name = "cancels"

    async def on_pressure(self, **_: Any) -> None:
        raise aio.CancelledError()


def test_a_hook_that_swallows_its_cancellation_is_abandoned_then_disabled() -> None:
    rec, bad = Recorder(), Swallows()
    d = Dispatcher([bad, rec], hook_timeout_ms=50)

    async def main() -> float:
        t0 = aio.ticks_ms()
        for i in range(4):
            await d.dispatch(note(LOW, LOW, i))
        elapsed = aio.ticks_ms() - t0
        await d.stop(budget_ms=100)
        return elapsed

    elapsed_ms = aio.run(main())
    assert elapsed_ms < 1000, elapsed_ms  # one timeout, then skips: never waits on it
    assert bad.ran == 1  # never called again while its abandoned hook runs
    assert rec.calls == [("change", LOW, NORMAL)] + [("pressure", LOW)] * 4
    assert d.hooks_abandoned == 1 and d.hooks_skipped == 2
    assert "ignored its cancellation), 3 times in a row" in d.disabled["swallows"]
    described = {p["name"]: p for p in d.describe()}
    assert described["swallows"]["disabled"] == d.disabled["swallows"]
    assert "disabled" not in described["recorder"]
    assert aio.LEFTOVERS  # it outlived the loop; `memagent run` exits by aio.leave
    aio.LEFTOVERS.clear()  # collectable: it lets GeneratorExit through


class SlowOnce:
    name = "slow_once"

    def __init__(self) -> None:
        self.calls = 0

    async def on_pressure(self, **_: Any) -> str:
        self.calls += 1
        if self.calls in (1, 2, 4, 5):
            await aio.sleep_ms(10**6)  # cancelled at the timeout, as it should be
        return "ok"


def test_strikes_count_in_a_row_and_a_timely_return_clears_them() -> None:
    slow = SlowOnce()
    d = Dispatcher([slow], hook_timeout_ms=30)

    async def main() -> List[Any]:
        return [await d.dispatch(note(CRITICAL, CRITICAL, i)) for i in range(5)]

    results = aio.run(main())
    assert [r.get("slow_once") for r in results] == [None, None, "ok", None, None]
    assert d.hooks_abandoned == 4 and d.hooks_skipped == 0
    assert d.disabled == {}  # 2 in a row, cleared, 2 in a row


def test_a_hook_raising_cancelled_error_does_not_stop_the_dispatcher(caplog: Any) -> None:
    rec = Recorder()
    d = Dispatcher([CancelsItself(), rec], hook_timeout_ms=100)
    aio.run(d.dispatch(note(LOW, NORMAL)))
    assert rec.calls == [("change", LOW, NORMAL), ("pressure", LOW)]
    assert ("plugin cancels: on_pressure raised RuntimeError: it raised CancelledError"
            in caplog.text)


class StopsSlowly:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = False

    async def on_stop(self, **_: Any) -> None:
        await aio.sleep_ms(400)
        self.stopped = True


def test_on_stop_has_one_budget_for_all_plugins(caplog: Any) -> None:
    plugins = [StopsSlowly("a"), StopsSlowly("b"), StopsSlowly("c")]
    d = Dispatcher(plugins, hook_timeout_ms=5000)

    async def main() -> int:
        t0 = aio.ticks_ms()
        await d.stop(budget_ms=600)
        return aio.ticks_ms() - t0

    elapsed_ms = aio.run(main())
    assert 500 <= elapsed_ms < 1500, elapsed_ms
    assert [p.stopped for p in plugins] == [True, False, False]
    assert "plugin b: on_stop timed out after" in caplog.text
    assert "plugin c: on_stop not called: the 600 ms for stopping are spent" in caplog.text


def test_the_dispatcher_cancelled_mid_hook_stops_at_once() -> None:
    d = Dispatcher([Swallows()], hook_timeout_ms=10**6)

    async def main() -> int:
        task = aio.create_task(d.dispatch(note(LOW, NORMAL)))
        await aio.sleep_ms(50)
        t0 = aio.ticks_ms()
        await aio.cancel_and_wait(task)
        return aio.ticks_ms() - t0

    assert aio.run(main()) < 500
    aio.LEFTOVERS.clear()


class Slow:
    """Takes ``delay_ms`` in each hook, long enough for the agent to move on."""

    name = "slow"

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms

    async def on_pressure(self, **_: Any) -> None:
        await aio.sleep_ms(self.delay_ms)


class Watcher:
    """Records each call with the agent's level at that moment."""

    name = "watcher"

    def __init__(self, agent_level: List[int]) -> None:
        self.agent_level = agent_level
        self.calls: List[Any] = []

    async def on_level_change(self, level: int, prev_level: int, notification: Any,
                              **_: Any) -> None:
        assert notification.prev_level == prev_level and notification.level == level
        self.calls.append(("change", prev_level, level, self.agent_level[-1]))

    async def on_pressure(self, level: int, **_: Any) -> None:
        self.calls.append(("pressure", level, self.agent_level[-1]))


def test_each_plugin_sees_a_consistent_level_sequence() -> None:
    # Seen live: plugins got LOW->CRITICAL, then LOW->NORMAL (CRITICAL->LOW
    # never came), and a stale CRITICAL on_pressure after the agent had
    # logged NORMAL.
    agent_level: List[int] = [NORMAL]
    watcher = Watcher(agent_level)
    d = Dispatcher([Slow(100), watcher], hook_timeout_ms=1000)
    d.views = [lambda n: agent_level.append(n.level)]

    async def main() -> None:
        task = aio.create_task(d.run())
        d.submit(note(LOW, NORMAL, 0))
        await aio.sleep_ms(250)  # LOW reaches both
        d.submit(note(CRITICAL, LOW, 1))
        await aio.sleep_ms(20)  # slow is in its CRITICAL on_pressure
        d.submit(note(LOW, CRITICAL, 2))
        d.submit(note(NORMAL, LOW, 3))
        await aio.sleep_ms(400)
        await aio.cancel_and_wait(task)

    aio.run(main())
    changes = [c for c in watcher.calls if c[0] == "change"]
    assert [c[1:3] for c in changes] == [(NORMAL, LOW), (LOW, NORMAL)], watcher.calls
    for prev_change, change in zip(changes, changes[1:]):
        assert change[1] == prev_change[2]  # prev_level is what it was last given
    stale = [c for c in watcher.calls if c[0] == "pressure" and c[1] != c[2]]
    assert not stale, watcher.calls
    assert d.superseded == 1
