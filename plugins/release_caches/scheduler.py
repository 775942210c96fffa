"""Fair trim scheduling: which apps to ask to free memory, and how much.

From the /dev/mem_notify thread (shared/seeds): wake a bounded number of
apps per round (``fanout``), never everyone (thundering herd, over-freeing),
in a fair rotation so that no app is always or never chosen (Alan Cox).
Stride scheduling within a class: the apps with the lowest ``pass_`` are
asked and asking adds a stride, larger for apps whose *measured* compliance
(EWMA of freed/asked) is low.  Least important class first (Android's
oom_adj ladder; never foreground).  A round's targets split the deficit,
capped by what each app can free.  Pure integer logic, no clocks (``now_ms``
is passed in): the same plan on CPython and MicroPython, whose floats may
be single precision on 32-bit ARM.  Algorithm and reasons: docs/fairness.md.
"""

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass

from memagent.core.classes import CLASSES, FOREGROUND, parse_class
from memagent.core.levels import CRITICAL, LOW, NORMAL, level_name

DEFAULT_REACHABLE = {
    LOW: ("cached", "service"),
    CRITICAL: ("cached", "service", "perceptible", "visible"),
}

FULL_PERMILLE = 1000
STRIDE_UNIT = 1000          # the stride of a fully compliant app
PASS_LIMIT = 1 << 28        # renormalise below this: MicroPython small ints are 31-bit
LEARNED_MAX_KIB = 1 << 22   # 4 GiB: a learned cap stops growing here


class AppState:
    """What the scheduler keeps per app: a fixed set of integers."""

    __slots__ = ("app_id", "cls", "estimate_kib", "learned_kib", "compliance_permille", "pass_",
                 "charged", "event_seq", "asked", "asked_kib", "freed_kib",
                 "last_asked_ms", "last_freed_kib")

    def __init__(self, app_id: int, cls: int, estimate_kib: "Optional[int]",
                 compliance_permille: int, pass_: int) -> None:
        self.app_id = app_id
        self.cls = cls
        self.estimate_kib = estimate_kib  # what the app says it can free
        self.learned_kib: "Optional[int]" = None  # what it freed when short of a target
        self.compliance_permille = compliance_permille
        self.pass_ = pass_
        self.charged = 0              # stride charged for the ask not yet recorded
        self.event_seq = -1           # the last event this app was asked in
        self.asked = 0
        self.asked_kib = 0
        self.freed_kib = 0
        self.last_asked_ms: "Optional[int]" = None
        self.last_freed_kib: "Optional[int]" = None

    def cap_kib(self) -> "Optional[int]":
        """Return: the most to ask of this app: its estimate, else what it
        freed when it last fell short, else None (unknown)."""
        return self.learned_kib if self.estimate_kib is None else self.estimate_kib

    def as_dict(self, vtime: int) -> "Dict[str, Any]":
        """Return: a JSON-ready dict; ``lag`` is the pass relative to the
        class's virtual time (negative: due sooner)."""
        return {"id": self.app_id, "class": CLASSES[self.cls],
                "estimate_kib": self.estimate_kib, "learned_kib": self.learned_kib,
                "compliance_pct": self.compliance_permille / 10,
                "lag": self.pass_ - vtime, "asked": self.asked,
                "asked_kib": self.asked_kib, "freed_kib": self.freed_kib,
                "last_asked_ms": self.last_asked_ms, "last_freed_kib": self.last_freed_kib}


def _ahead(a: AppState, b: AppState) -> bool:
    """Return: True if ``a`` should be asked before ``b``: less important
    class first, then lower pass, then lower id."""
    if a.cls != b.cls:
        return a.cls > b.cls
    if a.pass_ != b.pass_:
        return a.pass_ < b.pass_
    return a.app_id < b.app_id


