"""``python -m memagent`` (and the MicroPython launcher, ``micropython -m memagent``)."""

import sys

if sys.argv[1:2] == ["run"]:
    # The agent's name first of all, before the imports that may take
    # seconds on a slow board: start-stop-daemon -n finds the process by it,
    # and MicroPython started through a loader is called "ld-linux-armhf.".
    from .aio import unix

    unix.set_process_name("memagent")
    # Then the highest CPU priority it may take, until `memagent run` has read
    # [agent] nice (cli.cmd_run): a start under a thrash is mostly these
    # imports (the 64 MB guest: 1.7-2.1 s at nice 0, 0.8-1.0 s at -20).
    try:
        unix.set_nice(-20)
    except OSError:  # no CAP_SYS_NICE: the priority it was started with
        pass

from .cli import main  # noqa: E402

sys.exit(main())
