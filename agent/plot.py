"""``memagent plot``: a timeline of memory pressure as a PNG or SVG.

Draws available memory (MiB) over time with the LOW and CRITICAL thresholds,
the level as coloured bands behind it, trims and kills as marks (a dry-run
kill hollow, the kernel's OOM kill black) and PSI's avg10 in a panel below.
The inputs are read by :mod:`memagent.plotdata`.

matplotlib is a workstation extra (``pip install 'memagent[plot]'``) that a
device never needs: it is imported inside the functions, and rendering uses
the Agg backend (no display).

API for other tools: :func:`plot_files`, :func:`plot_status`, and the
drawing functions :func:`draw_memory`, :func:`draw_psi` on axes of your own
(docs/pictures/make_handset_plots.py), with :func:`new_figure`, :func:`save`.
"""

import sys

from .core.levels import LEVEL_NAMES
from .plotdata import PlotError, Timeline, parse_lines, read_text, status_of, timeline_of_pieces
from .plotstatus import timeline_of_status

# The memagent command's parser imports this module on a device too
# (MicroPython): nothing here at module level that it lacks.
try:
    from typing import Any, Dict, List, Optional, Sequence, Tuple
except ImportError:  # MicroPython
    pass
TYPE_CHECKING = False  # type checkers take it as True
if TYPE_CHECKING:
    import argparse
    from typing import Callable

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    Fetch = Callable[[], Tuple[Dict[str, Any], int, Optional[str]]]

NEEDS_MATPLOTLIB = "memagent plot needs matplotlib: pip install 'memagent[plot]'"
SUFFIXES = (".png", ".svg")
# The level bands, opaque so that each one's own colour is in the picture.
BAND_COLORS = ("#e3f4e1", "#fff1a8", "#f9b9b4")  # NORMAL, LOW, CRITICAL
AVAIL_COLOR = "#1f4e99"
LOW_COLOR = "#b8860b"
CRITICAL_COLOR = "#c0140c"
# gid of each kind of mark in an SVG: <g id="kills"> holds one <use> a kill.
MARK_STYLES: "Dict[str, Dict[str, Any]]" = {
    "trim": {"marker": "v", "color": "#2a8f3c", "label": "trim asked", "gid": "trims"},
    "kill": {"marker": "X", "color": CRITICAL_COLOR, "label": "kill", "gid": "kills"},
    "dry-run": {"marker": "X", "color": "none", "markeredgecolor": CRITICAL_COLOR,
                "label": "kill chosen, dry run (not sent)", "gid": "kills-dry-run"},
    "kernel": {"marker": "X", "color": "black", "label": "kernel OOM kill",
               "gid": "kills-kernel"},
}
MAX_NAMED_KILLS = 12


class PlotUnavailable(PlotError):
    """matplotlib is not installed."""


