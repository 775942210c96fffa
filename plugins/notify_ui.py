"""The built-in plugin ``notify_ui``: memory pressure on D-Bus, for the UI.

Two signals, from one bus connection that owns both names (docs/dbus.md):

- **low-memory-monitor compatible**: as ``org.freedesktop.LowMemoryMonitor``,
  at ``/org/freedesktop/LowMemoryMonitor``, interface
  ``org.freedesktop.LowMemoryMonitor``, the signal ``LowMemoryWarning (y)``:
  50 low, 100 medium, 255 critical.  GLib's GMemoryMonitor (a GDBusProxy on
  that name, which forwards only signals sent by the name's owner) turns it
  into ``low-memory-warning`` in every GLib/GTK app, unchanged.  LOW is 100
  when the monitor's time left (``eta_ms``) is under ``[notify_ui]
  medium_eta_ms``, else 50; CRITICAL is 255.  Nothing on recovery: the
  interface has no such signal.
- **memagent's own**: as ``org.memagent.Agent1``, at ``/org/memagent/Agent1``,
  interface ``org.memagent.Agent1``, ``Pressure (sttxs)``: level name,
  available KiB, total KiB, time left in ms (-1 unknown), the last action
  (e.g. ``kill pid 123 (browser) freed 20480 KiB``, or "").  On every level
  change, recovery to NORMAL included, and on every reminder.

Pacing of ``LowMemoryWarning``: a higher level than already sent in this
pressure episode goes out at once; the same or a lower level again at most
every LMM_REPEAT_MS (15 s, low-memory-monitor's own repeat interval), while
the monitor's reminders say the pressure holds.  NORMAL ends the episode.

After taking the names, the first signals wait until SETTLE_MS have
passed, so that clients have seen the new owner (they drop its signals
until then).

Without a bus, jeepney or the names, it logs once, says why in ``memagent
status`` (``unavailable``) and stays quiet; it retries on later level
changes with a growing backoff.  A bus that goes away is logged once and
reconnected on the next event.  Each hook is bounded (connect, then one
bounded write per signal) and never raises.  CPython only (jeepney, Unix
sockets through memagent.aio).
"""

try:
    from typing import Any, Dict, Optional, Tuple
except ImportError:  # MicroPython
    pass

from memagent import aio
from memagent.core.config import Key
from memagent.core.levels import CRITICAL, LOW, NORMAL, Notification, level_name
from memagent.core.logs import get_logger
from memagent.runtime.services import Services

log = get_logger("memagent.plugin.notify_ui")

LMM_NAME = LMM_INTERFACE = "org.freedesktop.LowMemoryMonitor"
LMM_PATH = "/org/freedesktop/LowMemoryMonitor"
AGENT_NAME = AGENT_INTERFACE = "org.memagent.Agent1"
AGENT_PATH = "/org/memagent/Agent1"
PRESSURE_SIGNATURE = "sttxs"
LMM_LOW, LMM_MEDIUM, LMM_CRITICAL = 50, 100, 255  # low-memory-monitor's byte levels
LMM_REPEAT_MS = 15000  # low-memory-monitor: RECOVERY_INTERVAL, 15 s per level
CONNECT_TIMEOUT_MS = 1000  # handshake + Hello + two RequestName, on a local socket: ~5 ms
EMIT_TIMEOUT_MS = 250  # one signal: one write of < 300 bytes
# After taking the names, wait this long before the first signal: clients
# learn the new owner asynchronously and drop its signals until then.
# Measured (GLib 2.74, 20 tries each): sent at once after RequestName,
# GMemoryMonitor saw 0 of 20 and gdbus monitor 3 of 20; 5 ms later, 20 of 20.
# 200 ms leaves room for a slow board and many apps.
SETTLE_MS = 200
RETRY_FIRST_MS = 10000
RETRY_MAX_MS = 300000
POLICY_HINT = ("install board/common/rootfs-overlay/etc/dbus-1/system.d/memagent.conf "
               "as /etc/dbus-1/system.d/memagent.conf and reload dbus")
