"""mTLS against nginx with ssl_verify_client on, client_cert config errors, and sweeps through an HTTP CONNECT proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench.servers import Endpoint, NginxLab, NginxServer, free_ports
from scanner.config import HttpCheck, TargetConfig, load_config
from scanner.engine.sweep import SweepEngine
from scanner.errors import ConfigError
from scanner.protocols import Protocol
from scanner.results.sweep import SweepResult
from tests.lab.daemon import run_once, run_scanner, write_config
from tests.lab.peers import ConnectProxy
from tests.lab.servers import LabCerts, TLSServer, closing_server, require_nginx

PROTOCOLS = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
MODERN = {"SSLv2": "rejected", "SSLv3": "rejected", "TLSv1.0": "rejected", "TLSv1.1": "rejected"} | {
    "TLSv1.2": "accepted",
    "TLSv1.3": "accepted",
}


@pytest.fixture(scope="module")
def mtls(tmp_certs: LabCerts) -> Iterator[Endpoint]:
    """nginx offering TLS 1.2/1.3 that demands a client certificate issued by the lab CA."""
    require_nginx()
    server = NginxServer(
        "mtls", free_ports(1)[0], ["TLSv1.2", "TLSv1.3"], verify_client=True, client_ca=tmp_certs.ca.cert
    )
    with NginxLab([server], cert=tmp_certs.server) as lab:
        yield lab.endpoint("mtls")


def _client_cert(certs: LabCerts) -> str:
    return f"{{cert: '{certs.client.cert}', key: '{certs.client.key}'}}"


def test_mtls_with_and_without_a_client_certificate(mtls: Endpoint, tmp_certs: LabCerts, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "endpoints.yaml",
        "defaults: {timeout: 3s, http: true}\n"
        "targets:\n"
        f"  - {{name: no-cert, host: 127.0.0.1, port: {mtls.port}}}\n"
        f"  - name: with-cert\n    host: 127.0.0.1\n    port: {mtls.port}\n"
        f"    client_cert: {_client_cert(tmp_certs)}\n"
        "    expect: {http_ok: [TLSv1.2, TLSv1.3], reject: [TLSv1.0, TLSv1.1]}\n",
    )
    proc = run_once(config, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    no_cert, with_cert = json.loads(proc.stdout)["targets"]
    # Without a certificate the server got as far as asking for one: those versions are accepted.
    assert no_cert["protocols"] == MODERN and no_cert["error"] is None
    assert no_cert["details"]["TLSv1.2"] == no_cert["details"]["TLSv1.3"] == "client certificate requested"
    assert 200 not in no_cert["http"].values()
    # With it, the handshake completes and nginx answers the request.
    assert with_cert["protocols"] == MODERN and with_cert["complete"] is True
    assert with_cert["http"] == {"TLSv1.2": 200, "TLSv1.3": 200}
    assert with_cert["http_errors"] == {}
    assert with_cert["expect"] == {"met": True, "violations": []}
    assert with_cert["details"]["TLSv1.3"].startswith("TLS_")


def test_mtls_without_a_certificate_reports_http_400(mtls: Endpoint, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "endpoints.yaml",
        f"targets:\n  - {{host: 127.0.0.1, port: {mtls.port}, timeout: 3s, http: true, protocols: [TLSv1.2, TLSv1.3],"
        " expect: {http_ok: [TLSv1.2]}}\n",
    )
    proc = run_once(config, "--format", "json")
    (target,) = json.loads(proc.stdout)["targets"]
    assert target["http"] == {"TLSv1.2": 400, "TLSv1.3": 400}
    assert proc.returncode == 1 and target["expect"]["met"] is False


@pytest.mark.parametrize(
    ("which", "make"),
    [("cert", "missing"), ("key", "missing"), ("cert", "directory"), ("key", "directory")],
)
def test_unreadable_client_cert_paths_are_refused_at_their_line(
    tmp_certs: LabCerts, tmp_path: Path, which: str, make: str
) -> None:
    bad = tmp_path / "nothing-here.pem"
    if make == "directory":
        bad.mkdir()
    paths = {"cert": str(tmp_certs.client.cert), "key": str(tmp_certs.client.key), which: str(bad)}
    path = write_config(
        tmp_path / "endpoints.yaml",
        "targets:\n  - host: api.lab.test\n    client_cert:\n"
        f"      cert: '{paths['cert']}'\n      key: '{paths['key']}'\n",
    )
    line = 4 if which == "cert" else 5
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    # (long paths are shortened in the message)
    assert str(caught.value).startswith(f'{path}:{line}: client_cert.{which}: cannot read "{str(bad)[:40]}')


def test_client_cert_config_errors_exit_2_and_a_missing_key_is_named(tmp_certs: LabCerts, tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "endpoints.yaml",
        f"defaults:\n  client_cert: {{cert: '{tmp_certs.client.cert}'}}\ntargets: [api.lab.test]\n",
    )
    with pytest.raises(ConfigError, match='client_cert: missing required key "key"') as caught:
        load_config(path)
    assert caught.value.line == 2
    missing = tmp_path / "gone.key"
    path = write_config(
        tmp_path / "endpoints.yaml",
        f"targets:\n  - {{host: api.lab.test, client_cert: {{cert: '{missing}', key: '{missing}'}}}}\n",
    )
    proc = run_scanner("--config", str(path), "--check-config")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f'tls-scanner: {path}:2: client_cert.cert: cannot read "{str(missing)[:40]}')


def test_unusable_client_cert_is_an_error_not_a_rejection(tmp_certs: LabCerts, tmp_path: Path) -> None:
    """Readable but not a certificate: the config loads; the sweep reports an error without connecting."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with TLSServer({Protocol.TLSv1_2}, tmp_certs.server) as server:
        path = write_config(
            tmp_path / "endpoints.yaml",
            f"targets:\n  - {{host: 127.0.0.1, port: {server.endpoint.port}, timeout: 2s,"
            f" client_cert: {{cert: '{garbage}', key: '{tmp_certs.client.key}'}}}}\n",
        )
        proc = run_once(path, "--format", "json")
        assert server.accepted == 0
    assert proc.returncode == 3, proc.stdout + proc.stderr
    (target,) = json.loads(proc.stdout)["targets"]
    assert target["error"].startswith("client certificate unusable") and target["error_reason"] == "other"
    assert "rejected" not in target["protocols"].values() and "accepted" not in target["protocols"].values()


