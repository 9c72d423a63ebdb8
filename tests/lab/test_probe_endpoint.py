"""GET /probe on a running daemon: configured targets, the allowlist (networks, name patterns, DNS rebinding),
bad requests, the scrape-timeout deadline against a tarpit, and the max_concurrent cap. Loopback only; names come
from a private dnsmasq (zone lab.test)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bench.servers import NginxLab, NginxServer, free_ports
from scanner.config import load_config
from scanner.daemon.service import Service
from scanner.protocols import ALL_PROTOCOLS
from scanner.protocols import Protocol as P
from tests.lab.daemon import Daemon, Scrape, promtool_check, write_config
from tests.lab.dnslab import DnsLab, require_dnsmasq
from tests.lab.servers import LabCerts, TLSServer, require_nginx, tarpit

ACCEPTED = "tls_scanner_protocol_accepted"
SUCCESS = "tls_scanner_probe_success"
DURATION = "tls_scanner_probe_duration_seconds"
PROTOCOLS = [p.value for p in ALL_PROTOCOLS]
LEGACY = {p: float(p not in ("SSLv2", "SSLv3")) for p in PROTOCOLS}
MODERN = {p: float(p in ("TLSv1.2", "TLSv1.3")) for p in PROTOCOLS}
RECORDS = {
    "ok.lab.test": ["127.0.0.2"],  # matches *.lab.test, inside 127.0.0.2/32
    "evil.lab.test": ["127.0.0.3"],  # matches *.lab.test, resolves outside: the rebinding case
    "stray.other.test": ["127.0.0.2"],  # inside the network, but matches no name pattern
}
ALLOW = ["127.0.0.2/32", "*.lab.test"]


@dataclass
class ProbeLab:
    """nginx on 127.0.0.2:port (TLS 1.0-1.3), a counting TLS 1.2/1.3 server on 127.0.0.3:port, a tarpit on
    127.0.0.2, dnsmasq, and two daemons: `default` with no probe settings, `allow` with probe.allow = ALLOW and
    max_concurrent 1."""

    port: int
    other: int  # 127.0.0.2:other is nginx with TLS 1.2/1.3, not a configured target
    pit: int
    outside: TLSServer  # 127.0.0.3:port: refused probes must never connect to it
    dns: DnsLab
    default: Daemon
    allow: Daemon


def _config(path: Path, dns: DnsLab, port: int, **extra: Any) -> Path:
    document = {
        "resolver": dns.resolver_config(),
        "defaults": {"interval": "1h", "timeout": "2s"},
        "targets": [{"name": "web", "host": "127.0.0.2", "port": port, "labels": {"team": "edge"}}],
        **extra,
    }
    return write_config(path, document)


@pytest.fixture(scope="module")
def probe_lab(tmp_path_factory: pytest.TempPathFactory, tmp_certs: LabCerts) -> Iterator[ProbeLab]:
    require_nginx()
    require_dnsmasq()
    tmp = tmp_path_factory.mktemp("probe")
    with contextlib.ExitStack() as stack:
        outside = stack.enter_context(TLSServer({P.TLSv1_2, P.TLSv1_3}, tmp_certs.server, host="127.0.0.3"))
        port = outside.endpoint.port
        other = free_ports(1, "127.0.0.2")[0]
        legacy = NginxServer("legacy", port, ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"], listen="127.0.0.2")
        modern = NginxServer("modern", other, ["TLSv1.2", "TLSv1.3"], listen="127.0.0.2")
        stack.enter_context(NginxLab([legacy, modern], cert=tmp_certs.server))
        pit = stack.enter_context(tarpit("127.0.0.2"))
        dns = stack.enter_context(DnsLab(tmp / "dns", RECORDS))
        default = stack.enter_context(
            Daemon(_config(tmp / "default.yaml", dns, port), tmp / "default.db", tmp / "default.log")
        )
        allow = stack.enter_context(
            Daemon(
                _config(tmp / "allow.yaml", dns, port, probe={"allow": ALLOW, "max_concurrent": 1}),
                tmp / "allow.db",
                tmp / "allow.log",
            )
        )
        yield ProbeLab(port, other, pit.port, outside, dns, default, allow)


def probe(
    daemon: Daemon, target: str | None, scrape_timeout: str | None = None, timeout: float = 15.0
) -> tuple[int, str, str]:
    """(status, body, Content-Type) of GET /probe?target=..."""
    path = "/probe" if target is None else f"/probe?target={quote(target, safe='')}"
    headers = {} if scrape_timeout is None else {"X-Prometheus-Scrape-Timeout-Seconds": scrape_timeout}
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(), response.getheader("Content-Type", "")
    finally:
        conn.close()


def ok(daemon: Daemon, target: str, scrape_timeout: str | None = None) -> Scrape:
    status, body, content_type = probe(daemon, target, scrape_timeout)
    assert status == 200, f"{target}: {status} {body}\n--- daemon log\n{daemon.log_text()[-2000:]}"
    assert content_type.startswith("text/plain; version="), content_type
    promtool_check(body)
    return Scrape(body)


def refused(daemon: Daemon, target: str) -> str:
    status, body, _ = probe(daemon, target)
    assert status == 403, f"{target}: {status} {body}"
    assert body.startswith("refused: "), body
    assert "tls_scanner" not in body  # nothing was scanned
    return body


def a_queries(dns: DnsLab, name: str) -> int:
    return sum(1 for line in dns.log.read_text().splitlines() if f"query[A] {name} " in line)


# --- configured targets -----------------------------------------------------------------------------------------


def test_configured_target_by_name_and_by_host_port(probe_lab: ProbeLab) -> None:
    """`?target=web` and `?target=127.0.0.2:PORT` both sweep the configured target now: 200, probe_success 1, the
    matrix under the target's name and labels, and nothing of any other target."""
    d = probe_lab.default
    for spec in ("web", f"127.0.0.2:{probe_lab.port}"):
        scrape = ok(d, spec)
        assert scrape.value(SUCCESS) == 1, spec
        duration = scrape.value(DURATION)
        assert duration is not None and 0 < duration < 5, spec
        assert scrape.by_protocol(ACCEPTED, "web") == LEGACY, spec
        assert {s.labels["address"] for s in scrape.find(ACCEPTED)} == {"127.0.0.2"}, spec
        assert all(s.labels["team"] == "edge" for s in scrape.find(ACCEPTED)), spec
        assert scrape.targets() == {"web"}, spec
        assert scrape.value("tls_scanner_scan_success", target="web") == 1
        assert not scrape.find("tls_scanner_config_last_reload_successful")  # the probe's own sweep only
        assert not scrape.find("process_cpu_seconds_total")


