"""The sensing loop (memagent.runtime.sensing): switching the running source
on the test's own memcg, with a FIFO standing in for /dev/mem_notify."""

import os
from typing import Any, Optional, Tuple

import pytest

from memagent import aio
from memagent.core.config import parse_config
from memagent.demo.memcg import Memcg
from memagent.runtime.sensing import Sensor, poll_interval_ms


def test_poll_interval_follows_the_headroom() -> None:
    # half the time the fastest expected fill takes to reach LOW, 100 ms..max
    assert poll_interval_ms(120000, 20000, 20480, 10000) == 2441
    assert poll_interval_ms(20500, 20000, 20480, 10000) == 100
    assert poll_interval_ms(10 ** 7, 20000, 20480, 10000) == 10000
    assert poll_interval_ms(50000, 20000, 0, 10000) == 10000  # 0 KiB/s: the kernel decides


@pytest.mark.memcg
@pytest.mark.parametrize("spins", range(6))
def test_a_switch_cancels_the_sensing_task_even_as_its_device_wakes(
        memcg: Memcg, tmp_path: Any, spins: int) -> None:
    """The device becomes readable and a switch comes in the same moment (in
    the guest: the CUSE device dies, its fd wakes, its "remove" switches).
    The old sensing task must end cancelled, not read its closed source.
    Measured on CPython 3.11 before memagent.aio stopped using wait_for in
    FdWatch: with 1-3 loop turns between the wake and the switch, the old
    task ran on and died with AssertionError (fd None) in the source."""
    fifo = os.path.join(str(tmp_path), "mem_notify")
    os.mkfifo(fifo)
    config = parse_config("[agent]\nmemcg = %s\nsource = mem_notify\n[sources]\n"
                          "device_path = %s\n" % (memcg.path, fifo))
    actions = []
    sensor = Sensor(config, lambda note: None, lambda *a, **kw: actions.append(kw),
                    lambda code: None)

    async def main() -> "Tuple[bool, bool, Optional[str]]":
        sensor.open()
        sensor.start()
        await aio.sleep_ms(50)  # the sensing task waits on the FIFO
        old = sensor.task
        assert old is not None
        writer = os.open(fifo, os.O_RDWR)
        os.write(writer, b"x")
        for _ in range(spins):
            await aio.sleep_ms(0)
        assert sensor.switch_source("cgroup1")
        await aio.sleep_ms(100)
        os.close(writer)
        await sensor.stop()
        sensor.close()
        error = None if not old.done() or old.cancelled() else repr(old.exception())
        return old.done(), old.cancelled(), error

    assert aio.run(main()) == (True, True, None)
    assert actions == [{"source": "cgroup1", "was": "mem_notify", "asked": "cgroup1"}]
