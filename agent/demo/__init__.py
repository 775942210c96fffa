"""``memagent demo`` and the tools of the scenarios: not needed on a device.

The virtual handset demo (``run``, ``show``, its modes ``live`` and
``apps`` with ``coop``), real memory pressure in a throw-away memcg
(``scenario``, ``memcg``), the load generator (``loadgen``) and the cache
app of the demo and the tests (``cacheapp``).  The Buildroot package leaves
this package out; the CLI imports it only when ``memagent demo`` runs.
"""

try:
    from typing import List, Optional
except ImportError:  # MicroPython
    pass


def main(argv: "Optional[List[str]]" = None) -> int:
    """``memagent demo [OPTIONS]``.  Returns: the exit code (2: bad options)."""
    import argparse

    from . import run

    parser = argparse.ArgumentParser(prog="memagent demo", description=(
        "The virtual handset: a 128 MiB memcg filled with page cache, cache apps that "
        "register with a real memagent, and a 10 MB/s allocator (safe; replays a "
        "recorded trace without root)."))
    run.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return run.main(args)
