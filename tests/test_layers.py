"""The package keeps the layers of docs/architecture.md (tests/layercheck.py):
no import against the table, no import cycle, no oversized module or
function; and the check finds each of those in a tree made to break them."""

import os
from typing import Dict

from layercheck import ALLOWED, check_tree, layer_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = "def f() -> int:\n    return 1\n"
LONG_FUNCTION = "def long() -> None:\n" + "    x = 1\n" * 70
BAD_TREE: Dict[str, str] = {
    "agent/__init__.py": "",
    "agent/aio.py": GOOD,
    "agent/cli.py": "from .demo import run\n",  # the demo at module level
    "agent/core/__init__.py": "",
    "agent/core/levels.py": "from ..sense import domains\n",  # core reaching up
    "agent/core/reading.py": "from . import trace\n",  # a cycle ...
    "agent/core/trace.py": "from .reading import x\n",  # ... with this one
    "agent/core/typed.py": "try:\n    from typing import TYPE_CHECKING\nexcept ImportError:\n"
                           "    TYPE_CHECKING = False\nif TYPE_CHECKING:\n"
                           "    from .untyped import Thing\n",  # type-only: no cycle
    "agent/core/untyped.py": "from . import typed\n",
    "agent/sense/__init__.py": "",
    "agent/sense/domains.py": "from ..ipc import control\n",  # sense -> ipc
    "agent/ipc/__init__.py": "",
    "agent/ipc/control.py": "import os\nfrom .. import aio\n" + "x = 1\n" * 420,  # too long
    "agent/runtime/__init__.py": "",
    "agent/runtime/agent.py": GOOD,
    "agent/runtime/services.py": GOOD,
    "agent/runtime/hooks.py": GOOD,
    "agent/client/__init__.py": "from ..runtime import agent\n",  # client -> runtime
    "agent/demo/__init__.py": "",
    "agent/demo/run.py": "from ..runtime import agent\nfrom ..plugins import x\n",  # allowed
    "agent/nowhere.py": GOOD,  # in no layer
    "plugins/__init__.py": "",
    "plugins/good.py": "from memagent.runtime.services import Services\n"
                       "from memagent.core import levels\nfrom memagent import aio\n",
    "plugins/bad.py": "from memagent.runtime.agent import Agent\n"  # the agent object
                      "from memagent.plugins import good\n"  # another plugin
                      "from memagent.sense import domains\n"  # not the plugin API
                      "from memagent.nope import missing\n",  # does not exist
    "plugins/pkg/__init__.py": "",
    "plugins/pkg/plugin.py": "from memagent.plugins.pkg import helper\n",  # its own: fine
    "plugins/pkg/helper.py": LONG_FUNCTION,  # too long a function
    "plugins/pkg/excused.py": "# size-ok: a table of constants from the kernel\n" + LONG_FUNCTION,
}


def test_the_package_keeps_its_layers() -> None:
    assert check_tree(ROOT) == []


def test_the_check_finds_every_kind_of_violation(tmp_path: "os.PathLike[str]") -> None:
    for rel, text in BAD_TREE.items():
        path = os.path.join(str(tmp_path), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    found = check_tree(str(tmp_path))
    expected = [
        "memagent.cli:1: imports memagent.demo.run at module level (only when the demo runs)",
        "memagent.client:1: client may not import memagent.runtime.agent (runtime)",
        "memagent.core.levels:1: core may not import memagent.sense.domains (sense)",
        "memagent.ipc.control: 422 lines (over 400; split it, or say why in a '# size-ok:' line)",
        "memagent.nowhere: in no layer (%s)" % ", ".join(sorted(ALLOWED)),
        "memagent.plugins.bad:1: plugins may not import memagent.runtime.agent (runtime)",
        "memagent.plugins.bad:2: plugins may not import memagent.plugins.good (plugins)",
        "memagent.plugins.bad:3: plugins may not import memagent.sense.domains (sense)",
        "memagent.plugins.bad:4: imports memagent.nope, which does not exist",
        "memagent.plugins.pkg.helper:1: function long is 71 lines (over 60)",
        "memagent.sense.domains:1: sense may not import memagent.ipc.control (ipc)",
        "import cycle: memagent.core.reading <-> memagent.core.trace",
    ]
    assert found == expected


def test_layers_of_names() -> None:
    assert [layer_of(m) for m in ("memagent", "memagent.cli", "memagent.aio",
                                  "memagent.core.levels", "memagent.plugins",
                                  "memagent.plugins.x.y", "memagent.demo")] == [
        "top", "top", "aio", "core", "plugins", "plugins", "demo"]
