"""Sources: what wakes the agent when the kernel reports memory activity.

In ``auto`` mode the first source that opens wins, in this order:

``mem_notify``  the 2008 ``/dev/mem_notify`` device (patched kernels);
``psi``         PSI memory triggers (4.20+ with CONFIG_PSI);
``cgroup2``     a v2 memcg's ``memory.events`` (4.5+);
``cgroup1``     v1 vmpressure levels and usage thresholds (3.10+);
``poll``        a timer, no kernel events (any kernel from 2.6.24).

``trace`` (a recorded trace played back) is only used when asked for.  A
new source is a subclass of :class:`~memagent.sense.sources.base.Source` in
a module of its own, listed in :func:`source_classes` (and in AUTO_ORDER if
``auto`` may pick it).  Usage::

    source, skipped = choose("auto", domain, SourceOptions())
    while True:
        event = await source.wait(None)       # None: woke on a timer
        reading = source.read(aio.ticks_ms(), event or "poll")
"""

from .base import Domain, Source, SourceOptions, SourceUnavailable, domain_path

try:
    from typing import Dict, List, Tuple, Type
except ImportError:  # MicroPython
    pass

__all__ = ["ALL_NAMES", "AUTO_ORDER", "Domain", "Source", "SourceOptions",
           "SourceUnavailable", "choose", "domain_path", "source_classes"]

AUTO_ORDER = ("mem_notify", "psi", "cgroup2", "cgroup1", "poll")
ALL_NAMES = AUTO_ORDER + ("trace",)


def source_classes() -> "Dict[str, Type[Source]]":
    """Return: source name -> class, for every source (imported on demand)."""
    from .cgroup1 import Cgroup1Source
    from .cgroup2 import Cgroup2Source
    from .mem_notify import MemNotifySource
    from .poll import PollSource
    from .psi import PsiSource
    from .trace import TraceSource

    classes: "List[Type[Source]]" = [MemNotifySource, PsiSource, Cgroup2Source, Cgroup1Source,
                                   PollSource, TraceSource]
    return {cls.name: cls for cls in classes}


def choose(name: str, domain: Domain,
           opts: SourceOptions) -> "Tuple[Source, List[Tuple[str, str]]]":
    """Open the source called ``name``, or with "auto" the first of
    AUTO_ORDER that opens.

    Returns: (the opened source, [(name, reason) of each source skipped]).
    Raises: SourceUnavailable with the reason when a named source cannot
    open, the name is unknown, or (auto) no source opens.
    """
    classes = source_classes()
    if name != "auto":
        if name not in classes:
            raise SourceUnavailable("unknown source %r: use auto or one of %s"
                                    % (name, ", ".join(ALL_NAMES)))
        source = classes[name](domain, opts)
        source.open()
        return source, []
    skipped: "List[Tuple[str, str]]" = []
    for candidate in AUTO_ORDER:
        source = classes[candidate](domain, opts)
        try:
            source.open()
        except SourceUnavailable as e:
            skipped.append((candidate, str(e)))
            continue
        return source, skipped
    raise SourceUnavailable("no source can run: " + "; ".join(r for _, r in skipped))