class FairScheduler:
    """Plans trim rounds over registered apps; see the module docstring.

    Per event: :meth:`begin_event`, then :meth:`plan_round` and one
    :meth:`record_result` per asked app, round after round, until the
    deficit is covered (``bench/fairsim.py`` runs that loop on pure data).
    """

    def __init__(self, fanout: int = 3, min_target_kib: int = 256,
                 reachable: "Optional[Dict[int, Tuple[str, ...]]]" = None,
                 initial_compliance_permille: int = 750, min_weight_permille: int = 50,
                 ewma_div: int = 4, max_apps: int = 4096, low_deadline_ms: int = 1000,
                 critical_deadline_ms: int = 250) -> None:
        if fanout < 1 or min_target_kib < 1 or max_apps < 1 or ewma_div < 1:
            raise ValueError("fanout, min_target_kib, max_apps and ewma_div must be >= 1")
        if not 0 < min_weight_permille <= FULL_PERMILLE or \
                not 0 <= initial_compliance_permille <= FULL_PERMILLE:
            raise ValueError("permille values must be within 0..1000 (weight > 0)")
        self.fanout = fanout
        self.min_target_kib = min_target_kib
        self.reachable = self._reachable_sets(reachable or DEFAULT_REACHABLE)
        self.initial_compliance_permille = initial_compliance_permille
        self.min_weight_permille = min_weight_permille
        self.ewma_div = ewma_div
        self.max_apps = max_apps
        self.low_deadline_ms = low_deadline_ms
        self.critical_deadline_ms = critical_deadline_ms
        self._apps: "Dict[int, AppState]" = {}
        self._vtime = [0] * len(CLASSES)   # per class: the pass of the last app asked
        self.event_seq = 0            # events begun
        self.rounds = 0
        self.asks = 0

    @staticmethod
    def _reachable_sets(reachable: "Dict[int, Tuple[str, ...]]") -> "Dict[int, Tuple[int, ...]]":
        """Return: level -> class indexes.  Raises: ValueError for an unknown
        class or level, or for ``foreground`` (never trimmed)."""
        out = {}
        for level, names in reachable.items():
            if level not in (LOW, CRITICAL):
                raise ValueError("reachable classes are per LOW or CRITICAL, not %r" % level)
            indexes = tuple(parse_class(name) for name in names)
            if FOREGROUND in indexes:
                raise ValueError("the foreground app is never asked to trim")
            out[level] = indexes
        return out

    def register(self, app_id: int, cls: str, estimate_kib: "Optional[int]" = None) -> None:
        """Add an app, or update the class and estimate of a known one (its
        history is kept).  A new app joins its class's rotation at the
        class's virtual time: due soon, but not before apps already waiting.
        Raises: ValueError for an unknown class, a negative estimate, or a
        full table (``max_apps``)."""
        index = parse_class(cls)
        self._check_estimate(estimate_kib)
        app = self._apps.get(app_id)
        if app is not None:
            self.set_class(app_id, cls)
            app.estimate_kib = estimate_kib
            return
        if len(self._apps) >= self.max_apps:
            raise ValueError("too many apps (max_apps %d)" % self.max_apps)
        self._apps[app_id] = AppState(app_id, index, estimate_kib,
                                      self.initial_compliance_permille, self._vtime[index])

    @staticmethod
    def _check_estimate(estimate_kib: "Optional[int]") -> None:
        """Raises: ValueError if ``estimate_kib`` is negative."""
        if estimate_kib is not None and estimate_kib < 0:
            raise ValueError("estimate_kib must be >= 0, not %d" % estimate_kib)

    def remove(self, app_id: int) -> bool:
        """Forget an app and all its state.  Return: False if it was unknown."""
        return self._apps.pop(app_id, None) is not None

    def set_class(self, app_id: int, cls: str) -> None:
        """Move an app to another class; it joins that class's rotation at
        its virtual time.  Raises: KeyError (unknown app), ValueError (class)."""
        index = parse_class(cls)
        app = self._apps[app_id]
        if app.cls != index:
            app.cls = index
            app.pass_ = self._vtime[index]

    def set_estimate(self, app_id: int, estimate_kib: "Optional[int]") -> None:
        """Set what the app says it can free now (None: unknown).
        Raises: KeyError (unknown app), ValueError (negative)."""
        self._check_estimate(estimate_kib)
        self._apps[app_id].estimate_kib = estimate_kib

    def apps(self) -> "List[Dict[str, Any]]":
        """Return: one status dict per app, by id."""
        return [a.as_dict(self._vtime[a.cls]) for _, a in sorted(self._apps.items())]

    def ids(self) -> "List[int]":
        """Return: the registered app ids."""
        return list(self._apps)

    def __len__(self) -> int:
        return len(self._apps)

    def snapshot(self) -> "Dict[str, Any]":
        """Return: a JSON-ready status dict: settings, counters, apps."""
        per_class = {name: 0 for name in CLASSES}
        for app in self._apps.values():
            per_class[CLASSES[app.cls]] += 1
        return {"fanout": self.fanout, "min_target_kib": self.min_target_kib,
                "reachable": {level_name(lvl): [CLASSES[i] for i in idx]
                              for lvl, idx in self.reachable.items()},
                "events": self.event_seq, "rounds": self.rounds, "asks": self.asks,
                "classes": per_class, "apps": self.apps()}

    def deadline_ms(self, level: int) -> int:
        """Return: how long the agent waits for the apps of a round to act."""
        return self.critical_deadline_ms if level >= CRITICAL else self.low_deadline_ms

    def begin_event(self, now_ms: int) -> None:
        """Start a pressure event: within it, an app is asked at most once."""
        self.event_seq += 1

    def _stride(self, compliance_permille: int) -> int:
        """Return: the pass an ask costs an app of this compliance."""
        weight = max(compliance_permille, self.min_weight_permille)
        return STRIDE_UNIT * FULL_PERMILLE // weight

    def _big_enough(self, app: AppState) -> bool:
        """Return: True unless the app is known to hold under ``min_target_kib``."""
        cap_kib = app.cap_kib()
        return cap_kib is None or cap_kib >= self.min_target_kib

    def _candidates(self, level: int) -> "List[AppState]":
        """Return: up to ``fanout`` eligible apps (reachable class, not asked
        in this event, big enough), best first, in one linear pass."""
        classes = self.reachable.get(level, ())
        seq = self.event_seq
        best: "List[AppState]" = []
        k = self.fanout
        for app in self._apps.values():
            if app.event_seq == seq or app.cls not in classes:
                continue
            if len(best) == k:
                worst = best[-1]  # cheap rejection first: this loop is the hot path
                if app.cls < worst.cls or (app.cls == worst.cls and app.pass_ > worst.pass_) \
                        or not _ahead(app, worst):
                    continue
            if not self._big_enough(app):
                continue
            i = len(best)
            while i > 0 and _ahead(app, best[i - 1]):
                i -= 1
            best.insert(i, app)
            if len(best) > k:
                best.pop()
        return best

    def _expected_kib(self, app: AppState, deficit_kib: int) -> int:
        """Return: what ``app`` will likely free if asked: its estimate (or an
        equal share of the deficit when unknown), times its compliance."""
        share = max(deficit_kib // self.fanout, self.min_target_kib)
        cap_kib = app.cap_kib()
        weight = max(app.compliance_permille, self.min_weight_permille)
        return (share if cap_kib is None else cap_kib) * weight // FULL_PERMILLE

    def _choose(self, deficit_kib: int, level: int) -> "List[AppState]":
        """Return: the best candidates, only as many as likely cover the
        deficit, and no more than leaves each ``min_target_kib``."""
        chosen: "List[AppState]" = []
        covered_kib = 0
        most = max(deficit_kib // self.min_target_kib, 1)
        for app in self._candidates(level):
            if covered_kib >= deficit_kib or len(chosen) >= most:
                break
            chosen.append(app)
            covered_kib += self._expected_kib(app, deficit_kib)
        return chosen

    def _split(self, deficit_kib: int, chosen: "List[AppState]") -> "Dict[int, int]":
        """Return: app id -> target KiB, water-filling ``deficit_kib`` over the
        chosen apps, each capped by its estimate and at least
        ``min_target_kib``; apps left with nothing to ask are dropped."""
        # the app id breaks ties: MicroPython's sort is not stable
        by_cap = sorted(chosen, key=lambda a: (a.cap_kib() is None, a.cap_kib() or 0, a.app_id))
        targets: "Dict[int, int]" = {}
        left_kib = deficit_kib
        for i, app in enumerate(by_cap):
            if left_kib <= 0:
                break
            n_left = len(by_cap) - i
            target_kib = max((left_kib + n_left - 1) // n_left, self.min_target_kib)
            cap_kib = app.cap_kib()
            if cap_kib is not None:
                target_kib = min(target_kib, cap_kib)
            targets[app.app_id] = target_kib
            left_kib -= target_kib
        return targets

    def plan_round(self, deficit_kib: int, level: int, now_ms: int) -> "List[Tuple[int, int]]":
        """Plan one round of an event.

        Returns: [(app_id, target_kib)], best first, at most ``fanout`` long,
        targets adding up to at most ``max(deficit_kib, min_target_kib)``
        (less only when the estimates cap them); empty at NORMAL, with
        no deficit, or when every reachable app was asked in this event.
        """
        if deficit_kib <= 0 or level <= NORMAL:
            return []
        chosen = self._choose(deficit_kib, level)
        targets = self._split(deficit_kib, chosen)
        plan = []
        for app in chosen:
            target_kib = targets.get(app.app_id)
            if target_kib is not None:
                self._charge(app, target_kib, now_ms)
                plan.append((app.app_id, target_kib))
        if plan:
            self.rounds += 1
        return plan

    def _charge(self, app: AppState, target_kib: int, now_ms: int) -> None:
        """Mark ``app`` asked in this event and advance its pass."""
        vtime = self._vtime
        vtime[app.cls] = max(vtime[app.cls], app.pass_)
        app.charged = self._stride(app.compliance_permille)
        app.pass_ += app.charged
        app.event_seq = self.event_seq
        app.asked += 1
        app.asked_kib += target_kib
        app.last_asked_ms = now_ms
        self.asks += 1
        if app.pass_ >= PASS_LIMIT:
            self._renormalise(app.cls)

    def _renormalise(self, cls: int) -> None:
        """Shift a class's passes down so they stay small integers."""
        members = [a for a in self._apps.values() if a.cls == cls]
        floor = min([a.pass_ for a in members] + [self._vtime[cls]])
        for app in members:
            app.pass_ -= floor
        self._vtime[cls] -= floor

    def record_result(self, app_id: int, asked_kib: int, freed_kib: int, now_ms: int) -> bool:
        """Take what the agent measured ``app_id`` freed after being asked for
        ``asked_kib`` (a timeout is ``freed_kib=0``).  Updates its compliance
        EWMA, re-prices its last ask at the new compliance, and lowers a
        known estimate by what was freed (or learns the app's size).
        Returns: False if the app is unknown (it may have exited).
        Raises: ValueError for negative sizes."""
        if asked_kib < 0 or freed_kib < 0:
            raise ValueError("asked_kib and freed_kib must be >= 0")
        app = self._apps.get(app_id)
        if app is None:
            return False
        old = app.compliance_permille
        ratio = self._ratio(app, asked_kib, freed_kib)
        app.compliance_permille = min(max(old + (ratio - old) // self.ewma_div, 0), FULL_PERMILLE)
        if app.charged:
            stride = self._stride(app.compliance_permille)
            app.pass_ += stride - app.charged
            app.charged = 0
        app.freed_kib += freed_kib
        app.last_freed_kib = freed_kib
        if app.estimate_kib is not None:
            app.estimate_kib = max(app.estimate_kib - freed_kib, 0)
        else:
            self._learn(app, asked_kib, freed_kib)
        return True

    @staticmethod
    def _ratio(app: AppState, asked_kib: int, freed_kib: int) -> int:
        """Return: freed/asked in permille, clipped to 0..1000.  The first
        shortfall of an app of unknown size counts as full: it has just shown
        its size (learned from then on); later shortfalls count."""
        if asked_kib == 0 or (app.cap_kib() is None and 0 < freed_kib < asked_kib):
            return FULL_PERMILLE
        return min(freed_kib * FULL_PERMILLE // asked_kib, FULL_PERMILLE)

    def _learn(self, app: AppState, asked_kib: int, freed_kib: int) -> None:
        """Learn the size of an app that gives no estimate: an app that freed
        some but less than asked is asked for that much next time (never
        under ``min_target_kib``); full compliance raises the cap by a
        quarter (its cache may have grown).  Freeing nothing says nothing
        about size (compliance handles it)."""
        if 0 < freed_kib < asked_kib:
            app.learned_kib = max(freed_kib, self.min_target_kib)
        elif freed_kib >= asked_kib and app.learned_kib is not None:
            app.learned_kib = min(app.learned_kib + app.learned_kib // 4, LEARNED_MAX_KIB)
