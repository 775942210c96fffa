"""The configuration file: INI-style ``key = value`` lines under ``[section]``s.

The format is small on purpose (no configparser on MicroPython), and every
error names the file and line.  Unknown keys are errors too: a typo in a
threshold must not silently leave the default in force.

Default path: ``/etc/memagent/memagent.conf``.  Example::

    [agent]
    source = auto          # auto, mem_notify, psi, cgroup2, cgroup1, poll, trace
    memcg =                # watch this memcg instead of the whole system
    mlockall = no          # yes, or onfault: only the pages the agent touches
    [levels]
    low_pct = 20           # or low_kib = 26000
    critical_pct = 10
"""

try:
    from typing import Dict, List, Optional
except ImportError:  # MicroPython
    pass

from .levels import Thresholds, default_thresholds

DEFAULT_PATH = "/etc/memagent/memagent.conf"

# section -> key -> kind ("str", "int", "float", "bool"; "lock": a bool or "onfault")
SCHEMA = {
    "agent": {
        "source": "str", "memcg": "str", "proc_root": "str", "mlockall": "lock",
        "oom_score_adj": "int", "socket": "str", "log": "str", "log_level": "str",
        "trace": "str", "trace_speed": "float",
    },
    "levels": {
        "low_kib": "int", "critical_kib": "int", "low_pct": "float", "critical_pct": "float",
        "recover_kib": "int", "critical_recover_kib": "int", "lead_ms": "int",
        "renotify_ms": "int", "rate_window_ms": "int", "active_hold_ms": "int",
        "thrash_full_pct": "float", "thrash_critical_pct": "float", "quiet_ms": "int",
    },
    "sources": {
        "device_path": "str", "psi_stall_us": "int", "psi_window_us": "int",
        "calm_interval_ms": "int", "max_fill_kib_s": "int", "event_gap_ms": "int",
    },
    "plugins": {
        "enable": "str", "disable": "str", "block": "str", "order": "str", "dir": "str",
        "hook_timeout_ms": "int",
    },
    "apps": {"ui_uid": "int", "max_apps": "int"},
    "release_caches": {"fanout": "int", "drop_caches": "bool", "compact_memory": "bool"},
    "kill_background": {
        "dry_run": "bool", "low_class": "str", "critical_class": "str", "kill_at_low": "str",
        "grace_ms": "int", "wait_ms": "int", "cooldown_ms": "int", "max_kills": "int",
        "protect": "str", "mrelease": "bool", "critical_margin_pct": "int",
    },
    "notify_ui": {"bus": "str", "medium_eta_ms": "int"},
    "user_activity": {"devices": "str", "idle_after_ms": "int", "backlight": "str"},
    "device_watch": {"switch_source": "bool"},
}