def test_unconfigured_targets_are_refused_by_default(probe_lab: ProbeLab) -> None:
    """Without probe.allow, /probe is no open proxy: any address, port or name not configured gets 403."""
    d = probe_lab.default
    port = probe_lab.port
    accepted = probe_lab.outside.accepted
    for spec in (f"127.0.0.3:{port}", f"127.0.0.2:{probe_lab.pit}", f"ok.lab.test:{port}", f"[::1]:{port}"):
        body = refused(d, spec)
        assert "only configured targets may be probed (see probe.allow)" in body, body
    body = refused(d, f"web.invalid:{port}")
    assert "only configured targets may be probed" in body  # refused by name, before any lookup
    assert probe_lab.outside.accepted == accepted  # refused means not even a TCP connect


@pytest.mark.parametrize(
    ("target", "header", "problem"),
    [
        (None, None, "missing ?target"),
        ("", None, "missing ?target"),
        ("   ", None, "missing ?target"),
        ("127.0.0.2:99999", None, "bad target"),
        ("127.0.0.2:0", None, "bad target"),
        ("web", "soon", "bad X-Prometheus-Scrape-Timeout-Seconds"),
    ],
    ids=["absent", "empty", "blank", "port-too-big", "port-0", "bad-header"],
)
def test_bad_requests_get_400(probe_lab: ProbeLab, target: str | None, header: str | None, problem: str) -> None:
    status, body, _ = probe(probe_lab.default, target, header)
    assert status == 400, body
    assert problem in body


# --- the allowlist ----------------------------------------------------------------------------------------------


def test_allowlist_networks_and_name_patterns(probe_lab: ProbeLab) -> None:
    """probe.allow [127.0.0.2/32, *.lab.test]: an IP inside is probed and one outside refused; a matching name
    resolving inside is probed (at the address checked, resolved once), one resolving outside is refused (DNS
    rebinding), a name matching no pattern is refused even though it resolves inside, an unresolvable one too."""
    d, port, dns = probe_lab.allow, probe_lab.port, probe_lab.dns

    scrape = ok(d, f"127.0.0.2:{probe_lab.other}")
    assert scrape.value(SUCCESS) == 1
    assert scrape.targets() == {f"127.0.0.2:{probe_lab.other}"}
    assert scrape.by_protocol(ACCEPTED, f"127.0.0.2:{probe_lab.other}") == MODERN

    assert probe_lab.outside.accepted == 0
    body = refused(d, f"127.0.0.3:{port}")
    assert "127.0.0.3 is outside probe.allow" in body

    before = a_queries(dns, "ok.lab.test")
    scrape = ok(d, f"ok.lab.test:{port}")
    assert scrape.value(SUCCESS) == 1
    assert scrape.by_protocol(ACCEPTED, f"ok.lab.test:{port}") == LEGACY
    assert {s.labels["address"] for s in scrape.find(ACCEPTED)} == {"127.0.0.2"}
    assert a_queries(dns, "ok.lab.test") == before + 1  # checked and swept on one answer, never looked up again

    body = refused(d, f"evil.lab.test:{port}")
    assert "evil.lab.test resolves to 127.0.0.3, outside probe.allow" in body

    body = refused(d, f"stray.other.test:{port}")
    assert "stray.other.test matches no name in probe.allow" in body

    body = refused(d, f"nowhere.lab.test:{port}")
    assert "cannot resolve nowhere.lab.test" in body

    # The refusals scanned nothing: nothing connected to 127.0.0.3, where evil.lab.test points.
    assert probe_lab.outside.accepted == 0


