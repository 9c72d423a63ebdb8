"""Who breaks: client profiles decided by real handshakes on real nginx, deadlines in the policy, the brownout page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench.servers import NginxServer, free_ports
from tests.lab.daemon import Daemons, run_once, write_config
from tests.lab.servers import NginxLabFactory

NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]
ECDHE_GCM = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
POS = {"protocols": ["TLSv1.0"], "ciphers": ["TLS_RSA_WITH_AES_128_CBC_SHA"], "sni": False}


def clients_of(report: dict[str, Any]) -> dict[str, bool | None]:
    (address,) = report["addresses"]
    return {name: entry["compatible"] for name, entry in address["clients"].items()}


def test_clients_decided_by_real_handshakes(nginx_lab: NginxLabFactory, tmp_path: Path) -> None:
    modern, rsa, legacy = free_ports(3)
    nginx_lab(
        [
            NginxServer("modern", modern, NGINX_MODERN, ciphers=ECDHE_GCM),
            NginxServer("rsa", rsa, ["TLSv1.2"], ciphers="AES128-SHA"),
            NginxServer("legacy", legacy, NGINX_ALL, ciphers="DEFAULT:@SECLEVEL=0"),
        ]
    )
    config = write_config(
        tmp_path / "c.yaml",
        {
            "clients": {"pos-terminal": POS},
            "defaults": {"clients": "all", "timeout": "3s"},
            "targets": [
                {"name": name, "host": "127.0.0.1", "port": port}
                for name, port in (("modern", modern), ("rsa", rsa), ("legacy", legacy))
            ],
        },
    )
    once = run_once(config, "--format", "json")
    reports = {t["name"]: t for t in json.loads(once.stdout)["targets"]}
    got = {name: clients_of(report) for name, report in reports.items()}
    modern_wanted = {"macos-system-python2.7": False, "java6": False, "python-openssl1.0.1": True, "java8": True}
    assert got["modern"].items() >= (modern_wanted | {"go1.22": True, "pos-terminal": False}).items(), got["modern"]
    assert got["rsa"]["go1.22"] is False and got["rsa"]["java8"] is True, got["rsa"]
    assert set(got["legacy"].values()) == {True}, got["legacy"]
    assert reports["modern"]["clients"]["java6"] is False
    (address,) = reports["rsa"]["addresses"]
    assert address["clients"]["go1.22"]["detail"].startswith("TLSv1.2 TLS alert")
    metrics = run_once(config, "--format", "prometheus").stdout
    assert 'tls_scanner_client_compatible{address="127.0.0.1",client="java6",target="legacy"} 1.0' in metrics
    assert 'tls_scanner_client_compatible{address="127.0.0.1",client="java6",target="modern"} 0.0' in metrics
    table = run_once(config).stdout
    assert re.search(r"modern: clients that cannot connect: .*macos-system-python2\.7", table), table


def test_a_brownout_is_a_client_transition(nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("pypi", port, NGINX_ALL, ciphers="DEFAULT:@SECLEVEL=0")])
    config = write_config(
        tmp_path / "c.yaml",
        {
            "defaults": {"interval": "1s", "timeout": "2s"},
            "targets": [{"name": "pypi", "host": "127.0.0.1", "port": port, "clients": ["macos-system-python2.7"]}],
        },
    )
    daemon = start_daemon(config)
    family = "tls_scanner_client_compatible"
    daemon.wait_metrics(lambda s: s.value(family, client="macos-system-python2.7") == 1, 15, "the client can connect")
    nginx.reload([NginxServer("pypi", port, NGINX_MODERN, ciphers="DEFAULT:@SECLEVEL=0")])
    scrape = daemon.wait_metrics(
        lambda s: s.value(family, client="macos-system-python2.7") == 0, 10, "the client to lose pypi"
    )
    changes = "tls_scanner_client_compatibility_changes_total"
    assert scrape.value(changes, client="macos-system-python2.7") == 1
    assert re.search(
        r"WARNING .*macos-system-python2\.7 can no longer connect to pypi \(127\.0\.0\.1\) since ",
        daemon.log_text(),
    )
    api = json.loads(daemon.get("/api/v1/targets")[1])["targets"][0]
    found = [(t["kind"], t["client"], t["from"], t["to"]) for t in api["transitions"]]
    assert ("client", "macos-system-python2.7", "accepted", "rejected") in found
    assert api["clients"]["127.0.0.1"]["macos-system-python2.7"]["compatible"] is False
    assert "cannot: macos-system-python2.7" in daemon.get("/")[1]


@pytest.mark.parametrize(("start", "enforced"), [("2099-01-01", False), ("2018-06-30", True)])
def test_a_deadline_is_enforced_from_its_date(
    nginx_lab: NginxLabFactory, tmp_path: Path, start: str, enforced: bool
) -> None:
    (port,) = free_ports(1)
    nginx_lab([NginxServer("pypi", port, NGINX_ALL)])
    text = (
        "targets:\n"
        f"  - host: 127.0.0.1\n    port: {port}\n    name: pypi\n"
        "    expect:\n"
        "      - {accept: [TLSv1.2]}\n"
        f"      - {{reject: [TLSv1.0, TLSv1.1], from: {start}, name: pypi-2018}}\n"
    )
    config = write_config(tmp_path / "c.yaml", text)
    once = run_once(config, "--format", "json")
    (report,) = json.loads(once.stdout)["targets"]
    assert once.returncode == (1 if enforced else 0), once.stderr
    assert report["expect"]["met"] is not enforced
    (deadline,) = report["expect"]["deadlines"]
    assert deadline["policy"] == "pypi-2018" and deadline["enforced"] is enforced and deadline["met"] is False
    metrics = run_once(config, "--format", "prometheus").stdout
    assert f'tls_scanner_expectation_met{{target="pypi"}} {0.0 if enforced else 1.0}' in metrics
    assert 'tls_scanner_expectation_deadline_met{policy="pypi-2018",target="pypi"} 0.0' in metrics
    assert re.search(
        r'tls_scanner_expectation_deadline_timestamp_seconds\{policy="pypi-2018",target="pypi"\} \S+', metrics
    )
    if not enforced:
        assert "deadline pypi-2018 (2099-01-01) would be violated" in run_once(config).stdout


def test_match_tells_a_brownout_page_from_a_plain_403(nginx_lab: NginxLabFactory, tmp_path: Path) -> None:
    brownout, plain = free_ports(2)
    nginx_lab(
        [
            NginxServer("brownout", brownout, NGINX_ALL, legacy_403=True, legacy_403_body="Brownout of Legacy TLS"),
            NginxServer("plain", plain, NGINX_ALL, legacy_403=True),
        ]
    )
    http = {"match": "Brownout of Legacy TLS"}
    config = write_config(
        tmp_path / "c.yaml",
        {
            "targets": [
                {"name": "brownout", "host": "127.0.0.1", "port": brownout, "http": http},
                {"name": "plain", "host": "127.0.0.1", "port": plain, "http": http},
            ]
        },
    )
    reports = {t["name"]: t for t in json.loads(run_once(config, "--format", "json").stdout)["targets"]}
    for name in ("brownout", "plain"):
        (address,) = reports[name]["addresses"]
        assert address["http"]["TLSv1.0"] == 403 and address["http_reasons"]["TLSv1.0"] == "Forbidden"
        assert address["http_match"]["TLSv1.0"] is (name == "brownout")
        assert address["http_match"]["TLSv1.2"] is False
    (address,) = reports["brownout"]["addresses"]
    assert address["http_excerpts"]["TLSv1.0"] == "Brownout of Legacy TLS"
    metrics = run_once(config, "--format", "prometheus").stdout
    assert 'tls_scanner_http_match{address="127.0.0.1",protocol="TLSv1.0",target="brownout"} 1.0' in metrics
    assert 'tls_scanner_http_match{address="127.0.0.1",protocol="TLSv1.0",target="plain"} 0.0' in metrics
