"""The ``memagent`` command: run, cuse, status, events, plot, record, replay, demo.

``main()`` only parses and wires; each subcommand is a small function.
Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error;
``memagent status`` says why the agent gave no status (it then prints the
level computed from /proc now): 3 not running (no socket, or connection
refused), 4 busy (the agent refused: too many clients), 5 reply too large,
6 no answer (timeout, hang-up, a malformed reply); fetching from a device,
7 unreachable, 8 authentication failed, 9 memagent missing there, 10
version mismatch (docs/status.md).
"""

# size-ok: every subcommand's parser and its small body (status: statuscli, fetchcli)
import json
import sys

from . import __version__
from .core import logs, procfs, trace
from .core.config import Config, ConfigError, load_config, thresholds_from_config
from .sense import sources
from .statusargs import EVENTS_POLL_MS, add_remote_args, remote_asked

# asyncio (memagent.aio) and the agent are imported only by the commands that
# run them: `memagent status` stays without, for a handset at pressure
# (memagent.ipc.ask).

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass
try:
    import argparse
    import logging
except ImportError:  # MicroPython: the shim's argparse, core.logs' loggers
    from .aio import args as argparse  # type: ignore[no-redef]

    logging = None  # type: ignore[assignment]

log = logs.get_logger("memagent")



LOG_LEVELS = {"debug": logs.DEBUG, "info": logs.INFO, "warning": logs.WARNING,
              "error": logs.ERROR}


def setup_logging(config: Config, verbose: int) -> None:
    """Log to stderr or syslog (when nobody listens on /dev/log: to stderr,
    or /dev/kmsg if stderr is /dev/null; said once, see
    runtime/logsetup.py), at the config's log_level, or debug with -v.
    Raises: ConfigError for an unknown log_level."""
    target = config.get_str("agent", "log")
    name = "debug" if verbose else config.get_str("agent", "log_level").lower()
    if name not in LOG_LEVELS:
        raise ConfigError("[agent] log_level: %r is not one of %s"
                          % (name, ", ".join(LOG_LEVELS)))
    level = LOG_LEVELS[name]
    if logging is None:  # MicroPython: the stand-in loggers get a sink
        from .runtime.plainlog import open_plain_log

        for line in open_plain_log(target, level):
            log.warning("%s", line)
        return
    from .runtime.logsetup import open_log

    handler, notes = open_log(target, sys.stderr)
    root = logging.getLogger("memagent")
    root.handlers[:] = [handler]
    root.setLevel(level)
    for line in notes:
        log.warning("%s", line)


def _config(args: argparse.Namespace) -> Config:
    config = load_config(getattr(args, "config", None))
    for section, key, attr in (("agent", "source", "source"), ("agent", "memcg", "memcg"),
                               ("agent", "proc_root", "proc_root"),
                               ("agent", "socket", "socket"), ("agent", "trace", "trace"),
                               ("agent", "log", "log")):
        value = getattr(args, attr, None)
        if value is not None:
            config.set(section, key, value)
    if getattr(args, "mlockall", False):
        config.set("agent", "mlockall", "yes")
    if getattr(args, "no_socket", False):
        config.set("agent", "socket", "")
    return config


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (default /etc/memagent/memagent.conf)")
    p.add_argument("--source", help="force a source: " + ", ".join(("auto",) + sources.ALL_NAMES))
    p.add_argument("--memcg", help="watch this memory cgroup directory, not the whole system")
    p.add_argument("--proc-root", dest="proc_root", help="read /proc from here (tests)")
    p.add_argument("--trace", help="trace file for --source trace")
    p.add_argument("-v", "--verbose", action="count", default=0)


def cmd_run(args: argparse.Namespace) -> int:
    """``memagent run``: the agent, until SIGTERM (SIGUSR1 dumps its stacks
    to stderr, for a support engineer facing a stuck agent)."""
    return _run_agent(args, _config(args))


