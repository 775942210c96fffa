"""The lists of ``memagent status``'s screen (statusview.py): the apps
table, the events, one per line with their reasons in words, and the
plugins' health, dry run said.  Pure, CPython and MicroPython alike.
"""

from .statusparts import (
    BOLD,
    DIM,
    ERROR,
    LEVEL_STYLES,
    RED,
    YELLOW,
    Line,
    ago_ms,
    as_dict,
    as_int,
    as_list,
    duration_ms,
    mib,
    pad,
    reason_words,
    rpad,
    shorten,
    text,
)

try:
    from typing import Any, Dict, List, Optional
except ImportError:  # MicroPython
    pass

MAX_PLUGINS = 32
KIND_COLS = 6  # the kind column's width
TIME_COLS = 6  # the time column's: "-2h43m"


def _style(name: "Any") -> str:
    """Return: the colour of a level name ("" for anything else)."""
    return LEVEL_STYLES.get(name, "") if isinstance(name, str) else ""


# -- apps -------------------------------------------------------------------------------


def _app_row(cells: "List[str]") -> str:
    """Return: one row of the apps table from its eight cells."""
    name, pid, cls, rss, trims, freed, answered, timeouts = cells
    return ("  " + pad(shorten(name, 16), 17) + rpad(pid, 7) + " " + pad(shorten(cls, 11), 12)
            + rpad(rss, 8) + rpad(trims, 6) + rpad(freed, 13) + rpad(answered, 9)
            + rpad(timeouts, 4))


def _rss_key(app: "Dict[Any, Any]") -> int:
    """Return: what the apps are sorted by: RSS, else the app's estimate, in KiB."""
    for key in ("rss_kib", "estimate_kib"):
        n = as_int(app.get(key))
        if n is not None:
            return n
    return -1


def apps_lines(st: "Dict[Any, Any]", width: int, apps_n: int) -> "List[Line]":
    """Return: the apps section: a title with the counts, then the apps
    with the largest RSS first, at most ``apps_n``, and how many more."""
    reg = st.get("apps")
    if not isinstance(reg, dict):
        return [Line("APPS", BOLD).add(" ? (no app registry in this status)")]
    apps = [a for a in as_list(reg.get("apps")) if isinstance(a, dict)]
    total = as_int(reg.get("apps_total"))
    count = max(total if total is not None else 0, len(apps))
    head = Line("APPS", BOLD).add(" %d registered, %s connections, %s trims asked" % (
        count, text(reg.get("connections")), text(reg.get("trims"))))
    if not apps:
        return [head.add("; none registered" if count == 0 else "; their list is missing")]
    lines = [head.add(" (freed: claimed/measured)"),
             Line(_app_row(["name", "pid", "class", "RSS MiB", "trims", "freed MiB",
                            "answered", "t/o"]), DIM)]
    ranked = sorted(apps, key=_rss_key, reverse=True)
    for app in ranked[:apps_n]:
        c = as_dict(app.get("compliance"))
        rss = app.get("rss_kib")
        lines.append(Line(_app_row([
            text(app.get("name")), text(app.get("pid")), text(app.get("class")),
            mib(rss) if rss is not None else "?",
            text(c.get("asked")), "%s/%s" % (mib(c.get("claimed_kib")), mib(c.get("measured_kib"))),
            "%s/%s" % (text(c.get("answered")), text(c.get("asked"))),
            text(c.get("timeouts"))])))
    if count > apps_n:
        lines.append(Line("  ... and %d more" % (count - min(apps_n, len(ranked))), DIM))
    return lines


# -- events -----------------------------------------------------------------------------


def _events_of(st: "Dict[Any, Any]") -> "List[Any]":
    """Return: the status's events, oldest first; from an older agent's
    "recent" notifications and "actions" when it has no "events"."""
    if "events" in st:
        return as_list(st.get("events"))
    old = []
    for note in as_list(st.get("recent")):
        if isinstance(note, dict):
            entry = dict(note)
            entry["kind"] = "level"
            old.append(entry)
    for act in as_list(st.get("actions")):
        if isinstance(act, dict):
            entry = dict(act)
            entry["kind"] = "action"
            old.append(entry)
    return sorted(old, key=lambda e: as_int(e.get("t_ms")) or 0)


