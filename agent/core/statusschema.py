"""The status document's schema: its version, and a check of its shape.

``memagent status --json`` prints one JSON object (docs/status.md): the
agent's ``status`` reply with ``schema``, ``host``, ``wall`` and ``running``.
A reader renders a document whose ``schema`` it knows; a newer schema, or a
document without one (a memagent older than 0.3), is a version mismatch,
said as such rather than drawn wrong.  Pure; runs on MicroPython.
"""

try:
    from typing import Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass

# Raised when a key is renamed, removed or changes meaning; new keys may come
# within a version (readers ignore what they do not know).
STATUS_SCHEMA = 1
LEVELS = ("NORMAL", "LOW", "CRITICAL")
EVENT_KINDS = ("level", "action", "plugin_error")

# key -> the types it may have (None allowed where the agent may not know yet)
_TOP = {
    "schema": (int,), "version": (str,), "host": (str,), "wall": (int, float),
    "running": (bool,), "level": (str,), "level_since_ms": (int, type(None)),
    "thresholds": (dict,), "reading": (dict, type(None)), "eta_ms": (int, type(None)),
    "fill_kib_s": (int, type(None)), "source": (str, type(None)), "source_why": (str,),
    "unavailable": (dict,), "history": (dict,), "events": (list,), "apps": (dict,),
    "plugins": (list,), "pid": (int,), "uptime_s": (int,),
}
# the keys every document has; the others come with a running agent
_ALWAYS = ("schema", "version", "host", "wall", "running", "level", "thresholds", "reading")
_RUNNING = ("pid", "uptime_s", "level_since_ms", "source", "source_why", "history", "events",
            "apps", "plugins", "eta_ms", "fill_kib_s")


class SchemaMismatch(Exception):
    """The document's schema is not one this reader knows."""


def check_version(doc: "Any") -> int:
    """Return: the document's schema version.  Raises: SchemaMismatch when
    it is no object, has no ``schema`` (a memagent before schema 1), or a
    newer one than STATUS_SCHEMA."""
    if not isinstance(doc, dict):
        raise SchemaMismatch("the status is not a JSON object")
    version = doc.get("schema")
    if version is None:
        raise SchemaMismatch("the device's memagent %s predates status schema %d: upgrade it"
                             % (doc.get("version", "(version unknown)"), STATUS_SCHEMA))
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaMismatch("status schema %r is not a version number" % (version,))
    if version > STATUS_SCHEMA:
        raise SchemaMismatch("the device's memagent %s speaks status schema %d; this one "
                             "reads up to %d: upgrade this memagent"
                             % (doc.get("version", "?"), version, STATUS_SCHEMA))
    return version


def _type_problem(key: str, value: "Any", types: "Any") -> "Optional[str]":
    if isinstance(value, bool) and bool not in types:
        return "%s: a bool where %s belongs" % (key, "/".join(t.__name__ for t in types))
    if not isinstance(value, types):
        return "%s: %s where %s belongs" % (key, type(value).__name__,
                                            "/".join(t.__name__ for t in types))
    return None


def _event_problems(events: "List[Any]") -> "List[str]":
    out = []
    last_seq = 0
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            out.append("events[%d]: not an object" % i)
            continue
        if e.get("kind") not in EVENT_KINDS:
            out.append("events[%d]: kind %r" % (i, e.get("kind")))
        seq = e.get("seq")
        if not isinstance(seq, int) or seq <= last_seq:
            out.append("events[%d]: seq %r after %d" % (i, seq, last_seq))
        else:
            last_seq = seq
        if not isinstance(e.get("t_ms"), int):
            out.append("events[%d]: t_ms %r" % (i, e.get("t_ms")))
    return out


def _history_problems(history: "Dict[str, Any]") -> "List[str]":
    out = []
    for key in ("step_ms", "now_ms"):
        if not isinstance(history.get(key), int):
            out.append("history.%s: %r" % (key, history.get(key)))
    buckets = history.get("buckets")
    if not isinstance(buckets, list):
        return out + ["history.buckets: not a list"]
    for i, b in enumerate(buckets):
        if not (isinstance(b, list) and len(b) == 3 and all(isinstance(x, int) for x in b)
                and 0 <= b[2] < len(LEVELS)):
            out.append("history.buckets[%d]: %r" % (i, b))
    return out


def problems(doc: "Any") -> "List[str]":
    """Return: what is wrong with ``doc`` as a schema-1 status document
    (empty: nothing); never raises."""
    try:
        check_version(doc)
    except SchemaMismatch as e:
        return [str(e)]
    out = ["missing %s" % k for k in _ALWAYS if k not in doc]
    if doc.get("running") is True:
        out += ["missing %s (a running agent's)" % k for k in _RUNNING if k not in doc]
    for key, types in _TOP.items():
        if key in doc:
            why = _type_problem(key, doc[key], types)
            if why:
                out.append(why)
    if doc.get("level") not in LEVELS:
        out.append("level: %r" % (doc.get("level"),))
    if isinstance(doc.get("events"), list):
        out += _event_problems(doc["events"])
    if isinstance(doc.get("history"), dict):
        out += _history_problems(doc["history"])
    reading = doc.get("reading")
    if isinstance(reading, dict):
        for key in ("total_kib", "avail_kib"):
            if not isinstance(reading.get(key), int):
                out.append("reading.%s: %r" % (key, reading.get(key)))
    return out
