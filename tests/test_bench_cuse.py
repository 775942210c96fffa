"""bench/cuse.py's parser and tables on canned FACT lines (no qemu)."""

from bench import cuse
from bench.board import facts_of

CONSOLE = """\
FACT interpreter=python3
FACT lat_n1_1=11x3,12x2,13x2,16x1,21x1,22x1
FACT events_n1_1=10
FACT woken_per_event_n1_1={"LOW1":10}
FACT lat_all_100=-123x10,27x43,59x65,361x35
FACT events_all_100=10
FACT woken_per_event_all_100={"LOW100":2,"LOW45":1}
FACT psi_thresholds={"critical_kib":11122,"low_kib":22244}
FACT psi_run1=start_kib=80936 ramp_to_kib=11122 psi=none device=5800:21332 fires=0
FACT rss_agent_socket=17708/16131
FACT rss_agent_nosocket=17000/15500
FACT rss_provider_0=18708/17000
FACT rss_provider_1000=19708/18000
FACT bench_s=300
"""


def test_histogram_and_quantiles() -> None:
    h = cuse.parse_histogram("-5x1,10x2,20x96,300x1")
    assert h == {-5: 1, 10: 2, 20: 96, 300: 1}
    assert cuse.quantile(h, 0.5) == 20
    assert cuse.quantile(h, 0.99) == 20  # the 99th of 100
    assert cuse.quantile({1: 1, 2: 1}, 0.99) == 2
    assert cuse.quantile({}, 0.5) is None
    assert cuse.merge([{1: 1}, {1: 2, 3: 1}]) == {1: 3, 3: 1}


def test_tables_from_facts() -> None:
    facts = facts_of(CONSOLE)
    rows = cuse.latency_rows([facts, facts])  # two boots, pooled
    by = {(r["mode"], r["waiters"]): r for r in rows}
    one = by[("N=1", 1)]
    assert (one["wakes"], one["events"], one["median"], one["p99"], one["max"]) == \
        (20, 20, 12, 22, 22)
    many = by[("wake-all", 100)]
    assert many["negative"] == 20 and many["median"] == 59
    lines = cuse.report("python3", 128, [{"facts": facts, "kernel": "6.1"}])
    text = "\n".join(lines)
    assert "| N=1 | 1 | 10 | LOW1 x10 | 10 | 12 ms | 22 ms | 22 ms | 0 |" in text
    assert "| 1.1 | 80,936 KiB | 11,122 KiB | did not fire | 21,332 KiB at +5,800 ms | 0 |" \
        in text
    assert "| provider, 1,000 open files | 19,708 KiB | 18,000 KiB | +2000 KiB |" in text
