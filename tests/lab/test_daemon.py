"""The daemon as a real subprocess against real TLS servers on loopback: brownouts, reloads, restarts, endpoints."""

from __future__ import annotations

import gzip
import json
import signal
import sqlite3
import subprocess
import time
import urllib.request
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bench.servers import NginxServer, free_ports, wait_for
from scanner.protocols import ALL_PROTOCOLS
from scanner.protocols import Protocol as P
from tests.lab.daemon import (
    Daemons,
    Scrape,
    established_connections,
    lab_config,
    prometheus_query,
    prometheus_server,
    require_binary,
    run_once,
    write_config,
)
from tests.lab.servers import LabStack, NginxLabFactory, tarpit

ACCEPTED = "tls_scanner_protocol_accepted"
CHANGES = "tls_scanner_protocol_changes_total"
LAST_CHANGE = "tls_scanner_protocol_last_change_timestamp_seconds"
LAST_SCAN = "tls_scanner_last_scan_timestamp_seconds"
HTTP_STATUS = "tls_scanner_http_status_code"
RELOAD_OK = "tls_scanner_config_last_reload_successful"
RELOAD_AT = "tls_scanner_config_last_reload_success_timestamp_seconds"

NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]
PROTOCOLS = [p.value for p in ALL_PROTOCOLS]
# How soon after nginx's reload completes a 1s-interval daemon must show it (interval + jitter + sweep + scrape).
BROWNOUT_DEADLINE = 3.5


