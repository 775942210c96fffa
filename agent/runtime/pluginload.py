"""Plugin loading: find, filter, check and order the agent's plugins.

A plugin is a plain object with a ``name`` and some of the async hooks of
the spec (:mod:`memagent.runtime.hooks`, which also holds the rules it is
checked against).  Discovery order: ``memagent.plugins.BUILTIN``
(``(name, "module:attr")`` pairs), the entry-point group
``memagent.plugins`` (by name), the drop-in directory (``*.py``, by file
name); ``[plugins]`` in the config filters and orders them.  Loading never
raises for a bad plugin: each problem is a message in
:attr:`LoadResult.errors`.  See docs/plugins.md.

On MicroPython there are no entry points (no ``importlib.metadata``): the
built-in plugins and the drop-in files load there, a drop-in file run as a
namespace of its own (:func:`_import_file`).
"""

# size-ok: one loader for both interpreters: entry points, built-ins, drop-in files
import sys

try:
    from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple
except ImportError:  # MicroPython
    TYPE_CHECKING = False  # type: ignore[misc]
if TYPE_CHECKING:
    import importlib.metadata

    from ..core.config import Schema

from ..aio import unix
from ..core.config import Config, ConfigError
from . import dispatch
from .hooks import DEFAULT_HOOK_TIMEOUT_MS, check, config_schemas, plugin_name

GROUP = "memagent.plugins"
BUILTIN_PACKAGE = "memagent.plugins"
DEFAULT_DIR = "/etc/memagent/plugins.d"

__all__ = ["GROUP", "LoadResult", "discover_entry_points", "load_plugins", "plugin_name"]


class LoadResult:
    """What :func:`load_plugins` found.

    ``plugins``: the checked plugin objects, in call order.  ``errors``:
    one human message per problem, each naming the plugin or file.
    ``warnings``: what loads but deserves a word (a retired hook).
    ``skipped``: plugins left out on purpose by the config (for an info log).
    ``absent``: name -> why, for each plugin found but not loaded (their
    config sections are then ignored, not refused).  ``hook_timeout_ms``:
    the per-call timeout for the Dispatcher.
    """

    def __init__(self) -> None:
        self.plugins: "List[Any]" = []
        self.errors: "List[str]" = []
        self.warnings: "List[str]" = []
        self.skipped: "List[str]" = []
        self.absent: "Dict[str, str]" = {}
        self.hook_timeout_ms = DEFAULT_HOOK_TIMEOUT_MS

    @property
    def names(self) -> "List[str]":
        """Return: the loaded plugins' names, in call order."""
        return [plugin_name(p) for p in self.plugins]

    def dispatcher(self) -> dispatch.Dispatcher:
        """Return: a Dispatcher calling these plugins with this timeout."""
        return dispatch.Dispatcher(self.plugins, hook_timeout_ms=self.hook_timeout_ms)

    def schemas(self) -> "Dict[str, Schema]":
        """Return: plugin name -> its config schema, for the loaded plugins
        (an empty one for a plugin without settings)."""
        return config_schemas(self.plugins)

    def log(self, logger: "Any") -> None:
        """Log the errors (error), the warnings, the skipped plugins (info)
        and the result."""
        for message in self.errors:
            logger.error("%s", message)
        for message in self.warnings:
            logger.warning("%s", message)
        for message in self.skipped:
            logger.info("%s", message)
        logger.info("plugins: %s", ", ".join(self.names) or "none")


class _Candidate:
    """A plugin found but not loaded yet: ``name`` is what is known before
    import (entry point name, file stem), ``where`` says where it lives."""

    def __init__(self, name: str, where: str, load: "Callable[[], object]") -> None:
        self.name = name
        self.where = where
        self.load = load


