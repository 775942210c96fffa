"""Pure parsers for the whole system's /proc and the cgroup memory files
(one process's files: :mod:`memagent.core.pidfs`).

Each ``parse_*`` takes the file's text and returns plain dicts and lists; none
does I/O (the domains in :mod:`memagent.sense.domains` read the files).  The kernel adds fields
over the years and a hostile or truncated file may hold anything, so the
parsers skip lines they cannot read, and raise :class:`ParseError` (a
ValueError) only when what a caller needs is missing.

MicroPython-clean: no typing at run time, no re, no dataclasses.
"""

try:
    from typing import Dict, List, Optional, Tuple

    Zone = Dict[str, object]
except ImportError:  # MicroPython: annotations are not evaluated there
    pass


class ParseError(ValueError):
    """A memory file lacks what the caller needs, or is not that file at all."""


def _int_or_none(word: str) -> "Optional[int]":
    try:
        return int(word)
    except ValueError:
        return None


def parse_meminfo(text: str) -> "Dict[str, int]":
    """Parse /proc/meminfo.

    Returns: field name -> value; ``kB`` values stay in KiB, counts
    (HugePages_Total...) stay counts.  Unreadable lines are skipped.
    Raises: ParseError if there is no MemTotal (empty, truncated or not meminfo).
    """
    out: "Dict[str, int]" = {}
    for line in text.split("\n"):
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        words = rest.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] != "kB"):
            continue
        value = _int_or_none(words[0])
        if value is None or value < 0:
            continue
        out[name.strip()] = value
    if out.get("MemTotal", 0) <= 0:
        raise ParseError("meminfo: no MemTotal line")
    return out


def parse_flat_keyed(text: str, what: str = "file") -> "Dict[str, int]":
    """Parse ``key value`` lines: /proc/vmstat, memory.stat, memory.events.

    Returns: key -> integer value; lines that are not two words with an
    integer second word are skipped.
    Raises: ParseError if no line could be read.
    """
    out: "Dict[str, int]" = {}
    for line in text.split("\n"):
        words = line.split()
        if len(words) != 2:
            continue
        value = _int_or_none(words[1])
        if value is not None:
            out[words[0]] = value
    if not out:
        raise ParseError(what + ": no 'key value' lines")
    return out


def _sum_prefixed(counters: "Dict[str, int]", prefixes: "Tuple[str, ...]") -> "Optional[int]":
    parts = [v for k, v in counters.items()
             if k.startswith(prefixes) and not k.endswith("_throttle")]
    return sum(parts) if parts else None


# Names of the summed counters across kernels: 2.6.24 splits pgscan by
# reclaimer and zone (pgscan_kswapd_normal), 4.x by reclaimer
# (pgscan_kswapd), 5.9+ adds anon/file splits of the same totals, so only the
# reclaimer-split names are summed.  pgsteal had per-zone names on 2.6.
_SUMS = (
    ("pgscan", ("pgscan_kswapd", "pgscan_direct", "pgscan_khugepaged")),
    ("pgsteal", ("pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged")),
    ("pgsteal", ("pgsteal_dma", "pgsteal_normal", "pgsteal_high", "pgsteal_movable")),
    ("workingset_refault", ("workingset_refault_anon", "workingset_refault_file")),
)


def parse_vmstat(text: str) -> "Dict[str, int]":
    """Parse /proc/vmstat.

    Returns: counter -> value, plus the summed keys ``pgscan``, ``pgsteal``
    and ``workingset_refault`` where the kernel only has split variants, so
    that the sums compare across kernels from 2.6.24 on.
    Raises: ParseError if nothing could be read.
    """
    out = parse_flat_keyed(text, "vmstat")
    for total, prefixes in _SUMS:
        if total not in out:
            value = _sum_prefixed(out, prefixes)
            if value is not None:
                out[total] = value
    return out