def test_scrape_timeout_bounds_a_tarpit_probe(probe_lab: ProbeLab) -> None:
    """X-Prometheus-Scrape-Timeout-Seconds: 2 against a tarpit inside the allowlist: the answer (200, probe_success
    0, every protocol an error) comes within the scrape timeout, not the target's 5 s default timeout."""
    started = time.monotonic()
    scrape = ok(probe_lab.allow, f"127.0.0.2:{probe_lab.pit}", scrape_timeout="2")
    elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 0.3, f"took {elapsed:.2f}s with a 2s scrape timeout"
    assert scrape.value(SUCCESS) == 0
    name = f"127.0.0.2:{probe_lab.pit}"
    assert scrape.by_protocol("tls_scanner_protocol_error", name) == dict.fromkeys(PROTOCOLS, 1.0)
    assert scrape.value("tls_scanner_scan_errors_total", target=name, reason="timeout") == 1
    assert not scrape.find(ACCEPTED)  # never determined
    duration = scrape.value(DURATION)
    assert duration is not None and 0.5 < duration < 2.0


def test_max_concurrent_answers_429(probe_lab: ProbeLab) -> None:
    """probe.max_concurrent 1: a second probe while a (tarpit) probe runs gets 429 at once; afterwards probes work."""
    d = probe_lab.allow
    spec = f"127.0.0.2:{probe_lab.pit}"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(probe, d, spec, "2")
        time.sleep(0.4)  # the first is now holding the only slot, for ~1.5 s
        started = time.monotonic()
        status, body, _ = pool.submit(probe, d, f"127.0.0.2:{probe_lab.port}", "2").result()
        second_took = time.monotonic() - started
        assert not first.done(), "the tarpit probe ended too early to test the cap"
        assert status == 429, body
        assert "probe.max_concurrent = 1" in body
        assert second_took < 0.5
        assert first.result()[0] == 200
    assert ok(d, f"127.0.0.2:{probe_lab.port}").value(SUCCESS) == 1  # the slot was given back


# --- once bugs, kept as regression tests ---------------------------------------------------------------------


def test_refused_names_are_not_looked_up(probe_lab: ProbeLab) -> None:
    """A name /probe will refuse whatever it resolves to must not cost a DNS query (no open DNS trigger)."""
    before = {name: a_queries(probe_lab.dns, name) for name in ("ok.lab.test", "stray.other.test")}
    refused(probe_lab.default, f"ok.lab.test:{probe_lab.port}")
    refused(probe_lab.allow, f"stray.other.test:{probe_lab.port}")
    after = {name: a_queries(probe_lab.dns, name) for name in ("ok.lab.test", "stray.other.test")}
    assert after == before  # the lab's own readiness check queried them once; /probe never did


def _service(tmp_path: Path, document: dict[str, Any]) -> Service:
    return Service(load_config(write_config(tmp_path / "c.yaml", document)), str(tmp_path / "state.db"))


def test_scrape_timeout_bounds_a_slow_dns_lookup(probe_lab: ProbeLab, tmp_path: Path) -> None:
    """A nameserver that never answers must not hold /probe past the scrape timeout (2 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:  # loopback UDP that never answers
        blackhole.bind(("127.0.0.1", 0))
        resolver = {"nameservers": [f"127.0.0.1:{blackhole.getsockname()[1]}"], "timeout": "3s"}
        document = {
            "resolver": resolver,
            "probe": {"allow": ["*.lab.test"]},
            "targets": [f"127.0.0.2:{probe_lab.port}"],
        }

        async def run() -> tuple[int, str, float]:
            service = _service(tmp_path, document)
            try:
                started = time.monotonic()
                status, body = await service.probe(f"ok.lab.test:{probe_lab.port}", 2.0)
                return status, body, time.monotonic() - started
            finally:
                await service.engine.shutdown()
                service.store.close()

        status, body, elapsed = asyncio.run(run())
    assert status == 403 and "cannot resolve" in body, body
    assert elapsed < 2.3, f"/probe took {elapsed:.2f}s with a 2s scrape timeout"


def test_reload_applies_probe_max_concurrent(probe_lab: ProbeLab, tmp_path: Path) -> None:
    """After raising probe.max_concurrent from 1 to 2 and reloading, two probes at once both run."""
    document: dict[str, Any] = {
        "probe": {"allow": ["127.0.0.2/32"], "max_concurrent": 1},
        "targets": [f"127.0.0.2:{probe_lab.port}"],
    }
    spec = f"127.0.0.2:{probe_lab.pit}"

    async def run() -> list[int]:
        service = _service(tmp_path, document)
        try:
            document["probe"]["max_concurrent"] = 2
            write_config(tmp_path / "c.yaml", document)
            assert service.reload() is None
            assert service.config.probe.max_concurrent == 2
            results = await asyncio.gather(service.probe(spec, 1.5), service.probe(spec, 1.5))
            return sorted(status for status, _ in results)
        finally:
            await service.stop_scanning()
            service.store.close()

    assert asyncio.run(run()) == [200, 200]