class _Options:
    """The [plugins] section; bad values are reported and replaced."""

    def __init__(self, config: Config, errors: "List[str]") -> None:
        self.enable = _names(_setting(config, "enable", "", errors))
        self.disable = _names(_setting(config, "disable", "", errors))
        self.block = _names(_setting(config, "block", "", errors))
        self.order = _names(_setting(config, "order", "", errors))
        self.dir = _setting(config, "dir", DEFAULT_DIR, errors)
        timeout = _setting(config, "hook_timeout_ms", str(DEFAULT_HOOK_TIMEOUT_MS), errors)
        self.hook_timeout_ms = int(timeout) if timeout.isdigit() else 0
        if self.hook_timeout_ms <= 0:
            errors.append("[plugins] hook_timeout_ms: expected a positive number of ms, got %r;"
                          " using %d" % (timeout, DEFAULT_HOOK_TIMEOUT_MS))
            self.hook_timeout_ms = DEFAULT_HOOK_TIMEOUT_MS

    def refusal(self, name: str) -> "Optional[str]":
        """Return: why the plugin ``name`` must not load, or None."""
        if name in self.block:
            return "blocked by [plugins] block"
        return "disabled by [plugins] disable" if name in self.disable else None


def _setting(config: Config, key: str, default: str, errors: "List[str]") -> str:
    """Return: the [plugins] ``key`` as text; ``default`` (and an error) if unreadable."""
    try:
        value = config.get("plugins", key)
    except ConfigError as e:
        errors.append("%s; using %r" % (e, default))
        return default
    return default if value is None else str(value)


def _names(text: str) -> "List[str]":
    """Return: the names in a list separated by commas or blanks (a name
    has neither: ``disable = notify_ui device_watch`` disabled nothing
    before, silently)."""
    return [n for n in text.replace(",", " ").split() if n]


# -- discovery --------------------------------------------------------------------


def discover_entry_points(group: str = GROUP) -> "List[importlib.metadata.EntryPoint]":
    """Return: the installed entry points of ``group`` (Python 3.9 and 3.10+;
    none on MicroPython, which has no package metadata).

    Raises: whatever importlib.metadata raises on broken metadata.
    """
    try:
        import importlib.metadata
    except ImportError:  # MicroPython
        return []
    try:
        found: "Iterable[importlib.metadata.EntryPoint]" = \
            importlib.metadata.entry_points(group=group)
    except TypeError:  # Python 3.9: no selection, a dict of group -> entry points
        found = importlib.metadata.entry_points().get(group, ())
    return list(found)


def _entry_point_candidates(entry_points: "Iterable[Any]",
                            kind: str, by_name: bool = True) -> "List[_Candidate]":
    """Return: one candidate per distinct entry point, sorted by name unless
    ``by_name`` is False (BUILTIN's own order is the call order); a
    dist-info seen twice on sys.path gives the same entry point twice."""
    seen = set()
    out = []
    for ep in sorted(entry_points, key=lambda e: e.name) if by_name else entry_points:
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        out.append(_Candidate(ep.name, "%s %s = %s" % (kind, ep.name, ep.value), ep.load))
    return out


def _builtin_candidates(errors: "List[str]") -> "List[_Candidate]":
    """Return: candidates for ``memagent.plugins.BUILTIN`` ((name, "module:attr")
    pairs: known by name, imported only when enabled)."""
    try:
        pairs = list(getattr(import_module(BUILTIN_PACKAGE), "BUILTIN", ()))
    except Exception as e:
        errors.append("built-in plugins (%s): %s: %s" % (BUILTIN_PACKAGE, type(e).__name__, e))
        return []
    return [_Candidate(name, "built-in %s = %s" % (name, value), _loader_of(value))
            for name, value in pairs]


def import_module(name: str) -> "Any":
    """Return: the module ``name`` (dotted), imported.  Raises: ImportError."""
    module = __import__(name)
    for part in name.split(".")[1:]:
        module = getattr(module, part)
    return module


def _loader_of(value: str) -> "Callable[[], object]":
    """Return: a function importing "module:attr" (an entry point's value)."""
    def load() -> object:
        modname, _, attr = value.partition(":")
        obj = import_module(modname)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj
    return load