def event_lines(st: "Dict[Any, Any]", now_ms: "Optional[int]", events_n: int) -> "List[Line]":
    """Return: the events section: the last ``events_n`` events, oldest
    first, one line each: time before the status, kind, what happened."""
    if "events" not in st and "recent" not in st and "actions" not in st:
        return [Line("EVENTS", BOLD).add(" ? (none in this status)")]
    events = _events_of(st)
    shown = events[len(events) - events_n:] if events_n and events else []
    head = Line("EVENTS", BOLD)
    if not events:
        return [head.add(" none yet")]
    head.add(" last %d of %d, times before the status" % (len(shown), len(events)))
    lines = [head]
    for event in shown:
        e = as_dict(event)
        kind = _kind(e)
        line = Line("  " + rpad(ago_ms(e.get("t_ms"), now_ms), TIME_COLS) + " ")
        line.add(pad(shorten(kind, KIND_COLS), KIND_COLS + 1), BOLD)
        lines.append(_event_body(kind, e, line))
    return lines


def _kind(e: "Dict[Any, Any]") -> str:
    """Return: the kind column: "level", the action's name, "error"..."""
    kind = e.get("kind")
    if kind == "action":
        return text(e.get("action"))
    if kind == "plugin_error":
        return "error"
    return text(kind)


def _event_body(kind: str, e: "Dict[Any, Any]", line: Line) -> Line:
    """Return: ``line`` with what the event says, in words."""
    if kind == "level":
        return _level_body(e, line)
    if kind == "kill":
        return _kill_body(e, line)
    if kind == "trim":
        line.add("asked %s apps to free %s MiB, freed %s MiB in %s" % (
            text(e.get("apps")), mib(e.get("deficit_kib")), mib(e.get("freed_kib")),
            duration_ms(e.get("ms"))))
        return line.add(", escalated" if e.get("escalated") is True else "")
    if kind == "source":
        line.add("now ").add(text(e.get("source")), BOLD)
        return line.add(" (was %s)" % text(e.get("was"), "none"))
    if kind == "error":
        return line.add("plugin %s failed in %s: %s" % (
            text(e.get("plugin")), text(e.get("hook")), text(e.get("error"))), ERROR)
    if kind == "gap":
        return line.add("%s events lost (the agent keeps the last 64)" % text(e.get("lost")),
                        YELLOW)
    fields = ["%s=%s" % (k, text(e[k])) for k in sorted(k for k in e if isinstance(k, str))
              if k not in ("kind", "action", "t_ms", "wall", "seq")]
    return line.add(", ".join(fields[:8]) or "?")


def _level_body(e: "Dict[Any, Any]", line: Line) -> Line:
    """Return: ``line`` with a level change (or reminder): from, to, why,
    the memory available then and the time left."""
    level, prev, reason = e.get("level"), e.get("prev_level"), e.get("reason")
    if level == prev:
        line.add(text(level), _style(level)).add(" still held")
        if reason != "still":
            line.add(": " + reason_words(reason))
    else:
        line.add(text(prev), _style(prev)).add(" -> ").add(text(level), _style(level))
        line.add(": " + reason_words(reason))
    line.add(", at %s MiB" % mib(e.get("avail_kib")))
    if e.get("eta_ms") is not None:
        line.add(", time left " + duration_ms(e.get("eta_ms")))
    return line


