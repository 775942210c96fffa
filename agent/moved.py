"""The module names of the previous release, for one release more.

Vendor plugins import ``memagent.levels`` and friends; those modules moved
into the layers (``memagent.core.levels``...).  :func:`install` puts a small
finder on ``sys.meta_path`` that answers an old name with the new module
itself, once, with a DeprecationWarning naming both.  CPython only (the
finder needs importlib); ``memagent/__init__`` installs it.
"""

import sys

# old name -> new name (modules that only moved)
MOVED = {
    "memagent.levels": "memagent.core.levels",
    "memagent.reading": "memagent.core.reading",
    "memagent.config": "memagent.core.config",
    "memagent.procfs": "memagent.core.procfs",
    "memagent.memstate": "memagent.core.memstate",
    "memagent.trace": "memagent.core.trace",
    "memagent.protocol": "memagent.core.protocol",
    "memagent.readers": "memagent.sense.domains",
    "memagent.activity": "memagent.sense.presence",
    "memagent.sources": "memagent.sense.sources",
    "memagent.control": "memagent.ipc.control",
    "memagent.aclient": "memagent.client",
    "memagent.pluginload": "memagent.runtime.pluginload",
    "memagent.dispatch": "memagent.runtime.dispatch",
    "memagent.agent": "memagent.runtime.agent",
}


class _Alias:
    """Loader: the old name gets the new module object itself."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: object) -> object:
        import importlib

        return importlib.import_module(self.new)

    def exec_module(self, module: object) -> None:
        """Nothing to run: the new module is loaded already."""


class MovedFinder:
    """Finds the old names of :data:`MOVED` (and nothing else)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        """Return: a spec aliasing ``name`` to its new module, or None."""
        new = MOVED.get(name)
        if new is None:
            return None
        import importlib.util
        import warnings

        warnings.warn("%s moved to %s in memagent 0.2; the old name goes in 0.3"
                      % (name, new), DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(name, _Alias(new))  # type: ignore[arg-type]


def install() -> None:
    """Put the finder on sys.meta_path (once)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())  # type: ignore[arg-type]