def _installed_candidates(entry_points: "Optional[Iterable[Any]]",
                          errors: "List[str]") -> "List[_Candidate]":
    """Return: candidates for the given entry points, or the installed ones."""
    try:
        eps = discover_entry_points() if entry_points is None else list(entry_points)
    except Exception as e:
        errors.append("entry points (%s): cannot read them: %s: %s" % (GROUP, type(e).__name__, e))
        return []
    return _entry_point_candidates(eps, "entry point")


def _import_file(path: str, stem: str) -> object:
    """Import the drop-in file ``path`` as its own module.

    Returns: the module.  Raises: whatever its import raises.
    """
    modname = "memagent_dropin_" + "".join(c if c.isalpha() or c.isdigit() else "_"
                                           for c in stem)
    try:
        import importlib.util
    except ImportError:  # MicroPython
        return _exec_file(path, modname)
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot import %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses, pickle and friends look here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


class DropIn:
    """A drop-in file run on MicroPython (no importlib): its names as attributes."""

def _exec_file(path: str, modname: str) -> object:
    """Run the file ``path`` in a namespace of its own.  Returns: an object
    with its top-level names.  Raises: whatever running it raises."""
    with open(path) as f:
        source = f.read()
    namespace: "Dict[str, Any]" = {"__name__": modname, "__file__": path}
    exec(compile(source, path, "exec"), namespace)
    module = DropIn()
    for key, value in namespace.items():
        setattr(module, key, value)
    return module


def _dropin_candidates(directory: str, errors: "List[str]") -> "List[_Candidate]":
    """Return: a candidate per ``*.py`` in ``directory``, in file name order
    (none if the directory is empty, unset or missing)."""
    if not directory:
        return []
    try:
        files = sorted(f for f in unix.listdir(directory)
                       if f.endswith(".py") and not f.startswith("."))
    except OSError as e:
        if not unix.is_missing(e):
            errors.append("plugin directory %s: %s" % (directory, unix.why(e)))
        return []
    out = []
    for filename in files:
        path = directory.rstrip("/") + "/" + filename
        out.append(_Candidate(filename[:-3], path, _file_loader(path, filename[:-3])))
    return out


def _file_loader(path: str, stem: str) -> "Callable[[], object]":
    """Return: a function importing the drop-in file ``path``."""
    return lambda: _import_file(path, stem)


# -- loading ----------------------------------------------------------------------


def _resolve(obj: object) -> object:
    """Return: the plugin ``obj`` stands for: a module's ``plugin`` attribute
    (else the module itself); a class is instantiated with no arguments.

    Raises: whatever the class's constructor raises.
    """
    if type(obj).__name__ == "module" or isinstance(obj, DropIn):
        obj = getattr(obj, "plugin", obj)
    if isinstance(obj, type):
        obj = obj()
    return obj


def _raised_at(e: BaseException) -> str:
    """Return: " at file:line" of the innermost frame of ``e``'s traceback, or ""."""
    try:
        import traceback
    except ImportError:  # MicroPython
        return ""
    frames = traceback.extract_tb(e.__traceback__)
    return " at %s:%d" % (frames[-1].filename, frames[-1].lineno or 0) if frames else ""


def _load(cand: _Candidate, result: LoadResult) -> "Optional[object]":
    """Import, resolve, name and check one candidate.

    Returns: the plugin object, or None (the reason appended to
    ``result.errors``, the name to ``result.absent``).
    """
    errors = result.errors
    try:
        plugin = _resolve(cand.load())
    except (Exception, SystemExit) as e:  # a plugin's bug must not stop the agent
        errors.append("plugin %s (%s): cannot load: %s: %s%s"
                      % (cand.name, cand.where, type(e).__name__, e, _raised_at(e)))
        result.absent[cand.name] = "it failed to load"
        return None
    if getattr(plugin, "name", None) is None:
        try:
            setattr(plugin, "name", cand.name)  # noqa: B010 - any object, not a known type
        except (AttributeError, TypeError):
            errors.append("plugin %s (%s): has no name and one cannot be set on %s"
                          % (cand.name, cand.where, type(plugin).__name__))
            return None
    problems, warnings = check(plugin)
    result.warnings.extend("plugin %s (%s): %s" % (plugin_name(plugin), cand.where, w)
                           for w in warnings)
    if problems:
        errors.extend("plugin %s (%s): %s" % (plugin_name(plugin), cand.where, p)
                      for p in problems)
        result.absent[plugin_name(plugin)] = "it failed its checks"
        return None
    return plugin