def load_matplotlib() -> "Any":
    """Return: the matplotlib module, set to the Agg backend.
    Raises: PlotUnavailable (exit code 2) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(NEEDS_MATPLOTLIB)
    matplotlib.use("Agg")
    return matplotlib


def new_figure(rows: int, height_ratios: "Optional[Sequence[float]]" = None,
               width_in: float = 10.0, height_in: float = 5.5) -> "Tuple[Figure, List[Axes]]":
    """Return: a figure of ``rows`` panels sharing the x axis, and the panels.
    Raises: PlotUnavailable without matplotlib."""
    load_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": list(height_ratios or [1] * rows)})
    return fig, [row[0] for row in axes]


def _x(tl: Timeline, t_ms: int) -> float:
    return (t_ms - tl.t0_ms) / 1000.0


def marks_y_mib(tl: Timeline, times_ms: "List[int]") -> "List[float]":
    """Return: the available MiB at each of ``times_ms``: the newest reading
    at or before it (the first one if none is; 0 without readings)."""
    from bisect import bisect_right  # CPython: drawing never runs on a device

    points = [(t, a) for t, a in tl.avail if a is not None]
    if not points:
        return [0.0] * len(times_ms)
    ts = [t for t, _ in points]
    return [points[max(bisect_right(ts, t) - 1, 0)][1] / 1024.0 for t in times_ms]


def draw_bands(ax: "Axes", tl: Timeline) -> None:
    """Draw the level spans as opaque bands behind everything (gid band-LEVEL)."""
    for start_ms, end_ms, level in tl.levels:
        ax.axvspan(_x(tl, start_ms), _x(tl, end_ms), color=BAND_COLORS[level], zorder=0,
                   linewidth=0, gid="band-%s" % LEVEL_NAMES[level])


def draw_marks(ax: "Axes", tl: Timeline) -> None:
    """Draw trims along the top of ``ax`` and kills on the memory line, one
    Line2D (gid) per kind; name the kills when there are few."""
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(ax.transData, ax.transAxes)
    for kind, style in MARK_STYLES.items():
        marks = [m for m in tl.marks if m.kind == kind]
        if not marks:
            continue
        style = dict(style, linestyle="none", markersize=9 if kind != "trim" else 6, zorder=5)
        xs = [_x(tl, m.t_ms) for m in marks]
        if kind == "trim":
            ax.plot(xs, [0.97] * len(xs), transform=top, **style)
            continue
        ys = marks_y_mib(tl, [m.t_ms for m in marks])
        ax.plot(xs, ys, **style)
        if len(marks) <= MAX_NAMED_KILLS:
            for i, (m, x, y) in enumerate(zip(marks, xs, ys)):
                if m.label:  # staggered: kills come close together
                    ax.annotate(m.label, (x, y), xytext=(4, 6 + 10 * (i % 3)),
                                textcoords="offset points",
                                fontsize=7, color="#333333", zorder=6)


def draw_memory(ax: "Axes", tl: Timeline, y_max_mib: "Optional[float]" = None) -> None:
    """Draw one timeline's memory panel on ``ax``: bands, available memory,
    the thresholds, the marks, axis labels.  Raises: PlotError if empty."""
    tl.span_ms()
    draw_bands(ax, tl)
    xs = [_x(tl, t) for t, _ in tl.avail]
    ys = [float("nan") if a is None else a / 1024.0 for _, a in tl.avail]
    ax.plot(xs, ys, color=AVAIL_COLOR, linewidth=1.4, label="available", zorder=3,
            gid="available")
    if tl.low_kib is not None:
        ax.axhline(tl.low_kib / 1024.0, color=LOW_COLOR, linestyle="--", linewidth=1,
                   label="LOW %.1f MiB" % (tl.low_kib / 1024.0), zorder=2)
    if tl.critical_kib is not None:
        ax.axhline(tl.critical_kib / 1024.0, color=CRITICAL_COLOR, linestyle="--", linewidth=1,
                   label="CRITICAL %.1f MiB" % (tl.critical_kib / 1024.0), zorder=2)
    draw_marks(ax, tl)
    top = y_max_mib or max([y for y in ys if y == y] + [(tl.low_kib or 0) / 1024.0, 1.0]) * 1.1
    ax.set_ylim(0, top)
    ax.set_ylabel("available (MiB)")
    ax.grid(True, color="#bbbbbb", linewidth=0.4, zorder=1)


def draw_psi(ax: "Axes", tl: Timeline) -> bool:
    """Draw PSI some/full avg10 (%) on ``ax`` (a panel or a twin axis).
    Returns: False (drawing nothing) when the timeline has no PSI."""
    if not tl.psi_some and not tl.psi_full:
        return False
    for name, points, color in (("some", tl.psi_some, "#7a3e9d"),
                                ("full", tl.psi_full, "#d2691e")):
        if points:
            ax.plot([_x(tl, t) for t, _ in points], [v for _, v in points], color=color,
                    linewidth=1, label="PSI %s avg10" % name, gid="psi-%s" % name)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("PSI avg10 (%)")
    return True


def legend_handles(axes: "Sequence[Axes]",
                   levels: "Sequence[int]") -> "Tuple[List[Any], List[str]]":
    """Return: (handles, labels) of ``axes``' artists, one per label, plus a
    patch per level band shown."""
    from matplotlib.patches import Patch

    handles: "List[Any]" = []
    labels: "List[str]" = []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    for level in sorted(set(levels)):
        handles.append(Patch(color=BAND_COLORS[level]))
        labels.append("level %s" % LEVEL_NAMES[level])
    return handles, labels


def save(fig: "Figure", out_path: str) -> None:
    """Write ``fig`` as PNG or SVG, by ``out_path``'s suffix.
    Raises: PlotError for another suffix, OSError if it cannot be written."""
    check_output(out_path)
    fig.savefig(out_path, format=suffix_of(out_path)[1:], dpi=110)


def render(tl: Timeline, out_path: str, title: "Optional[str]" = None) -> None:
    """Draw ``tl`` (memory, and PSI below it when present) to ``out_path``.
    Raises: PlotError, PlotUnavailable, OSError."""
    check_output(out_path)
    psi = bool(tl.psi_some or tl.psi_full)
    fig, axes = new_figure(2 if psi else 1, [3, 1] if psi else None)
    draw_memory(axes[0], tl)
    if psi:
        draw_psi(axes[1], tl)
    axes[-1].set_xlabel(tl.x_label)
    notes = ("  (%s)" % "; ".join(tl.notes)) if tl.notes else ""
    axes[0].set_title((title or tl.label) + notes, fontsize=10)
    handles, labels = legend_handles(axes, [lv for _, _, lv in tl.levels])
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    save(fig, out_path)


def suffix_of(path: str) -> str:
    """Return: ``path``'s suffix in lower case (".png"), or "" without one."""
    name = path.rsplit("/", 1)[-1]
    return name[name.rfind("."):].lower() if name.rfind(".") > 0 else ""


def check_output(out_path: str) -> None:
    """Raises: PlotError unless ``out_path`` ends in .png or .svg."""
    if suffix_of(out_path) not in SUFFIXES:
        raise PlotError("%s: the output must end in .png or .svg" % out_path)


def _kib(mib: "Optional[float]") -> "Optional[int]":
    return None if mib is None else int(mib * 1024)


