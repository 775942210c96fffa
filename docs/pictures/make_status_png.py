#!/usr/bin/env python3
"""Make docs/img/status-terminal.png: the screen ``memagent status`` shows
on a terminal, for a fixed state (tests/data/status/critical-kills.json).

A real terminal does the rendering: tmux runs memagent's renderer
(memagent.core.statusview, from this checkout, no install needed) in a
detached session of 80 columns, ``tmux capture-pane -e -p`` gives the screen
back with the colours tmux kept, and matplotlib draws that text in a
monospace font (DejaVu Sans Mono, which matplotlib ships) with the colours.

Usage: python3 docs/pictures/make_status_png.py [FIXTURE.json] [-o OUT.png]
Needs tmux and matplotlib (the workstation's ``memagent[plot]`` extra).
"""

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "data", "status", "critical-kills.json")
OUT = os.path.join(ROOT, "docs", "img", "status-terminal.png")
COLS = 80
COLOURS = 64  # of the PNG's palette
SOCKET = "memagent-picture-%d" % os.getpid()  # a private tmux server, ours alone
RENDER = ("import json, sys\nfrom memagent.core.statusview import render\n"
          "with open(sys.argv[1]) as f:\n    st = json.load(f)\n"
          "sys.stdout.write(render(st, 'terminal', %d).rstrip('\\n'))\nsys.stdout.flush()\n"
          % COLS)

# A dark terminal theme (Tango's palette).
BACKGROUND = "#1d1f21"
FOREGROUND = "#d3d7cf"
PALETTE = {30: "#555753", 31: "#ef2929", 32: "#8ae234", 33: "#fce94f", 34: "#729fcf",
           35: "#c17ecc", 36: "#34e2e2", 37: "#eeeeec", 90: "#888a85", 91: "#ef2929",
           92: "#8ae234", 93: "#fce94f", 94: "#729fcf", 95: "#ad7fa8", 96: "#34e2e2",
           97: "#ffffff"}
SGR = re.compile("\x1b\\[([0-9;]*)m")

Style = Tuple[Optional[int], bool, bool]  # (colour code, bold, dim)
Run = Tuple[int, str, Style]  # (column, text, style)


def tmux(*args: str, check: bool = True) -> str:
    """Run tmux on the private server.  Returns: its stdout.
    Raises: CalledProcessError if ``check`` and it fails."""
    return subprocess.run(["tmux", "-L", SOCKET, "-f", "/dev/null"] + list(args),
                          check=check, capture_output=True, text=True, timeout=30).stdout


def capture(fixture: str, rows: int, lib: str) -> str:
    """Return: the screen of the renderer (the package laid out in ``lib``)
    run in a detached tmux session of COLS x ``rows``, escapes included."""
    shell = ("env PYTHONPATH=%s %s -c %s %s; tmux -L %s wait-for -S shown; sleep 60"
             % (lib, sys.executable, quote(RENDER), quote(fixture), SOCKET))
    tmux("new-session", "-d", "-s", "status", "-x", str(COLS), "-y", str(rows), shell)
    try:
        tmux("wait-for", "shown")
        return tmux("capture-pane", "-e", "-p", "-t", "status")
    finally:
        tmux("kill-server", check=False)


def quote(text: str) -> str:
    """Return: ``text`` quoted for sh."""
    return "'" + text.replace("'", "'\\''") + "'"


def parse(screen: str) -> List[List[Run]]:
    """Return: per line, the runs of text with their style, from SGR escapes."""
    lines = []
    colour: Optional[int] = None
    bold = dim = False
    for raw in screen.rstrip("\n").split("\n"):
        runs: List[Run] = []
        col = 0
        pos = 0
        for m in list(SGR.finditer(raw)) + [None]:
            chunk = raw[pos:m.start()] if m else raw[pos:]
            if chunk:
                runs.append((col, chunk, (colour, bold, dim)))
                col += len(chunk)
            if m is None:
                break
            pos = m.end()
            for code in [int(c) if c else 0 for c in m.group(1).split(";")]:
                if code == 0:
                    colour, bold, dim = None, False, False
                elif code == 1:
                    bold = True
                elif code == 2:
                    dim = True
                elif code == 22:
                    bold = dim = False
                elif code == 39:
                    colour = None
                elif code in PALETTE:
                    colour = code
        lines.append(runs)
    return lines


def draw(lines: List[List[Run]], out: str) -> None:
    """Draw the runs into a PNG at ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    dpi, size_px, pad_px = 100, 13.0, 12.0
    cell_w, cell_h = 0.6021 * size_px, 1.25 * size_px  # DejaVu Sans Mono's advance
    width, height = 2 * pad_px + COLS * cell_w, 2 * pad_px + len(lines) * cell_h
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.patch.set_facecolor(BACKGROUND)
    for row, runs in enumerate(lines):
        y = 1 - (pad_px + (row + 0.78) * cell_h) / height
        for col, chunk, (colour, bold, dim) in runs:
            fig.text((pad_px + col * cell_w) / width, y, chunk, family="DejaVu Sans Mono",
                     size=size_px * 72 / dpi, color=PALETTE.get(colour or 0, FOREGROUND),
                     alpha=0.6 if dim else 1.0, weight="bold" if bold else "normal")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=BACKGROUND)
    plt.close(fig)
    # A screen of text needs few colours: a palette PNG is a third of the size.
    from PIL import Image
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(colors=COLOURS)
    image.save(out, format="PNG", optimize=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixture", nargs="?", default=FIXTURE, help="a status JSON file")
    ap.add_argument("-o", "--out", default=OUT, help="the PNG to write")
    args = ap.parse_args(argv)
    fixture = os.path.abspath(args.fixture)
    with tempfile.TemporaryDirectory() as lib:
        # this checkout's agent/ as the package memagent: nothing to install
        os.symlink(os.path.join(ROOT, "agent"), os.path.join(lib, "memagent"))
        rows = len(plain_screen(fixture, lib).splitlines())
        screen = capture(fixture, rows + 1, lib)
    lines = parse(screen)
    while lines and not lines[-1]:
        lines.pop()
    draw(lines, args.out)
    print("%s: %d lines, %d bytes" % (args.out, len(lines), os.path.getsize(args.out)))
    return 0


def plain_screen(fixture: str, lib: str) -> str:
    """Return: the plain screen of the status in ``fixture`` (to size the
    tmux window), rendered by the package laid out in ``lib``."""
    out = subprocess.run([sys.executable, "-c", RENDER.replace("'terminal'", "'plain'"), fixture],
                         env=dict(os.environ, PYTHONPATH=lib), check=True, capture_output=True,
                         text=True, timeout=60)
    return out.stdout


if __name__ == "__main__":
    sys.exit(main())
