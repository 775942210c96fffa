"""The config file: typed values, defaults, and errors that say where."""

import pytest

from memagent.core.config import (
    Config,
    ConfigError,
    Key,
    Section,
    load_config,
    parse_config,
    thresholds_from_config,
)


def test_values_and_defaults() -> None:
    cfg = parse_config("[agent]\nsource = cgroup1  # forced\nmlockall = yes\n"
                       "[levels]\nlow_pct = 25\nlead_ms=3000\n", "t.conf")
    assert cfg.get("agent", "source") == "cgroup1"
    assert cfg.get("agent", "mlockall") == "all"
    assert parse_config("[agent]\nmlockall = onfault\n").get("agent", "mlockall") == "onfault"
    assert parse_config("").get("agent", "mlockall") == "no"
    assert cfg.get("agent", "oom_score_adj") == -1000
    assert cfg.get("levels", "lead_ms") == 3000
    th = thresholds_from_config(cfg, 100000)
    assert th.low_kib == 25000 and th.critical_kib == 10000 and th.lead_ms == 3000
    assert th.recover_kib == 50000


@pytest.mark.parametrize("text,msg", [
    ("[agent]\nsorce = psi\n", "t.conf:2: unknown setting 'sorce' in \\[agent\\]"),
    ("source = psi\n", "t.conf:1: 'source' comes before any \\[section\\]"),
    ("[agent]\njust words\n", "t.conf:2: expected 'key = value'"),
    ("[levels]\nlow_kib = lots\n", "t.conf:2: expected an integer number, got 'lots'"),
    ("[agent]\nmlockall = maybe\n", "t.conf:2: expected yes, no or onfault"),
    ("[bad name!]\n", "t.conf:1: bad section name"),
])
def test_errors_name_file_and_line(text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_config(text, "t.conf")


def test_inconsistent_thresholds() -> None:
    cfg = parse_config("[levels]\nlow_kib = 100\ncritical_kib = 500\n")
    with pytest.raises(ConfigError, match="critical_kib"):
        thresholds_from_config(cfg, 100000)


def test_missing_files(tmp_path: "pytest.TempPathFactory") -> None:
    assert isinstance(load_config(None), Config)  # no default file: defaults
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path) + "/nope.conf")


def test_set_validates() -> None:
    cfg = Config({})
    cfg.set("agent", "source", "poll")
    with pytest.raises(ConfigError):
        cfg.set("levels", "lead_ms", "soon")


# -- the plugins' sections: checked against the schema each plugin declares -----------

SCHEMAS = {"vendor": {"mode": Key("str", "quiet", choices=("quiet", "loud")),
                      "limit_kib": Key("int", "100", low=1, high=1000),
                      "on": Key("bool", "yes")},
           "bare": {}}


def test_a_plugin_section_is_kept_until_its_plugin_claims_it() -> None:
    cfg = parse_config("[agent]\nsource = poll\n[vendor]\nlimit_kib = 250\n", "t.conf")
    assert cfg.unclaimed() == ["vendor"]
    assert cfg.claim(SCHEMAS) == []
    section = Section(cfg, "vendor")
    assert section.get_int("limit_kib") == 250  # set in the file
    assert section.get_str("mode") == "quiet" and section.get_bool("on") is True  # defaults
    assert Section(cfg, "bare").name == "bare"
    with pytest.raises(ConfigError, match="unknown setting \\[vendor\\] nope"):
        section.get("nope")


@pytest.mark.parametrize("text,msg", [
    ("[agnet]\n", "t.conf:1: unknown section \\[agnet\\]: no plugin named agnet is loaded"),
    ("[vendor]\n\nmod = loud\n", "t.conf:3: unknown setting 'mod' in \\[vendor\\] "
                                 "\\(known: limit_kib, mode, on\\)"),
    ("[vendor]\nmode = shouty\n", "t.conf:2: \\[vendor\\] mode: one of quiet, loud, got 'shouty'"),
    ("[vendor]\nlimit_kib = 0\n", "t.conf:2: \\[vendor\\] limit_kib: must be >= 1, got 0"),
    ("[vendor]\nlimit_kib = 5000\n", "t.conf:2: \\[vendor\\] limit_kib: must be <= 1000"),
    ("[vendor]\non = perhaps\n", "t.conf:2: \\[vendor\\] on: expected yes or no"),
    ("[bare]\nx = 1\n", "t.conf:2: unknown setting 'x' in \\[bare\\] \\(known: none\\)"),
])
def test_plugin_section_errors_name_file_and_line(text: str, msg: str) -> None:
    cfg = parse_config(text, "t.conf")  # only the agent's own sections are checked here
    with pytest.raises(ConfigError, match=msg):
        cfg.claim(SCHEMAS)


def test_a_section_of_a_plugin_left_out_is_ignored_with_a_warning() -> None:
    cfg = parse_config("[kill_background]\ndry_run = no\n", "t.conf")
    warnings = cfg.claim({}, {"kill_background": "disabled by [plugins] disable"})
    assert warnings == ["t.conf:1: [kill_background] is ignored: plugin kill_background is "
                        "not loaded (disabled by [plugins] disable)"]


def test_a_schema_checks_its_own_defaults() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        Key("int", "0", low=1)
    with pytest.raises(ValueError, match="kind"):
        Key("list", "a")
