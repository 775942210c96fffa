"""One timestamped memory reading, the unit that flows from sources to the monitor.

A reading says how much memory is *available* (free plus what reclaim can
take back cheaply, like the kernel's MemAvailable), out of how much, and what
woke the agent.  Traces are JSON lines of :meth:`Reading.to_dict`.

MicroPython-clean.
"""

try:
    from typing import Any, Dict, Optional
except ImportError:  # MicroPython
    pass

# Fields a trace line may carry, besides t_ms/total_kib/avail_kib.
_OPTIONAL_INTS = ("free_kib", "file_kib", "anon_kib", "boost_kib")
_OPTIONAL_FLOATS = ("psi_some_avg10", "psi_full_avg10")


class Reading:
    """A snapshot of one memory domain (the system, or one memcg).

    ``t_ms``: monotonic milliseconds.  ``total_kib``: the domain's size (RAM,
    or the memcg limit).  ``avail_kib``: what can be allocated before the
    domain runs out.  ``free_kib``, ``file_kib``, ``anon_kib``: its parts,
    when known.  ``psi_*_avg10``: PSI stall percentages, when known.
    ``boost_kib``: the zones' watermark boost, when the kernel boosts: the
    kernel's OOM point is that much higher than ``avail_kib`` says (see
    memstate.zone_boost_pages).
    ``event``: what woke the agent (``"poll"``, ``"vmpressure:low"``...).
    """

    __slots__ = ("t_ms", "total_kib", "avail_kib", "free_kib", "file_kib", "anon_kib",
                 "psi_some_avg10", "psi_full_avg10", "event", "boost_kib")

    def __init__(self, t_ms: int, total_kib: int, avail_kib: int,
                 free_kib: "Optional[int]" = None, file_kib: "Optional[int]" = None,
                 anon_kib: "Optional[int]" = None,
                 psi_some_avg10: "Optional[float]" = None,
                 psi_full_avg10: "Optional[float]" = None,
                 event: str = "poll") -> None:
        self.t_ms = t_ms
        self.total_kib = total_kib
        self.avail_kib = avail_kib
        self.free_kib = free_kib
        self.file_kib = file_kib
        self.anon_kib = anon_kib
        self.psi_some_avg10 = psi_some_avg10
        self.psi_full_avg10 = psi_full_avg10
        self.event = event
        self.boost_kib: "Optional[int]" = None

    def to_dict(self) -> "Dict[str, Any]":
        """Return: the reading as a JSON-ready dict, without the unknown fields."""
        out: "Dict[str, Any]" = {"t_ms": self.t_ms, "total_kib": self.total_kib,
                                 "avail_kib": self.avail_kib}
        for name in _OPTIONAL_INTS + _OPTIONAL_FLOATS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.event != "poll":
            out["event"] = self.event
        return out

    def __repr__(self) -> str:
        return "Reading(%r)" % (self.to_dict(),)


def _need_int(obj: "Dict[str, Any]", name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("%s must be a non-negative integer, got %r" % (name, value))
    return value


def reading_from_dict(obj: "Any") -> Reading:
    """Build a reading from a trace line's object.

    Returns: the Reading.
    Raises: ValueError naming the field that is missing or of the wrong type.
    """
    if not isinstance(obj, dict):
        raise ValueError("a reading must be a JSON object")
    total_kib = _need_int(obj, "total_kib")
    if total_kib == 0:
        raise ValueError("total_kib must be positive")
    reading = Reading(_need_int(obj, "t_ms"), total_kib, _need_int(obj, "avail_kib"))
    for name in _OPTIONAL_INTS:
        if obj.get(name) is not None:
            setattr(reading, name, _need_int(obj, name))
    for name in _OPTIONAL_FLOATS:
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError("%s must be a number, got %r" % (name, value))
            setattr(reading, name, float(value))
    event = obj.get("event", "poll")
    if not isinstance(event, str):
        raise ValueError("event must be a string")
    reading.event = event
    return reading
