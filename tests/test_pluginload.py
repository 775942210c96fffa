"""Plugin loading: real drop-in files, real entry points, the real Dispatcher."""

import logging
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from memagent import aio
from memagent.core.config import Config, parse_config
from memagent.core.levels import LOW, NORMAL, Notification
from memagent.runtime.hooks import HOOKS, RETIRED, SPEC, validate
from memagent.runtime.pluginload import LoadResult, load_plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "vendor_plugin.py"

# A module that is its own plugin: module-level async hooks, name from the file.
RECORDER = """
calls = []

async def on_level_change(level, prev_level, notification, **kwargs):
    calls.append(("change", level, prev_level))

async def on_device(action, devnode, **kwargs):
    calls.append(("device", action, devnode))
"""

# A class instance, exported as ``plugin``.
CLASS_PLUGIN = """
class Plugin:
    name = "{name}"

    async def on_pressure(self, level, **kwargs):
        pass

plugin = Plugin()
"""


def load_without_builtins(*args: Any, **kwargs: Any) -> LoadResult:
    """load_plugins without memagent's built-in plugins: these tests load their own."""
    return load_plugins(*args, builtins=False, **kwargs)


def note(level: int = LOW, prev: int = NORMAL) -> Notification:
    return Notification(0, level, prev, "avail", 100, 1000, None)


def load(tmp_path: Path, files: Dict[str, str], conf: str = "",
         entry_points: Optional[List[Any]] = None) -> LoadResult:
    """Write ``files`` into a drop-in directory and load it with ``conf``."""
    directory = tmp_path / "plugins.d"
    directory.mkdir(exist_ok=True)
    for filename, text in files.items():
        (directory / filename).write_text(textwrap.dedent(text))
    return load_without_builtins(parse_config(conf, "test.conf"), dropin_dir=str(directory),
                        entry_points=[] if entry_points is None else entry_points)


def named(name: str) -> str:
    return CLASS_PLUGIN.format(name=name)


# -- good plugins ------------------------------------------------------------------


def test_a_drop_in_loads_and_the_dispatcher_calls_it(tmp_path: Path) -> None:
    result = load(tmp_path, {"recorder.py": RECORDER})
    assert result.errors == []
    assert result.names == ["recorder"]  # name defaults to the file name
    plugin = result.plugins[0]
    d = result.dispatcher()
    aio.run(d.dispatch(note(LOW, NORMAL)))
    aio.run(d.call(plugin, "on_device", action="add", subsystem="input", devnode="input/event3",
                   devnum=0))
    assert plugin.calls == [("change", LOW, NORMAL), ("device", "add", "input/event3")]
    assert d.hook_errors == 0


def test_a_class_is_instantiated_and_its_name_kept(tmp_path: Path) -> None:
    text = "class Plugin:\n    name = 'cls'\n    async def on_stop(self, **kw):\n        pass\n"
    result = load(tmp_path, {"a.py": named("obj"),
                             "b.py": text + "plugin = Plugin\n"})
    assert result.errors == []
    assert result.names == ["obj", "cls"]
    assert not isinstance(result.plugins[1], type)


def test_an_empty_or_missing_directory_loads_nothing(tmp_path: Path) -> None:
    assert load(tmp_path, {}).plugins == []
    result = load_without_builtins(Config({}), dropin_dir=str(tmp_path / "nope"), entry_points=[])
    assert (result.plugins, result.errors) == ([], [])


# -- validation ---------------------------------------------------------------------


def test_a_sync_hook_is_rejected_naming_plugin_and_hook(tmp_path: Path) -> None:
    result = load(tmp_path, {"syncy.py": "def on_device(action, **kwargs):\n    pass\n",
                             "recorder.py": RECORDER})
    assert result.names == ["recorder"]
    assert len(result.errors) == 1
    message = result.errors[0]
    assert "plugin syncy" in message and "on_device must be 'async def'" in message
    assert str(tmp_path / "plugins.d" / "syncy.py") in message


def test_a_hook_without_kwargs_is_rejected(tmp_path: Path) -> None:
    result = load(tmp_path, {"strict.py": "async def on_pressure(level, notification):\n"
                                          "    pass\n"})
    assert result.plugins == []
    assert len(result.errors) == 1
    assert "plugin strict" in result.errors[0]
    assert "on_pressure must accept **kwargs" in result.errors[0]


def test_a_misspelt_hook_is_rejected(tmp_path: Path) -> None:
    text = RECORDER + "\nasync def on_level_chnage(level, **kwargs):\n    pass\n"
    result = load(tmp_path, {"typo.py": text})
    assert result.plugins == []
    assert len(result.errors) == 1
    assert "plugin typo" in result.errors[0]
    assert "on_level_chnage is not a known hook (did you mean on_level_change?)" \
        in result.errors[0]


