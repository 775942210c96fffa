"""What the agent offers its plugins: the event log (record_action),
re-measuring (read_now), switching sources, and the plugin and activity views
in status.  A real Agent runs in-process on the test's own memcg."""

import io
import json
import os
from typing import Any, Dict, List, Optional

import pytest

from memagent import aio
from memagent.core.config import parse_config
from memagent.demo.memcg import Memcg
from memagent.runtime.agent import Agent

pytestmark = pytest.mark.memcg


class Probe:
    """A plugin that keeps the agent and reports a state of its own."""

    name = "probe"
    unavailable: "Optional[str]" = None

    def __init__(self) -> None:
        self.agent: "Optional[Agent]" = None
        self.started = aio.Event()

    async def on_start(self, agent: "Optional[Agent]" = None, **kwargs: Any) -> None:
        self.agent = agent
        self.started.set()

    def status(self) -> "Dict[str, Any]":
        return {"seen": 1}


class Broken:
    """A plugin whose status view raises: status must still answer."""

    name = "broken"
    unavailable = "needs a thing this machine lacks"

    async def on_stop(self, **kwargs: Any) -> None:
        return None

    def status(self) -> "Dict[str, Any]":
        raise RuntimeError("boom")


def make_agent(group: Memcg, extra: str = "", events: "Optional[io.StringIO]" = None,
               plugins: "Optional[List[Any]]" = None) -> Agent:
    text = "[agent]\nmemcg = %s\nsocket =\n%s" % (group.path, extra)
    return Agent(parse_config(text), events_out=events, plugins=plugins, control=False)


async def running(agent: Agent, probe: Probe) -> "Any":
    task = aio.create_task(agent.run())
    await aio.wait_for_ms(probe.started.wait(), 10000)
    return task


async def stop(agent: Agent, task: "Any") -> int:
    agent.stop()
    code: int = await aio.wait_for_ms(task, 10000)
    return code


def test_record_action_reaches_status_events_and_last_action(memcg: Memcg) -> None:
    out = io.StringIO()
    probe = Probe()
    agent = make_agent(memcg, events=out, plugins=[probe, Broken()])

    async def main() -> "Dict[str, Any]":
        task = await running(agent, probe)
        assert agent.last_action is None
        entry = agent.record_action("kill", pid=4242, name="browser", freed_kib=1024)
        for i in range(40):  # bounded: only the newest are kept
            agent.record_action("noise", i=i)
        st = agent.status()
        assert await stop(agent, task) == 0
        assert entry["action"] == "kill" and entry["freed_kib"] == 1024
        return st

    st = aio.run(main())
    assert len(st["actions"]) == 16 and st["actions"][-1] == {**st["actions"][-1], "i": 39}
    assert agent.last_action is not None and agent.last_action["i"] == 39
    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    kills = [e for e in logged if e.get("action") == "kill"]
    assert kills and kills[0]["pid"] == 4242 and "wall" in kills[0]
    plugins = {p["name"]: p for p in st["plugins"]}
    assert plugins["probe"] == {"name": "probe", "unavailable": None, "state": {"seen": 1}}
    assert plugins["broken"]["unavailable"] == "needs a thing this machine lacks"
    assert plugins["broken"]["state"] == {"error": "RuntimeError: boom"}
    assert st["activity"]["state"] in ("unknown", "screen-off")


def test_read_now_feeds_the_monitor(memcg: Memcg) -> None:
    probe = Probe()
    agent = make_agent(memcg, plugins=[probe])

    async def main() -> None:
        task = await running(agent, probe)
        assert agent.monitor is not None
        before = agent.monitor.readings
        reading = agent.read_now("test")
        assert reading is not None and reading.event == "test"
        assert reading.total_kib == memcg.limit_kib()
        assert agent.monitor.readings == before + 1
        await stop(agent, task)

    aio.run(main())


def test_switch_source_and_refusal(memcg: Memcg, tmp_path: Any) -> None:
    fifo = os.path.join(str(tmp_path), "mem_notify")
    os.mkfifo(fifo)
    probe = Probe()
    agent = make_agent(memcg, "source = cgroup1\n[sources]\ndevice_path = %s\n" % fifo,
                       plugins=[probe])

    async def main() -> "List[str]":
        task = await running(agent, probe)
        seen = [agent.status()["source"]]
        # psi: this kernel rejects triggers (EINVAL); the running source stays
        assert agent.switch_source("psi") is False
        seen.append(agent.status()["source"])
        assert agent.switch_source("mem_notify") is True
        seen.append(agent.status()["source"])
        # the new source wakes the agent: a write to the stand-in FIFO
        assert agent.monitor is not None
        before = agent.monitor.readings
        wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(wfd, b"x")
        for _ in range(100):
            if agent.monitor.readings > before:
                break
            await aio.sleep_ms(20)
        os.close(wfd)
        assert agent.monitor.last is not None
        seen.append(agent.monitor.last.event)
        assert agent.switch_source("auto") is True  # auto picks mem_notify: a no-op
        assert agent.switch_source("mem_notify") is True  # the running one: a no-op
        seen.append(agent.status()["source"])
        os.unlink(fifo)
        assert agent.switch_source("auto") is True  # the device is gone: the next best
        seen.append(agent.status()["source"])
        await stop(agent, task)
        return seen

    seen = aio.run(main())
    assert seen == ["cgroup1", "cgroup1", "mem_notify", "mem_notify", "mem_notify", "cgroup1"]
    switches = [a for a in agent.actions if a["action"] == "source"]
    assert [(a["was"], a["source"]) for a in switches] == [("cgroup1", "mem_notify"),
                                                           ("mem_notify", "cgroup1")]
