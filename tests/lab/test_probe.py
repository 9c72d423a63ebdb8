"""The protocol matrix against real servers on loopback, and hostile peers that must give errors, never rejections."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.servers import Endpoint, NginxServer, free_ports
from scanner.config import HttpCheck, TargetConfig
from scanner.engine.sweep import SweepEngine
from scanner.protocols import ALL_PROTOCOLS, Protocol
from scanner.results.sweep import ErrorReason, ProtocolState, SweepResult
from tests.lab.servers import (
    LabStack,
    NginxLabFactory,
    closed_port,
    closing_server,
    garbage_server,
    plain_http_server,
    rst_server,
    tarpit,
)

S2, S3, T10, T11, T12, T13 = ALL_PROTOCOLS
A, R, E = ProtocolState.ACCEPTED, ProtocolState.REJECTED, ProtocolState.ERROR


def scan(
    endpoint: Endpoint, timeout: float = 3.0, http: HttpCheck | None = None, host: str | None = None
) -> SweepResult:
    target = TargetConfig(
        name="t", host=host or endpoint.host, port=endpoint.port, sni="localhost", timeout=timeout, http=http
    )

    async def run() -> SweepResult:
        engine = SweepEngine(concurrency=16)
        try:
            return await engine.sweep(target)
        finally:
            engine.close()

    return asyncio.run(run())


def matrix(result: SweepResult) -> dict[Protocol, ProtocolState]:
    return {p: r.state for p, r in result.protocols.items()}


def expected(accepted: set[Protocol]) -> dict[Protocol, ProtocolState]:
    return {p: A if p in accepted else R for p in ALL_PROTOCOLS}


@pytest.mark.parametrize(
    "versions",
    [{T12}, {T13}, {T10}, {T11}, {T12, T13}, {T10, T11, T12, T13}],
    ids=lambda v: "+".join(sorted(p.value for p in v)),
)
def test_python_servers(lab: LabStack, versions: set[Protocol]) -> None:
    result = scan(lab.tls_server(versions))
    assert matrix(result) == expected(versions)
    assert result.error is None and result.complete
    assert result.connections <= 12


@pytest.mark.parametrize("cert", ["self_signed", "expired", "wrong_host"])
def test_certificate_problems_never_change_the_answer(lab: LabStack, cert: str) -> None:
    assert lab.certs is not None
    result = scan(lab.tls_server({T12, T13}, cert=getattr(lab.certs, cert)))
    assert matrix(result) == expected({T12, T13})


def test_server_demanding_a_client_certificate_still_accepts(lab: LabStack) -> None:
    result = scan(lab.tls_server({T12, T13}, require_client_cert=True))
    assert matrix(result) == expected({T12, T13})


def test_http_status_is_recorded_per_accepted_protocol(lab: LabStack) -> None:
    result = scan(lab.tls_server({T12, T13}, http_status=403), http=HttpCheck(path="/simple/"))
    assert {p: r.http_status for p, r in result.protocols.items() if r.state is A} == {T12: 403, T13: 403}
    assert result.protocols[T10].http_status is None


def test_nginx_matrix(nginx_lab: NginxLabFactory, lab: LabStack) -> None:
    assert lab.certs is not None
    ports = free_ports(5)
    servers = [
        NginxServer("gap", ports[0], ["TLSv1", "TLSv1.2"]),
        NginxServer("only13", ports[1], ["TLSv1.3"]),
        NginxServer("exotic", ports[2], ["TLSv1.2"], ciphers="AES256-SHA:@SECLEVEL=0"),
        NginxServer("mtls", ports[3], ["TLSv1.2", "TLSv1.3"], verify_client=True, client_ca=lab.certs.ca.cert),
        NginxServer("legacy", ports[4], ["TLSv1", "TLSv1.1"]),
    ]
    nginx_lab(servers)
    assert matrix(scan(servers[0].endpoint)) == expected({T10, T12})
    assert matrix(scan(servers[1].endpoint)) == expected({T13})
    exotic = scan(servers[2].endpoint)
    assert matrix(exotic) == expected({T12})
    assert exotic.protocols[T12].detail == "AES256-SHA"
    assert matrix(scan(servers[3].endpoint)) == expected({T12, T13})
    assert matrix(scan(servers[4].endpoint)) == expected({T10, T11})


@pytest.mark.parametrize(
    "peer", [garbage_server, plain_http_server, closing_server, rst_server], ids=lambda f: f.__name__
)
def test_non_tls_peers_accept_nothing_and_reject_nothing(lab: LabStack, peer: object) -> None:
    result = scan(lab.peer(peer))  # type: ignore[arg-type]
    assert all(r.state is E for r in result.protocols.values()), matrix(result)
    assert result.error is not None and "not a TLS server" in result.error
    assert result.error_reason is ErrorReason.TLS
    assert not result.complete


def test_tarpit_is_bounded_by_the_timeout(lab: LabStack) -> None:
    endpoint = lab.peer(tarpit)
    started = time.monotonic()
    result = scan(endpoint, timeout=1.0)
    elapsed = time.monotonic() - started
    assert all(r.state is E and r.reason is ErrorReason.TIMEOUT for r in result.protocols.values())
    assert elapsed < 1.0 + 1.0, f"tarpit held the target {elapsed:.2f}s"


def test_closed_port_is_refused_not_rejected() -> None:
    with closed_port() as endpoint:
        result = scan(endpoint)
    assert {r.reason for r in result.protocols.values()} == {ErrorReason.REFUSED}
    assert result.error_reason is ErrorReason.REFUSED


def test_unresolvable_name_is_a_dns_error() -> None:
    result = scan(Endpoint("127.0.0.1", 443), host="no-such-host.invalid")
    assert result.address is None
    assert result.error_reason is ErrorReason.DNS
    assert all(r.state is E for r in result.protocols.values())
    assert result.connections == 0


def test_localhost_name_is_resolved_once_and_used(lab: LabStack) -> None:
    endpoint = lab.tls_server({T12})
    result = scan(endpoint, host="localhost")
    assert result.address in ("127.0.0.1", "::1")
    assert result.state(T12) is A


def test_version_downgrade_is_a_rejection_not_a_foreign_peer(nginx_lab: NginxLabFactory) -> None:
    """A TLS 1.0 + 1.2 server answers a TLS 1.1-only hello with a TLS 1.0 ServerHello, which OpenSSL reports as
    "wrong version number", the same as for an HTTP peer; a version outside the configured ones tells them apart."""
    (port,) = free_ports(1)
    server = NginxServer("gap", port, ["TLSv1", "TLSv1.2"])
    nginx_lab([server])
    target = TargetConfig(name="t", host="127.0.0.1", port=port, timeout=3.0, protocols=(T11,))

    async def run() -> SweepResult:
        engine = SweepEngine(concurrency=4)
        try:
            return await engine.sweep(target)
        finally:
            engine.close()

    result = asyncio.run(run())
    assert result.error is None
    assert matrix(result) == {T11: R}
