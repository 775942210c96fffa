"""The footprint bench: memagent on CPython, memagent on MicroPython and
earlyoom side by side in one boot of the qemu ARM guest, calm and after a
battery of hostile clients (board/qemu-arm/scenarios/footprint.py); then,
in a second boot at 64 MB, both agents' start-up, calm and while the page
cache thrashes (board/qemu-arm/scenarios/startup.py).

    sudo python3 -m bench.footprint [--mem 128] [--startup-runs 5] [--json FILE]

Memory is /proc/PID/smaps_rollup's Rss (VmRSS under-counts on 6.1).  The
guest runs the 64 MB profile (zaurus-c3000) and has both interpreters
(booted with the MicroPython sidecar).  Prints a markdown table and the
issue's goals for the MicroPython agent; exit status 1 if the boot failed,
2 if it cannot run here (no qemu-system-arm).
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from typing import Any, Dict, List, Optional

from bench.board import facts_of, load_rig

SCENARIO = "footprint.py"
STARTUP_SCENARIO, STARTUP_MEM = "startup.py", 64
TOOLS = (("cpython", "memagent (CPython 3.11)"), ("micropython", "memagent (MicroPython 1.25)"),
         ("earlyoom", "earlyoom (Debian's defaults)"))
CALM_MAX_KIB, AFTER_MAX_KIB, READY_MAX_MS = 3072, 4096, 1000


def run(mem: int, timeout_s: float, scenario: str = SCENARIO,
        args: List[str] = ()) -> Dict[str, Any]:  # type: ignore[assignment]
    """Boot the guest once with ``scenario``.  Returns: its FACTs, whether
    it completed, the guest's kernel.  Raises: RuntimeError."""
    rig = load_rig()
    with tempfile.TemporaryDirectory(prefix="memagent-footprint-") as tmp:
        try:
            res = rig.run(str(rig.HERE / "scenarios" / scenario), list(args), mem_mb=mem,
                          timeout_s=timeout_s, out_dir=tmp, boot_init=True,
                          board="zaurus-c3000", interpreter="micropython")
        except rig.RigError as e:
            raise RuntimeError("the qemu rig cannot run: %s" % e) from e
    return {"facts": facts_of(res.console), "ok": res.ok, "kernel": res.kernel,
            "tail": "" if res.ok else rig.explain(res.console)}


def _kib(value: Optional[str]) -> str:
    return "-" if value in (None, "None") else "{:,} KiB".format(int(value))


def table(facts: Dict[str, str]) -> List[str]:
    """Return: the markdown table of the FACTs."""
    out = ["| tool | exec -> first answer | Rss calm | Anonymous calm | Rss peak during "
           "the battery | Rss after it | still answers |", "|---|---:|---:|---:|---:|---:|---|"]
    for tag, label in TOOLS:
        ready = facts.get(tag + "_ready_ms")
        out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            label, "-" if ready in (None, "None") else "%s ms" % ready,
            _kib(facts.get(tag + "_calm_rss_kib")), _kib(facts.get(tag + "_calm_anon_kib")),
            _kib(facts.get(tag + "_peak_rss_kib")), _kib(facts.get(tag + "_after_rss_kib")),
            {"True": "yes", "False": "**no**"}.get(facts.get(tag + "_answers_after", ""),
                                                    "-")))
    return out


def _times(value: Optional[str]) -> List[int]:
    return [int(v) for v in (value or "").split(";") if v not in ("", "None")]


def startup_table(facts: Dict[str, str]) -> List[str]:
    """Return: the start-up table (startup.py's FACTs)."""
    out = ["| agent | exec -> first answer, calm: median (max) | while the page cache "
           "thrashes: median (max) | starts with no answer |", "|---|---:|---:|---:|"]
    for tag, label in TOOLS[:2]:
        cells, missing = [], 0
        for cond in ("calm", "thrash"):
            raw = facts.get("%s_%s_ms" % (tag, cond)) or ""
            times = _times(raw)
            missing += raw.count("None")
            cells.append("%d ms (%d ms)" % (statistics.median(times), max(times))
                         if times else "-")
        out.append("| %s | %s | %s | %d |" % (label, cells[0], cells[1], missing))
    return out


