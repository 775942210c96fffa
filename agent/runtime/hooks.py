"""The hook spec: every hook a plugin may define, what the agent passes it,
and the rules a plugin is checked against when it is loaded.

A plugin is a plain object (a module, or an instance of any class) with a
``name`` and some of the async hooks below, called by keyword through
:class:`memagent.runtime.dispatch.Dispatcher`.  This table is the only list
of hooks: the loader checks plugins against it, the dispatcher calls what it
names, and docs/plugins.md documents it (a test holds the three together).

Checked at load time (:func:`check`): a hook is ``async def`` and accepts
``**kwargs``; a parameter without a default is one of the hook's
arguments; an ``on_...`` attribute that is no hook is a typo; the name is a
non-empty str; ``config_schema``, if any, maps setting names to
:class:`memagent.core.config.Key`.  The spec itself is plain data (it
imports on MicroPython); the checks need CPython's ``inspect``.
"""

from .. import aio
from ..core.config import CORE_SCHEMA, Key

try:
    from typing import Any, Dict, List, Tuple
except ImportError:  # MicroPython
    pass

# hook -> (the keyword arguments the agent passes, when it is called)
SPEC: "Dict[str, Tuple[Tuple[str, ...], str]]" = {
    "on_start": (("services", "agent_status", "agent"),
                 "once, after the agent's first reading, before any other hook"),
    "on_stop": ((), "once, when the agent stops"),
    "on_level_change": (("level", "prev_level", "notification", "results"),
                        "the level changed"),
    "on_pressure": (("level", "notification", "deficit_kib", "results"),
                    "every notification at LOW or CRITICAL: changes and reminders"),
    "on_app_registered": (("app",), "an app registered on the control socket"),
    "on_app_gone": (("app",), "a registered app unregistered or disconnected"),
    "on_device": (("action", "subsystem", "devnode", "devnum"),
                  "a device came or went (published by device_watch); action "
                  "'reconcile' when events were lost"),
}
HOOKS: "Tuple[str, ...]" = tuple(SPEC)
# Hooks of earlier releases: a plugin that has one still loads, with a warning.
# [plugins] hook_timeout_ms when unset or bad: the schema's default.
DEFAULT_HOOK_TIMEOUT_MS = int(str(CORE_SCHEMA["plugins"]["hook_timeout_ms"].default))

RETIRED = {
    "on_tick": "on_tick was never called and is retired; while a level holds, "
               "on_pressure comes again every [levels] renotify_ms",
}


def args_of(hook: str) -> "Tuple[str, ...]":
    """Return: the keyword arguments the agent passes to ``hook``.
    Raises: KeyError for a name that is no hook."""
    return SPEC[hook][0]


def plugin_name(plugin: object) -> str:
    """Return: the plugin's ``name`` if it is a str, else its type's name."""
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) else type(plugin).__name__


def _is_async(fn: object) -> bool:
    """Return: True if calling ``fn`` returns a coroutine (async def, or an
    object with an async ``__call__``); also where the interpreter cannot
    tell (MicroPython), and the dispatcher then finds out at the call."""
    return aio.iscoroutinefunction(fn) is not False


def _param_problems(hook: str, fn: object) -> "List[str]":
    """Return: what is wrong with a hook's parameters (keyword calls, **kwargs);
    nothing where there is no ``inspect`` (MicroPython)."""
    try:
        import inspect
    except ImportError:  # MicroPython: signatures cannot be read
        return []

    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        return ["%s: cannot read its signature (%s)" % (hook, e)]
    params = sig.parameters.values()
    problems = []
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        problems.append("%s must accept **kwargs (the agent may pass more arguments later)"
                        % hook)
    known = args_of(hook)
    for p in params:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.POSITIONAL_ONLY:
            problems.append("%s: parameter '%s' is positional-only, but hooks are called"
                            " by keyword" % (hook, p.name))
        elif p.name not in known:
            problems.append("%s: parameter '%s' is not one of its arguments (%s)"
                            % (hook, p.name, ", ".join(known) or "none"))
    return problems


def _hook_problems(hook: str, fn: object) -> "List[str]":
    """Return: what is wrong with one hook (empty if it is fine)."""
    if not callable(fn):
        return ["%s is not a function" % hook]
    if not _is_async(fn):
        return ["%s must be 'async def' (a plain function would block the agent)" % hook]
    return _param_problems(hook, fn)


def _unknown_hook(attr: str) -> str:
    """Return: the message for an ``on_...`` attribute that is no hook."""
    try:
        import difflib

        close = difflib.get_close_matches(attr, HOOKS, n=1)
    except ImportError:  # MicroPython
        close = []
    hint = "did you mean %s?" % close[0] if close else "known hooks: %s" % ", ".join(HOOKS)
    return "%s is not a known hook (%s)" % (attr, hint)


def _schema_problems(plugin: object) -> "List[str]":
    """Return: what is wrong with the plugin's ``config_schema``."""
    schema = getattr(plugin, "config_schema", None)
    if schema is None:
        return []
    if not isinstance(schema, dict):
        return ["config_schema must be a dict of setting name -> memagent.core.config.Key"]
    return ["config_schema: %r must map a name to a Key" % (key,)
            for key, spec in sorted(schema.items(), key=lambda kv: str(kv[0]))
            if not isinstance(key, str) or not key or not isinstance(spec, Key)]


def check(plugin: object) -> "Tuple[List[str], List[str]]":
    """Check ``plugin`` against the spec.

    Returns: (problems that keep it from loading, warnings), neither
    naming the plugin (the caller adds where it came from).  Never raises.
    """
    name = getattr(plugin, "name", None)
    problems, warnings = [], []
    if not isinstance(name, str) or not name.strip():
        problems.append("name must be a non-empty str, got %r" % (name,))
    elif name in CORE_SCHEMA:  # its settings would be the agent's own section
        problems.append("name %r is the agent's own config section [%s]; choose another"
                        % (name, name))
    defined = 0
    for attr in sorted(a for a in dir(plugin) if a.startswith("on_")):
        fn = getattr(plugin, attr, None)
        if attr in RETIRED:
            if fn is not None:
                warnings.append(RETIRED[attr])
        elif attr not in SPEC:
            problems.append(_unknown_hook(attr))
        elif fn is not None:  # None switches an inherited hook off
            defined += 1
            problems.extend(_hook_problems(attr, fn))
    if not defined:
        problems.append("defines none of the hooks (%s)" % ", ".join(HOOKS))
    problems.extend(_schema_problems(plugin))
    return problems, warnings


def validate(plugin: object) -> "List[str]":
    """Check a plugin object against the hook rules.

    Returns: the problems, each naming the plugin (empty: it may load).
    Never raises.
    """
    return ["plugin %s: %s" % (plugin_name(plugin), p) for p in check(plugin)[0]]


def config_schemas(plugins: "List[Any]") -> "Dict[str, Dict[str, Key]]":
    """Return: plugin name -> its ``config_schema`` (an empty one for a
    plugin without settings), for ``Config.claim``."""
    return {plugin_name(p): dict(getattr(p, "config_schema", None) or {}) for p in plugins}
