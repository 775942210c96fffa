"""The ``status`` reply, bounded: it always fits one protocol line.

The app list is paged (the request's ``apps_after`` cursor and ``apps_max``)
and each page holds what fits beside the rest of the status; should the rest
alone come near the line limit (a plugin's huge action), the bulkiest parts
are left out and named under ``truncated``.  docs/protocol.md, "status".
"""

import json

from ..core.wire import MAX_LINE_BYTES

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

# The status object's budget in one reply line: the rest is the reply's head
# ("ok", "v", an id of up to 64 characters, escaped) and the newline.
STATUS_BYTES = MAX_LINE_BYTES - 1024
# Left out, in this order, when the status without its apps is too large.
DROPPABLE = ("actions", "recent", "events", "history", "unavailable", "plugins", "activity")


def _size(obj: "Any") -> int:
    """Return: the bytes of ``obj`` as the wire encodes it."""
    return len(json.dumps(obj).encode("utf-8"))


def page_apps(apps: "List[Dict[str, Any]]", after: int, max_count: "Optional[int]",
              budget_bytes: int) -> "Tuple[List[Dict[str, Any]], Optional[int]]":
    """Return: (the apps with ``app_id`` > ``after``, in app_id order, at most
    ``max_count`` of them (None: no count limit) and ``budget_bytes`` of
    JSON; the ``app_id`` to ask after for the next page, None when this page
    reaches the end)."""
    page: "List[Dict[str, Any]]" = []
    used_bytes = 2  # the brackets
    for app in sorted(apps, key=lambda a: a["app_id"]):
        if app["app_id"] <= after:
            continue
        size = _size(app) + 2  # ", "
        if (max_count is not None and len(page) >= max_count) or \
                used_bytes + size > budget_bytes:
            return page, page[-1]["app_id"] if page else after
        page.append(app)
        used_bytes += size
    return page, None


def _shrink(st: "Dict[str, Any]", limit_bytes: int) -> "Dict[str, Any]":
    """Return: ``st``, or a copy without its DROPPABLE parts (named in
    ``truncated``), then without any value over 1 KiB, until it is under
    ``limit_bytes``."""
    if _size(st) <= limit_bytes:
        return st
    st = dict(st, truncated=[])
    for key in DROPPABLE:
        if key in st:
            del st[key]
            st["truncated"].append(key)
            if _size(st) <= limit_bytes:
                return st
    for key in sorted(st):
        if key not in ("truncated", "apps") and _size(st[key]) > 1024:
            del st[key]
            st["truncated"].append(key)
    return st


def bound_status(st: "Dict[str, Any]", after: int = 0,
                 max_count: "Optional[int]" = None) -> "Dict[str, Any]":
    """Return: the status ``st`` cut to fit one reply line: its app list
    (``st["apps"]["apps"]``, the registry's snapshot) replaced by the page
    after ``after``, with ``apps_total`` and ``apps_next`` (the cursor for
    the next page, None at the end) beside it."""
    apps = st.get("apps")
    if not isinstance(apps, dict) or not isinstance(apps.get("apps"), list):
        return _shrink(st, STATUS_BYTES)
    every = apps["apps"]
    st = dict(st, apps=dict(apps, apps=[], apps_total=len(every), apps_next=None))
    # an app_id of up to 2^30-1 as the cursor: the page's size is known without it
    st["apps"]["apps_next"] = 1 << 30
    st = _shrink(st, STATUS_BYTES)
    budget_bytes = STATUS_BYTES - _size(st)
    page, st["apps"]["apps_next"] = page_apps(every, after, max_count, budget_bytes)
    st["apps"]["apps"] = page
    return st
