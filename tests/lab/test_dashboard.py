"""The Grafana dashboard in deploy/grafana: its structure, and every panel, annotation and variable query run against a
real Prometheus that scrapes the daemon (with the deploy/ rules loaded) while an nginx lab server browns out."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.servers import NginxLab, NginxServer, free_ports, wait_for
from scanner.cli import build_parser
from tests.lab.daemon import Daemon, answers_ok, lab_config, prometheus_server, require_binary, write_config
from tests.lab.servers import require_nginx
from tests.lab.test_deploy import DEPLOY, FAMILIES, NEWER_FAMILIES, PROMETHEUS, RULES, metric_names, recorded

DASHBOARD_PATH = DEPLOY / "grafana" / "dashboards" / "tls-scanner.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Variable values as Grafana would send them: everything, or one target and a two-protocol multi-selection.
SELECTIONS = {
    "all": {"target": ".*", "protocol": ".*"},
    "web": {"target": "web", "protocol": r"(TLSv1\\.0|TLSv1\\.2)"},
}
NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]
PROTOCOLS = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]


@dataclass(frozen=True)
class Query:
    where: str  # panel title / annotation name / variable name
    ref: str
    expr: str
    instant: bool


def panels(dashboard: dict[str, Any] = DASHBOARD) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def panel_queries() -> list[Query]:
    return [
        Query(p["title"], t["refId"], t["expr"], bool(t.get("instant")))
        for p in panels()
        if p["type"] != "row"
        for t in p["targets"]
    ]


def annotation_queries() -> list[Query]:
    return [
        Query(a["name"], "annotation", a["expr"], False)
        for a in DASHBOARD["annotations"]["list"]
        if a.get("datasource", {}).get("type") == "prometheus"
    ]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


def substitute(expr: str, selection: dict[str, str]) -> str:
    """The query Grafana sends: variables and built-in intervals replaced."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name in sorted(selection, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", selection[name]).replace("$" + name, selection[name])
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


def families_behind(expr: str) -> set[str]:
    """The exported families an expression reads, through recording rules."""
    rules = recorded()
    found: set[str] = set()
    for name in metric_names(expr):
        found |= families_behind(rules[name]) if name in rules else {name}
    return found


# --- structure (no services needed) ------------------------------------------------------------------------------


def test_dashboard_layout_and_datasources() -> None:
    assert DASHBOARD["uid"] == "tls-scanner" and "__inputs" not in DASHBOARD
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for p in panels():
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for other, (x, y, w, h) in boxes:
            overlap = g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]
            assert not overlap, f"{p['title']} overlaps {other}"
        boxes.append((p["title"], (g["x"], g["y"], g["w"], g["h"])))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
    kinds = {p["type"] for p in panels()}
    assert {"state-timeline", "table", "timeseries", "stat"} <= kinds
    titles = {p["title"] for p in panels()}
    for wanted in (
        "Current matrix",
        "Acceptance per target",
        "Acceptance per address",
        "HTTP status per protocol",
        "Scan errors by reason",
        "Sweep duration",
        "Scanners up",
        "Config reload",
    ):
        assert wanted in titles, wanted


def test_dashboard_variables_and_annotations() -> None:
    v = variables()
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    for name in ("target", "protocol"):
        assert v[name]["type"] == "query" and v[name]["includeAll"] and v[name]["multi"], name
        assert v[name]["allValue"] == ".*", name
        assert re.fullmatch(r"label_values\(.+, " + name + r"\)", v[name]["definition"]), name
    used = set()
    for q in [*panel_queries(), *annotation_queries()]:
        used |= set(re.findall(r"\$\{?(\w+)", q.expr))
    assert used - {"__rate_interval", "__interval"} <= set(v), used
    assert {"target", "protocol"} <= used
    flips = next(q for q in annotation_queries() if "tls_scanner_protocol_changes_total" in q.expr)
    assert "changes(" in flips.expr


