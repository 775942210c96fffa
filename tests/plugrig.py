"""A real runtime for a plugin's unit tests, without an Agent.

The parts are the agent's own, wired the way the agent wires them: a Sensor
that reads a /proc tree of real captures (tests/data/, MemAvailable and PSI
rewritten where a test needs a level) or a real memcg, a Dispatcher, an
EventLog, user presence, and an AppRegistry served by a real ControlServer
on a socket in the test's directory, so that apps are real client
connections.  A plugin gets its Services from :meth:`Rig.services`, as
``on_start`` gives them.
"""

import io
import os
import re
from typing import Any, List, Optional

from memagent import aio
from memagent.core.config import parse_config
from memagent.ipc.control import ControlServer
from memagent.ipc.registry import AppRegistry
from memagent.runtime.dispatch import Dispatcher
from memagent.runtime.eventlog import EventLog
from memagent.runtime.hooks import config_schemas, plugin_name
from memagent.runtime.sensing import Sensor
from memagent.runtime.services import AppView, Services
from memagent.sense.footprint import footprint_kib
from memagent.sense.presence import Activity

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class ProcTree:
    """A /proc of captured files under ``root``: meminfo and pressure/memory
    from one capture of the ARM guest (tests/data/qemu-arm/, e.g. tag
    "128m-idle"), with MemAvailable or PSI full avg10 rewritten on demand."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "pressure"), exist_ok=True)

    def load(self, tag: str = "128m-idle", avail_kib: Optional[int] = None,
             psi_full: Optional[float] = None) -> None:
        """Write the capture ``tag``'s files, rewritten as asked."""
        with open(os.path.join(DATA, "qemu-arm", "meminfo." + tag)) as f:
            meminfo = f.read()
        if avail_kib is not None:
            meminfo = re.sub(r"(?m)^MemAvailable:\s+\d+", "MemAvailable:   %d" % avail_kib,
                             meminfo)
        with open(os.path.join(DATA, "qemu-arm", "pressure-memory." + tag)) as f:
            pressure = f.read()
        if psi_full is not None:
            pressure = re.sub(r"(?m)^full avg10=[0-9.]+", "full avg10=%.2f" % psi_full, pressure)
        self._write("meminfo", meminfo)
        self._write("pressure/memory", pressure)

    def show(self, pid: int) -> None:
        """Make the real process ``pid`` visible in the tree (a symlink to
        its /proc directory): the only processes a scan of the tree finds."""
        os.symlink("/proc/%d" % pid, os.path.join(self.root, str(pid)))

    def total_kib(self) -> int:
        """Return: MemTotal of the tree's meminfo."""
        with open(os.path.join(self.root, "meminfo")) as f:
            return int(re.search(r"(?m)^MemTotal:\s+(\d+)", f.read()).group(1))  # type: ignore

    def _write(self, name: str, text: str) -> None:
        path = os.path.join(self.root, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


class Rig:
    """The runtime of a plugin test (see the module docstring).  ``conf``:
    more config text; ``memcg``: a memcg directory to watch instead of the
    tree.  Use inside a running loop: ``await rig.start()``, then
    ``await rig.close()``."""

    def __init__(self, tmp: str, conf: str = "", memcg: Optional[str] = None,
                 plugins: "Optional[List[Any]]" = None) -> None:
        self.tmp = tmp
        self.tree = ProcTree(os.path.join(tmp, "proc"))
        self.tree.load()
        self.socket = os.path.join(tmp, "ctl.sock")
        domain = "memcg = %s\n" % memcg if memcg else \
            "proc_root = %s\nsource = poll\n" % self.tree.root
        self.config = parse_config("[agent]\n%ssocket = %s\n%s" % (domain, self.socket, conf),
                                   "test.conf")
        self.plugins = list(plugins or [])
        self.config.claim(config_schemas(self.plugins))
        self.events_out = io.StringIO()
        self.events = EventLog(self.events_out)
        self.presence = Activity(backlight="")
        self.dispatcher = Dispatcher(self.plugins,
                                     self.config.get_int("plugins", "hook_timeout_ms"))
        proc_root = self.config.get_str("agent", "proc_root")
        self.registry = AppRegistry(
            ui_uid=self.config.get_int("apps", "ui_uid"),
            max_apps=self.config.get_int("apps", "max_apps"), proc_root=proc_root,
            measure=lambda process: footprint_kib(process.pid, proc_root, process=process),
            on_change=self._app_changed)
        self.sensor = Sensor(self.config, self.dispatcher.submit, self.events.record_action,
                             lambda code: None)
        self.dispatcher.views = [self.events.note, self.registry.broadcast_level]
        self.server = ControlServer(self.socket, lambda: {}, registry=self.registry)

    def _app_changed(self, what: str, app: Any) -> None:
        hook = "on_app_registered" if what == "registered" else "on_app_gone"
        self.dispatcher.post(hook, app=AppView(app))

    def services(self, plugin: Any) -> Services:
        """Return: ``plugin``'s Services, as on_start gets them."""
        return Services(plugin_name(plugin), lambda: self.config, self.sensor, self.registry,
                        self.presence, self.events, self.dispatcher)

    async def start(self) -> None:
        """The first reading, the control socket, the plugins' on_start."""
        self.sensor.open()
        self.sensor.start()
        await self.server.start()
        await self.dispatcher.start(lambda p: {"services": self.services(p)})

    def set_level(self, tag: str = "128m-idle", avail_kib: Optional[int] = None,
                  psi_full: Optional[float] = None) -> Any:
        """Rewrite the tree and read it now.  Returns: the reading."""
        self.tree.load(tag, avail_kib, psi_full)
        return self.sensor.read_now("test")

    async def flush(self) -> None:
        """Run the dispatcher until nothing waits for the plugins: the
        pending notification and the queued events reach their hooks."""
        task = aio.create_task(self.dispatcher.run())
        await wait_until(lambda: self.dispatcher.backlog == 0)
        await aio.sleep_ms(0)
        await aio.cancel_and_wait(task)

    def actions(self, kind: Optional[str] = None) -> "List[Any]":
        """Return: the event log's actions (of ``kind``)."""
        return [a for a in self.events.actions if kind is None or a["action"] == kind]

    async def close(self) -> None:
        """on_stop, then the socket and the sensor."""
        await self.dispatcher.broadcast("on_stop")
        await self.server.close()
        await self.sensor.stop()
        self.sensor.close()


async def wait_until(cond: Any, timeout_ms: int = 5000) -> bool:
    """Return: True once ``cond()`` holds, False after ``timeout_ms``."""
    for _ in range(max(timeout_ms // 10, 1)):
        if cond():
            return True
        await aio.sleep_ms(10)
    return bool(cond())