def load_paths(paths: "List[str]", low_kib: "Optional[int]" = None,
               critical_kib: "Optional[int]" = None) -> Timeline:
    """Return: the Timeline of the files at ``paths`` (traces and events files
    overlaid), or of the one status file among them.
    Raises: PlotError for an unreadable or malformed file, or a status given
    with other files."""
    if not paths:
        raise PlotError("no input: give a trace, an events file or a status JSON")
    pieces = []
    for path in paths:
        text = read_text(path)
        st = status_of(text)
        if st is not None:
            if len(paths) > 1:
                raise PlotError("%s: a status JSON is plotted alone" % path)
            return timeline_of_status(st, low_kib, critical_kib)
        pieces.append(parse_lines(text, path))
    label = ", ".join(p.rsplit("/", 1)[-1] for p in paths)
    return timeline_of_pieces(pieces, label, low_kib, critical_kib)



def plot_files(paths: "List[str]", out_path: str, low_mib: "Optional[float]" = None,
               critical_mib: "Optional[float]" = None, title: "Optional[str]" = None) -> Timeline:
    """Plot traces and events files overlaid (or one status JSON file).
    Returns: the Timeline drawn.  Raises: PlotError (``code``: the exit code),
    PlotUnavailable, OSError writing ``out_path``."""
    check_output(out_path)
    load_matplotlib()
    tl = load_paths(paths, _kib(low_mib), _kib(critical_mib))
    render(tl, out_path, title)
    return tl


def plot_status(st: "Dict[str, Any]", out_path: str, low_mib: "Optional[float]" = None,
                critical_mib: "Optional[float]" = None, title: "Optional[str]" = None) -> Timeline:
    """Plot a status dict (schema 1, e.g. fetched from a device): its history
    and events.  Returns: the Timeline drawn.  Raises: as :func:`plot_files`."""
    check_output(out_path)
    load_matplotlib()
    tl = timeline_of_status(st, _kib(low_mib), _kib(critical_mib))
    render(tl, out_path, title)
    return tl


def add_plot_args(p: "argparse.ArgumentParser") -> None:
    """Add ``memagent plot``'s own arguments to ``p`` (inputs, -o, thresholds, title)."""
    p.add_argument("inputs", nargs="*", metavar="FILE",
                   help="traces (memagent record), events files (memagent run --events-json)"
                        " or a saved status (memagent status --json); several are overlaid")
    p.add_argument("-o", "--output", default="memagent-plot.png",
                   help="the picture to write, .png or .svg (default: %(default)s)")
    p.add_argument("--low-mib", type=float, default=None,
                   help="the LOW threshold (default: the input's own, else 20%% of total)")
    p.add_argument("--critical-mib", type=float, default=None,
                   help="the CRITICAL threshold (default: the input's own, else 10%% of total)")
    p.add_argument("--title", default=None, help="the title (default: the inputs' names)")


def _fetched(fetch: "Fetch", args: "argparse.Namespace") -> "Tuple[Dict[str, Any], int]":
    """Return: (the device's status, 0), or ({}, the exit code) after saying why not."""
    if args.inputs:
        print("memagent: plot files or a device's status, not both", file=sys.stderr)
        return {}, 2
    doc, code, why = fetch()
    if why:
        print("memagent: %s" % why, file=sys.stderr)
    if not doc:
        return {}, code or 6
    return doc, 0


def cmd_plot(args: "argparse.Namespace", fetch: "Optional[Fetch]" = None) -> int:
    """``memagent plot FILE... -o OUT``, or with ``fetch`` (a device's status:
    () -> (status dict, exit code, what went wrong or None), as
    ``fetchcli.fetch_remote``) that status.  Returns: 0 written, 2 usage, bad
    input or no matplotlib, 1 the output could not be written, else the
    fetch's or the PlotError's code (3 not running, 10 a newer schema...)."""
    try:
        check_output(args.output)
        load_matplotlib()  # before asking a device anything
        if fetch is None:
            tl = plot_files(list(args.inputs), args.output, args.low_mib, args.critical_mib,
                            args.title)
        else:
            doc, code = _fetched(fetch, args)
            if not doc:
                return code
            tl = plot_status(doc, args.output, args.low_mib, args.critical_mib, args.title)
    except PlotError as e:
        print("memagent: %s" % e, file=sys.stderr)
        return e.code
    except OSError as e:
        print("memagent: %s: cannot write: %s" % (args.output, e.strerror or e), file=sys.stderr)
        return 1
    kills = sum(1 for m in tl.marks if m.kind != "trim")
    print("memagent: wrote %s (%d points, %d kills, %d trims)" % (
        args.output, len(tl.avail), kills, len(tl.marks) - kills))
    return 0


def main(argv: "Optional[List[str]]" = None) -> int:
    """``python3 -m memagent.plot``: the same as ``memagent plot`` with files.
    Returns: :func:`cmd_plot`'s exit code."""
    import argparse

    p = argparse.ArgumentParser(prog="memagent plot", description=__doc__.split("\n")[0])
    add_plot_args(p)
    return cmd_plot(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