def test_acceptance_panels_map_values_to_states() -> None:
    by_title = {p["title"]: p for p in panels()}
    for title in ("Current matrix", "Acceptance per target", "Acceptance per address"):
        mappings = by_title[title]["fieldConfig"]["defaults"]["mappings"]
        values = next(m["options"] for m in mappings if m["type"] == "value")
        assert values["0"]["text"] == "rejected" and values["1"]["text"] == "accepted", title
    matrix = by_title["Current matrix"]
    assert matrix["targets"][0]["instant"] and matrix["targets"][0]["format"] == "table"
    (grouping,) = [t for t in matrix["transformations"] if t["id"] == "groupingToMatrix"]
    assert grouping["options"]["rowField"] == "target" and grouping["options"]["columnField"] == "protocol"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each substituted query (as a recording rule), without a running Prometheus."""
    promtool = require_binary("promtool", "prometheus")
    rules = [
        {"record": f"dashboard:query_{n}:{name}", "expr": substitute(q.expr, selection)}
        for n, q in enumerate([*panel_queries(), *annotation_queries()])
        for name, selection in SELECTIONS.items()
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- live: lab + daemon + Prometheus -----------------------------------------------------------------------------


@dataclass
class Stack:
    port: int  # Prometheus
    daemon: Daemon
    started: float
    exported: set[str]  # families the daemon exports on /metrics and /probe

    def get(self, path: str, **params: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", f"{path}?{urllib.parse.urlencode(params)}")
            response = conn.getresponse()
            body = response.read().decode()
        finally:
            conn.close()
        answer: dict[str, Any] = json.loads(body)
        assert response.status == 200 and answer["status"] == "success", f"{path} {params}: {body[:1000]}"
        return answer

    def instant(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["data"]["result"]
        return result

    def range(self, expr: str) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{self.started:.3f}", "end": f"{time.time():.3f}", "step": "1"}
        result: list[dict[str, Any]] = self.get("/api/v1/query_range", **params)["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.instant(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def exported_families(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples} & FAMILIES


def prometheus_config(daemon_port: int, prometheus_port: int) -> str:
    """deploy/prometheus/prometheus.yml pointed at the test daemon, 1s scrapes, the /probe job uncommented."""
    text = (PROMETHEUS / "prometheus.yml").read_text()
    text = re.sub(
        r"^[ \t]*# BEGIN probe job\n(.*?)\n[ \t]*# END probe job",
        lambda m: "\n".join(re.sub(r"^(\s*)# ?", r"\1", line) for line in m.group(1).splitlines()),
        text,
        flags=re.S | re.M,
    )
    config = yaml.safe_load(text)
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    del config["alerting"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job in (jobs["tls-scanner"], jobs["tls-scanner-probe"]):
        job["basic_auth"]["password_file"] = str(PROMETHEUS / "tls-scanner.password")
    jobs["tls-scanner"]["static_configs"] = [{"targets": [f"127.0.0.1:{daemon_port}"]}]
    probe = jobs["tls-scanner-probe"]
    probe.update(scrape_interval="5s", scrape_timeout="4s", static_configs=[{"targets": ["web"]}])
    probe["relabel_configs"][-1]["replacement"] = f"127.0.0.1:{daemon_port}"
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """nginx (web: all versions, then TLS 1.2+ only; legacy-403; modern), the daemon (1s interval) with a closed
    port and a loopback range, and Prometheus scraping it every second with the deploy/ rules."""
    require_binary("prometheus", "prometheus")
    require_nginx()
    tmp = tmp_path_factory.mktemp("dashboard")
    web, legacy, modern, down, range_closed, prometheus_port = free_ports(6)
    servers = [
        NginxServer("legacy-403", legacy, NGINX_ALL, legacy_403=True),
        NginxServer("modern", modern, NGINX_MODERN),
    ]
    targets: list[dict[str, Any]] = [
        {"name": "web", "host": "127.0.0.1", "port": web, "http": True, "expect": {"reject": ["SSLv2", "SSLv3"]}},
        {"name": "legacy-403", "host": "127.0.0.1", "port": legacy, "http": True, "expect": {"http_ok": ["TLSv1.0"]}},
        {
            "name": "down",
            "host": "127.0.0.1",
            "port": down,
            "expect": [{"reject": ["TLSv1.0"], "from": "2099-01-01", "name": "retire-tls10"}],
        },
        {"network": "127.0.0.1/32", "ports": [modern, range_closed]},
    ]
    # The client and deadline panels need series for every selection.
    targets[0]["clients"] = ["macos-system-python2.7", "java8"]
    targets[0]["expect"] = [
        {"reject": ["SSLv2", "SSLv3"]},
        {"reject": ["TLSv1.0", "TLSv1.1"], "from": "2099-01-01", "name": "retire-legacy"},
    ]
    targets[0]["deep_interval"] = "2s"  # web is deep-scanned too: the deep tier's panels need its series
    config = write_config(tmp / "scanner.yaml", lab_config(targets))
    shard = ["--shard", "0/1"] if "--shard" in build_parser().format_usage() else []
    with contextlib.ExitStack() as cleanup:
        nginx = cleanup.enter_context(NginxLab([NginxServer("web", web, NGINX_ALL), *servers]))
        # The kit's web config: Prometheus scrapes with the kit's password, as in the Compose stack.
        web_config = ["--web.config.file", str(DEPLOY / "web-config.yml")]
        password = (PROMETHEUS / "tls-scanner.password").read_text()
        authorization = "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()
        daemon = cleanup.enter_context(
            Daemon(config, tmp / "state.db", tmp / "daemon.log", *shard, *web_config, authorization=authorization)
        )
        started = time.time()
        prometheus_yml = prometheus_config(daemon.port, prometheus_port)
        process, _ = cleanup.enter_context(prometheus_server(tmp, prometheus_yml, prometheus_port))
        log = tmp / "prometheus.log"
        s = Stack(prometheus_port, daemon, started, set())

        def answered(expr: str) -> float | None:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                return s.value(expr)
            return None

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text()[-2000:]}")
            return answers_ok(prometheus_port, "/-/ready")

        wait_for(ready, 60, what="Prometheus to be ready")
        before = 'target_protocol:tls_scanner_protocol_accepted:max{target="web",protocol="TLSv1.0"} == 1'
        wait_for(lambda: answered(before), 60, what="Prometheus to record web accepting TLSv1.0")
        # The /probe job alone can satisfy `before`; the flip annotation needs the daemon job's counter before it.
        unflipped = 'tls_scanner_protocol_changes_total{job="tls-scanner",target="web",protocol="TLSv1.0"} == 0'
        wait_for(
            lambda: answered(unflipped) is not None, 60, what="Prometheus to scrape the daemon before the brownout"
        )
        nginx.reload([NginxServer("web", web, NGINX_MODERN), *servers])
        firing = 'count(ALERTS{alertname="TLSProtocolBrownoutStarted",alertstate="firing",target="web"}) == 2'
        wait_for(lambda: answered(firing), 60, what="TLSProtocolBrownoutStarted to fire for web's TLSv1.0 and TLSv1.1")
        # Recording rules run in their own group, and /probe answers every 5 s: wait until both caught up too.
        after = before.replace("== 1", "== 0")
        wait_for(lambda: answered(after) is not None, 30, what="the recording rules to see web rejecting TLSv1.0")
        deep = 'count(tls_scanner_cipher_suite_accepted{job="tls-scanner",target="web"})'
        wait_for(lambda: answered(deep), 60, what="Prometheus to scrape web's deep scan")
        # The daemon's own output says which families exist; /probe answers a sweep's families only.
        status, body = daemon.get("/metrics")
        assert status == 200, body
        s.exported = exported_families(body)
        status, body = daemon.get("/probe?target=web")
        if status == 200:
            s.exported |= exported_families(body)
            wait_for(lambda: answered("count(tls_scanner_probe_success)"), 30, what="Prometheus to scrape /probe")
        yield s


def test_rules_fire_on_the_daemons_real_series(stack: Stack) -> None:
    """The alerts and recording rules match the label sets the daemon really exports."""
    firing = stack.instant('ALERTS{alertstate="firing"}')
    got = {(a["metric"]["alertname"], a["metric"].get("target"), a["metric"].get("protocol")) for a in firing}
    assert {("TLSProtocolBrownoutStarted", "web", "TLSv1.0"), ("TLSProtocolBrownoutStarted", "web", "TLSv1.1")} <= got
    assert {("TLSHTTPBrownout", "legacy-403", "TLSv1.0"), ("TLSHTTPBrownout", "legacy-403", "TLSv1.1")} <= got
    assert not {g for g in got if g[0].startswith("TLS") and g[2] in {"SSLv2", "SSLv3", "TLSv1.2", "TLSv1.3"}}, got
    assert not {g for g in got if g[0] == "TLSHTTPBrownout" and g[1] == "web"}, got
    started = next(a for a in firing if a["metric"]["alertname"] == "TLSProtocolBrownoutStarted")
    if "tls_scanner_protocol_accepted_addresses" in stack.exported:
        assert started["metric"]["address"] == "127.0.0.1"
    matrix = {
        r["metric"]["protocol"]: float(r["value"][1])
        for r in stack.instant('target_protocol:tls_scanner_protocol_accepted:avg{target="web"}')
    }
    assert matrix == {"SSLv2": 0, "SSLv3": 0, "TLSv1.0": 0, "TLSv1.1": 0, "TLSv1.2": 1, "TLSv1.3": 1}
    assert (
        stack.value('target_protocol:tls_scanner_http_status_code:max{target="legacy-403",protocol="TLSv1.0"}') == 403
    )


def _assert_data(stack: Stack, query: Query, expr: str) -> None:
    def answered() -> bool:
        result = stack.instant(expr) if query.instant else stack.range(expr)
        return any(r.get("value") or r.get("values") for r in result)

    # Rates need two scrapes and recording rules an evaluation: give a query that is empty a few seconds.
    with contextlib.suppress(TimeoutError):
        wait_for(answered, 10, what=expr)
        return
    missing = (families_behind(query.expr) & NEWER_FAMILIES) - stack.exported
    if missing:
        pytest.skip(f"allowed empty: needs {sorted(missing)}, which this daemon does not export")
    raise AssertionError(f"{query.where} {query.ref}: no data for {expr}")


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.where} {q.ref}")
def test_panel_query_returns_data(stack: Stack, query: Query, selection: str) -> None:
    _assert_data(stack, query, substitute(query.expr, SELECTIONS[selection]))


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
@pytest.mark.parametrize("query", annotation_queries(), ids=lambda q: q.where)
def test_annotation_query_returns_events(stack: Stack, query: Query, selection: str) -> None:
    _assert_data(stack, query, substitute(query.expr, SELECTIONS[selection]))


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
def test_variable_queries_list_targets_and_protocols(stack: Stack, selection: str) -> None:
    found = {}
    for name in ("target", "protocol"):
        definition = substitute(variables()[name]["definition"], SELECTIONS[selection])
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
        assert match, definition
        series = stack.get(
            "/api/v1/series",
            **{"match[]": match.group(1), "start": f"{stack.started:.3f}", "end": f"{time.time():.3f}"},
        )["data"]
        found[name] = {s[match.group(2)] for s in series}
    assert {"web", "legacy-403", "down"} <= found["target"], found
    assert found["protocol"] == set(PROTOCOLS), found
