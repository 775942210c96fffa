"""memagent: low-memory notification for small Linux handsets.

The /dev/mem_notify idea of 2008 (KOSAKI Motohiro, Marcelo Tosatti) on
today's kernels: sources -> monitor (levels) -> dispatcher -> plugins -> apps.
The layers (docs/architecture.md): ``core`` (pure logic, MicroPython-clean),
``sense``, ``ipc``, ``runtime``, ``client``, ``demo``, and the built-in
``plugins``; ``aio`` is the asyncio shim, ``cli`` the command.

This file stays import-light: it runs before every submodule.
"""

import sys

__version__ = "0.3.0"

if sys.implementation.name != "micropython":  # the old module names, for one release
    from . import moved

    moved.install()
