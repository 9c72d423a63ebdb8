"""GET /api/v1/sd and the example job in deploy/prometheus/http-sd.yml: a real Prometheus discovers the configured
targets from the daemon and scrapes /probe for each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from bench.servers import wait_for
from scanner.protocols import Protocol as P
from tests.lab.daemon import Daemon, Daemons, basic, prometheus_query, prometheus_server, require_binary
from tests.lab.servers import LabStack
from tests.lab.test_deploy import PROMETHEUS, run

EXAMPLE = PROMETHEUS / "http-sd.yml"
SCANNER_ADDRESS = "tls-scanner:9913"  # where the example expects the scanner
PASSWORD = "sd secret"


def example_job() -> dict[str, Any]:
    (job,) = yaml.safe_load(EXAMPLE.read_text())["scrape_configs"]
    result: dict[str, Any] = job
    return result


def test_example_job_is_valid_and_has_the_relabelling() -> None:
    promtool = require_binary("promtool", "prometheus")
    result = run(promtool, "check", "config", EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    job = example_job()
    assert job["metrics_path"] == "/probe" and job["honor_labels"] is True
    (sd,) = job["http_sd_configs"]
    assert sd["url"] == f"http://{SCANNER_ADDRESS}/api/v1/sd"
    assert sd["basic_auth"] == job["basic_auth"]
    assert {"source_labels": ["__address__"], "target_label": "__param_target"} in job["relabel_configs"]
    assert {"target_label": "__address__", "replacement": SCANNER_ADDRESS} in job["relabel_configs"]


def sd_daemon(start_daemon: Daemons, lab: LabStack, tmp_path: Path) -> tuple[Daemon, dict[str, dict[str, str]]]:
    """A daemon behind basic auth with three targets, each with its own labels: (daemon, name -> labels)."""
    labels = {
        "modern": {"env": "prod", "team": "web"},
        "legacy": {"env": "prod", "team": "payments"},
        "edge": {"env": "prod"},
    }
    config = {
        "defaults": {"interval": "1h", "timeout": "2s", "deep_interval": 0, "labels": {"env": "prod"}},
        "targets": [
            {"name": name, "host": "127.0.0.1", "port": lab.tls_server({P.TLSv1_2, P.TLSv1_3}).port}
            | ({"labels": {"team": own["team"]}} if "team" in own else {})
            for name, own in labels.items()
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    flags = ("--web.config.file", str(tmp_path / "web.yml"))
    return start_daemon(tmp_path / "c.yaml", *flags, authorization=basic("prometheus", PASSWORD)), labels


def test_sd_lists_every_target_with_its_labels_behind_the_web_config(
    start_daemon: Daemons, lab: LabStack, tmp_path: Path
) -> None:
    d, labels = sd_daemon(start_daemon, lab, tmp_path)
    status, body, headers = d.request("GET", "/api/v1/sd")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == [{"targets": [name], "labels": own} for name, own in labels.items()]
    d.authorization = None
    assert d.request("GET", "/api/v1/sd")[0] == 401


def test_real_prometheus_discovers_the_targets_and_scrapes_probe_for_each(
    start_daemon: Daemons, lab: LabStack, tmp_path: Path
) -> None:
    d, labels = sd_daemon(start_daemon, lab, tmp_path)
    address = f"127.0.0.1:{d.port}"
    (tmp_path / "password").write_text(PASSWORD)
    job = example_job()
    for auth in (job["basic_auth"], job["http_sd_configs"][0]["basic_auth"]):
        auth["password_file"] = str(tmp_path / "password")
    job["http_sd_configs"][0]["url"] = job["http_sd_configs"][0]["url"].replace(SCANNER_ADDRESS, address)
    job["http_sd_configs"][0]["refresh_interval"] = "1s"
    for rule in job["relabel_configs"]:
        if rule.get("replacement") == SCANNER_ADDRESS:
            rule["replacement"] = address
    job |= {"scrape_interval": "2s", "scrape_timeout": "2s"}
    config = yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "scrape_configs": [job]})
    with prometheus_server(tmp_path, config) as (process, port):

        def series(query: str) -> list[dict[str, Any]] | None:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            answer = prometheus_query(port, query)
            if answer is None or answer["status"] != "success" or len(answer["data"]["result"]) < len(labels):
                return None
            found: list[dict[str, Any]] = answer["data"]["result"]
            return found

        up = wait_for(lambda: series(f'up{{job="{job["job_name"]}"}} == 1'), 30, what="up == 1 for every target")
        assert {
            s["metric"]["instance"]: {k: v for k, v in s["metric"].items() if k not in ("__name__", "instance", "job")}
            for s in up
        } == labels
        probed = wait_for(lambda: series("tls_scanner_probe_success == 1"), 10, what="probe_success for every target")
        assert sorted(s["metric"]["instance"] for s in probed) == sorted(labels)
        accepted = wait_for(lambda: series('tls_scanner_protocol_accepted{protocol="TLSv1.3"}'), 10, what="TLSv1.3")
        for s in accepted:
            assert s["metric"]["target"] == s["metric"]["instance"]
            own = labels[s["metric"]["target"]]
            assert {k: s["metric"].get(k) for k in own} == own
            assert not any(k.startswith("exported_") for k in s["metric"]), s["metric"]
            assert float(s["value"][1]) == 1.0
