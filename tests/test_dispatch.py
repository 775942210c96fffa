"""The dispatcher: hooks called by keyword, isolation, timeouts, coalescing."""

from typing import Any, List

from memagent import aio
from memagent.core.levels import CRITICAL, LOW, NORMAL, Notification
from memagent.runtime.dispatch import Dispatcher


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
    assert rec.calls == [("change", CRITICAL, LOW), ("pressure", CRITICAL)]
    assert d.coalesced == 2
