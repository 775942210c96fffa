"""The configuration file: INI-style ``key = value`` lines under ``[section]``s.

The format is small on purpose (no configparser on MicroPython), and every
error names the file and line.  Unknown keys are errors too: a typo in a
threshold must not silently leave the default in force.

Each section has a schema: a :class:`Key` per setting (its kind, default
and limits).  The agent's own sections are :data:`CORE_SCHEMA`, checked as
the file is parsed.  Every other section belongs to the plugin of that name,
which declares its schema (``config_schema``); such a section is kept aside
at parse time and checked by :meth:`Config.claim` once the plugins are
loaded: against its plugin's schema, or refused, naming it, when no plugin
of that name was found.

Default path: ``/etc/memagent/memagent.conf``.  Example::

    [agent]
    source = auto          # auto, mem_notify, psi, cgroup2, cgroup1, poll, trace
    memcg =                # watch this memcg instead of the whole system
    mlockall = no          # yes, or onfault: only the pages the agent touches
    [levels]
    low_pct = 20           # or low_kib = 26000
    critical_pct = 10
"""
# size-ok: the schemas of every agent section, and the parser MicroPython also runs

try:
    from typing import Dict, List, Optional, Tuple

    Schema = Dict[str, "Key"]
except ImportError:  # MicroPython
    pass

from .levels import Thresholds, default_thresholds

