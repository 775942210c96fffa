"""The pure core: logic with no I/O of its own, the same on CPython and
MicroPython.

Readings and levels (``reading``, ``levels``), the memory estimate
(``memstate``), every /proc and cgroup text parser (``procfs`` for the
system and cgroups, ``pidfs`` for one process), the configuration and its
schemas (``config``), the trace format and replay (``trace``), the app
class ladder (``classes``), the apps protocol (``wire``, ``protocol``) and a
logging shim (``logs``).  Modules here import only each other.
"""
