"""The dispatcher: hands the monitor's notifications, and the agent's other
events, to the views and the plugins.

Flow runs one way: sources -> monitor -> dispatcher -> plugins -> apps.

- **Views** (the event log, the apps' level subscriptions) are plain
  callables that see every notification at once, in :meth:`Dispatcher.submit`:
  they only record or queue bytes, never wait.
- **Plugins** get the hooks of :mod:`memagent.runtime.hooks`, one call at a
  time, off the sensing path: :meth:`Dispatcher.submit` only queues
  (bounded: while a dispatch runs, later notifications coalesce into the
  newest one, and an escalation is never dropped in favour of a reminder).
  Within one notification, each hook gets ``results``: what the plugins
  before it returned for this notification, by name.
- **Events** (an app came or went, a device came or went) are queued by
  :meth:`Dispatcher.post` (at most MAX_EVENTS waiting; beyond that the
  oldest is dropped and counted) and broadcast after the pending
  notification.

Each hook call has a timeout and its own exception isolation, and the
plugin's name is in every error.  Plugins get no hook before their
``on_start`` (:meth:`Dispatcher.start`) has returned.  MicroPython-clean.
"""

from .. import aio
from ..core.levels import NORMAL, Notification
from ..core.logs import get_logger
from .hooks import DEFAULT_HOOK_TIMEOUT_MS, plugin_name

try:
    from typing import Any, Callable, Dict, List, Optional, Tuple

    View = Callable[[Notification], Any]
except ImportError:  # MicroPython
    pass

log = get_logger("memagent.dispatch")

MAX_EVENTS = 256  # app and device events waiting for the plugins
# Hooks in a row that time out (or are skipped: an abandoned one still runs)
# before the plugin is disabled; a hook that returns in time clears them.
MAX_STRIKES = 3
# All the plugins' on_stop together: with the control server's close
# (ipc.control.CLOSE_WAIT_MS at worst) and aio.run's end, within 2 s of SIGTERM.
STOP_BUDGET_MS = 700