class Parameters:
    name = "params"

    async def on_pressure(self, lvl: int, /, note: int, **kwargs: Any) -> None:
        pass


class Nothing:
    name = "nothing"


class Disabled(Parameters):
    name = "disabled"
    on_pressure = None  # type: ignore[assignment]

    async def on_stop(self, **kwargs: Any) -> None:
        pass


def test_validate_checks_parameters_names_and_hooks() -> None:
    assert validate(Parameters()) == [
        "plugin params: on_pressure: parameter 'lvl' is positional-only,"
        " but hooks are called by keyword",
        "plugin params: on_pressure: parameter 'note' is not one of its arguments"
        " (level, notification, deficit_kib, results)"]
    assert validate(Nothing()) == ["plugin nothing: defines none of the hooks (%s)"
                                   % ", ".join(HOOKS)]
    assert validate(Disabled()) == []  # None switches an inherited hook off
    bad_name = Disabled()
    bad_name.name = 3  # type: ignore[assignment]
    assert validate(bad_name) == ["plugin Disabled: name must be a non-empty str, got 3"]


def test_the_spec_is_the_one_list_of_hooks() -> None:
    assert HOOKS == tuple(SPEC) == ("on_start", "on_stop", "on_level_change", "on_pressure",
                                    "on_app_registered", "on_app_gone", "on_device")
    assert "services" in SPEC["on_start"][0] and "results" in SPEC["on_pressure"][0]
    assert not set(RETIRED) & set(HOOKS)


def test_a_retired_hook_loads_with_a_warning(tmp_path: Path) -> None:
    text = RECORDER + "\nasync def on_tick(now_ms, **kwargs):\n    pass\n"
    result = load(tmp_path, {"old.py": text, "only.py": "async def on_tick(**kw):\n    pass\n"})
    assert result.names == ["old"]
    assert result.warnings == ["plugin %s (%s): %s" % (name, tmp_path / "plugins.d" / (
        name + ".py"), RETIRED["on_tick"]) for name in ("old", "only")]
    assert len(result.errors) == 1 and "plugin only" in result.errors[0] \
        and "defines none of the hooks" in result.errors[0]


def test_a_bad_config_schema_is_refused_naming_the_plugin(tmp_path: Path) -> None:
    result = load(tmp_path, {"s.py": RECORDER + "\nconfig_schema = {'fanout': 'int'}\n"})
    assert result.plugins == []
    assert result.errors == ["plugin s (%s): config_schema: 'fanout' must map a name to a Key"
                             % (tmp_path / "plugins.d" / "s.py")]
    assert result.absent == {"s": "it failed its checks"}



def test_a_plugin_named_like_a_core_section_is_refused(tmp_path: Path) -> None:
    # Its [levels] settings would be the agent's own: refused, not ignored.
    result = load(tmp_path, {"levels.py": RECORDER})
    assert result.plugins == []
    assert result.errors == ["plugin levels (%s): name 'levels' is the agent's own config "
                             "section [levels]; choose another"
                             % (tmp_path / "plugins.d" / "levels.py")]

# -- broken files ---------------------------------------------------------------------


def test_a_file_that_raises_at_import_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    result = load(tmp_path, {"a_boom.py": "x = 1\nraise RuntimeError('no such device')\n",
                             "b_syntax.py": "async def on_device(:\n",
                             "c_exit.py": "import sys\nsys.exit(3)\n",
                             "d_good.py": RECORDER})
    assert result.names == ["d_good"]
    assert len(result.errors) == 3
    boom, syntax, exit_ = result.errors
    assert "a_boom.py" in boom and "RuntimeError: no such device" in boom
    assert "a_boom.py:2" in boom  # where it raised
    assert "b_syntax.py" in syntax and "SyntaxError" in syntax
    assert "c_exit.py" in exit_ and "SystemExit" in exit_
    assert "memagent_dropin_a_boom" not in sys.modules


def test_duplicate_names_keep_the_first(tmp_path: Path) -> None:
    result = load(tmp_path, {"a.py": named("same"), "b.py": named("same")})
    assert len(result.plugins) == 1
    assert result.errors == ["plugin same (%s): the name is taken by %s; not loaded"
                             % (tmp_path / "plugins.d" / "b.py", tmp_path / "plugins.d" / "a.py")]


# -- the [plugins] section --------------------------------------------------------------

