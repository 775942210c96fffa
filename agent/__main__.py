"""``python -m memagent`` (and the MicroPython launcher, ``micropython -m memagent``)."""

import sys

if sys.argv[1:2] == ["run"]:
    # The agent's name first of all, before the imports that may take
    # seconds on a slow board: start-stop-daemon -n finds the process by it,
    # and MicroPython started through a loader is called "ld-linux-armhf.".
    from .aio import unix

    unix.set_process_name("memagent")

from .cli import main  # noqa: E402

sys.exit(main())
