"""What the agent offers its plugins: every call of the services object
(docs/plugins.md), on real parts: readings from captured /proc trees, apps
that are real client connections to a real control socket, the event log,
the sources; the hooks the runtime calls back (on_app_registered,
on_app_gone, on_device), results passed between plugins, and the
deprecated ``on_start(agent=...)`` of a real agent."""

import json
import logging
import os
import re
from typing import Any, Dict, List, Optional

import pytest
from plugrig import Rig, wait_until

from memagent import aio
from memagent.client import AsyncClient
from memagent.core.config import Key, load_config, parse_config
from memagent.core.levels import CRITICAL, LOW, NORMAL, Notification
from memagent.demo.memcg import Memcg
from memagent.runtime.agent import Agent
from memagent.runtime.services import AppView, Services

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Probe:
    """A plugin with settings of its own that records what it is given."""

    name = "probe"
    config_schema = {"color": Key("str", "red"), "size": Key("int", "3", low=1)}

    def __init__(self) -> None:
        self.services: Optional[Services] = None
        self.seen: List[Any] = []

    async def on_start(self, services: Services, **kwargs: Any) -> None:
        self.services = services

    async def on_app_registered(self, app: AppView, **kwargs: Any) -> None:
        self.seen.append(("registered", app.name, app.cls))

    async def on_app_gone(self, app: AppView, **kwargs: Any) -> None:
        self.seen.append(("gone", app.name))

    async def on_device(self, action: str, devnode: str, **kwargs: Any) -> None:
        self.seen.append(("device", action, devnode))

    async def on_pressure(self, level: int, results: Dict[str, Any], **kwargs: Any) -> Any:
        self.seen.append(("pressure", level, dict(results)))
        return {"freed_kib": 64, "t_ms": aio.ticks_ms()}


class Second(Probe):
    name = "second"
    config_schema = {}  # type: ignore[assignment]


def run(rig: Rig, body: Any) -> Any:
    """Start the rig, run ``body(services)``, close.  Returns: its result."""
    probe = rig.plugins[0]

    async def main() -> Any:
        await rig.start()
        try:
            return await body(probe.services)
        finally:
            await rig.close()

    return aio.run(main())


# -- configuration and the domain ------------------------------------------------------

def test_config_is_the_plugins_own_section(tmp_path: Any) -> None:
    rig = Rig(str(tmp_path), "[plugins]\nhook_timeout_ms = 1500\n[probe]\ncolor = blue\n",
              plugins=[Probe()])

    async def body(services: Services) -> Any:
        return (services.name, services.config.get_str("color"), services.config.get_int("size"),
                services.proc_root, services.memcg, services.hook_timeout_ms)

    assert run(rig, body) == ("probe", "blue", 3, rig.tree.root, None, 1500)


# -- memory ------------------------------------------------------------------------------

def test_level_reading_thresholds_and_remeasure(tmp_path: Any) -> None:
    rig = Rig(str(tmp_path), plugins=[Probe()])

    async def body(services: Services) -> Any:
        assert services.level == NORMAL and services.reading is not None
        first = services.reading.avail_kib
        th = services.thresholds
        assert th is not None and th.low_kib == rig.tree.total_kib() // 5
        rig.tree.load("128m-pressure", avail_kib=15000, psi_full=12.5)  # a real capture, LOW
        reading = services.remeasure("probe")
        assert reading is not None and reading is services.reading
        return first, reading.avail_kib, reading.psi_full_avg10, reading.event, services.level

    assert run(rig, body) == (98100, 15000, 12.5, "probe", LOW)
    assert [n["level"] for n in rig.events.recent] == ["LOW"]  # a view saw it at once


def test_presence_is_the_agents(tmp_path: Any) -> None:
    rig = Rig(str(tmp_path), plugins=[Probe()])

    async def body(services: Services) -> Any:
        services.presence.start_feeding("probe", aio.ticks_ms())
        services.presence.note_input(aio.ticks_ms())
        return services.presence is rig.presence, rig.presence.state(aio.ticks_ms())

    assert run(rig, body) == (True, "active")


# -- apps: real client connections ---------------------------------------------------------

async def request(path: str, obj: Dict[str, Any]) -> Dict[str, Any]:
    """Send one request on a new connection.  Returns: the reply."""
    reader, writer = await aio.open_unix_connection(path)
    writer.write((json.dumps(obj) + "\n").encode())
    reply: Dict[str, Any] = json.loads(await reader.readline())
    writer.close()
    await writer.wait_closed()
    return reply