def parse_pressure(text: str) -> "Dict[str, Dict[str, float]]":
    """Parse a PSI file (/proc/pressure/memory or a cgroup's memory.pressure).

    Returns: {"some": {"avg10": .., "avg60": .., "avg300": .., "total": ..},
    "full": {...}}; ``total`` is in microseconds.  "full" is absent on
    kernels that only report "some".
    Raises: ParseError if there is no readable "some" line.
    """
    out: "Dict[str, Dict[str, float]]" = {}
    for line in text.split("\n"):
        words = line.split()
        if not words or words[0] not in ("some", "full"):
            continue
        fields: "Dict[str, float]" = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                continue
            try:
                fields[key] = float(value)
            except ValueError:
                continue
        if "avg10" in fields and "total" in fields:
            out[words[0]] = fields
    if "some" not in out:
        raise ParseError("pressure: no 'some avg10=.. total=..' line")
    return out


def parse_kernel_page_kib(text: str) -> "Optional[int]":
    """Return: the first ``KernelPageSize:`` of /proc/PID/smaps text (the
    page size of that mapping, Linux 2.6.29+) in KiB, or None if there is
    none or it is not a positive number of kB."""
    for line in text.split("\n"):
        if line.startswith("KernelPageSize:"):
            words = line.split()
            value = _int_or_none(words[1]) if len(words) == 3 and words[2] == "kB" else None
            return value if value is not None and value > 0 else None
    return None


def parse_limit(text: str) -> "Optional[int]":
    """Parse a one-number cgroup file (memory.max, memory.limit_in_bytes...).

    Returns: the integer, or None for ``max`` (no limit).
    Raises: ParseError if it is neither.
    """
    word = text.strip()
    if word == "max":
        return None
    value = _int_or_none(word)
    if value is None or value < 0:
        raise ParseError("expected an integer or 'max', got %r" % word[:40])
    return value


def _new_zone(line: str) -> "Zone":
    # "Node 0, zone   Normal"
    head, _, name = line.partition(", zone")
    node = _int_or_none(head.split()[-1]) if head.split() else None
    return {"node": node if node is not None else 0, "zone": name.strip(),
            "lowmem_reserve": []}


def _parse_protection(rest: str) -> "List[int]":
    values = []
    for word in rest.strip().strip("()").split(","):
        value = _int_or_none(word.strip())
        if value is not None:
            values.append(value)
    return values


def parse_zoneinfo(text: str) -> "List[Zone]":
    """Parse /proc/zoneinfo, 2.6.24 to today's layout.

    Returns: a list of zones, each a dict with ``node``, ``zone`` (name),
    ``free_pages``, ``min``, ``low``, ``high`` (pages), ``lowmem_reserve``
    (the ``protection:`` list), and every other ``key value`` pair of the
    zone (``managed``, ``present``, ``nr_inactive_file``...).  Zones without
    watermarks (empty highmem on some boards) are kept but lack ``min``.
    Raises: ParseError if no zone with watermarks was found.
    """
    zones: "List[Zone]" = []
    zone: "Optional[Zone]" = None
    for line in text.split("\n"):
        if line.startswith("Node ") and ", zone" in line:
            zone = _new_zone(line)
            zones.append(zone)
            continue
        if zone is None:
            continue
        stripped = line.strip()
        if stripped.startswith("protection:"):
            zone["lowmem_reserve"] = _parse_protection(stripped[len("protection:"):])
            continue
        words = stripped.split()
        if len(words) == 3 and words[0] == "pages" and words[1] == "free":
            value = _int_or_none(words[2])
            if value is not None:
                zone["free_pages"] = value
        elif len(words) == 2 and words[0] not in zone:
            value = _int_or_none(words[1])
            if value is not None:
                zone[words[0]] = value
    for z in zones:
        if "free_pages" not in z and "nr_free_pages" in z:
            z["free_pages"] = z["nr_free_pages"]
    if not any("min" in z and "high" in z and "free_pages" in z for z in zones):
        raise ParseError("zoneinfo: no zone with free pages and watermarks")
    return zones