class Dispatcher:
    """Calls views at once and plugin hooks one at a time, off the sensing path."""

    def __init__(self, plugins: "Optional[List[Any]]" = None,
                 hook_timeout_ms: int = DEFAULT_HOOK_TIMEOUT_MS) -> None:
        self.plugins = list(plugins or [])
        self.hook_timeout_ms = hook_timeout_ms
        self.views: "List[View]" = []  # the runtime adds the built-in ones
        self._pending: "Optional[Notification]" = None
        self._events: "List[Tuple[str, Dict[str, Any]]]" = []
        self._running = 0  # a notification or event whose hooks are being called
        # Made in run(): on Python 3.9 an Event binds the loop current at
        # its creation, and the dispatcher is built before the loop runs.
        self._wake: "Optional[Any]" = None
        self.dispatched = 0
        self.coalesced = 0
        self.superseded = 0  # notes cut short by a newer one of another level
        self._seen: "Dict[str, int]" = {}  # plugin name -> the last level it was given
        self.hook_errors = 0
        self.hooks_abandoned = 0  # cancelled at their timeout and not waited for
        self.hooks_skipped = 0
        self.events_dropped = 0
        self.disabled: "Dict[str, str]" = {}  # plugin name -> why it is no longer called
        self._strikes: "Dict[str, int]" = {}
        self._abandoned: "Dict[str, Any]" = {}  # plugin name -> its hook's task, still running
        # (plugin, hook, what went wrong) for each failure: the event log's
        # plugin_error entries; set by the runtime
        self.on_error: "Optional[Callable[[str, str, str], None]]" = None

    def _failed(self, name: str, hook: str, error: str) -> None:
        """Tell ``on_error`` that ``name``'s ``hook`` failed (never raises)."""
        if self.on_error is not None:
            try:
                self.on_error(name, hook, error)
            except Exception as e:  # a view must not break the dispatcher
                log.error("the plugin error view failed: %s: %s", type(e).__name__, e)

    def submit(self, note: Notification) -> None:
        """Show ``note`` to every view now; queue it for the plugins, never
        blocking.  A pending reminder is replaced by a newer note; a pending
        level change is kept over a newer reminder."""
        for view in self.views:
            try:
                view(note)
            except Exception as e:  # a view's bug must not stop the sensing
                log.error("view %s failed: %s: %s", getattr(view, "__qualname__", view),
                          type(e).__name__, e)
        pending = self._pending
        if pending is not None:
            self.coalesced += 1
            if note.level == note.prev_level and pending.level != pending.prev_level:
                return
        self._pending = note
        self._wakeup()

    def post(self, hook: str, **kwargs: "Any") -> None:
        """Queue a call of ``hook`` on every plugin that has it
        (``on_app_registered``, ``on_app_gone``, ``on_device``), after the
        pending notification.  Never blocks.  Nothing is queued when no plugin
        has the hook.  Past MAX_EVENTS waiting, the oldest event of the same
        hook is dropped (else the oldest): a flood of app connections cannot
        push a device event out."""
        if not any(getattr(p, hook, None) is not None for p in self.plugins):
            return
        if len(self._events) >= MAX_EVENTS:
            same = [i for i, (h, _) in enumerate(self._events) if h == hook]
            dropped = self._events.pop(same[0] if same else 0)
            self.events_dropped += 1
            if self.events_dropped == 1 or self.events_dropped % 100 == 0:
                log.warning("plugins are behind: dropped %s (%d events dropped so far)",
                            dropped[0], self.events_dropped)
        self._events.append((hook, kwargs))
        self._wakeup()

    @property
    def backlog(self) -> int:
        """What the plugins have not finished: the pending notification (0 or
        1), the queued events, and the one whose hooks are running (0 or 1)."""
        return (self._pending is not None) + len(self._events) + self._running

    def _wakeup(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def start(self, kwargs_for: "Callable[[Any], Dict[str, Any]]") -> None:
        """Call every plugin's ``on_start``, in order, with the keyword
        arguments ``kwargs_for(plugin)`` gives (each plugin its own services)."""
        for plugin in self.plugins:
            await self.call(plugin, "on_start", **kwargs_for(plugin))

    async def run(self) -> None:
        """Dispatch until cancelled: the pending notification first, then the
        queued events, one at a time."""
        wake = self._wake = aio.Event()
        if self._pending is not None or self._events:
            wake.set()
        while True:
            await wake.wait()
            wake.clear()
            while self._pending is not None or self._events:
                note, self._pending = self._pending, None
                self._running = 1
                try:
                    if note is not None:
                        await self.dispatch(note)
                    else:
                        hook, kwargs = self._events.pop(0)
                        await self.broadcast(hook, **kwargs)
                finally:
                    self._running = 0

    async def stop(self, budget_ms: int = STOP_BUDGET_MS) -> None:
        """Call every plugin's ``on_stop``, in order, within ``budget_ms``
        in all (each at most the hook timeout): the agent must exit soon
        after SIGTERM whatever its plugins do.  Plugins past the budget are
        not called (logged)."""
        end_ms = aio.ticks_ms() + budget_ms
        for plugin in self.plugins:
            left_ms = end_ms - aio.ticks_ms()
            if left_ms <= 0:
                if getattr(plugin, "on_stop", None) is not None:
                    log.error("plugin %s: on_stop not called: the %d ms for stopping "
                              "are spent", plugin_name(plugin), budget_ms)
                continue
            await self.call(plugin, "on_stop", budget_ms=min(self.hook_timeout_ms, left_ms))

    async def broadcast(self, hook: str, **kwargs: "Any") -> None:
        """Call ``hook`` on every plugin, in order (on_stop, events...)."""
        for plugin in self.plugins:
            await self.call(plugin, hook, **kwargs)

    async def dispatch(self, note: Notification) -> "Dict[str, Any]":
        """Call every plugin's hooks for ``note``, in plugin order: when its
        level differs from the last one that plugin was given,
        ``on_level_change`` (``prev_level`` is that last level: each plugin
        sees a consistent sequence, whatever coalescing hid), and at LOW and
        CRITICAL ``on_pressure``.  A newer note of another level, pending
        meanwhile, cuts this one short: the plugins not yet called get that
        one instead, never a pressure call for a level the agent has left.

        Returns: the results, plugin name -> what its hook returned (the
        later hook's, when both returned something); each hook was given
        those of the plugins before it."""
        self.dispatched += 1
        results: "Dict[str, Any]" = {}
        for plugin in self.plugins:
            pending = self._pending
            if pending is not None and pending.level != note.level:
                self.superseded += 1
                break
            name = plugin_name(plugin)
            prev = self._seen.get(name, NORMAL)
            seen = note.seen_from(prev)
            self._seen[name] = note.level
            got = None
            if note.level != prev:
                got = await self.call(plugin, "on_level_change", level=note.level,
                                      prev_level=prev, notification=seen,
                                      results=dict(results))
            if note.level > NORMAL:
                now = await self.call(plugin, "on_pressure", level=note.level,
                                      notification=seen, deficit_kib=note.deficit_kib,
                                      results=dict(results))
                got = got if now is None else now
            if got is not None:
                results[name] = got
        return results

    def describe(self) -> "List[Dict[str, Any]]":
        """Return: one dict per plugin for ``memagent status``: its ``name``,
        ``unavailable`` (the plugin's attribute of that name: why it cannot
        work here, e.g. "install python3-jeepney"; None when it works) and
        ``state`` (what its ``status()`` method returns, if it has one; an
        error there is reported in place, never raised)."""
        out = []
        for plugin in self.plugins:
            name = plugin_name(plugin)
            entry: "Dict[str, Any]" = {"name": name,
                                       "unavailable": getattr(plugin, "unavailable", None)}
            if name in self.disabled:
                entry["disabled"] = self.disabled[name]
            fn = getattr(plugin, "status", None)
            if callable(fn):
                try:
                    entry["state"] = fn()
                except Exception as e:  # a view must not break status
                    entry["state"] = {"error": "%s: %s" % (type(e).__name__, e)}
            out.append(entry)
        return out

    async def _blocked(self, name: str, hook: str) -> bool:
        """Return: True if ``name`` must not be called now: it is disabled,
        or a hook of it that was abandoned still runs (it swallowed its
        cancellation; that is a strike, and MAX_STRIKES disable it)."""
        if name in self.disabled:
            return True
        task = self._abandoned.get(name)
        if task is None:
            return False
        if not task.done():
            await aio.sleep_ms(0)  # a cancel lands at the task's next step
        if task.done():
            del self._abandoned[name]
            return False
        self.hooks_skipped += 1
        self._strike(name, "%s skipped: an abandoned hook still runs "
                     "(it ignored its cancellation)" % hook, hook)
        return True

    def _strike(self, name: str, why: str, hook: str = "") -> None:
        """Count a strike against ``name``; at MAX_STRIKES in a row disable it."""
        strikes = self._strikes[name] = self._strikes.get(name, 0) + 1
        if strikes < MAX_STRIKES:
            log.error("plugin %s: %s (strike %d of %d)", name, why, strikes, MAX_STRIKES)
            self._failed(name, hook, "%s (strike %d of %d)" % (why, strikes, MAX_STRIKES))
            return
        self.disabled[name] = "%s, %d times in a row" % (why, strikes)
        log.error("plugin %s disabled: %s", name, self.disabled[name])
        self._failed(name, hook, "disabled: %s" % self.disabled[name])

    async def call(self, plugin: "Any", hook: str, budget_ms: "Optional[int]" = None,
                   **kwargs: "Any") -> "Any":
        """Call one hook by keyword, if the plugin has it, for at most
        ``budget_ms`` (default: the hook timeout).  A hook past its time is
        cancelled and abandoned: never waited for (see aio.within_ms).

        Returns: the hook's result, or None if absent, raised, timed out or
        skipped (a disabled plugin, or one whose abandoned hook still runs);
        each is logged with the plugin's name and counted; the agent carries on.
        """
        fn = getattr(plugin, hook, None)
        if fn is None:
            return None
        name = plugin_name(plugin)
        if await self._blocked(name, hook):
            return None
        timeout_ms = self.hook_timeout_ms if budget_ms is None else budget_ms
        try:
            result = await aio.within_ms(fn(**kwargs), timeout_ms)
        except aio.Abandoned as e:
            self.hook_errors += 1
            self.hooks_abandoned += 1
            self._abandoned[name] = e.task
            self._strike(name, "%s timed out after %d ms, abandoned" % (hook, timeout_ms),
                         hook)
            return None
        except Exception as e:  # isolation: a plugin's bug must not stop the agent
            self.hook_errors += 1
            log.error("plugin %s: %s raised %s: %s", name, hook, type(e).__name__, e)
            self._failed(name, hook, "raised %s: %s" % (type(e).__name__, e))
            return None
        self._strikes.pop(name, None)
        return result