INTROSPECTION = {
    LMM_PATH: ('  <interface name="org.freedesktop.LowMemoryMonitor">\n'
               '    <signal name="LowMemoryWarning"><arg name="level" type="y"/></signal>\n'
               '  </interface>\n'),
    AGENT_PATH: ('  <interface name="org.memagent.Agent1">\n'
                 '    <signal name="Pressure"><arg name="level" type="s"/>'
                 '<arg name="avail_kib" type="t"/><arg name="total_kib" type="t"/>'
                 '<arg name="eta_ms" type="x"/><arg name="last_action" type="s"/></signal>\n'
                 '  </interface>\n'),
}


def lmm_level(level: int, eta_ms: Optional[int], medium_eta_ms: int) -> int:
    """Return: low-memory-monitor's byte for a memagent level: 0 (nothing
    to send) at NORMAL, 255 at CRITICAL, 100 at LOW with a known time left
    under ``medium_eta_ms``, else 50."""
    if level >= CRITICAL:
        return LMM_CRITICAL
    if level >= LOW:
        return LMM_MEDIUM if eta_ms is not None and eta_ms < medium_eta_ms else LMM_LOW
    return 0


def action_summary(entry: Optional[Dict[str, Any]]) -> str:
    """Return: one line for an event-log entry (``services.record_action``):
    ``"kill pid 123 (browser) freed 20480 KiB"``, other fields as
    ``key=value``; "" for None.  Never raises, at most 200 characters."""
    if not entry:
        return ""
    try:
        fields = dict(entry)
        parts = [str(fields.pop("action", "?"))]
        fields.pop("t_ms", None)
        fields.pop("wall", None)
        if "pid" in fields:
            parts.append("pid %s" % fields.pop("pid"))
        name = fields.pop("name", None) or fields.pop("comm", None)
        if name:
            parts.append("(%s)" % name)
        for key in ("freed_kib", "rss_kib"):
            if key in fields:
                parts.append("freed %s KiB" % fields.pop(key))
                break
        parts.extend("%s=%s" % (k, fields[k]) for k in sorted(fields))
        return " ".join(parts)[:200]
    except Exception as e:  # a strange entry must not stop the signal
        return "?" + type(e).__name__


class LmmPacer:
    """When to send ``LowMemoryWarning`` (see the module docstring)."""

    def __init__(self, repeat_ms: int = LMM_REPEAT_MS) -> None:
        self.repeat_ms = repeat_ms
        self.episode_max = 0  # highest byte sent since the last NORMAL
        self.last_ms: Dict[int, int] = {}  # byte -> when it was last sent

    def due(self, byte: int, now_ms: int) -> bool:
        """Return: True if ``byte`` should be sent now."""
        if byte <= 0:
            return False
        last = self.last_ms.get(byte)
        return byte > self.episode_max or last is None or now_ms - last >= self.repeat_ms

    def sent(self, byte: int, now_ms: int) -> None:
        """Record that ``byte`` went out at ``now_ms``."""
        self.episode_max = max(self.episode_max, byte)
        self.last_ms[byte] = now_ms

    def recovered(self) -> None:
        """NORMAL: the next warning starts a new episode and goes out at once."""
        self.episode_max = 0


