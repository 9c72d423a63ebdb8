"""Right answers on hard servers and paths: legacy-only suites, a flaky path that resets, one DNS family failing,
an HTTP-level brownout as a transition, and a daemon that says what fails (once)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from bench.servers import NginxServer, free_ports
from scanner.config import TargetConfig
from scanner.engine.sweep import SweepEngine
from scanner.protocols import Protocol as P
from scanner.state.store import ResultStore
from tests.lab.daemon import Daemons, lab_config, run_once, write_config
from tests.lab.dnslab import DnsLab
from tests.lab.peers import FlakyForwarder
from tests.lab.servers import LabStack, NginxLabFactory, closed_port

NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]


@pytest.mark.parametrize("suites", ["NULL-SHA256", "AECDH-AES128-SHA", "NULL-SHA256:AECDH-AES128-SHA"])
def test_tls12_with_only_legacy_suites_is_accepted(lab: LabStack, tmp_path: Path, suites: str) -> None:
    """The modern client has none of these suites; the legacy one, tried after the alert, has them."""
    server = lab.tls_server({P.TLSv1_2}, ciphers=f"{suites}:@SECLEVEL=0")
    config = write_config(tmp_path / "c.yaml", lab_config([{"name": "old", "host": "127.0.0.1", "port": server.port}]))
    once = run_once(config, "--format", "json")
    (report,) = json.loads(once.stdout)["targets"]
    assert report["protocols"]["TLSv1.2"] == "accepted", report["details"]
    assert report["details"]["TLSv1.2"] in suites.split(":")
    assert report["protocols"]["TLSv1.3"] == "rejected" and report["protocols"]["TLSv1.1"] == "rejected"
    assert once.returncode == 0, once.stderr


def test_a_path_that_resets_30_percent_makes_no_false_flips(nginx_lab: NginxLabFactory) -> None:
    """40 sweeps behind a flaky load balancer: not one flip; then a real removal of TLS 1.0 flips within two."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, NGINX_ALL)])
    with FlakyForwarder(nginx.endpoint("web"), reset_fraction=0.3, seed=7) as path:
        target = TargetConfig(name="web", host="127.0.0.1", port=path.endpoint.port, timeout=3.0)
        store = ResultStore(None)
        store.set_targets([target])

        async def sweeps(count: int) -> list[list[str]]:
            engine = SweepEngine(16)
            try:
                flips = []
                for _ in range(count):
                    sweep = await engine.sweep(target)
                    flips.append([f"{t.protocol} {t.old}->{t.new}" for t in store.record(sweep)])
                return flips
            finally:
                engine.close()

        flips = asyncio.run(sweeps(40))
        assert path.resets > 100  # the path really did reset
        assert [f for f in flips if f] == []
        (status,) = store.snapshot()
        assert status.retries > 0
        nginx.reload([NginxServer("web", port, NGINX_MODERN)])
        after = asyncio.run(sweeps(2))
        assert "TLSv1.0 accepted->rejected" in after[0] + after[1], after
        store.close()


def test_one_address_family_failing_is_not_the_target_failing(lab: LabStack, tmp_path: Path) -> None:
    """dnsmasq answers A and refuses AAAA: every A address is scanned, the DNS error is recorded, not fatal."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3}, host="127.0.0.1")
    name = "only4.lab.example"
    with DnsLab(tmp_path / "dns", {}, extra=[f"--host-record={name},127.0.0.1"]) as dns:
        config = tmp_path / "c.yaml"
        document = {
            "resolver": dns.resolver_config("1s"),
            "targets": [{"name": "only4", "host": name, "port": server.port, "timeout": "2s"}],
        }
        config.write_text(json.dumps(document))
        once = run_once(config, "--format", "json")
        (report,) = json.loads(once.stdout)["targets"]
        assert once.returncode == 0, once.stdout
        assert [a["address"] for a in report["addresses"]] == ["127.0.0.1"]
        assert report["complete"] and report["error"] is None
        assert report["protocols"]["TLSv1.3"] == "accepted"
        assert report["dns_error"] is not None and report["dns_error"].startswith(f"cannot resolve {name} fully: AAAA")
        metrics = run_once(config, "--format", "prometheus").stdout
        assert 'tls_scanner_scan_errors_total{reason="dns",target="only4"} 1.0' in metrics
        assert 'tls_scanner_scan_success{target="only4"} 1.0' in metrics


def test_http_brownout_is_a_transition(nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path) -> None:
    """200 -> 403 over TLS 1.0 (nginx reload): counted, logged as a warning, listed in the API like a flip."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("site", port, NGINX_ALL)])
    config = write_config(
        tmp_path / "c.yaml", lab_config([{"name": "site", "host": "127.0.0.1", "port": port, "http": True}])
    )
    daemon = start_daemon(config)
    http = "tls_scanner_http_status_code"
    daemon.wait_metrics(lambda s: s.value(http, target="site", protocol="TLSv1.0") == 200, 15, "HTTP 200")
    nginx.reload([NginxServer("site", port, NGINX_ALL, legacy_403=True)])
    scrape = daemon.wait_metrics(
        lambda s: s.value(http, target="site", protocol="TLSv1.0") == 403, 15, "HTTP 403 over TLS 1.0"
    )
    changes = "tls_scanner_http_status_changes_total"
    assert scrape.value(changes, target="site", protocol="TLSv1.0") == 1
    assert scrape.value(changes, target="site", protocol="TLSv1.2") == 0
    assert scrape.value("tls_scanner_protocol_changes_total", target="site", protocol="TLSv1.0") == 0
    assert re.search(r"WARNING .*site TLSv1\.0 HTTP 200 -> 403", daemon.log_text()), daemon.log_text()[-2000:]
    api = json.loads(daemon.get("/api/v1/targets")[1])["targets"][0]
    found = [(t["kind"], t["protocol"], t["from"], t["to"]) for t in api["transitions"]]
    assert ("http", "TLSv1.0", "200", "403") in found
    page = daemon.get("/")[1]
    assert "HTTP 403" in page and "HTTP 200" in page


def test_the_daemon_says_once_what_fails_and_sums_up_the_first_round(
    lab: LabStack, start_daemon: Daemons, tmp_path: Path
) -> None:
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    with closed_port() as closed:
        config = write_config(
            tmp_path / "c.yaml",
            lab_config(
                [
                    {"name": "up", "host": "127.0.0.1", "port": server.port},
                    {"name": "down", "host": "127.0.0.1", "port": closed.port},
                ],
                timeout="1s",
            ),
        )
        daemon = start_daemon(config)
        daemon.wait_metrics(
            lambda s: (s.value("tls_scanner_scan_errors_total", target="down", reason="refused") or 0) >= 4,
            20,
            "four sweeps of the closed port",
        )
        log = daemon.log_text()
    refused = [line for line in log.splitlines() if "down" in line and "sweep error (refused)" in line]
    assert len(refused) == 1, log
    assert "127.0.0.1" in refused[0] or "down:" in refused[0]
    assert "first round: 2 targets, 1 complete, 1 with errors (refused: 1)" in log
    assert not any(" up" in line and "sweep error" in line for line in log.splitlines())
