"""``[kill_background]``: the kill plugin's settings, checked at load time
(a bad value names its key; the plugin then stays idle, the agent runs on).

No I/O: only the config and the class ladder (:mod:`memagent.victims`).
"""

from memagent import victims
from memagent.config import Config, ConfigError
from memagent.levels import CRITICAL
from memagent.protocol import CLASSES

SECTION = "kill_background"
KILL_AT_LOW = ("never", "idle", "always")


class Settings:
    """``[kill_background]``, checked.  Raises (from the constructor):
    ConfigError naming the key for a bad value."""

    def __init__(self, config: Config) -> None:
        get = config.get
        self.dry_run = bool(get(SECTION, "dry_run"))
        self.low_class = self._cls(config, "low_class")
        self.critical_class = self._cls(config, "critical_class")
        if victims.rank(self.critical_class) > victims.rank(self.low_class):
            raise ConfigError("[%s] critical_class: %r must reach at least as far as "
                              "low_class %r" % (SECTION, self.critical_class, self.low_class))
        self.kill_at_low = config.get_str(SECTION, "kill_at_low").strip()
        if self.kill_at_low not in KILL_AT_LOW:
            raise ConfigError("[%s] kill_at_low: one of %s, got %r"
                              % (SECTION, ", ".join(KILL_AT_LOW), self.kill_at_low))
        self.grace_ms = self._ms(config, "grace_ms", 0)
        self.wait_ms = self._ms(config, "wait_ms", 1)
        self.cooldown_ms = self._ms(config, "cooldown_ms", 0)
        self.max_kills = self._ms(config, "max_kills", 1)
        self.protect = [w.strip() for w in config.get_str(SECTION, "protect").split(",")
                        if w.strip()]
        self.mrelease = bool(get(SECTION, "mrelease"))
        self.critical_margin_pct = self._ms(config, "critical_margin_pct", 0)
        if self.critical_margin_pct > 100:
            raise ConfigError("[%s] critical_margin_pct: must be <= 100, got %d"
                              % (SECTION, self.critical_margin_pct))

    @staticmethod
    def _cls(config: Config, key: str) -> str:
        value = config.get_str(SECTION, key).strip()
        if value not in CLASSES or value == "foreground":
            raise ConfigError("[%s] %s: one of %s, got %r"
                              % (SECTION, key, ", ".join(CLASSES[1:]), value))
        return value

    @staticmethod
    def _ms(config: Config, key: str, least: int) -> int:
        value = config.get_int(SECTION, key)
        if value < least:
            raise ConfigError("[%s] %s: must be >= %d, got %d" % (SECTION, key, least, value))
        return value

    def reach_rank(self, level: int) -> int:
        """Return: the rank of the lowest-standing class ``level`` may reach."""
        return victims.rank(self.critical_class if level >= CRITICAL else self.low_class)