FOUR = {"a.py": RECORDER, "b.py": RECORDER, "c.py": RECORDER, "d.py": RECORDER}


def test_enable_loads_only_those_and_imports_no_other(tmp_path: Path) -> None:
    files = dict(FOUR, **{"e.py": "raise RuntimeError('must not be imported')\n"})
    result = load(tmp_path, files, "[plugins]\nenable = c, a\n")
    assert result.names == ["a", "c"]  # enable does not order
    assert result.errors == []
    assert any("plugin e" in s and "not in [plugins] enable" in s for s in result.skipped)


def test_disable_and_block(tmp_path: Path) -> None:
    result = load(tmp_path, FOUR, "[plugins]\ndisable = b\nblock = c, d\nenable = a, b, c\n")
    assert result.names == ["a"]
    assert result.errors == []  # b was found, then disabled: not an unknown name
    skipped = " | ".join(result.skipped)
    assert "plugin b (" in skipped and "disabled by [plugins] disable" in skipped
    assert "plugin c (" in skipped and "blocked by [plugins] block" in skipped
    assert result.absent == {"b": "disabled by [plugins] disable",
                             "c": "blocked by [plugins] block", "d": "blocked by [plugins] block"}


def test_block_matches_the_plugin_name_too(tmp_path: Path) -> None:
    result = load(tmp_path, {"vendor_file.py": named("telemetry"), "b.py": RECORDER},
                  "[plugins]\nblock = telemetry\n")
    assert result.names == ["b"]
    assert any("plugin telemetry" in s and "blocked" in s for s in result.skipped)


def test_order_puts_those_first(tmp_path: Path) -> None:
    result = load(tmp_path, FOUR, "[plugins]\norder = d, b\n")
    assert result.names == ["d", "b", "a", "c"]
    assert result.errors == []


def test_unknown_names_in_enable_and_order_are_reported(tmp_path: Path) -> None:
    result = load(tmp_path, FOUR, "[plugins]\nenable = a, bb\norder = zz\n")
    assert result.names == ["a"]
    assert result.errors == ["[plugins] enable: no plugin named 'bb' was found",
                             "[plugins] order: no plugin named 'zz' was found"]


def test_the_section_parses_and_a_bad_timeout_falls_back(tmp_path: Path) -> None:
    config = parse_config("[plugins]\ndir = %s\nhook_timeout_ms = 150\n" % tmp_path, "x.conf")
    (tmp_path / "r.py").write_text(RECORDER)
    result = load_without_builtins(config, entry_points=[])  # the dir comes from the config
    assert (result.names, result.hook_timeout_ms) == (["r"], 150)
    assert result.dispatcher().hook_timeout_ms == 150
    bad = load(tmp_path, {}, "[plugins]\nhook_timeout_ms = 0\n")
    assert bad.hook_timeout_ms == 2000
    assert bad.errors == ["[plugins] hook_timeout_ms: expected a positive number of ms,"
                          " got '0'; using 2000"]


def test_defaults() -> None:
    config = Config({})
    assert config.get_str("plugins", "dir") == "/etc/memagent/plugins.d"
    assert config.get_int("plugins", "hook_timeout_ms") == 2000
    assert config.get_str("plugins", "enable") == ""


# -- entry points ------------------------------------------------------------------------


def make_distribution(site: Path, dist: str, modules: Dict[str, str], entry_points: str) -> None:
    """Write an installed distribution: modules plus a .dist-info directory."""
    site.mkdir(exist_ok=True)
    for module, text in modules.items():
        (site / (module + ".py")).write_text(textwrap.dedent(text))
    info = site / ("%s-1.0.dist-info" % dist)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % dist)
    (info / "entry_points.txt").write_text("[memagent.plugins]\n" + entry_points)


def test_installed_entry_points_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    make_distribution(site, "acme_memplug", {
        "acme_memplug_cls": "class Acme:\n    async def on_device(self, action, **kw):\n"
                            "        self.last = action\n",
        "acme_memplug_mod": RECORDER,
        "acme_memplug_bad": "raise ImportError('libacme.so missing')\n",
    }, "acme = acme_memplug_cls:Acme\nrecorder = acme_memplug_mod\n"
       "broken = acme_memplug_bad:plugin\n")
    monkeypatch.syspath_prepend(str(site))  # also invalidates importlib's caches
    result = load_without_builtins(Config({}), dropin_dir=str(tmp_path / "none"))
    assert result.names == ["acme", "recorder"]  # sorted by entry point name
    assert len(result.errors) == 1
    assert "plugin broken (entry point broken = acme_memplug_bad:plugin)" in result.errors[0]
    assert "ImportError: libacme.so missing" in result.errors[0]
    acme = result.plugins[0]
    aio.run(result.dispatcher().call(acme, "on_device", action="add"))
    assert acme.last == "add"


