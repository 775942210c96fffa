"""The dispatcher: hands notifications from the monitor to the plugins.

Flow runs one way: sources -> monitor -> dispatcher -> plugins -> apps.  The
sensing loop never waits for a plugin: :meth:`Dispatcher.submit` only queues
(bounded: while a dispatch runs, later notifications coalesce into the
newest one, and an escalation is never dropped in favour of a reminder).
Each hook call has a timeout and its own exception isolation, and the
plugin's name is in every error.
"""

import logging

from . import aio
from .levels import Notification

try:
    from typing import Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass

log = logging.getLogger("memagent.dispatch")

HOOKS = ("on_level_change", "on_pressure", "on_tick")


class Dispatcher:
    """Calls plugin hooks, one notification at a time, off the sensing path."""

    def __init__(self, plugins: "Optional[List[Any]]" = None, hook_timeout_ms: int = 2000) -> None:
        self.plugins = list(plugins or [])
        self.hook_timeout_ms = hook_timeout_ms
        self._pending: "Optional[Notification]" = None
        # Made in run(): on Python 3.9 an Event binds the loop current at
        # its creation, and the dispatcher is built before the loop runs.
        self._wake: "Optional[Any]" = None
        self.dispatched = 0
        self.coalesced = 0
        self.hook_errors = 0

    def submit(self, note: Notification) -> None:
        """Queue ``note``; never blocks.  A pending reminder is replaced by a
        newer note; a pending level change is kept over a newer reminder."""
        pending = self._pending
        if pending is not None:
            self.coalesced += 1
            if note.level == note.prev_level and pending.level != pending.prev_level:
                return
        self._pending = note
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Dispatch forever (cancel to stop)."""
        wake = self._wake = aio.Event()
        if self._pending is not None:
            wake.set()
        while True:
            await wake.wait()
            wake.clear()
            note = self._pending
            self._pending = None
            if note is not None:
                await self.dispatch(note)

    async def broadcast(self, hook: str, **kwargs: "Any") -> None:
        """Call ``hook`` on every plugin, in order (on_start, on_stop...)."""
        for plugin in self.plugins:
            await self.call(plugin, hook, **kwargs)

    async def dispatch(self, note: Notification) -> None:
        """Call every plugin's hooks for ``note``, in plugin order."""
        self.dispatched += 1
        for plugin in self.plugins:
            if note.level != note.prev_level:
                await self.call(plugin, "on_level_change", level=note.level,
                                prev_level=note.prev_level, notification=note)
            if note.level > 0:
                await self.call(plugin, "on_pressure", level=note.level, notification=note,
                                deficit_kib=note.deficit_kib)

    def describe(self) -> "List[Dict[str, Any]]":
        """Return: one dict per plugin for ``memagent status``: its ``name``,
        ``unavailable`` (the plugin's attribute of that name: why it cannot
        work here, e.g. "install python3-evdev"; None when it works) and
        ``state`` (what its ``status()`` method returns, if it has one; an
        error there is reported in place, never raised)."""
        out = []
        for plugin in self.plugins:
            entry: "Dict[str, Any]" = {"name": getattr(plugin, "name", type(plugin).__name__),
                                       "unavailable": getattr(plugin, "unavailable", None)}
            fn = getattr(plugin, "status", None)
            if callable(fn):
                try:
                    entry["state"] = fn()
                except Exception as e:  # a view must not break status
                    entry["state"] = {"error": "%s: %s" % (type(e).__name__, e)}
            out.append(entry)
        return out

    async def call(self, plugin: "Any", hook: str, **kwargs: "Any") -> "Any":
        """Call one hook by keyword, if the plugin has it.

        Returns: the hook's result, or None if absent, raised or timed out
        (logged with the plugin's name; the agent carries on).
        """
        fn = getattr(plugin, hook, None)
        if fn is None:
            return None
        name = getattr(plugin, "name", type(plugin).__name__)
        try:
            return await aio.wait_for_ms(fn(**kwargs), self.hook_timeout_ms)
        except aio.TimeoutError:
            self.hook_errors += 1
            log.error("plugin %s: %s timed out after %d ms", name, hook, self.hook_timeout_ms)
        except Exception as e:  # isolation: a plugin's bug must not stop the agent
            self.hook_errors += 1
            log.error("plugin %s: %s raised %s: %s", name, hook, type(e).__name__, e)
        return None
