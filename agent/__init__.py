"""memagent: low-memory notification for small Linux handsets.

The /dev/mem_notify idea of 2008 (KOSAKI Motohiro, Marcelo Tosatti) on
today's kernels: sources -> monitor (levels) -> dispatcher -> plugins -> apps.

This file stays import-light and MicroPython-clean: the pure core
(procfs, memstate, reading, levels, trace) must import on MicroPython.
"""

__version__ = "0.1.0"