def test_apps_trim_and_the_foreground(tmp_path: Any) -> None:
    asked: List[Any] = []
    # this test's uid is the UI shell's: trusted to say which pid is in front
    rig = Rig(str(tmp_path), "[apps]\nui_uid = %d\n" % os.getuid(), plugins=[Probe()])
    rig.tree.show(os.getpid())  # the apps are this process: its identity and footprint

    def on_trim(level: str, target_kib: int) -> int:
        asked.append((level, target_kib))
        return 512

    async def body(services: Services) -> Any:
        client = AsyncClient("cachey", "cached", 4096, on_trim=on_trim, socket_path=rig.socket)
        task = aio.create_task(client.run())
        await wait_until(lambda: len(services.apps()) == 1)
        (app,) = services.apps()
        result = await services.trim(app, LOW, 1024, 500)
        assert (await request(rig.socket, {"cmd": "foreground", "pid": 4242}))["ok"]
        client.stop()
        await aio.cancel_and_wait(task)
        await wait_until(lambda: not services.apps())
        return app, result, services.foreground_pid

    app, result, fg = run(rig, body)
    assert (app.name, app.cls, app.estimate_kib, app.pid) == ("cachey", "cached", 4096,
                                                             os.getpid())
    assert app.started is not None and app.registered_ms <= app.last_active_ms
    assert (result.outcome, result.claimed_kib, result.target_kib) == ("answered", 512, 1024)
    assert result.before_kib is not None  # audited against this process's footprint
    assert asked == [("LOW", 1024)] and fg == 4242


def test_apps_coming_and_going_reach_the_hooks(tmp_path: Any) -> None:
    probe = Probe()
    rig = Rig(str(tmp_path), plugins=[probe])

    async def body(services: Services) -> Any:
        client = AsyncClient("visitor", "service", socket_path=rig.socket)
        await client.connect()
        await rig.flush()
        await client.close()
        await wait_until(lambda: not services.apps())
        await rig.flush()
        return probe.seen

    assert run(rig, body) == [("registered", "visitor", "service"), ("gone", "visitor")]


# -- the event log ------------------------------------------------------------------------

def test_record_action_and_last_action(tmp_path: Any) -> None:
    rig = Rig(str(tmp_path), plugins=[Probe()])

    async def body(services: Services) -> Any:
        assert services.last_action is None
        entry = services.record_action("kill", pid=4242, name="browser", freed_kib=1024)
        for i in range(40):  # bounded: only the newest are kept
            services.record_action("noise", i=i)
        return entry, services.last_action

    entry, last = run(rig, body)
    assert entry["action"] == "kill" and entry["freed_kib"] == 1024 and "wall" in entry
    assert last is not None and last["i"] == 39 and len(rig.events.actions) == 16
    logged = [json.loads(line) for line in rig.events_out.getvalue().splitlines()]
    assert [e["pid"] for e in logged if e.get("action") == "kill"] == [4242]


# -- sources and devices ---------------------------------------------------------------------

def test_sources_switch_and_refusal(tmp_path: Any) -> None:
    fifo = os.path.join(str(tmp_path), "mem_notify")
    os.mkfifo(fifo)
    rig = Rig(str(tmp_path), "[sources]\ndevice_path = %s\n" % fifo, plugins=[Probe()])

    async def body(services: Services) -> Any:
        seen = [(services.source, services.configured_source, services.device_path,
                 services.source_devnum())]
        assert services.switch_source("cgroup2") is False  # no v2 memcg: the source stays
        assert services.switch_source("mem_notify") is True
        seen.append((services.source, services.source_devnum()))
        assert services.switch_source("mem_notify") is True  # the running one: a no-op
        wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(wfd, b"x")  # the new source wakes the agent
        await wait_until(lambda: services.reading is not None and
                         services.reading.event == "mem_notify")
        os.close(wfd)
        seen.append(services.reading.event if services.reading else None)
        return seen

    assert run(rig, body) == [("poll", "poll", fifo, None), ("mem_notify", 0), "mem_notify"]
    assert [(a["was"], a["source"]) for a in rig.actions("source")] == [("poll", "mem_notify")]


def test_a_served_device_is_never_the_source(tmp_path: Any) -> None:
    fifo = os.path.join(str(tmp_path), "mem_notify")
    os.mkfifo(fifo)
    rig = Rig(str(tmp_path), "[sources]\ndevice_path = %s\n" % fifo, plugins=[Probe()])

    async def body(services: Services) -> Any:
        assert services.switch_source("mem_notify") is True
        services.serve_device(fifo)  # it runs on it: it switches away at once
        seen = [services.source, services.serves_device(fifo)]
        seen.append(services.switch_source("mem_notify"))  # refused while served
        services.unserve_device(fifo)
        seen += [services.serves_device(fifo), services.switch_source("mem_notify")]
        server = services.cuse_device(object(), "mem_notify_test", 0o660, "",
                                      cuse_path=os.path.join(str(tmp_path), "no-cuse"))
        try:
            await server.start()
        except Exception as e:
            seen.append(str(e))
        seen.append(services.end_agent(1, "a test"))  # the rig cannot be stopped from here
        with pytest.raises(Exception, match="not in"):
            services.cuse_device(object(), "x", 0o600, "no-such-group-here")
        return seen

    seen = run(rig, body)
    assert seen[0] not in ("mem_notify", None) and seen[1:5] == [True, False, False, True]
    assert "no-cuse" in seen[5] and "modprobe cuse" in seen[5] and seen[6] is False