def cmd_cuse(args: argparse.Namespace) -> int:
    """``memagent cuse``: only the /dev/mem_notify provider: the agent's
    sensing and the mem_notify_device plugin, no other plugin, no control
    socket unless --socket.  Returns: the exit code."""
    config = _config(args)
    why = _cannot_serve(config)
    if why is not None:
        print("memagent cuse: %s" % why, file=sys.stderr)
        return 1
    config.set("plugins", "enable", "mem_notify_device")
    config.preset("mem_notify_device", "enabled", "yes")
    config.preset("mem_notify_device", "required", "yes")
    if args.socket is None:
        config.set("agent", "socket", "")
    if config.values.get("agent", {}).get("nice") is None:
        # a provider's wakeups are only as early as it is scheduled: in the
        # 64 MB guest at nice 0 a LOW came 1 s late under an allocation
        config.set("agent", "nice", "-20")
    return _run_agent(args, config)


def _cannot_serve(config: Config) -> "Optional[str]":
    """Return: why ``memagent cuse`` cannot serve its device (no /dev/cuse,
    a kernel's own device, the name served already), or None."""
    from .aio import unix
    from .ipc.cuse import kernel_device, taken_by_cuse

    devname = config.raw("mem_notify_device", "devname") or "mem_notify"
    cuse_path = config.raw("mem_notify_device", "cuse_path") or "/dev/cuse"
    if taken_by_cuse(devname):
        return "/dev/%s is already served by another CUSE server (a second memagent?)" % devname
    if not unix.exists(cuse_path):
        return "%s does not exist (modprobe cuse; the kernel needs CONFIG_CUSE)" % cuse_path
    return kernel_device(devname)


def _run_agent(args: argparse.Namespace, config: Config) -> int:
    """Run the agent on ``config`` until SIGTERM.  Returns: the exit code."""
    from .runtime import selfprotect

    # The configured priority before the imports below: under a thrash they
    # are most of the start (selfprotect.set_nice).  ``python -m memagent``
    # ran at -20 until here (__main__); back to 0 it says nothing.
    nice = config.get_int("agent", "nice")
    niced = selfprotect.set_nice(nice)
    quiet = not nice and "not set" not in niced  # back to the default: nothing to say
    from . import aio
    from .runtime.agent import Agent

    try:
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except ImportError:  # MicroPython
        pass
    setup_logging(config, args.verbose)
    if not quiet:
        log.info("%s", niced)
    events = open(args.events_json, "a") if args.events_json not in (None, "-") else (
        sys.stdout if args.events_json == "-" else None)
    agent = Agent(config, config_path=args.config, events_out=events)
    log.info("memagent %s starting", __version__)
    try:
        return aio.leave(aio.run(agent.run()))
    except sources.SourceUnavailable as e:
        print("memagent: source unavailable: %s" % e, file=sys.stderr)
        return 2


def cmd_status(args: argparse.Namespace) -> int:
    """``memagent status``: ask the running agent, else read /proc now;
    from a workstation, a device's (--ssh, --adb, --connect).  Returns: 0,
    or the exit code saying why there was no status (docs/status.md)."""
    if remote_asked(args):
        from . import fetchcli

        return fetchcli.cmd_status_remote(args)
    from . import statuscli

    config = _config(args)
    path = config.get_str("agent", "socket")

    def fetch() -> "Tuple[Dict[str, Any], int, Optional[str]]":
        return statuscli.fetch_local(config, path)

    if args.watch is not None:
        return statuscli.watch(fetch, args)
    doc, code, why = fetch()
    if why:
        print("memagent: %s" % why, file=sys.stderr)
    statuscli.show(doc, args)
    return code


