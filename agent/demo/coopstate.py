"""What ``memagent demo``'s cooperative mode learns while its apps run
(:mod:`memagent.demo.apps`): the apps' trims, the agent's kill choices and
status, the ramps, and each ramp's own totals.
"""

from typing import Any, Dict, List, Optional

from ..core.levels import LEVEL_NAMES
from . import scenario
from .coop import Coop
from .show import Show


class CoopState:
    """What the demo learns while the apps run: trims, kill choices, the
    agent's status, the ramps and when each started."""

    def __init__(self, t0_ms: int) -> None:
        self.t0_ms = t0_ms
        self.trims: List[Dict[str, Any]] = []
        self.kills: List[Dict[str, Any]] = []
        self.status: Dict[str, Any] = {}
        self.ramps: List[scenario.Progress] = []
        self.ramp_start_ms: List[int] = []
        # Per ramp: each app's compliance (by name) when the ramp started.
        self.compliance_at_start: List[Dict[str, Dict[str, int]]] = []
        self.names: Dict[int, str] = {}  # pid -> the demo's name for it
        self.stopped_ms: Optional[int] = None  # when the demo stopped ramp 2
        self.next_tick_ms = 0

    def allocated(self, t_ms: Optional[int] = None) -> int:
        """Return: MiB allocated by all ramps (at ``t_ms``, default now)."""
        if t_ms is None:
            return sum(p.last() for p in self.ramps)
        return sum(p.at(t_ms) for p in self.ramps)

    def ramp_at(self, t_ms: int) -> int:
        """Return: the number of the ramp running at ``t_ms`` (1, 2; 0 before ramp 1)."""
        return sum(1 for start_ms in self.ramp_start_ms if start_ms <= t_ms)

    def level(self) -> int:
        """Return: the agent's level (NORMAL before the first status)."""
        return LEVEL_NAMES.index(self.status.get("level", "NORMAL"))

    def apps(self) -> List[Dict[str, Any]]:
        """Return: the agent's registered apps (status ``apps``)."""
        apps: List[Dict[str, Any]] = (self.status.get("apps") or {}).get("apps") or []
        return apps

    def compliance(self) -> Dict[str, Dict[str, int]]:
        """Return: app name -> its compliance counters, as the agent last said."""
        return {str(a["name"]): dict(a["compliance"]) for a in self.apps()}

    def measured_kib(self) -> int:
        """Return: KiB the agent measured the apps freeing, all trims so far."""
        return sum(int(a["compliance"]["measured_kib"]) for a in self.apps())

    def start_ramp(self, t_ms: int, progress: scenario.Progress) -> int:
        """Record that a ramp starts at ``t_ms``.  Returns: its number."""
        self.ramps.append(progress)
        self.ramp_start_ms.append(t_ms)
        self.compliance_at_start.append(self.compliance())
        return len(self.ramps)


def app_line(coop: Coop, st: CoopState, show: Show, name: str, line: str) -> None:
    """Take one stdout line of app ``name``: its cache filled, or a trim."""
    words = line.split()
    if words[:1] == ["ready"] and words[1:2] and words[1].startswith("cache_kib="):
        coop.cache_kib[name] = int(words[1].split("=")[1])
    elif words[:1] == ["trim"] and len(words) == 6:
        level = words[1]
        target, freed, left, t_ms = (int(w) for w in words[2:])
        coop.cache_kib[name] = left
        st.trims.append({"t_s": round((t_ms - st.t0_ms) / 1000, 2), "app": name,
                         "level": level, "target_kib": target, "freed_kib": freed,
                         "left_kib": left, "allocated_mib": st.allocated(t_ms),
                         "ramp": st.ramp_at(t_ms)})
        show.line(t_ms, "trim", "%s asked %d KiB at %s, freed %d KiB, %d KiB left"
                  % (name, target, level, freed, left))


def action_line(st: CoopState, show: Show, action: Dict[str, Any]) -> None:
    """Take one plugin action of the agent's events file (a kill choice, a
    source switch) into the timeline."""
    t_ms = int(action.get("t_ms", 0))
    if action.get("action") == "trim":  # release_caches' event, after its apps' trims
        apps = int(action.get("apps") or 0)
        show.line(t_ms, "trim event", "%s: %d app%s asked for a deficit of %s KiB, %s KiB "
                  "freed (measured by the agent) in %s ms" % (
                      action.get("level"), apps, "" if apps == 1 else "s",
                      action.get("deficit_kib"), action.get("freed_kib"), action.get("ms")))
        return
    if action.get("action") != "kill":
        details = ", ".join("%s %s" % (k, v) for k, v in sorted(action.items())
                            if k not in ("action", "t_ms", "wall"))
        show.line(t_ms, str(action.get("action")), details)
        return
    pid = int(action.get("pid", 0))
    name = st.names.get(pid, str(action.get("name")))
    kill = {"t_s": round((t_ms - st.t0_ms) / 1000, 2), "pid": pid, "name": name,
            "class": action.get("cls"), "reason": action.get("reason"),
            "rss_kib": action.get("rss_kib"), "dry_run": bool(action.get("dry_run")),
            "ramp": st.ramp_at(t_ms)}
    st.kills.append(kill)
    show.line(t_ms, "would kill" if kill["dry_run"] else "KILLED",
              "%s (pid %d, class %s, %d MiB resident), for %s" % (
                  name, pid, kill["class"], int(kill["rss_kib"] or 0) // 1024, kill["reason"]))


def kills_dry_run(status: Dict[str, Any]) -> bool:
    """Return: True if the agent's ``status`` says kill_background runs in dry
    run (or does not run at all): nothing is ever signalled."""
    for plugin in status.get("plugins") or []:
        if plugin.get("name") == "kill_background" and not plugin.get("disabled"):
            return bool((plugin.get("state") or {}).get("dry_run"))
    return True


def ramp_totals(st: CoopState, ramp: int) -> Dict[str, Any]:
    """Return: ramp number ``ramp``'s figures, from the trims that started
    while it ran and the agent's counters at its start and end: MiB
    allocated, trims, apps asked, MiB the apps said and the agent measured,
    and per app (``per_app``: name -> asked, asked_kib, claimed_kib, measured_kib)."""
    trims = [t for t in st.trims if t["ramp"] == ramp]
    before = st.compliance_at_start[ramp - 1]
    after = (st.compliance_at_start[ramp] if ramp < len(st.compliance_at_start)
             else st.compliance())
    per_app: Dict[str, Dict[str, int]] = {}
    for name in sorted(after):
        mine = [t for t in trims if t["app"] == name]
        measured = after[name]["measured_kib"] - before.get(name, {}).get("measured_kib", 0)
        per_app[name] = {"asked": len(mine), "asked_kib": sum(t["target_kib"] for t in mine),
                         "claimed_kib": sum(t["freed_kib"] for t in mine),
                         "measured_kib": measured}
    return {"ramp": ramp, "allocated_mib": st.ramps[ramp - 1].last(), "trims": len(trims),
            "asked_apps": len({t["app"] for t in trims}),
            "freed_by_apps_mib": sum(a["measured_kib"] for a in per_app.values()) // 1024,
            "claimed_by_apps_mib": sum(t["freed_kib"] for t in trims) // 1024,
            "kill_choices": len([k for k in st.kills if k["ramp"] == ramp]),
            "per_app": per_app}