def goals(facts: Dict[str, str]) -> List[List[Any]]:
    """Return: [ok, text] for the MicroPython agent's goals (issue 11)."""
    def num(key: str) -> Optional[int]:
        value = facts.get(key)
        return None if value in (None, "None") else int(value)

    calm, after = num("micropython_calm_rss_kib"), num("micropython_after_rss_kib")
    ready = num("micropython_ready_ms")
    return [[calm is not None and calm <= CALM_MAX_KIB,
             "MicroPython agent Rss <= 3 MB while calm: %s KiB" % calm],
            [after is not None and after <= AFTER_MAX_KIB,
             "MicroPython agent Rss <= 4 MB after the hostile battery: %s KiB" % after],
            [facts.get("micropython_answers_after") == "True",
             "MicroPython agent still answers after the battery"],
            [ready is not None and ready <= READY_MAX_MS,
             "MicroPython agent answers within 1 s of its exec: %s ms" % ready]] + \
        startup_goals(facts)


def startup_goals(facts: Dict[str, str]) -> List[List[Any]]:
    """Return: [ok, text] for the MicroPython agent's start-up at 64 MB,
    calm and under a page-cache thrash: every start answered, the median
    within 1 s.  Empty if the start-up boot did not run."""
    out = []
    for cond, what in (("calm", "calm"), ("thrash", "under a page-cache thrash")):
        raw = facts.get("micropython_%s_ms" % cond)
        if raw is None:
            continue
        times = _times(raw)
        ok = bool(times) and "None" not in raw and statistics.median(times) <= READY_MAX_MS
        out.append([ok, "MicroPython agent answers within 1 s of its exec at %d MB, %s "
                        "(median of %d): %s ms" % (STARTUP_MEM, what, len(times), raw)])
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench.  Returns: 0, 1 if the boot failed, 2 if it cannot run here."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mem", type=int, default=128, help="guest RAM in MB (default 128: at 64 "
                   "the CPython agent and 200 clients run the guest out of memory)")
    p.add_argument("--timeout-s", type=float, default=500.0)
    p.add_argument("--startup-runs", type=int, default=5, help="starts per agent and "
                   "condition in the %d MB start-up boot (0: no such boot)" % STARTUP_MEM)
    p.add_argument("--json", help="also write the FACTs here")
    opts = p.parse_args(argv)
    if shutil.which("qemu-system-arm") is None:
        print("bench.footprint: cannot run here: qemu-system-arm is not installed",
              file=sys.stderr)
        return 2
    try:
        result = run(opts.mem, opts.timeout_s)
        started = run(STARTUP_MEM, opts.timeout_s, STARTUP_SCENARIO,
                      ["runs=%d" % opts.startup_runs]) if opts.startup_runs > 0 else None
    except RuntimeError as e:
        print("bench.footprint: %s" % e, file=sys.stderr)
        return 1
    facts = result["facts"]
    lines = ["## memagent footprint bench: %d MB guest, the 64 MB profile" % opts.mem, ""]
    lines += table(facts) + ["", "The battery (per agent): %s." % facts.get(
        "micropython_battery", "-")]
    if started is not None:
        result["startup"] = started
        facts = dict(facts, **started["facts"])
        lines += ["", "### Start-up, %d MB guest (MemAvailable %s KiB during the thrash, "
                  "PSI some %s ms/s)" % (STARTUP_MEM, started["facts"].get("thrash_avail_kib"),
                                         started["facts"].get("thrash_psi_some_ms_s")), ""]
        lines += startup_table(started["facts"])
    lines += ["", "### Goals", ""]
    lines += ["- %s %s" % ("PASS" if ok else "MISS", text) for ok, text in goals(facts)]
    lines += ["", "Guest kernel: %s." % result["kernel"]]
    print("\n".join(lines))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["ok"] and (started is None or started["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
