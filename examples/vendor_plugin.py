"""An example memagent plugin: log level changes, keep the last level in a file.

Install it as a drop-in (devices without pip metadata)::

    install -m 644 vendor_plugin.py /etc/memagent/plugins.d/

or ship it in a package with an entry point (pyproject.toml)::

    [project.entry-points."memagent.plugins"]
    vendor_plugin = "vendor_plugin:VendorPlugin"

Its one setting, the file the level goes to, is ``[vendor_plugin] path``
(default /run/memagent-level; $VENDOR_LEVEL_FILE overrides it, for the
demo below).  Run this file to see the plugin loaded and called once, as the
agent would: ``python3 examples/vendor_plugin.py``.
"""

import logging
import os
from typing import Any, Dict, Optional

from memagent.core.config import Key
from memagent.core.levels import Notification, level_name
from memagent.runtime.services import Services

log = logging.getLogger("memagent.plugin.vendor_plugin")


class VendorPlugin:
    """Logs every level change and writes the new level's name to a file."""

    name = "vendor_plugin"
    # The settings of [vendor_plugin]: checked by the agent at start, naming the line.
    config_schema = {"path": Key("str", "/run/memagent-level", doc="where the level goes")}

    def __init__(self) -> None:
        self.path = os.environ.get("VENDOR_LEVEL_FILE", "")

    async def on_start(self, services: Optional[Services] = None,
                       agent_status: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if not self.path:
            self.path = services.config.get_str("path") if services else "/run/memagent-level"
        log.info("vendor_plugin: agent %s started; the level goes to %s",
                 (agent_status or {}).get("version", "?"), self.path)

    async def on_level_change(self, level: int, prev_level: int,
                              notification: Notification, **kwargs: Any) -> None:
        log.warning("vendor_plugin: %s -> %s, %d KiB available",
                    level_name(prev_level), level_name(level), notification.avail_kib)
        self.write_level(level_name(level))

    def write_level(self, text: str) -> None:
        """Replace the file's content with ``text`` (atomically: readers never
        see half a line).  A small local file: quick enough for a hook; slow
        work belongs in a thread or another process, never in the hook."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, self.path)


# The object the agent loads from this file (a drop-in) or module.
plugin = VendorPlugin()


def _demo() -> None:
    """Load this file as a drop-in and deliver one LOW notification."""
    import tempfile

    from memagent import aio
    from memagent.core.config import parse_config
    from memagent.core.levels import LOW, NORMAL
    from memagent.runtime.pluginload import load_plugins

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VENDOR_LEVEL_FILE", os.path.join(tmp, "level"))
        result = load_plugins(parse_config("[plugins]\nenable = vendor_plugin\n"),
                              dropin_dir=os.path.dirname(os.path.abspath(__file__)),
                              entry_points=[])
        result.log(log)
        dispatcher = result.dispatcher()
        aio.run(dispatcher.start(lambda p: {"agent_status": {"version": "example"}}))
        note = Notification(0, LOW, NORMAL, "avail", 20000, 131072, None)
        aio.run(dispatcher.dispatch(note))
        with open(os.environ["VENDOR_LEVEL_FILE"]) as f:
            print("level file says:", f.read().strip())


if __name__ == "__main__":
    _demo()