def _kill_body(e: "Dict[Any, Any]", line: Line) -> Line:
    """Return: ``line`` with a kill: who, its class and RSS, whether it was
    a dry run (nothing killed) or what it freed, and why."""
    who = "%s %s (%s, %s MiB)" % (text(e.get("name")), text(e.get("pid")), text(e.get("cls")),
                                  mib(e.get("rss_kib")))
    reason = e.get("reason")
    if isinstance(reason, str) and reason.partition(" ")[0] in LEVEL_STYLES:
        reason = reason.partition(" ")[2]  # "CRITICAL avail": the level shows in its own event
    why = "; " + reason_words(reason)
    if e.get("dry_run") is True:
        return line.add("DRY RUN", YELLOW).add(" would kill " + who + why)
    outcome = e.get("outcome")
    if outcome == "killed":
        freed = e.get("freed_kib")
        return line.add("killed", RED).add(" " + who + (
            ", freed %s MiB" % mib(freed) if freed is not None else "") + why)
    return line.add("not killed (%s): " % text(outcome)).add(who + why)


# -- plugins ----------------------------------------------------------------------------


def plugin_lines(st: "Dict[Any, Any]", width: int) -> "List[Line]":
    """Return: the plugins section: the names of those that are simply ok
    on the title line (wrapped, never cut), then one line for each of the
    others: DRY RUN, unavailable and why, disabled and why, the error of
    its status, or its errors in the events."""
    if "plugins" not in st:
        return [Line("PLUGINS", BOLD).add(" ? (none in this status)")]
    plugins = as_list(st.get("plugins"))
    errors: "Dict[str, int]" = {}
    for e in as_list(st.get("events")):
        e = as_dict(e)
        if e.get("kind") == "plugin_error":
            name = text(e.get("plugin"))
            errors[name] = errors.get(name, 0) + 1
    lines = [Line("PLUGINS", BOLD).add(" %d" % len(plugins))]
    ok = []
    for p in plugins[:MAX_PLUGINS]:
        p = as_dict(p)
        name = text(p.get("name"))
        line = Line("  " + pad(shorten(name, 19), 20))
        simple = _plugin_health(name, p, line)
        if simple and name not in errors:
            ok.append(shorten(name, width - 12))
            continue
        if simple:
            line.add("ok")
        if name in errors:
            line.add(", %d errors (see EVENTS)" % errors[name], ERROR)
        lines.append(line)
    if ok:
        _wrap_names(lines, "ok: ", ok, width)
    if len(plugins) > MAX_PLUGINS:
        lines.append(Line("  ... and %d more" % (len(plugins) - MAX_PLUGINS), DIM))
    return lines


def _wrap_names(lines: "List[Line]", lead: str, names: "List[str]", width: int) -> None:
    """Add ``lead`` and ``names`` to the title line ``lines[0]``, going on
    to lines of their own (inserted after it) when the width is used up."""
    at = 0
    lines[at].add("; " + lead.rstrip())
    for i, name in enumerate(names):
        item = name + ("," if i < len(names) - 1 else "")
        if lines[at].width() + 1 + len(item) > width:
            at += 1
            lines.insert(at, Line("   "))
        lines[at].add(" " + item)


def _plugin_health(name: str, p: "Dict[Any, Any]", line: Line) -> bool:
    """Add to ``line`` how plugin ``p`` is.  Returns: True if it is simply
    ok (nothing added then)."""
    state = p.get("state")
    if p.get("disabled") is not None:
        line.add("disabled: " + text(p.get("disabled")), ERROR)
    elif p.get("unavailable") is not None:
        line.add("unavailable: " + text(p.get("unavailable")), DIM)
    elif isinstance(state, dict) and "error" in state:
        line.add("error: " + text(state.get("error")), ERROR)
    elif isinstance(state, dict) and state.get("dry_run") is True:
        if name == "kill_background":
            line.add("DRY RUN", YELLOW).add(" (would kill, never kills), choices so far: %s" %
                                            text(state.get("dry_run_choices"), "0"))
        else:
            line.add("DRY RUN", YELLOW).add(" (would act, never acts)")
    elif isinstance(state, dict) and name == "kill_background":
        line.add("ok, armed: %s kills" % text(state.get("kills"), "0"))
    else:
        return True
    return False
