"""The built-in plugin ``user_activity``: the last user input time, from the
input event devices.  ``plugin``: the hooks, the devices' bookkeeping and the
reading task (:class:`~.plugin.UserActivity`); ``reader``: an evdev node read
directly (struct input_event, EVIOCGNAME, EVIOCGPROP), on CPython and
MicroPython alike.  See docs/activity.md.
"""

from .plugin import UserActivity

__all__ = ["UserActivity"]