def test_pinned_address_with_a_default_proxy_is_refused(tmp_path: Path) -> None:
    # At the target's own level the combination is refused already; the xfail is the defaults-level one.
    path = write_config(
        tmp_path / "endpoints.yaml",
        "targets:\n  - {host: www.lab.test, address: 127.0.0.1, https_proxy: 'http://127.0.0.1:3'}\n",
    )
    with pytest.raises(ConfigError, match="cannot pin an address"):
        load_config(path)
    path = write_config(
        tmp_path / "endpoints.yaml",
        "defaults: {https_proxy: 'http://127.0.0.1:3128'}\ntargets:\n  - {host: www.lab.test, address: 127.0.0.1}\n",
    )
    with pytest.raises(ConfigError, match="cannot pin an address when connecting through https_proxy"):
        load_config(path)


def test_sweep_through_connect_proxy(tmp_certs: LabCerts, tmp_path: Path) -> None:
    with TLSServer({Protocol.TLSv1_2, Protocol.TLSv1_3}, tmp_certs.server) as server, ConnectProxy() as proxy:
        port = server.endpoint.port
        path = write_config(
            tmp_path / "endpoints.yaml",
            f"targets:\n  - {{name: proxied, host: 127.0.0.1, port: {port}, https_proxy: '{proxy.url}', timeout: 3s,"
            " expect: {accept: [TLSv1.2, TLSv1.3], reject: [TLSv1.0, TLSv1.1]}}\n",
        )
        proc = run_once(path, "--format", "json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (target,) = json.loads(proc.stdout)["targets"]
        assert target["protocols"] == MODERN
        assert target["address"] == "" and [a["address"] for a in target["addresses"]] == [""]
        assert target["expect"]["met"] is True and target["complete"] is True
        # Every connection of the sweep was a CONNECT to the target, and the server saw nothing else.
        assert proxy.requests == [f"127.0.0.1:{port}"] * target["connections"]
        assert len(proxy.requests) >= len(PROTOCOLS)
        assert server.accepted == proxy.tunnels == len(proxy.requests)
        assert sorted(set(server.negotiated)) == ["TLSv1.2", "TLSv1.3"]


def test_proxy_refusing_connect_gives_errors_not_rejections(tmp_certs: LabCerts, tmp_path: Path) -> None:
    """The proxy gets the name, unresolved, and refuses it (it only tunnels to 127.0.0.1)."""
    with TLSServer({Protocol.TLSv1_2}, tmp_certs.server) as server, ConnectProxy() as proxy:
        port = server.endpoint.port
        path = write_config(
            tmp_path / "endpoints.yaml",
            f"targets:\n  - {{host: localhost, port: {port}, https_proxy: '{proxy.url}/', timeout: 2s}}\n",
        )
        proc = run_once(path, "--format", "json")
        assert server.accepted == 0
    assert proc.returncode == 3, proc.stdout + proc.stderr
    (target,) = json.loads(proc.stdout)["targets"]
    assert target["protocols"] == dict.fromkeys(PROTOCOLS, "error")
    assert target["error_reason"] == "other" and "proxy" in target["error"].lower()
    assert target["address"] == ""
    assert proxy.requests == [f"localhost:{port}"] * len(PROTOCOLS)
    assert proxy.tunnels == 0


def test_proxy_hanging_up_on_connect_ends_in_errors(tmp_path: Path) -> None:
    with closing_server() as proxy:
        path = write_config(
            tmp_path / "endpoints.yaml",
            f"targets:\n  - {{host: 127.0.0.1, port: 9, https_proxy: 'http://127.0.0.1:{proxy.port}',"
            " timeout: 1s, protocols: [TLSv1.2]}\n",
        )
        proc = run_scanner("--config", path, "--once", "--format", "json", timeout=6)
    (target,) = json.loads(proc.stdout)["targets"]
    assert proc.returncode == 3 and target["protocols"] == {"TLSv1.2": "error"}


def test_every_hello_without_a_certificate_hears_it_asked_for(mtls: Endpoint) -> None:
    """Hellos share nassl contexts by their settings: the first hello of each sweep must still be told a certificate
    is asked for after the hellos that ignore the request (to read nginx's HTTP 400) ran on the same version."""
    modern = (Protocol.TLSv1_2, Protocol.TLSv1_3)
    http = TargetConfig(name="m", host="127.0.0.1", port=mtls.port, timeout=3.0, protocols=modern, http=HttpCheck())

    async def main() -> list[SweepResult]:
        engine = SweepEngine(4)
        try:
            swept = [await engine.sweep(http, ["127.0.0.1"]) for _ in range(3)]
            return [*swept, await engine.probe(replace(http, http=None), Protocol.TLSv1_2, "127.0.0.1")]
        finally:
            engine.close()

    *sweeps, probe = asyncio.run(main())
    for sweep in sweeps:
        for answer in sweep.protocols.values():
            assert (answer.detail, answer.http_status) == ("client certificate requested", 400)
    assert probe.protocols[Protocol.TLSv1_2].detail == "client certificate requested"