DEFAULT_PATH = "/etc/memagent/memagent.conf"
KINDS = ("str", "int", "float", "bool", "lock")  # lock: a bool, or "onfault"
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off", "")


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and why."""


def convert(kind: str, text: str, where: str) -> "object":
    """Return: ``text`` converted to ``kind``.  Raises: ConfigError naming ``where``."""
    if kind == "str":
        return text
    if kind == "lock":  # [agent] mlockall: no, yes (all), onfault
        low = text.lower()
        if low == "onfault":
            return "onfault"
        if low in _TRUE or low in _FALSE:
            return "all" if low in _TRUE else "no"
        raise ConfigError("%s: expected yes, no or onfault, got %r" % (where, text))
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError("%s: expected yes or no, got %r" % (where, text))
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ConfigError("%s: expected a%s number, got %r"
                          % (where, "n integer" if kind == "int" else "", text))


class Key:
    """One setting of a schema: ``kind`` (one of KINDS), ``default`` (as text,
    as a file would say it; None: unset), and for numbers the inclusive
    bounds ``low`` and ``high``, for text the allowed ``choices``.
    Raises (from the constructor): ValueError for an unknown kind or a
    default that breaks its own rules."""

    __slots__ = ("kind", "default", "low", "high", "choices", "doc")

    def __init__(self, kind: str, default: "Optional[str]" = None,
                 low: "Optional[float]" = None, high: "Optional[float]" = None,
                 choices: "Optional[Tuple[str, ...]]" = None, doc: str = "") -> None:
        if kind not in KINDS:
            raise ValueError("kind %r is not one of %s" % (kind, ", ".join(KINDS)))
        self.kind, self.default, self.low, self.high = kind, default, low, high
        self.choices, self.doc = choices, doc
        if default is not None:
            try:
                self.convert(default, "default")
            except ConfigError as e:
                raise ValueError(str(e))

    def convert(self, text: str, where: str) -> "object":
        """Return: ``text`` as this key's kind, within its limits.
        Raises: ConfigError naming ``where``."""
        value = convert(self.kind, text, where)
        if self.choices is not None and value not in self.choices:
            raise ConfigError("%s: one of %s, got %r" % (where, ", ".join(self.choices), text))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and value < self.low:
                raise ConfigError("%s: must be >= %s, got %s" % (where, _num(self.low), text))
            if self.high is not None and value > self.high:
                raise ConfigError("%s: must be <= %s, got %s" % (where, _num(self.high), text))
        return value


def _num(value: float) -> str:
    return "%d" % value if value == int(value) else "%g" % value


def _keys(kind: str, names: str, **defaults: str) -> "Schema":
    """Return: a schema of keys of one ``kind``, named in ``names``."""
    return {name: Key(kind, defaults.get(name)) for name in names.split()}


# The agent's own sections.  [levels] keys are unset by default: the
# thresholds then scale to the domain (thresholds_from_config).
CORE_SCHEMA: "Dict[str, Schema]" = {
    "agent": dict(
        _keys("str", "source memcg proc_root socket log log_level trace",
              source="auto", memcg="", proc_root="/proc", socket="/run/memagent.sock",
              log="stderr", log_level="info", trace=""),
        mlockall=Key("lock", "no"), oom_score_adj=Key("int", "-1000"),
        nice=Key("int", "0", low=-20, high=19),
        trace_speed=Key("float", "1.0")),
    "levels": dict(
        _keys("int", "low_kib critical_kib recover_kib critical_recover_kib lead_ms "
                     "renotify_ms rate_window_ms active_hold_ms quiet_ms remind_ms"),
        **_keys("float", "low_pct critical_pct thrash_full_pct thrash_critical_pct")),
    "sources": dict(
        _keys("int", "psi_stall_us psi_window_us calm_interval_ms max_fill_kib_s event_gap_ms",
              psi_stall_us="150000", psi_window_us="1000000", calm_interval_ms="10000",
              max_fill_kib_s="20480", event_gap_ms="1000"),
        device_path=Key("str", "/dev/mem_notify")),
    "plugins": dict(
        _keys("str", "enable disable block order dir", enable="", disable="", block="",
              order="", dir="/etc/memagent/plugins.d"),
        hook_timeout_ms=Key("int", "2000")),
    # ui_uid: the UI shell's uid, trusted like root (-1: none); see ipc/registry.py.
    # The control socket's bounds (ipc/control.py, docs/protocol.md "Limits"):
    # connections per untrusted uid, and how long a subscriber that did not
    # register may stay silent.
    "apps": dict(_keys("int", "ui_uid max_apps", ui_uid="-1", max_apps="64"),
                 max_per_uid=Key("int", "32", low=1, high=4096),
                 subscriber_idle_ms=Key("int", "60000", low=100, high=86400000)),
    # The read-only TCP status listener, off by default (ipc/statustcp.py, docs/status-tcp.md).
    "status_tcp": dict(_keys("str", "bind token_file", bind="127.0.0.1",
                             token_file="/etc/memagent/status.token"),
                       enabled=Key("bool", "no"), port=Key("int", "7767", low=1, high=65535),
                       max_clients=Key("int", "4", low=1, high=64),
                       read_timeout_ms=Key("int", "5000", low=100, high=600000)),
}


class Config:
    """Parsed settings: ``get(section, key)`` returns a typed value or None.

    ``values``: section -> key -> text, as set in the file (defaults are the
    schemas').  ``lines``: (section, key) -> the line that set it (for
    errors).  ``schemas``: the sections known so far (the core's, then the
    plugins' as :meth:`claim` adopts them).
    """

    def __init__(self, values: "Dict[str, Dict[str, str]]", origin: str = "<defaults>",
                 lines: "Optional[Dict[Tuple[str, str], int]]" = None) -> None:
        self.values = values
        self.origin = origin
        self.lines = lines or {}
        self.schemas: "Dict[str, Schema]" = dict(CORE_SCHEMA)
        self.overrides: "Dict[Tuple[str, str], str]" = {}  # set(): the command line's
        self.presets: "Dict[Tuple[str, str], str]" = {}  # preset(): plugins' settings

    def _key(self, section: str, key: str) -> Key:
        spec = self.schemas.get(section, {}).get(key)
        if spec is None:
            raise ConfigError("unknown setting [%s] %s" % (section, key))
        return spec

    def _where(self, section: str, key: str) -> str:
        line = self.lines.get((section, key))
        return "%s%s: [%s] %s" % (self.origin, ":%d" % line if line else "", section, key)

    def raw(self, section: str, key: str) -> "Optional[str]":
        """Return: the text set for a key (file or default), or None."""
        value = self.values.get(section, {}).get(key)
        if value is None:
            spec = self.schemas.get(section, {}).get(key)
            value = spec.default if spec is not None else None
        return value

    def get(self, section: str, key: str) -> "object":
        """Return: the typed value (str, int, float or bool), or None if unset.
        Raises: ConfigError if the key is unknown or its value malformed."""
        spec = self._key(section, key)
        text = self.raw(section, key)
        return None if text is None else spec.convert(text, self._where(section, key))

    def get_int(self, section: str, key: str) -> int:
        """Return: an integer setting (0 if unset).  Raises: ConfigError."""
        value = self.get(section, key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def get_float(self, section: str, key: str) -> float:
        """Return: a number setting (0.0 if unset).  Raises: ConfigError."""
        value = self.get(section, key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def get_str(self, section: str, key: str) -> str:
        """Return: a text setting ("" if unset).  Raises: ConfigError."""
        value = self.get(section, key)
        return value if isinstance(value, str) else ""

    def set(self, section: str, key: str, value: str) -> None:
        """Override a setting (command-line flags); :meth:`overridden` keeps
        it for a reloaded file.  Raises: ConfigError."""
        self._key(section, key).convert(value, "[%s] %s" % (section, key))
        self.values.setdefault(section, {})[key] = value
        self.overrides[(section, key)] = value

    def overridden(self, config: "Config") -> "Config":
        """Return: ``config`` (a reloaded file) with this config's overrides
        set on it: ``--memcg`` and the other flags outlive a SIGHUP.
        Raises: ConfigError."""
        for (section, key), value in self.overrides.items():
            config.set(section, key, value)
        for (section, key), value in self.presets.items():
            config.preset(section, key, value)
        return config

    def preset(self, section: str, key: str, value: str) -> None:
        """Override a plugin's setting before its schema is claimed
        (``memagent cuse`` turns its plugin on); :meth:`claim` checks it,
        :meth:`overridden` keeps it."""
        self.values.setdefault(section, {})[key] = value
        self.presets[(section, key)] = value

    def unclaimed(self) -> "List[str]":
        """Return: the sections the file names (with settings or not) that no
        schema knows yet."""
        named = set(self.values) | set(s for s, key in self.lines if not key)
        return sorted(s for s in named if s not in self.schemas)

    def claim(self, schemas: "Dict[str, Schema]",
              absent: "Optional[Dict[str, str]]" = None) -> "List[str]":
        """Adopt the loaded plugins' schemas (section name = plugin name) and
        check every section the file set against them.

        ``absent``: plugins found but not loaded -> why ("disabled by
        [plugins] disable"); their sections are ignored with a warning.
        Returns: those warnings.  Raises: ConfigError, naming the file and
        line, for a section no plugin owns or a bad key or value in one.
        """
        warnings = []
        for section in self.unclaimed():
            where = "%s:%d" % (self.origin, self.lines.get((section, ""), 0))
            schema = schemas.get(section)
            if schema is None:
                why = (absent or {}).get(section)
                if why is None:
                    raise ConfigError("%s: unknown section [%s]: no plugin named %s is "
                                      "loaded" % (where, section, section))
                warnings.append("%s: [%s] is ignored: plugin %s is not loaded (%s)"
                                % (where, section, section, why))
                continue
            self.schemas[section] = schema
            for key, text in self.values.get(section, {}).items():
                if key not in schema:
                    raise ConfigError("%s:%d: unknown setting '%s' in [%s] (known: %s)" % (
                        self.origin, self.lines.get((section, key), 0), key, section,
                        ", ".join(sorted(schema)) or "none"))
                schema[key].convert(text, self._where(section, key))
        for section, schema in schemas.items():
            self.schemas.setdefault(section, schema)
        return warnings


class Section:
    """One section of a Config, read through its schema: what a plugin gets
    as ``services.config`` (its own section).  Reads the config it was made
    from at each call."""

    def __init__(self, config: Config, name: str) -> None:
        self._config = config
        self.name = name

    def get(self, key: str) -> "object":
        """Return: the typed value, or None if unset.  Raises: ConfigError
        for a key the section's schema does not have."""
        return self._config.get(self.name, key)

    def get_int(self, key: str) -> int:
        """Return: an integer setting (0 if unset).  Raises: ConfigError."""
        return self._config.get_int(self.name, key)

    def get_float(self, key: str) -> float:
        """Return: a number setting (0.0 if unset).  Raises: ConfigError."""
        return self._config.get_float(self.name, key)

    def get_str(self, key: str) -> str:
        """Return: a text setting ("" if unset).  Raises: ConfigError."""
        return self._config.get_str(self.name, key)

    def get_bool(self, key: str) -> bool:
        """Return: a yes/no setting (False if unset).  Raises: ConfigError."""
        return self._config.get(self.name, key) is True


def _strip_comment(line: str) -> str:
    for mark in (" #", "\t#", " ;"):
        at = line.find(mark)
        if at >= 0:
            line = line[:at]
    return line.strip()


def parse_config(text: str, origin: str = "<string>") -> Config:
    """Parse configuration text.

    The agent's sections are checked now; other sections are kept for the
    plugins of those names (:meth:`Config.claim`).
    Returns: a Config.  Raises: ConfigError naming ``origin`` and the line
    for a line without ``=``, an unknown key or a bad value in an agent's
    section, or a malformed section header.
    """
    values: "Dict[str, Dict[str, str]]" = {}
    lines: "Dict[Tuple[str, str], int]" = {}
    section: "Optional[str]" = None
    lineno = 0
    for line in text.split("\n"):
        lineno += 1
        where = "%s:%d" % (origin, lineno)
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        stripped = _strip_comment(stripped)
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            if not section or not _is_name(section):
                raise ConfigError("%s: bad section name [%s]" % (where, section))
            lines.setdefault((section, ""), lineno)
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("%s: expected 'key = value'" % where)
        if section is None:
            raise ConfigError("%s: '%s' comes before any [section]" % (where, key))
        value = value.strip()
        schema = CORE_SCHEMA.get(section)
        if schema is not None:
            if key not in schema:
                raise ConfigError("%s: unknown setting '%s' in [%s]" % (where, key, section))
            schema[key].convert(value, where)
        values.setdefault(section, {})[key] = value
        lines[(section, key)] = lineno
    return Config(values, origin, lines)


def _is_name(text: str) -> bool:
    """Return: True for a plugin-like name: letters, digits, '_', '-', '.'."""
    for ch in text:
        if not (ch.isalpha() or ch.isdigit() or ch in "_-."):
            return False
    return True


def load_config(path: "Optional[str]") -> Config:
    """Load ``path``; a missing default file means defaults, a missing
    explicit one is an error.

    Returns: the Config.  Raises: ConfigError (missing explicit file, or
    a malformed one).
    """
    target = path or DEFAULT_PATH
    try:
        with open(target) as f:
            text = f.read()
    except OSError as e:
        if path is None:
            return Config({})
        raise ConfigError("cannot read %s: %s" % (target, e))
    return parse_config(text, target)


def thresholds_from_config(config: Config, total_kib: int) -> Thresholds:
    """Return: thresholds for a domain of ``total_kib``, defaults scaled to
    it, overridden by the [levels] section.  Raises: ConfigError if the
    result is inconsistent (critical above low...)."""
    base = default_thresholds(total_kib).as_dict()
    for pct_key, kib_key in (("low_pct", "low_kib"), ("critical_pct", "critical_kib")):
        pct = config.get("levels", pct_key)
        if pct is not None:
            base[kib_key] = int(total_kib * float(pct) / 100)  # type: ignore[arg-type]
    explicit = {}
    for key in base:
        value = config.get("levels", key)
        if value is not None:
            base[key] = value
            explicit[key] = True
    if "recover_kib" not in explicit:
        base["recover_kib"] = None
    if "critical_recover_kib" not in explicit:
        base["critical_recover_kib"] = None
    try:
        return Thresholds(total_kib=total_kib, **base)
    except ValueError as e:
        raise ConfigError("[levels]: %s" % e)
