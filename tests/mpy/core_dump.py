"""Run memagent's pure core over every fixture and trace; print JSON lines.

Runs under CPython and under MicroPython's unix port; tests/test_micropython.py
runs it under both and requires identical output.  Usage:

    core_dump.py DATA_DIR FILE...      (FILE relative to DATA_DIR)
"""

import json
import sys

from memagent.core import procfs, trace
from memagent.core.levels import default_thresholds
from memagent.core.memstate import estimate_available_kib


def _limit(text):
    return {"limit": procfs.parse_limit(text)}


# By the file's name, before the capture suffix (".64m-pressure"): which parser.
PREFIXES = (
    ("meminfo", procfs.parse_meminfo),
    ("zoneinfo", procfs.parse_zoneinfo),
    ("vmstat", procfs.parse_vmstat),
    ("pressure-", procfs.parse_pressure),
    ("cgv1-memory.stat", procfs.parse_flat_keyed),
    ("cgv2-memory.stat", procfs.parse_flat_keyed),
    ("cgv2-root-memory.stat", procfs.parse_flat_keyed),
    ("cgv2-memory.events", procfs.parse_flat_keyed),
    ("cgv2-memory.pressure", procfs.parse_pressure),
    ("cgv2-root-memory.pressure", procfs.parse_pressure),
    ("cgv2-memory.max", _limit),
    ("cgv2-memory.current", _limit),
    ("garbage", procfs.parse_meminfo),
    ("empty", procfs.parse_meminfo),
)


def parser_for(name):
    """Return: the parser for a fixture file's base name, or None."""
    base = name.split("/")[-1]
    for prefix, fn in PREFIXES:
        if base.startswith(prefix):
            return fn
    return None


def canon(obj):
    # MicroPython and CPython order dicts alike only by insertion; sort keys.
    if isinstance(obj, dict):
        return [[k, canon(obj[k])] for k in sorted(obj)]
    if isinstance(obj, list):
        return [canon(x) for x in obj]
    if isinstance(obj, float):
        return "%.2f" % obj
    return obj


def dump_file(data_dir, name):
    with open(data_dir + "/" + name) as f:
        text = f.read()
    if name.endswith(".jsonl"):
        readings = trace.parse_trace(text.split("\n"))
        notes = trace.replay(readings, default_thresholds(readings[0].total_kib))
        return [n.as_dict() for n in notes]
    fn = parser_for(name)
    try:
        out = fn(text)
    except procfs.ParseError as e:
        return {"error": str(e)}
    if fn is procfs.parse_meminfo:
        return {"parsed": out, "avail_kib": estimate_available_kib(out)}
    return out


def main(argv):
    data_dir = argv[1]
    for name in argv[2:]:
        print(json.dumps([name, canon(dump_file(data_dir, name))]))


if __name__ == "__main__":
    main(sys.argv)
