"""The status view: the agent's state for ``memagent status`` (the control
socket's ``status`` reply, and the CLI's text).

Built from the parts' own views at each request; nothing is cached.
"""

import time

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
    """Return: the agent's state, JSON-ready, in status schema
    STATUS_SCHEMA (docs/status.md): version, host, pid, uptime, the source
    (why it runs, why others could not), the numbered recent events (and
    the older ``recent`` notifications and ``actions``), the ring of
    available memory and level (``history``), the apps with their RSS,
    user presence, the plugins, and once sensing runs the level and since
    when, thresholds, newest reading, time left and fill rate."""
    from ..core.statusschema import STATUS_SCHEMA  # at the first request, not at start

    now_ms = aio.ticks_ms()
    source = sensor.source
    out: "Dict[str, Any]" = {
        "schema": STATUS_SCHEMA, "version": __version__, "host": unix.hostname(),
        "wall": round(time.time(), 3), "running": True,
        "pid": unix.getpid(), "uptime_s": (now_ms - started_ms) // 1000,
        "source": source.name if source else None, "source_why": sensor.source_why,
        "unavailable": dict(sensor.skipped),
        "read_errors": sensor.read_errors, "events": list(events.events),
        "recent": list(events.recent), "actions": list(events.actions),
        "history": {"step_ms": sensor.history.step_ms, "now_ms": now_ms,
                    "buckets": [list(b) for b in sensor.history.buckets()]},
        "apps": registry.snapshot(),
        "activity": presence.as_dict(now_ms), "plugins": dispatcher.describe()}
    m = sensor.monitor
    if m is not None:
        since = sensor.level_since_ms
        out.update({"level": level_name(m.level), "thresholds": m.thresholds.as_dict(),
                    "level_since_ms": None if since is None else max(now_ms - since, 0),
                    "reading": m.last.to_dict() if m.last else None,
                    "eta_ms": m.eta_ms, "fill_kib_s": m.rate.kib_per_s(),
                    "readings": m.readings, "notifications": m.notifications})
    return out
