"""The app class ladder: how much an app matters to the user, defined once.

Android's oom_adj ladder, most important first: ``foreground`` (what the
user looks at), ``visible``, ``perceptible`` (music, navigation),
``service``, ``cached`` (kept only to start faster).  Its rank is the index
here: the higher, the sooner an app is asked to trim and the sooner it is
killed.  Used by the protocol (who may take which class), the trim
scheduler (cached first) and the kill policy (lowest standing first).

Pure and MicroPython-clean.
"""

try:
    from typing import Optional
except ImportError:  # MicroPython
    pass

CLASSES = ("foreground", "visible", "perceptible", "service", "cached")
FOREGROUND = 0
# Classes only a trusted client (root, the UI shell) may enter.
PROTECTED_CLASSES = ("foreground", "visible", "perceptible")
# (lowest oom_score_adj of the band, class), highest band first: how a
# process that did not register is classed, the way Android's lmkd reads it.
# ProcessList: FOREGROUND_APP 0, VISIBLE_APP 100, PERCEPTIBLE_APP 200-250,
# then BACKUP 300, HEAVY_WEIGHT 400, SERVICE 500, HOME 600, PREVIOUS 700,
# SERVICE_B 800 (all "service" here), CACHED_APP 900-999.
ADJ_BANDS = ((900, "cached"), (300, "service"), (200, "perceptible"),
             (100, "visible"), (0, "foreground"))


def rank(cls: "Optional[str]") -> int:
    """Return: 0 for "foreground" up to 4 for "cached"; -1 for None or an
    unknown name (a process with no class: never chosen first)."""
    for index, known in enumerate(CLASSES):
        if known == cls:
            return index
    return -1


def parse_class(cls: object) -> int:
    """Return: the rank of a class name.  Raises: ValueError naming the
    classes for anything else."""
    index = rank(cls) if isinstance(cls, str) else -1
    if index < 0:
        raise ValueError("unknown class %r (%s)" % (cls, ", ".join(CLASSES)))
    return index


def class_of_adj(adj: int) -> "Optional[str]":
    """Return: the class of an unregistered process with this
    ``oom_score_adj``, or None for a negative one (never eligible)."""
    for floor, cls in ADJ_BANDS:
        if adj >= floor:
            return cls
    return None


def may_set_class(current: str, wanted: str, trusted: bool) -> bool:
    """Return: True if a client in ``current`` may move to ``wanted``.

    Trusted clients (the UI shell) may set any class.  Others may only keep
    or lower their standing (towards "cached"), and never enter a protected
    class.  Raises: ValueError for an unknown class.
    """
    rank_now, rank_wanted = parse_class(current), parse_class(wanted)
    if trusted:
        return True
    return wanted not in PROTECTED_CLASSES and rank_wanted >= rank_now


def may_register_as(cls: str, trusted: bool) -> bool:
    """Return: True if a client may register in ``cls``: protected classes
    need trust.  Raises: ValueError for an unknown class."""
    parse_class(cls)
    return trusted or cls not in PROTECTED_CLASSES
