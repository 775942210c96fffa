"""The config file: typed values, defaults, and errors that say where."""

import pytest

from memagent.config import Config, ConfigError, load_config, parse_config, thresholds_from_config


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
    ("[agnet]\n", "t.conf:1: unknown section \\[agnet\\]"),
    ("source = psi\n", "t.conf:1: 'source' comes before any \\[section\\]"),
    ("[agent]\njust words\n", "t.conf:2: expected 'key = value'"),
    ("[levels]\nlow_kib = lots\n", "t.conf:2: expected an integer number, got 'lots'"),
    ("[agent]\nmlockall = maybe\n", "t.conf:2: expected yes, no or onfault"),
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
