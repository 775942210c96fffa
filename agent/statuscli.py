"""What ``memagent status`` prints, and how it asks the agent: its pages
merged, and the reason when it gives no status (the exit codes)."""


from .core.config import Config, thresholds_from_config
from .core.levels import Monitor, level_name
from .ipc.ask import ReplyTooLarge, ask
from .sense import domains

try:
    from typing import Any, Dict, Tuple
except ImportError:  # MicroPython
    pass

STATUS_NOT_RUNNING, STATUS_BUSY, STATUS_TOO_LARGE, STATUS_NO_ANSWER = 3, 4, 5, 6
MAX_STATUS_PAGES = 4096  # pages of the app list (one app each at worst)


class AgentBusy(Exception):
    """The agent refused the connection: too many clients."""


def local_status(config: Config) -> "Dict[str, Any]":
    """Return: the level computed from /proc (or the memcg) now, when no
    agent answers.  Raises: OSError, ParseError."""
    from . import aio  # its clock; only when no agent runs

    memcg = config.get("agent", "memcg")
    domain = domains.open_domain(str(memcg) if memcg else None,
                                 config.get_str("agent", "proc_root"))
    reading = domain.read(aio.ticks_ms(), "status")
    monitor = Monitor(thresholds_from_config(config, reading.total_kib))
    monitor.update(reading)
    return {"agent": "not running: computed from %s now" % domain.name,
            "level": level_name(monitor.level), "reading": reading.to_dict(),
            "thresholds": monitor.thresholds.as_dict()}


def print_status(st: "Dict[str, Any]") -> None:
    r = st.get("reading") or {}
    total = r.get("total_kib") or 0
    avail = r.get("avail_kib") or 0
    print("level:     %s" % st.get("level"))
    print("available: %d KiB of %d KiB (%d%%)" % (avail, total, 100 * avail // total if total
                                                  else 0))
    for key in ("free_kib", "file_kib", "anon_kib", "boost_kib", "psi_some_avg10",
                "psi_full_avg10"):
        if key in r:
            print("%-10s %s" % (key.split("_")[0] + ":" if "psi" not in key else key + ":",
                                r[key]))
    for key in ("agent", "source", "pid", "uptime_s", "eta_ms", "fill_kib_s", "readings",
                "notifications"):
        if st.get(key) is not None:
            print("%-10s %s" % (key + ":", st[key]))
    apps = st.get("apps")
    if isinstance(apps, dict) and isinstance(apps.get("apps"), list):
        print("%-10s %d registered, %s connections" % ("apps:", len(apps["apps"]),
                                                      apps.get("connections")))
    if st.get("truncated"):
        print("%-10s %s (the reply had to fit one line)" % ("left out:",
                                                            ", ".join(st["truncated"])))
    for name, why in sorted((st.get("unavailable") or {}).items()):
        print("  %s unavailable: %s" % (name, why))
    for note in st.get("recent") or []:
        print("  event: %s <- %s %s avail %s KiB" % (note["level"], note["prev_level"],
                                                     note["reason"], note["avail_kib"]))
    for plugin in st.get("plugins") or []:
        why = plugin.get("unavailable")
        print("  plugin %s: %s" % (plugin.get("name"), "unavailable: %s" % why if why else "ok"))
    for act in st.get("actions") or []:
        fields = ", ".join("%s=%s" % (k, act[k]) for k in sorted(act)
                           if k not in ("action", "t_ms", "wall"))
        print("  action: %s %s" % (act.get("action"), fields))


def _status_page(path: str, after: int) -> "Dict[str, Any]":
    """Return: one status reply's status, its app list from ``after`` on.
    Raises: AgentBusy, ReplyTooLarge, OSError, ValueError (as ask)."""
    reply = ask(path, "status", fields={"apps_after": after} if after else None)
    if not reply.get("ok"):
        if reply.get("code") == "busy":
            raise AgentBusy(str(reply.get("error", "busy")))
        raise ValueError(str(reply.get("error", "refused")))
    st = reply.get("status")
    if not isinstance(st, dict):
        raise ValueError("a status reply without a status object")
    return st


def ask_status(path: str) -> "Dict[str, Any]":
    """Return: the running agent's status, every page of its app list
    merged (an agent that does not page answers in one).  Raises:
    AgentBusy; ReplyTooLarge; FileNotFoundError or ConnectionRefusedError
    when no agent runs; other OSError or ValueError for no usable answer."""
    st = _status_page(path, 0)
    apps = st.get("apps")
    after = 0
    for _ in range(MAX_STATUS_PAGES):
        if not isinstance(apps, dict) or not isinstance(apps.get("apps"), list):
            break
        nxt = apps.get("apps_next")
        if isinstance(nxt, bool) or not isinstance(nxt, int) or nxt <= after:
            break
        more = _status_page(path, nxt).get("apps")
        if not isinstance(more, dict) or not isinstance(more.get("apps"), list):
            raise ValueError("a status page without its apps")
        apps["apps"].extend(more["apps"])
        apps["apps_next"], after = more.get("apps_next"), nxt
    return st


def status_failure(path: str, err: Exception) -> "Tuple[int, str]":
    """Return: (exit code, what went wrong) when the agent gave no status."""
    if isinstance(err, AgentBusy):
        return STATUS_BUSY, "the agent at %s is busy (%s)" % (path, err)
    if isinstance(err, ReplyTooLarge):
        return STATUS_TOO_LARGE, "the agent at %s sent a reply too large (%s)" % (path, err)
    if isinstance(err, OSError) and err.args and err.args[0] in (2, 111):
        # ENOENT (no socket), ECONNREFUSED (nobody listens): by number, which
        # MicroPython's plain OSError carries too
        return STATUS_NOT_RUNNING, "not running at %s (%s)" % (path, err)
    return STATUS_NO_ANSWER, "the agent at %s did not answer (%s: %s)" % (
        path, type(err).__name__, err)