def _order(loaded: "List[Tuple[_Candidate, Any]]", order: "List[str]") -> "List[Any]":
    """Return: the plugins, those named in ``order`` first and in that order,
    the rest after them in discovery order (MicroPython's sort is not
    stable: the discovery index breaks ties)."""
    def rank(item: "Tuple[int, Tuple[_Candidate, Any]]") -> "Tuple[int, int]":
        names = (item[1][0].name, plugin_name(item[1][1]))
        return next((i for i, n in enumerate(order) if n in names), len(order)), item[0]
    return [item[1][1] for item in sorted(enumerate(loaded), key=rank)]


def _take(cand: _Candidate, opts: _Options, result: LoadResult,
          loaded: "List[Tuple[_Candidate, Any]]") -> None:
    """Load one candidate unless the config refuses it; append it to ``loaded``."""
    refusal = opts.refusal(cand.name)
    if refusal is None and opts.enable and cand.name not in opts.enable:
        refusal = "not in [plugins] enable"
    if refusal is not None:
        result.skipped.append("plugin %s (%s): %s" % (cand.name, cand.where, refusal))
        result.absent[cand.name] = refusal
        return
    plugin = _load(cand, result)
    if plugin is None:
        return
    name = plugin_name(plugin)
    refusal = opts.refusal(name)
    if refusal is not None:
        result.skipped.append("plugin %s (%s): %s" % (name, cand.where, refusal))
        result.absent[name] = refusal
        return
    for other, taken in loaded:
        if plugin_name(taken) == name:
            result.errors.append("plugin %s (%s): the name is taken by %s; not loaded"
                                 % (name, cand.where, other.where))
            return
    loaded.append((cand, plugin))


def _unmatched(opts: _Options, found: "Iterable[str]", errors: "List[str]") -> None:
    """Report names in ``enable`` and ``order`` that match no plugin (typos)."""
    known = set(found)
    for key, names in (("enable", opts.enable), ("order", opts.order)):
        for name in names:
            if name not in known:
                errors.append("[plugins] %s: no plugin named '%s' was found" % (key, name))


def load_plugins(config: Config, dropin_dir: "Optional[str]" = None,
                 entry_points: "Optional[Iterable[Any]]" = None,
                 builtins: bool = True) -> LoadResult:
    """Find, filter, load, validate and order the plugins.

    ``dropin_dir`` overrides ``[plugins] dir``; ``entry_points`` replaces the
    installed entry points of the group ``memagent.plugins`` (``[]``: none);
    ``builtins=False`` leaves out ``memagent.plugins.BUILTIN``.

    Returns: a LoadResult.  Never raises for a bad plugin, a bad drop-in
    file or a bad [plugins] value: each is a message in ``.errors``.
    """
    result = LoadResult()
    opts = _Options(config, result.errors)
    result.hook_timeout_ms = opts.hook_timeout_ms
    candidates = ((_builtin_candidates(result.errors) if builtins else [])
                  + _installed_candidates(entry_points, result.errors)
                  + _dropin_candidates(opts.dir if dropin_dir is None else dropin_dir,
                                       result.errors))
    loaded: "List[Tuple[_Candidate, Any]]" = []
    for cand in candidates:
        _take(cand, opts, result, loaded)
    _unmatched(opts, [c.name for c in candidates] + [plugin_name(p) for _, p in loaded],
               result.errors)
    result.plugins = _order(loaded, opts.order)
    return result