class NotifyUi:
    """Emits memory pressure on D-Bus (see the module docstring)."""

    name = "notify_ui"
    config_schema = {
        # "system", "session", or a D-Bus address (unix:path=...)
        "bus": Key("str", "system", doc="system, session, or a D-Bus address"),
        "medium_eta_ms": Key("int", "10000", doc="LOW is sent as 100 (medium) when the "
                             "time left is under this, else 50"),
    }

    def __init__(self) -> None:
        self.unavailable: Optional[str] = None
        self.services: Optional[Services] = None
        self.bus = "system"
        self.address = ""
        self.medium_eta_ms = 10000
        self.connect_timeout_ms = CONNECT_TIMEOUT_MS
        self.pacer = LmmPacer()
        self.conn: Optional[Any] = None
        self.names: Dict[str, str] = {}  # name -> "owned", "queued" or why refused
        self.sent = {"LowMemoryWarning": 0, "Pressure": 0}
        self.last_warning = 0
        self.errors = 0
        self.unsent = 0  # events that found no connection
        self.attempts = 0
        self._wire: Optional[Any] = None  # memagent.ipc.dbus, from the services
        self._gave_up = False  # no jeepney: nothing to retry
        self._failing = False  # a failure was logged; quiet until it works again
        self.retry_first_ms = RETRY_FIRST_MS
        self._retry_ms = 0  # the next backoff; 0: retry_first_ms
        self._next_try_ms = 0
        self._connecting: Optional[Any] = None
        self._owned_ms = 0  # when the names were taken (ticks_ms)

    # -- hooks -------------------------------------------------------------------

    async def on_start(self, services: Optional[Services] = None, **kwargs: Any) -> None:
        """Read ``[notify_ui]`` and start connecting in the background (the
        agent's sensing never waits for the bus)."""
        self.services = services
        if services is None:
            self._give_up("no services")
            return
        self.bus = services.config.get_str("bus") or "system"
        self.medium_eta_ms = services.config.get_int("medium_eta_ms")
        self.connect_timeout_ms = max(min(CONNECT_TIMEOUT_MS, services.hook_timeout_ms // 2), 50)
        try:
            self._wire = services.dbus()
        except ImportError as e:
            self._give_up("install jeepney (Debian: python3-jeepney; pip: memagent[dbus]): %s" % e)
            return
        self._connecting = aio.create_task(self._connect(aio.ticks_ms()))

    async def wait_connected(self) -> bool:
        """Wait for the connection attempt that on_start began (bounded by
        the connect timeout).  Returns: True if connected."""
        if self._connecting is not None:
            await aio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        return self.conn is not None and not self.conn.closed

    async def on_level_change(self, level: int, prev_level: int, notification: Notification,
                              **kwargs: Any) -> None:
        """Send the signals for a level change."""
        await self._notify(notification, change=True)

    async def on_pressure(self, level: int, notification: Notification, **kwargs: Any) -> None:
        """Reminders while a level holds (a change was handled by on_level_change)."""
        if notification.level == notification.prev_level:
            await self._notify(notification, change=False)

    async def on_stop(self, **kwargs: Any) -> None:
        """Release the names: close the connection."""
        await aio.cancel_and_wait(self._connecting)
        await self._drop()

    def status(self) -> Dict[str, Any]:
        """Return: the plugin's state for ``memagent status``."""
        conn = self.conn
        names = dict(self.names)
        if conn is not None:  # a queued name may have come to us since
            names.update((name, "owned") for name in conn.owned if name in names)
        return {"bus": self.address or self.bus,
                "connected": conn is not None and not conn.closed,
                "unique_name": conn.unique_name if conn is not None else None,
                "names": names, "sent": dict(self.sent),
                "last_warning": self.last_warning, "errors": self.errors,
                "unsent": self.unsent, "attempts": self.attempts,
                "answered": conn.answered if conn is not None else 0}

    # -- signals -----------------------------------------------------------------

    async def _notify(self, note: Notification, change: bool) -> None:
        now_ms = aio.ticks_ms()
        if note.level == NORMAL:
            self.pacer.recovered()
        conn = await self._usable(now_ms, change)
        if conn is None:
            return
        settle_ms = SETTLE_MS - (aio.ticks_ms() - self._owned_ms)
        if settle_ms > 0:  # a new owner: let the clients see it first
            await aio.sleep_ms(settle_ms)
        byte = lmm_level(note.level, note.eta_ms, self.medium_eta_ms)
        if LMM_NAME in conn.owned and self.pacer.due(byte, now_ms):
            if await self._emit(conn, LMM_PATH, LMM_INTERFACE, "LowMemoryWarning", "y", (byte,)):
                self.pacer.sent(byte, now_ms)
                self.last_warning = byte
        await self._emit(conn, AGENT_PATH, AGENT_INTERFACE, "Pressure", PRESSURE_SIGNATURE,
                         self.pressure_args(note))

    def pressure_args(self, note: Notification) -> Tuple[str, int, int, int, str]:
        """Return: the ``Pressure (sttxs)`` arguments for ``note``."""
        last = self.services.last_action if self.services is not None else None
        eta = -1 if note.eta_ms is None else max(int(note.eta_ms), 0)
        return (level_name(note.level), max(int(note.avail_kib), 0),
                max(int(note.total_kib), 0), eta, action_summary(last))

    async def _emit(self, conn: Any, path: str, interface: str, member: str,
                    signature: str, body: Tuple[Any, ...]) -> bool:
        """Send one signal.  Returns: True if the bus took it."""
        try:
            await conn.emit(path, interface, member, signature, body, EMIT_TIMEOUT_MS)
        except Exception as e:  # DBusError, or a body that does not fit: never raise
            self.errors += 1
            log.debug("%s not sent: %s", member, e)
            return False
        self.sent[member] += 1
        return True

    # -- the connection ---------------------------------------------------------------

    async def _usable(self, now_ms: int, change: bool) -> Optional[Any]:
        """Return: a working connection, reconnecting when allowed, or None."""
        await self.wait_connected()  # bounded; its errors are handled inside
        conn = self.conn
        if conn is not None and conn.closed:
            log.warning("plugin notify_ui: lost the D-Bus connection (%s); reconnecting",
                        conn.error)
            self.errors += 1
            self._failing = True  # a failed reconnect adds no second warning
            await self._drop()
            self._next_try_ms = now_ms  # reconnect on this event, at once
            change = True
        if self.conn is not None:
            return self.conn
        if self._gave_up or not change or now_ms - self._next_try_ms < 0:
            self.unsent += 1
            return None
        await self._connect(now_ms)
        if self.conn is None:
            self.unsent += 1
        return self.conn

    async def _connect(self, now_ms: int) -> None:
        """One bounded attempt.  On failure: log once, set ``unavailable``,
        and push the next attempt back (doubling, up to RETRY_MAX_MS)."""
        wire = self._wire
        assert wire is not None
        self.attempts += 1
        try:
            self.address = wire.bus_address(self.bus)
            conn = await wire.connect(self.address, self.connect_timeout_ms, INTROSPECTION)
        except wire.DBusError as e:
            self._failed("no D-Bus: %s; start dbus-daemon or set [notify_ui] bus" % e, now_ms)
            return
        except aio.CancelledError:
            raise
        except Exception as e:  # a bug in the wire code must not reach the dispatcher
            self._failed("D-Bus connection failed: %s: %s" % (type(e).__name__, e), now_ms)
            return
        why = await self._request_names(conn)
        if why is not None:
            conn.close()
            await conn.wait_closed()
            self._failed(why, now_ms)
            return
        self.conn = conn
        self._owned_ms = aio.ticks_ms()
        self.unavailable = None
        self._retry_ms = 0
        log.info("plugin notify_ui: on D-Bus %s as %s (%s)", self.address, conn.unique_name,
                 ", ".join("%s %s" % kv for kv in sorted(self.names.items())))
        self._failing = False

    async def _request_names(self, conn: Any) -> Optional[str]:
        """Ask for both names.  Returns: None if at least one is owned or
        queued, else why not (for ``unavailable``)."""
        wire = self._wire
        assert wire is not None
        self.names = {}
        for name in (LMM_NAME, AGENT_NAME):
            try:
                code = await conn.request_name(name, self.connect_timeout_ms)
            except wire.DBusError as e:
                self.names[name] = "refused: %s" % e
                continue
            self.names[name] = "owned" if name in conn.owned else (
                "queued behind another owner" if code == wire.IN_QUEUE else "refused: %d" % code)
        if self.names.get(LMM_NAME, "").startswith("queued"):
            log.warning("plugin notify_ui: %s has another owner (low-memory-monitor running?): "
                        "LowMemoryWarning is left to it until the name is free", LMM_NAME)
        if any(v == "owned" or v.startswith("queued") for v in self.names.values()):
            return None
        return "the bus refused the names (%s); %s" % (
            "; ".join("%s %s" % kv for kv in sorted(self.names.items())), POLICY_HINT)

    def _failed(self, why: str, now_ms: int) -> None:
        self.unavailable = why
        self.errors += 1
        delay_ms = self._retry_ms or self.retry_first_ms
        self._next_try_ms = now_ms + delay_ms
        if not self._failing:
            log.warning("plugin notify_ui: nothing will be sent on D-Bus: %s (retrying on "
                        "level changes, the first after %d s)", why, delay_ms // 1000)
        else:
            log.debug("plugin notify_ui: still no D-Bus: %s", why)
        self._failing = True
        self._retry_ms = min(delay_ms * 2, RETRY_MAX_MS)

    def _give_up(self, why: str) -> None:
        self.unavailable = why
        self._gave_up = True
        log.warning("plugin notify_ui: nothing will be sent on D-Bus: %s", why)

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()