DEFAULTS = {
    "agent": {"source": "auto", "memcg": "", "proc_root": "/proc", "mlockall": "no",
              "oom_score_adj": "-1000", "socket": "/run/memagent.sock", "log": "stderr",
              "log_level": "info", "trace": "", "trace_speed": "1.0"},
    "levels": {},
    "sources": {"device_path": "/dev/mem_notify", "psi_stall_us": "150000",
                "psi_window_us": "1000000", "calm_interval_ms": "10000",
                "max_fill_kib_s": "20480", "event_gap_ms": "1000"},
    "plugins": {"enable": "", "disable": "", "block": "", "order": "",
                "dir": "/etc/memagent/plugins.d", "hook_timeout_ms": "2000"},
    # ui_uid: the UI shell's uid, trusted like root (-1: none); see agent/apps.py
    "apps": {"ui_uid": "-1", "max_apps": "64"},
    # The kernel knobs are last resorts, off by default: drop_caches empties
    # the whole machine's clean page cache, compact_memory costs CPU.
    "release_caches": {"fanout": "3", "drop_caches": "no", "compact_memory": "no"},
    # Killing is off (dry run: log the victim it would pick) until a board
    # profile or the integrator says otherwise: `memagent run` on a laptop
    # never kills.  LOW may take cached apps only, and only while the user is
    # idle; CRITICAL may go down to perceptible ones.  `protect` lists
    # process names (comm) that are never killed, whatever their class.
    "kill_background": {"dry_run": "yes", "low_class": "cached",
                        "critical_class": "perceptible", "kill_at_low": "idle",
                        "grace_ms": "1000", "wait_ms": "3000", "cooldown_ms": "2000",
                        "max_kills": "4", "mrelease": "yes", "critical_margin_pct": "25",
                        "protect": "init, systemd, sshd, dropbear, adbd, dbus-daemon, udevd, "
                                   "systemd-udevd, getty, Xorg, Xfbdev, weston, matchbox-wm"},
    # bus: "system", "session", or a D-Bus address (unix:path=...).
    "notify_ui": {"bus": "system", "medium_eta_ms": "10000"},
    # The user counts as idle after idle_after_ms without input, or while
    # every backlight matched by `backlight` reports bl_power != 0.
    "user_activity": {"devices": "/dev/input/event*", "idle_after_ms": "60000",
                      "backlight": "/sys/class/backlight/*/bl_power"},
    "device_watch": {"switch_source": "yes"},
}

_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off", "")


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and why."""


class Config:
    """Parsed settings: ``get(section, key)`` returns a typed value or None."""

    def __init__(self, values: "Dict[str, Dict[str, str]]", origin: str = "<defaults>") -> None:
        self.values = values
        self.origin = origin

    def raw(self, section: str, key: str) -> "Optional[str]":
        """Return: the text set for a key (file or default), or None."""
        value = self.values.get(section, {}).get(key)
        if value is None:
            value = DEFAULTS.get(section, {}).get(key)
        return value

    def get(self, section: str, key: str) -> "object":
        """Return: the typed value (str, int, float or bool), or None if unset.
        Raises: ConfigError if the key is unknown or its value malformed."""
        kind = SCHEMA.get(section, {}).get(key)
        if kind is None:
            raise ConfigError("unknown setting [%s] %s" % (section, key))
        text = self.raw(section, key)
        if text is None:
            return None
        return convert(kind, text, "%s: [%s] %s" % (self.origin, section, key))

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
        """Override a setting (command-line flags).  Raises: ConfigError."""
        kind = SCHEMA.get(section, {}).get(key)
        if kind is None:
            raise ConfigError("unknown setting [%s] %s" % (section, key))
        convert(kind, value, "[%s] %s" % (section, key))
        self.values.setdefault(section, {})[key] = value


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


def _strip_comment(line: str) -> str:
    for mark in (" #", "\t#", " ;"):
        at = line.find(mark)
        if at >= 0:
            line = line[:at]
    return line.strip()


def parse_config(text: str, origin: str = "<string>") -> Config:
    """Parse configuration text.

    Returns: a Config.  Raises: ConfigError naming ``origin`` and the line
    for an unknown section or key, a line without ``=``, or a bad value.
    """
    values: "Dict[str, Dict[str, str]]" = {}
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
            if section not in SCHEMA:
                raise ConfigError("%s: unknown section [%s]" % (where, section))
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("%s: expected 'key = value'" % where)
        if section is None:
            raise ConfigError("%s: '%s' comes before any [section]" % (where, key))
        kind = SCHEMA[section].get(key)
        if kind is None:
            raise ConfigError("%s: unknown setting '%s' in [%s]" % (where, key, section))
        value = value.strip()
        convert(kind, value, where)
        values.setdefault(section, {})[key] = value
    return Config(values, origin)


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


def known_keys() -> "List[str]":
    """Return: every ``section.key`` the file may set (for --help and docs)."""
    return ["%s.%s" % (s, k) for s in SCHEMA for k in SCHEMA[s]]


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
