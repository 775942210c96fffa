"""The status document (schema 1, docs/status.md) and the event log's
numbered entries, from a real agent watching a real memcg under real
pressure, with a real cooperative app and a plugin that raises.

Everything it acts on is started here, inside the test's own memcg.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from conftest import ALLOC, MEMCG_LIMIT_KIB
from memagent.core.statusschema import STATUS_SCHEMA, SchemaMismatch, check_version, problems
from memagent.demo import memcg as memcg_mod
from memagent.demo.memcg import Memcg
from support import need, stop_agent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKEN = ("name = 'broken'\n"
          "async def on_level_change(**kw):\n    raise RuntimeError('broken on purpose')\n")


def memagent(*args: str, timeout_s: float = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "memagent", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def start_agent(group: Memcg, tmp: str) -> "subprocess.Popen[str]":
    """Return: ``memagent run`` on ``group`` with a drop-in plugin that raises."""
    plugins = os.path.join(tmp, "plugins.d")
    os.makedirs(plugins, exist_ok=True)
    with open(os.path.join(plugins, "broken.py"), "w") as f:
        f.write(BROKEN)
    conf = os.path.join(tmp, "m.conf")
    with open(conf, "w") as f:
        f.write("[plugins]\ndir = %s\n" % plugins)
    sock = os.path.join(tmp, "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-m", "memagent", "run", "--memcg", group.path,
                             "--socket", sock, "--config", conf],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return proc


def status_json(sock: str) -> "Dict[str, Any]":
    out = memagent("status", "--json", "--socket", sock)
    assert out.returncode == 0, out.stderr
    doc: Dict[str, Any] = json.loads(out.stdout)
    return doc


@pytest.fixture(scope="module")
def pressured(tmp_path_factory: Any) -> "Iterator[Tuple[str, Dict[str, Any], List[str]]]":
    """A real agent that went through LOW (and CRITICAL) with a cache app
    registered: (its socket, its status document, ``memagent events``' lines)."""
    reason = memcg_mod.available()
    if reason is not None:
        need(reason)
    tmp = str(tmp_path_factory.mktemp("schema"))
    group = memcg_mod.Memcg(limit_kib=MEMCG_LIMIT_KIB)
    try:
        agent = start_agent(group, tmp)
        sock = os.path.join(tmp, "ctl.sock")
        app = group.spawn([sys.executable, "-m", "memagent.demo.cacheapp", "--socket", sock,
                           "--name", "cachey", "--cache-mib", "24"],
                          stdout=subprocess.PIPE, text=True)
        try:
            assert app.stdout is not None and "ready" in app.stdout.readline()
            hog = group.spawn(ALLOC + ["--rate", "10", "--max-mb", "48", "--hold", "3"],
                              stdout=subprocess.DEVNULL)
            hog.wait(timeout=60)
            time.sleep(0.5)
            doc = status_json(sock)
            lines = memagent("events", "--socket", sock).stdout.splitlines()
            yield sock, doc, lines
        finally:
            app.terminate()
            app.wait(timeout=10)
            stop_agent(agent)
    finally:
        group.destroy()


@pytest.mark.memcg
def test_a_pressured_agent_gives_a_valid_schema_1_document(
        pressured: "Tuple[str, Dict[str, Any], List[str]]") -> None:
    _, doc, _ = pressured
    assert problems(doc) == []
    assert doc["schema"] == STATUS_SCHEMA and doc["running"] is True
    assert doc["host"] == os.uname().nodename and abs(doc["wall"] - time.time()) < 60
    assert isinstance(doc["level_since_ms"], int) and doc["level_since_ms"] >= 0
    assert doc["source"] == "cgroup1" and "event-driven" in doc["source_why"]
    history = doc["history"]
    assert history["buckets"], history
    assert max(b[2] for b in history["buckets"]) >= 1  # the LOW it went through
    assert min(b[1] for b in history["buckets"]) < doc["thresholds"]["low_kib"]
    app = [a for a in doc["apps"]["apps"] if a["name"] == "cachey"][0]
    assert isinstance(app["rss_kib"], int) and app["rss_kib"] > 0
    assert app["compliance"]["asked"] >= 1


@pytest.mark.memcg
def test_events_are_numbered_and_of_every_kind(
        pressured: "Tuple[str, Dict[str, Any], List[str]]") -> None:
    _, doc, lines = pressured
    events = doc["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    kinds = {e["kind"] for e in events}
    assert {"level", "action", "plugin_error"} <= kinds, kinds
    low = [e for e in events if e["kind"] == "level" and e["level"] == "LOW"]
    assert low and low[0]["prev_level"] == "NORMAL" and low[0]["reason"]
    trims = [e for e in events if e.get("action") == "trim"]
    assert trims and trims[0]["apps"] >= 1 and trims[0]["freed_kib"] >= 0, events
    err = [e for e in events if e["kind"] == "plugin_error"][0]
    assert err["plugin"] == "broken" and "broken on purpose" in err["error"]
    assert err["hook"] == "on_level_change"
    # memagent events prints the same entries, one JSON object a line
    printed = [json.loads(line) for line in lines]
    assert [e["seq"] for e in printed][-len(seqs):] == seqs[-len(printed):]


@pytest.mark.memcg
def test_events_after_gives_only_newer_ones(
        pressured: "Tuple[str, Dict[str, Any], List[str]]") -> None:
    sock, doc, _ = pressured
    middle = doc["events"][len(doc["events"]) // 2]["seq"]
    out = memagent("events", "--socket", sock, "--after", str(middle))
    got = [json.loads(line)["seq"] for line in out.stdout.splitlines()]
    assert got and min(got) == middle + 1, out.stdout


def request(sock: str, obj: Any) -> "Dict[str, Any]":
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(sock)
        s.sendall((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")
        reply: Dict[str, Any] = json.loads(s.makefile().readline())
        return reply
    finally:
        s.close()


@pytest.mark.memcg
def test_hostile_events_requests_get_clear_errors(
        pressured: "Tuple[str, Dict[str, Any], List[str]]") -> None:
    sock, _, _ = pressured
    for bad in ({"cmd": "events", "after": -1}, {"cmd": "events", "after": "x"},
                {"cmd": "events", "limit": 0}, {"cmd": "events", "after": 2 ** 80},
                {"cmd": "events", "pid": 1}):
        reply = request(sock, bad)
        assert reply["ok"] is False and reply["code"] in ("bad_field", "forbidden"), (bad, reply)
    reply = request(sock, {"cmd": "events", "after": 10 ** 9})
    assert reply["ok"] and reply["events"] == [] and reply["last"] < 10 ** 9
    assert request(sock, {"cmd": "events", "limit": 1})["events"][0]["seq"] >= 1
    assert request(sock, {"cmd": "status"})["ok"]  # and it still answers


@pytest.mark.memcg
def test_follow_prints_new_events_and_sees_a_restart(memcg: Memcg, tmp_path: Any) -> None:
    tmp = str(tmp_path)
    sock = os.path.join(tmp, "ctl.sock")
    agent = start_agent(memcg, tmp)
    follower = subprocess.Popen([sys.executable, "-m", "memagent", "events", "--follow",
                                 "--socket", sock, "--interval-ms", "200"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        hog = memcg.spawn(ALLOC + ["--rate", "10", "--max-mb", "56", "--hold", "2"],
                          stdout=subprocess.DEVNULL)
        hog.wait(timeout=60)
        deadline = time.monotonic() + 10
        while not any('"LOW"' in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(json.loads(line).get("level") == "LOW" for line in lines), lines
        stop_agent(agent)
        agent = start_agent(memcg, tmp)  # numbers begin again
        hog = memcg.spawn(ALLOC + ["--rate", "10", "--max-mb", "56", "--hold", "2"],
                          stdout=subprocess.DEVNULL)
        hog.wait(timeout=60)
        deadline = time.monotonic() + 10
        while not any('"restart"' in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        stop_agent(agent)
    kinds = [json.loads(line).get("kind") for line in lines]
    assert "restart" in kinds, lines
    after = kinds[kinds.index("restart") + 1:]
    assert "level" in after, lines


def test_the_checker_refuses_other_versions() -> None:
    with pytest.raises(SchemaMismatch, match="predates status schema 1"):
        check_version({"version": "0.2.0", "level": "NORMAL"})
    with pytest.raises(SchemaMismatch, match="speaks status schema 2"):
        check_version({"schema": 2, "version": "0.9"})
    for bad in (None, [], "x", {"schema": True}, {"schema": "1"}, {"schema": 0}):
        with pytest.raises(SchemaMismatch):
            check_version(bad)
    assert problems({"schema": 1}) != []  # missing keys are named
    assert any("history.buckets" in p for p in problems(
        {"schema": 1, "version": "x", "host": "h", "wall": 1.0, "running": True,
         "level": "LOW", "thresholds": {}, "reading": None,
         "history": {"step_ms": 1, "now_ms": 1, "buckets": [[1, 2, 7]]}}))


def newer_agent(path: str, schema: int) -> "threading.Thread":
    """Serve one status request at ``path`` as an agent of another schema
    would (a future memagent cannot run here: its reply is what is tested)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.makefile().readline()
        st: Dict[str, Any] = {"version": "9.0", "level": "NORMAL"}
        if schema:
            st["schema"] = schema
        conn.sendall(json.dumps({"ok": True, "v": 1, "status": st}).encode() + b"\n")
        conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("schema,said", [(2, "speaks status schema 2"),
                                         (0, "predates status schema 1")])
def test_a_version_mismatch_is_said_and_exits_10(tmp_path: Any, schema: int, said: str) -> None:
    sock = os.path.join(str(tmp_path), "ctl.sock")
    newer_agent(sock, schema)
    out = memagent("status", "--json", "--socket", sock)
    assert out.returncode == 10, (out.stdout, out.stderr)
    assert "version mismatch" in out.stderr and said in out.stderr
    assert json.loads(out.stdout)["running"] is False  # and /proc's level instead


def test_every_key_of_the_document_is_documented() -> None:
    with open(os.path.join(ROOT, "docs", "status.md")) as f:
        text = f.read()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    keys = {"schema", "version", "host", "wall", "running", "agent", "pid", "uptime_s",
            "level", "level_since_ms", "thresholds", "reading", "eta_ms", "fill_kib_s",
            "source", "source_why", "unavailable", "read_errors", "readings",
            "notifications", "history", "events", "recent", "actions", "apps", "activity",
            "plugins", "control", "status_tcp", "truncated"}
    assert keys <= documented, sorted(keys - documented)