def test_device_events_reach_every_plugin(tmp_path: Any) -> None:
    probe, second = Probe(), Second()
    rig = Rig(str(tmp_path), plugins=[probe, second])

    async def body(services: Services) -> Any:
        services.device_event("add", "input", "input/event7", 1234)
        await rig.flush()
        return probe.seen, second.seen

    assert run(rig, body) == ([("device", "add", "input/event7")],
                              [("device", "add", "input/event7")])


def test_dbus_is_the_agents_client(tmp_path: Any) -> None:
    rig = Rig(str(tmp_path), plugins=[Probe()])

    async def body(services: Services) -> Any:
        wire = services.dbus()
        return wire.__name__, callable(wire.connect), wire.bus_address("unix:path=/x")

    assert run(rig, body) == ("memagent.ipc.dbus", True, "unix:path=/x")


# -- the dispatcher: results within a notification ----------------------------------------

def test_later_plugins_see_the_earlier_ones_results(tmp_path: Any) -> None:
    probe, second = Probe(), Second()
    rig = Rig(str(tmp_path), plugins=[probe, second])

    async def body(services: Services) -> Any:
        note = Notification(0, CRITICAL, NORMAL, "avail", 100, 1000, None, 900)
        return await rig.dispatcher.dispatch(note)

    results = run(rig, body)
    assert probe.seen == [("pressure", CRITICAL, {})]
    (kind, level, given), = second.seen
    assert (kind, level, list(given)) == ("pressure", CRITICAL, ["probe"])
    assert given["probe"]["freed_kib"] == 64 and set(results) == {"probe", "second"}


# -- the documentation names exactly what there is ---------------------------------------------

def test_docs_list_every_service_and_this_file_calls_each() -> None:
    with open(os.path.join(ROOT, "docs", "plugins.md")) as f:
        text = f.read()
    section = text.split("## What the agent offers a plugin", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `services\.(\w+)", section, re.M))
    public = {n for n in dir(Services) if not n.startswith("_")}
    assert documented == public, (documented ^ public)
    with open(os.path.abspath(__file__)) as f:
        here = f.read()
    untested = [n for n in sorted(public) if "services.%s" % n not in here]
    assert untested == []


# -- the deprecated on_start(agent=...) of a real agent ----------------------------------------

class OldStyle:
    """A vendor plugin of the previous release: keeps the agent."""

    name = "oldstyle"

    def __init__(self) -> None:
        self.agent: Any = None
        self.monitored: Optional[int] = None

    async def on_start(self, agent: Any = None, **kwargs: Any) -> None:
        self.agent = agent
        self.monitored = agent.monitor.level
        agent.record_action("old", plugin=self.name)


@pytest.mark.memcg
def test_the_agent_argument_still_works_and_warns_once(memcg: Memcg, caplog: Any) -> None:
    plugin = OldStyle()
    agent = Agent(parse_config("[agent]\nmemcg = %s\nsocket =\n" % memcg.path),
                  plugins=[plugin], control=False)

    async def main() -> Any:
        task = aio.create_task(agent.run())
        await wait_until(lambda: plugin.monitored is not None)
        agent.stop()
        return await aio.wait_for_ms(task, 10000)

    with caplog.at_level(logging.WARNING), pytest.warns(DeprecationWarning, match="oldstyle"):
        assert aio.run(main()) == 0
    assert plugin.monitored == NORMAL and agent.actions[-1]["action"] == "old"
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warned == ["plugin oldstyle: on_start(agent=...) is deprecated and goes in memagent "
                      "0.3: use on_start(services=...) (docs/plugins.md); it used agent.monitor"]


def test_a_reload_keeps_the_command_line(tmp_path: Any) -> None:
    # `memagent run --memcg X` and a SIGHUP: the file has no memcg, and the
    # plugins (kill_background picks victims in services.memcg) and the source
    # fallback must go on seeing X, not the whole system.
    conf = os.path.join(str(tmp_path), "memagent.conf")
    with open(conf, "w") as f:
        f.write("[levels]\nlow_pct = 20\n")
    config = load_config(conf)
    config.set("agent", "memcg", "/sys/fs/cgroup/memory/handset")  # as cli.py does
    agent = Agent(config, config_path=conf, plugins=[], control=False)
    with open(conf, "w") as f:
        f.write("[levels]\nlow_pct = 30\n")
    agent.reload()
    services = agent.services(OldStyle())
    assert agent.config.get_float("levels", "low_pct") == 30.0
    assert services.memcg == "/sys/fs/cgroup/memory/handset"
