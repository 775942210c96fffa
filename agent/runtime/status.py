"""The status view: the agent's state for ``memagent status`` (the control
socket's ``status`` reply, and the CLI's text).

Built from the parts' own views at each request; nothing is cached.
"""

from .. import __version__, aio
from ..aio import unix
from ..core.levels import level_name
from ..ipc.registry import AppRegistry
from ..sense.presence import Activity
from .dispatch import Dispatcher
from .eventlog import EventLog
from .sensing import Sensor

try:
    from typing import Any, Dict
except ImportError:  # MicroPython
    pass


def status_view(sensor: Sensor, registry: AppRegistry, presence: Activity, events: EventLog,
                dispatcher: Dispatcher, started_ms: int) -> "Dict[str, Any]":
    """Return: the agent's state, JSON-ready: version, pid, uptime, the
    source (and why others could not run), the recent notifications and
    actions, the apps, user presence, the plugins, and once sensing runs the
    level, thresholds, newest reading, time left and fill rate."""
    now_ms = aio.ticks_ms()
    source = sensor.source
    out: "Dict[str, Any]" = {
        "version": __version__, "pid": unix.getpid(), "uptime_s": (now_ms - started_ms) // 1000,
        "source": source.name if source else None, "unavailable": dict(sensor.skipped),
        "read_errors": sensor.read_errors, "recent": list(events.recent),
        "actions": list(events.actions), "apps": registry.snapshot(),
        "activity": presence.as_dict(now_ms), "plugins": dispatcher.describe()}
    m = sensor.monitor
    if m is not None:
        out.update({"level": level_name(m.level), "thresholds": m.thresholds.as_dict(),
                    "reading": m.last.to_dict() if m.last else None,
                    "eta_ms": m.eta_ms, "fill_kib_s": m.rate.kib_per_s(),
                    "readings": m.readings, "notifications": m.notifications})
    return out