def target(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": port, **extra}


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


# --- 1 ----------------------------------------------------------------------------------------------------------


def test_brownout_by_nginx_reload_and_recovery(
    nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path
) -> None:
    """Dropping TLS 1.0/1.1 with `nginx -s reload` shows within seconds, is counted once, and so is the recovery."""
    web_port, steady_port = free_ports(2)
    steady = NginxServer("steady", steady_port, NGINX_MODERN)
    nginx = nginx_lab([NginxServer("web", web_port, NGINX_ALL), steady])
    config = write_config(tmp_path / "c.yaml", lab_config([target("web", web_port), target("steady", steady_port)]))
    d = start_daemon(config, debug=True)

    def steady_unchanged(scrape: Scrape) -> None:
        assert scrape.by_protocol(CHANGES, "steady") == dict.fromkeys(PROTOCOLS, 0.0)
        assert scrape.by_protocol(ACCEPTED, "steady") == {p: float(p in ("TLSv1.2", "TLSv1.3")) for p in PROTOCOLS}

    scrape = d.wait_metrics(
        lambda s: (
            s.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1 and s.value(LAST_SCAN, target="steady") is not None
        ),
        15,
        "TLSv1.0 accepted on web",
    )
    assert scrape.by_protocol(ACCEPTED, "web") == {p: float(p not in ("SSLv2", "SSLv3")) for p in PROTOCOLS}
    assert scrape.by_protocol(CHANGES, "web") == dict.fromkeys(PROTOCOLS, 0.0)
    steady_unchanged(scrape)

    def legacy_is(want: float, scrape: Scrape) -> bool:
        return scrape.value(ACCEPTED, target="web", protocol="TLSv1.0") == want

    for step, (protocols, accepted, changes) in enumerate([(NGINX_MODERN, 0.0, 1.0), (NGINX_ALL, 1.0, 2.0)]):
        before = time.time()
        nginx.reload([NginxServer("web", web_port, protocols), steady])
        deadline = time.monotonic() + BROWNOUT_DEADLINE
        scrape = d.wait_metrics(
            partial(legacy_is, accepted),
            remaining(deadline),
            f"step {step}: TLSv1.0 accepted={accepted} within {BROWNOUT_DEADLINE}s of the reload",
        )
        seen = time.time()
        for legacy in ("TLSv1.0", "TLSv1.1"):
            assert scrape.value(ACCEPTED, target="web", protocol=legacy) == accepted
            assert scrape.value(CHANGES, target="web", protocol=legacy) == changes
            at = scrape.value(LAST_CHANGE, target="web", protocol=legacy)
            assert at is not None and before <= at <= seen, (before, at, seen)
        for modern in ("TLSv1.2", "TLSv1.3"):
            assert scrape.value(ACCEPTED, target="web", protocol=modern) == 1
            assert scrape.value(CHANGES, target="web", protocol=modern) == 0
        steady_unchanged(scrape)
    steady_unchanged(d.metrics())


# --- 2 ----------------------------------------------------------------------------------------------------------


def test_http_403_brownout(nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path) -> None:
    """A server that still handshakes TLS 1.0/1.1 but answers 403 over them is seen by the daemon and by --once."""
    (port,) = free_ports(1)
    nginx_lab([NginxServer("legacy", port, NGINX_ALL, legacy_403=True)])
    plain = write_config(tmp_path / "plain.yaml", lab_config([target("legacy", port, http={"path": "/"})]))
    strict = write_config(
        tmp_path / "strict.yaml",
        lab_config([target("legacy", port, http={"path": "/"}, expect={"http_ok": ["TLSv1.0"]})]),
    )
    want = {"TLSv1.0": 403, "TLSv1.1": 403, "TLSv1.2": 200, "TLSv1.3": 200}

    d = start_daemon(strict, debug=True)
    scrape = d.wait_metrics(
        lambda s: s.value(HTTP_STATUS, target="legacy", protocol="TLSv1.0") is not None, 15, "HTTP status"
    )
    assert scrape.by_protocol(HTTP_STATUS, "legacy") == {p: float(v) for p, v in want.items()}
    assert scrape.value(ACCEPTED, target="legacy", protocol="TLSv1.0") == 1
    assert scrape.value("tls_scanner_expectation_met", target="legacy") == 0

    once = run_once(plain, "--format", "json")
    assert once.returncode == 0, once.stderr
    (report,) = json.loads(once.stdout)["targets"]
    assert report["http"] == want
    assert report["expect"] == {"met": True, "violations": []}

    once = run_once(strict, "--format", "json")
    assert once.returncode == 1, once.stderr
    (report,) = json.loads(once.stdout)["targets"]
    assert report["http"] == want
    assert report["expect"] == {"met": False, "violations": ["TLSv1.0 expected HTTP 2xx/3xx, got 403"]}

    once = run_once(strict)
    assert once.returncode == 1, once.stderr
    assert "legacy: policy: TLSv1.0 expected HTTP 2xx/3xx, got 403" in once.stdout.splitlines()


# --- 3 ----------------------------------------------------------------------------------------------------------

GOOD = """\
defaults:
  interval: 1s
  timeout: 2s
targets:
  - name: kept
    host: 127.0.0.1
    port: {kept}
  - name: removed
    host: 127.0.0.1
    port: {removed}
"""
BROKEN_LINE = 11
BROKEN = GOOD + "    colour: blue\n"  # line 11: unknown key in the second target
NEW = """\
defaults:
  interval: 1s
  timeout: 2s
targets:
  - name: kept
    host: 127.0.0.1
    port: {kept}
  - name: added
    host: 127.0.0.1
    port: {added}
"""


def test_reload_keeps_old_config_on_error_and_applies_a_good_one(
    lab: LabStack, start_daemon: Daemons, tmp_path: Path
) -> None:
    """SIGHUP or POST /-/reload with a broken config changes nothing; a good one adds and removes targets."""
    kept = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    removed = lab.tls_server({P.TLSv1_3})
    added = lab.tls_server({P.TLSv1_0, P.TLSv1_1, P.TLSv1_2})
    config = tmp_path / "c.yaml"
    config.write_text(GOOD.format(kept=kept.port, removed=removed.port))
    d = start_daemon(config, debug=True)
    scrape = d.wait_metrics(
        lambda s: s.value(LAST_SCAN, target="removed") is not None and s.value(LAST_SCAN, target="kept") is not None,
        10,
        "first sweeps",
    )
    assert scrape.value(RELOAD_OK) == 1

    config.write_text(BROKEN.format(kept=kept.port, removed=removed.port))
    assert "colour: blue" in config.read_text().splitlines()[BROKEN_LINE - 1]
    d.send(signal.SIGHUP)
    scrape = d.wait_metrics(lambda s: s.value(RELOAD_OK) == 0, 5, "the failed reload to show")
    last_scan = scrape.value(LAST_SCAN, target="kept")
    assert last_scan is not None
    d.wait_sweep("kept", after=last_scan, timeout=5)  # still scanned
    scrape = d.wait_sweep("removed", after=last_scan, timeout=5)
    assert scrape.value("tls_scanner_targets") == 2
    assert scrape.targets() == {"kept", "removed"}
    assert f"config reload failed, keeping the old config: {config}:{BROKEN_LINE}:" in d.log_text()

    status, body, _ = d.request("POST", "/-/reload")
    assert status == 500
    assert f"{config}:{BROKEN_LINE}: unknown key" in body
    assert d.metrics().value(RELOAD_OK) == 0
    status, body, headers = d.request("GET", "/-/reload")
    assert status == 405
    assert headers.get("Allow") == "POST"

    config.write_text(NEW.format(kept=kept.port, added=added.port))
    posted = time.time()
    status, body, _ = d.request("POST", "/-/reload")
    assert (status, body) == (200, "Config reloaded.\n")
    scrape = d.metrics()
    assert scrape.value(RELOAD_OK) == 1
    assert (scrape.value(RELOAD_AT) or 0) >= posted
    assert "removed" not in scrape.targets()
    scrape = d.wait_metrics(lambda s: s.value(ACCEPTED, target="added", protocol="TLSv1.0") == 1, 5, "added target")
    assert scrape.by_protocol(ACCEPTED, "added") == {
        p: float(p in ("TLSv1.0", "TLSv1.1", "TLSv1.2")) for p in PROTOCOLS
    }
    assert scrape.targets() == {"kept", "added"}
    assert scrape.value("tls_scanner_targets") == 2
    assert scrape.by_protocol(CHANGES, "kept") == dict.fromkeys(PROTOCOLS, 0.0)
    d.wait_sweep("kept", after=posted, timeout=5)  # the kept target's loop survived the swap
    status, body = d.get("/api/v1/targets")
    assert [t["name"] for t in json.loads(body)["targets"]] == ["kept", "added"]


# --- 4 ----------------------------------------------------------------------------------------------------------


def test_kill_9_and_restart_keep_the_state(nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path) -> None:
    """kill -9 leaves a sound state file; a restart keeps last-change times and counts a change made while down."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, NGINX_ALL)])
    config = write_config(tmp_path / "c.yaml", lab_config([target("web", port)]))
    state = tmp_path / "state.db"

    first = start_daemon(config, debug=True)
    scrape = first.wait_sweep("web", timeout=15)
    last_change = scrape.by_protocol(LAST_CHANGE, "web")
    assert set(last_change) == set(PROTOCOLS)
    first.wait_sweep("web", after=scrape.value(LAST_SCAN, target="web") or 0, timeout=5)
    first.kill9()

    # Read-only, so the inspection neither checkpoints nor removes the WAL the restart has to recover from.
    db = sqlite3.connect(f"file:{quote(str(state))}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = dict(
            db.execute(
                "SELECT protocol, last_change FROM protocol_state WHERE target = 'web' AND address = '127.0.0.1'"
            ).fetchall()
        )
    finally:
        db.close()
    assert rows == last_change

    second = start_daemon(config, debug=True)
    assert second.metrics().by_protocol(LAST_CHANGE, "web") == last_change  # before its first sweep
    scrape = second.wait_sweep("web", timeout=10)
    assert scrape.by_protocol(LAST_CHANGE, "web") == last_change
    assert scrape.by_protocol(CHANGES, "web") == dict.fromkeys(PROTOCOLS, 0.0)
    assert second.stop() == 0

    nginx.reload([NginxServer("web", port, NGINX_MODERN)])
    restarted = time.time()
    third = start_daemon(config, debug=True)
    scrape = third.wait_sweep("web", timeout=10)
    assert scrape.value(ACCEPTED, target="web", protocol="TLSv1.0") == 0
    assert scrape.value(CHANGES, target="web", protocol="TLSv1.0") == 1
    assert (scrape.value(LAST_CHANGE, target="web", protocol="TLSv1.0") or 0) >= restarted
    assert scrape.value(CHANGES, target="web", protocol="TLSv1.2") == 0
    assert scrape.value(LAST_CHANGE, target="web", protocol="TLSv1.2") == last_change["TLSv1.2"]
    status, body = third.get("/api/v1/targets")
    assert status == 200
    (entry,) = json.loads(body)["targets"]
    moves = {(t["protocol"], t["from"], t["to"]) for t in entry["transitions"]}
    assert moves == {("TLSv1.0", "accepted", "rejected"), ("TLSv1.1", "accepted", "rejected")}


# --- 5 ----------------------------------------------------------------------------------------------------------


def test_corrupt_state_file_is_moved_aside(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """A garbage state file does not stop the daemon: it is renamed aside intact and a fresh one is used."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    config = write_config(tmp_path / "c.yaml", lab_config([target("web", server.port)]))
    state = tmp_path / "state.db"
    garbage = bytes(range(256)) * 16 + b"this is not a SQLite database\n"
    state.write_bytes(garbage)

    d = start_daemon(config, debug=True)
    scrape = d.wait_sweep("web", timeout=10)
    assert scrape.value(ACCEPTED, target="web", protocol="TLSv1.3") == 1
    (aside,) = tmp_path.glob("state.db.unusable-*")
    assert aside.read_bytes() == garbage
    errors = [line for line in d.log_text().splitlines() if " ERROR " in line]
    assert any(f"state file {state} is unusable" in line and str(aside) in line for line in errors), errors
    db = sqlite3.connect(f"file:{quote(str(state))}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT count(*) FROM protocol_state").fetchone()[0] == len(PROTOCOLS)
    finally:
        db.close()


# --- 6 ----------------------------------------------------------------------------------------------------------


class _Matrix(HTMLParser):
    """Collects the status page's #matrix rows: data-target -> {data-protocol: (class, text)}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, tuple[str, str]]] = {}
        self.row_count = 0
        self._table: str | None = None
        self._row: str | None = None
        self._cell: tuple[str, str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table == "matrix" and a.get("data-target") is not None:
            self._row = a["data-target"]
            self.row_count += 1
            self.rows.setdefault(self._row or "", {})
        elif tag == "td" and self._row is not None and a.get("data-protocol") is not None:
            self._cell = (a["data-protocol"] or "", a.get("class") or "")
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            protocol, css = self._cell
            self.rows[self._row][protocol] = (css, self._text.strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


def test_endpoints(nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path) -> None:
    """Health, readiness, the targets API with transitions after a brownout, and the status page's matrix."""
    web_port, steady_port = free_ports(2)
    steady = NginxServer("steady", steady_port, NGINX_MODERN)
    nginx = nginx_lab([NginxServer("web", web_port, NGINX_ALL), steady])
    config = write_config(tmp_path / "c.yaml", lab_config([target("web", web_port), target("steady", steady_port)]))
    d = start_daemon(config, debug=True)
    assert d.get("/-/healthy") == (200, "Healthy.\n")
    assert wait_for(lambda: d.get("/-/ready")[0] == 200, 5, what="/-/ready 200")
    status, body, headers = d.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")

    d.wait_metrics(lambda s: s.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1, 15, "TLSv1.0 accepted")
    nginx.reload([NginxServer("web", web_port, NGINX_MODERN), steady])
    d.wait_metrics(lambda s: s.value(ACCEPTED, target="web", protocol="TLSv1.1") == 0, 5, "TLSv1.1 rejected")
    d.wait_sweep("steady", after=time.time())

    status, body = d.get("/api/v1/targets")
    assert status == 200
    api = {t["name"]: t for t in json.loads(body)["targets"]}
    assert list(api) == ["web", "steady"]
    modern = {p: "accepted" if p in ("TLSv1.2", "TLSv1.3") else "rejected" for p in PROTOCOLS}
    for name in api:  # one address per target here: the loopback literal it names
        assert list(api[name]["addresses"]) == ["127.0.0.1"], name
        assert api[name]["addresses"]["127.0.0.1"]["state"] == modern, name
    web_moves = sorted((t["address"], t["protocol"], t["from"], t["to"]) for t in api["web"]["transitions"])
    assert web_moves == [
        ("127.0.0.1", "TLSv1.0", "accepted", "rejected"),
        ("127.0.0.1", "TLSv1.1", "accepted", "rejected"),
    ]
    assert api["steady"]["transitions"] == []
    assert api["web"]["addresses"]["127.0.0.1"]["changes"] == {p: int(p in ("TLSv1.0", "TLSv1.1")) for p in PROTOCOLS}

    status, page = d.get("/")
    assert status == 200 and page.startswith("<!doctype html>")
    matrix = _Matrix()
    matrix.feed(page)
    assert matrix.row_count == 2
    assert set(matrix.rows) == {"web", "steady"}
    for name, cells in matrix.rows.items():
        assert {p: text for p, (_, text) in cells.items()} == api[name]["addresses"]["127.0.0.1"]["state"], name
    assert "changed" in matrix.rows["web"]["TLSv1.0"][0].split()
    assert "changed" not in matrix.rows["steady"]["TLSv1.0"][0].split()


# --- 7 ----------------------------------------------------------------------------------------------------------


def test_sigterm_during_a_hung_sweep_exits_cleanly(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """SIGTERM while a tarpit (timeout 2s) is being swept: exit status 0 within a few seconds."""
    pit = lab.peer(tarpit)
    config = write_config(tmp_path / "c.yaml", lab_config([target("pit", pit.port, timeout="2s")]))
    d = start_daemon(config, debug=True)
    wait_for(lambda: established_connections(d.pid, pit.port) > 0, 5, what="the daemon to hang on the tarpit")
    assert d.metrics().value(LAST_SCAN, target="pit") is None  # the first sweep is still in flight
    d.send(signal.SIGTERM)
    try:
        code = d.wait(6)
    except subprocess.TimeoutExpired:
        pytest.fail(f"daemon still running 6s after SIGTERM:\n{d.log_text()[-2000:]}")
    assert code == 0, d.log_text()[-2000:]
    log = d.log_text()
    assert "stopping: waiting for sweeps in flight" in log
    assert "stopped" in log.splitlines()[-1]
    assert "Traceback" not in log


# --- 8 ----------------------------------------------------------------------------------------------------------


def test_real_prometheus_scrapes_the_matrix(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """A real Prometheus scraping the daemon every second sees one series per target and protocol, right values."""
    servers = {
        "modern": ({P.TLSv1_2, P.TLSv1_3}, lab.tls_server({P.TLSv1_2, P.TLSv1_3})),
        "legacy": ({P.TLSv1_0, P.TLSv1_1, P.TLSv1_2}, lab.tls_server({P.TLSv1_0, P.TLSv1_1, P.TLSv1_2})),
    }
    config = write_config(tmp_path / "c.yaml", lab_config([target(name, ep.port) for name, (_, ep) in servers.items()]))
    d = start_daemon(config, debug=True)
    for name in servers:
        d.wait_sweep(name, timeout=10)
    want = {(name, p.value): float(p in versions) for name, (versions, _) in servers.items() for p in ALL_PROTOCOLS}

    config = (
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: tls-scanner\n    static_configs: [{{targets: ['127.0.0.1:{d.port}']}}]\n"
    )
    with prometheus_server(tmp_path, config) as (process, port):

        def matrix() -> dict[tuple[str, str], float] | None:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            answer = prometheus_query(port, ACCEPTED)
            if answer is None or answer["status"] != "success" or not answer["data"]["result"]:
                return None
            assert answer["data"]["resultType"] == "vector"
            series = answer["data"]["result"]
            for s in series:
                assert s["metric"]["job"] == "tls-scanner"
                assert s["metric"]["instance"] == f"127.0.0.1:{d.port}"
            return {(s["metric"]["target"], s["metric"]["protocol"]): float(s["value"][1]) for s in series} | {
                ("count", ""): float(len(series))
            }

        got = wait_for(matrix, 30, what="Prometheus to return tls_scanner_protocol_accepted")
        assert got.pop(("count", "")) == len(want)
        assert got == want
        up = prometheus_query(port, "up")
        assert up is not None and [float(s["value"][1]) for s in up["data"]["result"]] == [1.0]


# --- 9 ----------------------------------------------------------------------------------------------------------


def test_promtool_accepts_the_metrics(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """`promtool check metrics` finds nothing to complain about in the daemon's /metrics, every family present."""
    promtool = require_binary("promtool", "prometheus")
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3}, http_status=403)
    config = write_config(
        tmp_path / "c.yaml",
        lab_config([target("web", server.port, http=True, expect={"reject": ["TLSv1.0"], "http_ok": ["TLSv1.3"]})]),
    )
    d = start_daemon(config, debug=True)
    scrape = d.wait_sweep("web", timeout=10)
    for family in (ACCEPTED, CHANGES, LAST_CHANGE, HTTP_STATUS, "tls_scanner_expectation_met", RELOAD_OK):
        assert scrape.find(family), family
    check = subprocess.run(
        [promtool, "check", "metrics"], input=scrape.text, capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr


def test_event_loop_lag_is_exported(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """A timer every 50 ms observes how late the loop runs it: the count grows with time, +Inf holds them all."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    d = start_daemon(write_config(tmp_path / "c.yaml", lab_config([target("t", server.port)])), debug=True)
    d.wait_sweep("t")
    name = "tls_scanner_event_loop_lag_seconds"
    first = d.metrics().value(f"{name}_count")
    time.sleep(1.0)
    scrape = d.metrics()
    count = scrape.value(f"{name}_count")
    assert first is not None and count is not None
    assert count >= first + 10  # about 20 in a second
    assert scrape.value(f"{name}_bucket", le="+Inf") == count
    assert (scrape.value(f"{name}_bucket", le="0.005") or 0) <= (scrape.value(f"{name}_bucket", le="2.5") or 0)
    assert (scrape.value(f"{name}_sum") or 0.0) >= 0.0


def test_metrics_gzip_when_the_scraper_asks(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """Accept-Encoding: gzip (as Prometheus sends it) gets the same samples gzip-compressed; without it, plain text."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    d = start_daemon(
        write_config(tmp_path / "c.yaml", lab_config([target("t", server.port)], interval="60s")), debug=True
    )
    d.wait_sweep("t")
    url = f"http://127.0.0.1:{d.port}/metrics"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}), timeout=10) as r:
        assert r.headers["Content-Encoding"] == "gzip" and r.headers["Vary"] == "Accept-Encoding"
        packed = r.read()
        assert int(r.headers["Content-Length"]) == len(packed)
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Encoding"] is None
        plain = r.read()
    unpacked = gzip.decompress(packed).decode()

    def samples(text: str) -> list[str]:  # the process collector's own values move between two scrapes
        return [line for line in text.splitlines() if line.startswith("tls_scanner_") and "lag_seconds" not in line]

    assert samples(unpacked) == samples(plain.decode())
    assert 'tls_scanner_protocol_accepted{address="127.0.0.1",protocol="TLSv1.3",target="t"} 1.0' in unpacked