def cmd_events(args: argparse.Namespace) -> int:
    """``memagent events``: the agent's recent events as JSON lines;
    ``--follow``: and every new one until interrupted.  Returns: 0, or the
    exit code saying why the agent gave none."""
    if remote_asked(args):
        from . import fetchcli

        return fetchcli.cmd_events_remote(args)
    from . import statuscli

    path = _config(args).get_str("agent", "socket")
    try:
        return statuscli.follow(statuscli.socket_asker(path), args.after, args.follow,
                                args.interval_ms, sys.stdout)
    except (statuscli.AgentBusy, OSError, ValueError) as e:
        code, why = statuscli.status_failure(path, e)
        print("memagent: %s" % why, file=sys.stderr)
        return code


def cmd_plot(args: argparse.Namespace) -> int:
    """``memagent plot``: files, or a device's ring (--ssh, --adb,
    --connect), drawn to a PNG or SVG.  Returns: the exit code."""
    from . import fetchcli, plot

    fetch = (lambda: fetchcli.fetch_remote(args)) if remote_asked(args) else None
    return plot.cmd_plot(args, fetch)


def cmd_record(args: argparse.Namespace) -> int:
    """``memagent record``: write readings as a trace until SIGTERM/SIGINT or --duration-s."""
    from . import aio
    from .runtime.agent import Agent

    config = _config(args)
    setup_logging(config, args.verbose)
    config.set("agent", "socket", "")
    out = sys.stdout if args.output == "-" else open(args.output, "w")
    memcg = config.get("agent", "memcg")
    out.write(trace.header(str(memcg or "system"), config.get_str("agent", "source")) + "\n")
    agent = Agent(config, record_out=out, min_interval_ms=args.interval_ms, control=False)

    async def timed() -> int:
        if args.duration_s:
            async def stop_later() -> None:
                await aio.sleep_ms(int(args.duration_s * 1000))
                agent.stop()
            aio.create_task(stop_later())
        return await agent.run()

    try:
        return aio.run(timed())
    except sources.SourceUnavailable as e:
        print("memagent: source unavailable: %s" % e, file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()


def cmd_replay(args: argparse.Namespace) -> int:
    """``memagent replay``: the level timeline of a trace, on its own clock."""
    try:
        readings = trace.load_trace(args.trace_file)
    except (OSError, trace.TraceError) as e:
        print("memagent: %s: %s" % (args.trace_file, e), file=sys.stderr)
        return 2
    if not readings:
        print("memagent: %s: no readings" % args.trace_file, file=sys.stderr)
        return 2
    config = _config(args)
    notes = trace.replay(readings, thresholds_from_config(config, readings[0].total_kib))
    if args.json:
        for note in notes:
            print(json.dumps(note.as_dict()))
        return 0
    t0 = readings[0].t_ms
    print("%d readings over %.1f s; %d notifications" % (
        len(readings), (readings[-1].t_ms - t0) / 1000, len(notes)))
    for line in trace.format_timeline(notes, t0):
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``memagent demo [OPTIONS]``: the virtual handset (memagent.demo), imported
    only now: a device's package leaves the demo out."""
    try:
        from . import demo
    except ImportError:
        print("memagent demo: not installed here (the demo is left out of device images; "
              "run it from a source checkout or a pip install)", file=sys.stderr)
        return 2
    return demo.main(args.demo_args)


def _add_status_parsers(sub: "Any") -> None:
    """Add ``status`` and ``events`` to the subcommands ``sub``."""
    p = sub.add_parser("status", help="one screen: memory, pressure, history, apps, events",
                       epilog="exit codes: 0 the agent answered; when it did not, the level "
                       "computed from /proc now and 3 not running, 4 busy (too many clients), "
                       "5 reply too large, 6 no answer; from a device: 7 unreachable, "
                       "8 authentication failed, 9 memagent missing there, 10 version "
                       "mismatch.  docs/status.md")
    _add_common(p)
    p.add_argument("--socket", help="the agent's control socket")
    p.add_argument("--json", action="store_true", help="the status document (docs/status.md)")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="refresh every SECONDS until interrupted")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N screens")
    p.add_argument("--events", type=int, default=8, metavar="N",
                   help="show the last N events (default 8)")
    p.add_argument("--plain", action="store_true",
                   help="ASCII, no colour (the default when stdout is no terminal or TERM=dumb)")
    p.add_argument("--color", action="store_true", help="colour and Unicode even into a pipe")
    p.add_argument("--width", type=int, help="columns (default: the terminal's, or 80)")
    add_remote_args(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("events", help="the agent's recent events as JSON lines (--follow)")
    _add_common(p)
    p.add_argument("--socket", help="the agent's control socket")
    p.add_argument("--follow", action="store_true", help="print new events as they come")
    p.add_argument("--after", type=int, default=0, metavar="SEQ",
                   help="only events numbered above SEQ")
    p.add_argument("--interval-ms", type=int, default=EVENTS_POLL_MS,
                   help="with --follow: ask this often (default 1000)")
    add_remote_args(p)
    p.set_defaults(func=cmd_events)
    if logging is not None:  # a workstation's tool: not on MicroPython (no matplotlib)
        from . import plot

        p = sub.add_parser("plot", help="draw a trace, an events file or a device's "
                           "last minutes to a PNG or SVG (needs matplotlib: memagent[plot])")
        plot.add_plot_args(p)
        add_remote_args(p)
        p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    """Return: the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="memagent", description=(
        "Low-memory notification agent: /dev/mem_notify semantics on today's kernels."))
    parser.add_argument("--version", action="version", version="memagent " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("run", help="run the agent")
    _add_common(p)
    p.add_argument("--socket", help="control socket path (default /run/memagent.sock)")
    p.add_argument("--no-socket", action="store_true", help="serve no control socket")
    p.add_argument("--log", choices=("stderr", "syslog"))
    p.add_argument("--mlockall", action="store_true", help="lock the agent's memory")
    p.add_argument("--events-json", help="append notifications and plugins' actions (kills, "
                   "source switches: they have an \"action\" key) as JSON lines here (- stdout)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("cuse", help="serve /dev/mem_notify through CUSE, and nothing else",
                       description="The agent's sensing and its mem_notify_device plugin "
                       "only (root, /dev/cuse): programs written for the 2008 patch's "
                       "/dev/mem_notify poll it unchanged.  See docs/cuse.md.")
    _add_common(p)
    p.add_argument("--socket", help="also serve a control socket here (default: none)")
    p.add_argument("--log", choices=("stderr", "syslog"))
    p.add_argument("--mlockall", action="store_true", help="lock the agent's memory")
    p.add_argument("--events-json", help="append notifications as JSON lines here (- stdout)")
    p.set_defaults(func=cmd_cuse)
    _add_status_parsers(sub)
    p = sub.add_parser("record", help="record readings to a trace (JSON lines)")
    _add_common(p)
    p.add_argument("-o", "--output", default="-", help="trace file (default stdout)")
    p.add_argument("--interval-ms", type=int, default=100, help="read at least this often")
    p.add_argument("--duration-s", type=float, help="stop after this long")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser("replay", help="run the monitor over a trace, print the timeline")
    p.add_argument("trace_file")
    p.add_argument("-c", "--config", help="thresholds from this config file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)
    # The demo parses its own options (memagent demo --help lists them).
    p = sub.add_parser("demo", add_help=False,
                       help="the virtual handset demo (safe; replays without root)")
    p.set_defaults(func=cmd_demo, demo_args=[])
    return parser


def main(argv: "Optional[List[str]]" = None) -> int:
    """Entry point.  Returns: the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "demo":
        args.demo_args = extra
    elif extra:
        parser.error("unrecognized arguments: %s" % " ".join(extra))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as e:
        print("memagent: %s" % e, file=sys.stderr)
        return 2
    except (OSError, procfs.ParseError) as e:  # /proc or the memcg unreadable or hostile
        if isinstance(e, OSError) and e.args and e.args[0] == 32:  # `replay t.jsonl | head`
            sys.stderr.close()
            return 0
        print("memagent: cannot read the memory state: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