def test_entry_points_come_before_drop_ins(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    make_distribution(site, "zed_memplug", {"zed_memplug": RECORDER}, "zed = zed_memplug\n")
    monkeypatch.syspath_prepend(str(site))
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "aaa.py").write_text(RECORDER)
    result = load_without_builtins(Config({}), dropin_dir=str(directory))
    assert result.names == ["zed", "aaa"]


# -- isolation at call time, end to end -----------------------------------------------------


def test_raising_and_hanging_plugins_are_isolated(tmp_path: Path, caplog: Any) -> None:
    files = {
        "a_raises.py": "async def on_level_change(**kwargs):\n    raise ValueError('bad')\n",
        "b_hangs.py": "from memagent import aio\n\nasync def on_pressure(**kwargs):\n"
                      "    await aio.sleep_ms(10**9)\n",
        "c_recorder.py": RECORDER,
    }
    result = load(tmp_path, files, "[plugins]\nhook_timeout_ms = 100\n")
    assert result.errors == []
    d = result.dispatcher()
    aio.run(d.dispatch(note(LOW, NORMAL)))
    assert result.plugins[2].calls == [("change", LOW, NORMAL)]
    assert d.hook_errors == 2
    assert "plugin a_raises: on_level_change raised ValueError: bad" in caplog.text
    assert "plugin b_hangs: on_pressure timed out after 100 ms" in caplog.text


def test_the_result_logs_its_errors(tmp_path: Path, caplog: Any) -> None:
    result = load(tmp_path, {"x.py": "def on_device(**kw):\n    pass\n", "y.py": RECORDER},
                  "[plugins]\ndisable = z\n")
    with caplog.at_level(logging.INFO):
        result.log(logging.getLogger("memagent"))
    assert "plugin x" in caplog.text and "plugins: y" in caplog.text


# -- the vendor example ----------------------------------------------------------------------


def test_the_example_plugin_works_as_a_drop_in(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "plugins.d"
    directory.mkdir()
    shutil.copy(str(EXAMPLE), str(directory))
    level_file = tmp_path / "level"
    monkeypatch.setenv("VENDOR_LEVEL_FILE", str(level_file))
    result = load_without_builtins(Config({}), dropin_dir=str(directory), entry_points=[])
    assert (result.names, result.errors) == (["vendor_plugin"], [])
    d = result.dispatcher()
    aio.run(d.dispatch(note(LOW, NORMAL)))
    assert level_file.read_text() == "LOW\n"
    aio.run(d.call(result.plugins[0], "on_start", agent_status={"version": "0.1.0"}))
    assert d.hook_errors == 0
    assert not os.path.exists(str(level_file) + ".tmp")


BUILTIN_ORDER = ["release_caches", "user_activity", "kill_background", "notify_ui",
                 "device_watch", "mem_notify_device"]


def test_the_builtin_plugins_load_by_default(tmp_path: Path) -> None:
    # They load even where their optional libraries (evdev, pyudev, jeepney)
    # are missing: each then says why in its `unavailable`, at run time.
    result = load_plugins(Config({}), dropin_dir=str(tmp_path / "none"), entry_points=[])
    assert result.names == BUILTIN_ORDER and result.errors == []
    result = load_plugins(parse_config("[plugins]\ndisable = release_caches, notify_ui\n"),
                          dropin_dir=str(tmp_path / "none"), entry_points=[])
    assert result.names == ["user_activity", "kill_background", "device_watch",
                            "mem_notify_device"]
    # blanks separate names as commas do
    result = load_plugins(parse_config("[plugins]\ndisable = release_caches notify_ui\n"),
                          dropin_dir=str(tmp_path / "none"), entry_points=[])
    assert "release_caches" not in result.names and "notify_ui" not in result.names


def test_the_docs_hook_table_is_the_spec() -> None:
    # docs/plugins.md lists each hook with exactly the arguments the agent passes
    # (what a cell says in parentheses is explanation, not an argument).
    text = (ROOT / "docs" / "plugins.md").read_text()
    table = text.split("## Hooks", 1)[1].split("| hook |", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for line in table.splitlines():
        if line.startswith("| `on_"):
            cells = line.split("|")
            args = re.sub(r"\([^()]*\)", "", cells[2])
            documented[cells[1].strip().strip("`")] = re.findall(r"`(\w+)`", args)
    assert documented == {hook: list(args) for hook, (args, _when) in SPEC.items()}
