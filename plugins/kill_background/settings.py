"""``[kill_background]``: the kill plugin's settings.

:data:`SCHEMA` is the section's schema (types, defaults, limits), checked by
the config loader like any plugin's: a bad value stops the agent at start
and names its line.  :class:`Settings` reads the checked values and adds the
one rule that spans two keys (CRITICAL must reach at least as far as LOW);
breaking that leaves the plugin idle, the agent running.

No I/O: only the config, the class ladder and the thresholds.
"""

from memagent.core.classes import CLASSES, rank
from memagent.core.config import ConfigError, Key, Section
from memagent.core.levels import CRITICAL, Thresholds, deficit_kib

SECTION = "kill_background"
KILL_AT_LOW = ("never", "idle", "always")
REACHABLE = CLASSES[1:]  # the foreground app is never killed

# Killing is off (dry run: log the victim it would pick) until a board
# profile or the integrator says otherwise: `memagent run` on a laptop
# never kills.  LOW may take cached apps only, and only while the user is
# idle; CRITICAL may go down to perceptible ones.  `protect` lists process
# names (comm) that are never killed, whatever their class.
SCHEMA = {
    "dry_run": Key("bool", "yes", doc="log the victim it would pick, signal nothing"),
    "low_class": Key("str", "cached", choices=REACHABLE,
                     doc="the lowest-standing class a kill at LOW may reach"),
    "critical_class": Key("str", "perceptible", choices=REACHABLE,
                          doc="the same at CRITICAL"),
    "kill_at_low": Key("str", "idle", choices=KILL_AT_LOW,
                       doc="never, idle (only while the user is away or it thrashes), always"),
    "grace_ms": Key("int", "1000", low=0, doc="from SIGTERM to SIGKILL (0: SIGKILL at once)"),
    "critical_grace_ms": Key("int", "-1", low=-1,
                             doc="the same at CRITICAL; -1: grace_ms"),
    "wait_ms": Key("int", "3000", low=1, doc="for the victim to die after SIGKILL"),
    "cooldown_ms": Key("int", "2000", low=0, doc="between kills, below CRITICAL"),
    "max_kills": Key("int", "4", low=1, doc="per sequence"),
    "protect": Key("str", "init, systemd, sshd, dropbear, adbd, dbus-daemon, udevd, "
                          "systemd-udevd, getty, Xorg, Xfbdev, weston, matchbox-wm",
                   doc="process names (comm) never killed"),
    "mrelease": Key("bool", "yes", doc="process_mrelease after SIGKILL (Linux 5.15)"),
    "critical_margin_pct": Key("int", "25", low=0, high=100,
                               doc="a CRITICAL sequence stops this far above CRITICAL, "
                                   "in percent of the gap up to LOW"),
}


class Settings:
    """``[kill_background]``, read through the plugin's section.  Raises
    (from the constructor): ConfigError when critical_class does not reach
    at least as far as low_class."""

    def __init__(self, section: Section) -> None:
        self.dry_run = section.get_bool("dry_run")
        self.low_class = section.get_str("low_class")
        self.critical_class = section.get_str("critical_class")
        if rank(self.critical_class) > rank(self.low_class):
            raise ConfigError("[%s] critical_class: %r must reach at least as far as "
                              "low_class %r" % (SECTION, self.critical_class, self.low_class))
        self.kill_at_low = section.get_str("kill_at_low")
        self.grace_ms = section.get_int("grace_ms")
        critical_grace = section.get_int("critical_grace_ms")
        self.critical_grace_ms = self.grace_ms if critical_grace < 0 else critical_grace
        self.wait_ms = section.get_int("wait_ms")
        self.cooldown_ms = section.get_int("cooldown_ms")
        self.max_kills = section.get_int("max_kills")
        self.protect = [w.strip() for w in section.get_str("protect").split(",") if w.strip()]
        self.mrelease = section.get_bool("mrelease")
        self.critical_margin_pct = section.get_int("critical_margin_pct")

    def grace_for(self, level: int) -> int:
        """Return: the SIGTERM grace in ms for a kill at ``level`` (0: SIGKILL
        at once)."""
        return self.critical_grace_ms if level >= CRITICAL else self.grace_ms

    def reach_rank(self, level: int) -> int:
        """Return: the rank of the lowest-standing class ``level`` may reach."""
        return rank(self.critical_class if level >= CRITICAL else self.low_class)

    def covered(self, avail_kib: int, th: Thresholds, level: int) -> bool:
        """Return: True if ``avail_kib`` ends a kill sequence that started at
        ``level``: above LOW with the deficit's margin, or, at CRITICAL,
        above CRITICAL by ``critical_margin_pct`` of the gap up to LOW.

        Why the CRITICAL stop: aiming every CRITICAL sequence at LOW killed
        three apps in 330 ms at the end of the 128 MB handset day's growth,
        where the first kill had already left 16,276 KiB (CRITICAL 11,122,
        LOW 22,244); earlyoom stops above its own threshold and killed one
        app fewer.  A ramp that goes on crosses CRITICAL again, and the next
        kill goes at once (no cooldown at CRITICAL)."""
        if deficit_kib(avail_kib, th.low_kib) <= max(th.low_kib // 8, 1):
            return True
        gap = th.low_kib - th.critical_kib
        return level >= CRITICAL and \
            avail_kib >= th.critical_kib + gap * self.critical_margin_pct // 100
