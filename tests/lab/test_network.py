"""Network-wide scanning end to end: every address behind a name (from a private dnsmasq), re-resolution, IPv6
literals, address pinning, SNI, and `network:` ranges, through `--once` and a running daemon. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.servers import NginxServer, free_ports
from scanner.config import load_config
from scanner.engine.sweep import SweepEngine
from scanner.output.metrics import ScannerMetrics
from scanner.protocols import ALL_PROTOCOLS
from scanner.protocols import Protocol as P
from scanner.results.sweep import ErrorReason, SweepResult
from scanner.state.store import ResultStore
from tests.lab.daemon import Daemons, Scrape, promtool_check, run_once, run_scanner, write_config
from tests.lab.dnslab import DnsLab, require_dnsmasq
from tests.lab.servers import LabCerts, NginxLabFactory, TLSServer

ACCEPTED = "tls_scanner_protocol_accepted"
ERROR = "tls_scanner_protocol_error"
ACCEPTED_ADDRESSES = "tls_scanner_protocol_accepted_addresses"
ADDRESSES = "tls_scanner_addresses"
RANGE_ENDPOINTS = "tls_scanner_range_endpoints"
PROTOCOLS = [p.value for p in ALL_PROTOCOLS]
NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]
LEGACY = {p: "accepted" if p not in ("SSLv2", "SSLv3") else "rejected" for p in PROTOCOLS}
MODERN = {p: "accepted" if p in ("TLSv1.2", "TLSv1.3") else "rejected" for p in PROTOCOLS}


def _ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_V6 = _ipv6_loopback()
V6 = "::1" if HAS_V6 else "127.0.0.5"  # the fourth edge: IPv6 when the machine has it
# The edges behind multi.lab.test: two still accept TLS 1.0/1.1, two have dropped them.
EDGES = {"127.0.0.2": LEGACY, "127.0.0.3": MODERN, "127.0.0.4": LEGACY, V6: MODERN}
V4_EDGES = [a for a in EDGES if ":" not in a]


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DnsLab]:
    """dnsmasq on 127.0.0.1 with multi.lab.test -> the four edges (skips without dnsmasq; fails in CI)."""
    require_dnsmasq()
    with DnsLab(tmp_path / "dns", {"multi.lab.test": list(EDGES)}) as server:
        yield server


def common_port(hosts: list[str]) -> int:
    """A port free on every one of these loopback addresses."""
    for _ in range(20):
        port = free_ports(1)[0]
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def once_json(config: Path, expect_code: int = 0) -> dict[str, Any]:
    proc = run_once(config, "--format", "json")
    assert proc.returncode == expect_code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def once_prometheus(config: Path) -> Scrape:
    proc = run_once(config, "--format", "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    promtool_check(proc.stdout)
    return Scrape(proc.stdout)


def by_address(target: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {a["address"]: a["protocols"] for a in target["addresses"]}


def edges_nginx(nginx_lab: NginxLabFactory, port: int, edges: dict[str, dict[str, str]]) -> None:
    """One nginx, one server block per edge address, all on the same port."""
    servers = [
        NginxServer(f"edge{i}", port, NGINX_ALL if states is LEGACY else NGINX_MODERN, listen=address)
        for i, (address, states) in enumerate(edges.items())
    ]
    nginx_lab(servers)


def multi_config(tmp_path: Path, dns: DnsLab, port: int, **extra: Any) -> Path:
    return write_config(
        tmp_path / "multi.yaml",
        {
            "resolver": dns.resolver_config(),
            "defaults": {"interval": "1s", "timeout": "2s"},
            "targets": [
                {"name": "multi", "host": "multi.lab.test", "port": port, "labels": {"edge": "cdn"}},
                {"name": "multi-v4", "host": "multi.lab.test", "port": port, "addresses": "ipv4"},
                {"name": "multi-first", "host": "multi.lab.test", "port": port, "addresses": "first"},
            ],
            **extra,
        },
    )


def check_multi_metrics(scrape: Scrape) -> None:
    """The families that say "accepted by 2 of 4 edges", and one series per edge."""
    assert scrape.value(ADDRESSES, target="multi", edge="cdn") == 4
    assert scrape.value(ACCEPTED_ADDRESSES, target="multi", protocol="TLSv1.0", edge="cdn") == 2
    assert scrape.by_protocol(ACCEPTED_ADDRESSES, "multi") == {
        p: float(sum(states[p] == "accepted" for states in EDGES.values())) for p in PROTOCOLS
    }
    for address, states in EDGES.items():
        got = {s.labels["protocol"]: s.value for s in scrape.find(ACCEPTED, target="multi", address=address)}
        assert got == {p: float(state == "accepted") for p, state in states.items()}, address
        for sample in scrape.find(ACCEPTED, target="multi", address=address):
            assert sample.labels["edge"] == "cdn"
    assert {s.labels["address"] for s in scrape.find(ACCEPTED, target="multi")} == set(EDGES)
    assert scrape.value(ADDRESSES, target="multi-v4") == len(V4_EDGES)
    assert scrape.value(ACCEPTED_ADDRESSES, target="multi-v4", protocol="TLSv1.0") == 2
    assert {s.labels["address"] for s in scrape.find(ACCEPTED, target="multi-v4")} == set(V4_EDGES)
    assert scrape.value(ADDRESSES, target="multi-first") == 1
    (first,) = {s.labels["address"] for s in scrape.find(ACCEPTED, target="multi-first")}
    assert first in EDGES
    assert scrape.value(ACCEPTED_ADDRESSES, target="multi-first", protocol="TLSv1.0") == float(
        EDGES[first]["TLSv1.0"] == "accepted"
    )


# --- 1 ----------------------------------------------------------------------------------------------------------


def test_every_address_behind_a_name(
    nginx_lab: NginxLabFactory, dns: DnsLab, start_daemon: Daemons, tmp_path: Path
) -> None:
    """multi.lab.test has four edges on one port, two still accepting TLS 1.0: --once JSON, --once prometheus and
    the daemon's /metrics all say "TLSv1.0 accepted by 2 of 4", per address; ipv4 probes 3 of them, first 1."""
    port = common_port(list(EDGES))
    edges_nginx(nginx_lab, port, EDGES)
    config = multi_config(tmp_path, dns, port)

    document = once_json(config)
    targets = {t["name"]: t for t in document["targets"]}
    assert list(targets) == ["multi", "multi-v4", "multi-first"]
    multi = targets["multi"]
    assert multi["host"] == "multi.lab.test" and multi["sni"] == "multi.lab.test" and multi["complete"]
    assert multi["labels"] == {"edge": "cdn"}
    assert by_address(multi) == EDGES
    assert len(multi["addresses"]) == 4
    assert multi["accepted_addresses"]["TLSv1.0"] == 2
    assert multi["accepted_addresses"] == {p: sum(s[p] == "accepted" for s in EDGES.values()) for p in PROTOCOLS}
    assert multi["protocols"] == LEGACY  # accepted by any edge is accepted for the name
    assert multi["address"] in EDGES and multi["error"] is None
    assert multi["connections"] == sum(a["connections"] for a in multi["addresses"]) >= 4 * len(PROTOCOLS)

    v4 = targets["multi-v4"]
    assert by_address(v4) == {a: EDGES[a] for a in V4_EDGES}
    assert v4["accepted_addresses"]["TLSv1.0"] == 2
    first = targets["multi-first"]
    assert len(first["addresses"]) == 1
    (address,) = by_address(first)
    assert by_address(first) == {address: EDGES[address]}
    assert first["accepted_addresses"]["TLSv1.0"] == int(EDGES[address]["TLSv1.0"] == "accepted")

    check_multi_metrics(once_prometheus(config))

    d = start_daemon(config)
    scrape = d.wait_metrics(
        lambda s: all(s.value(ADDRESSES, target=t) is not None for t in targets), 15, "a sweep of every target"
    )
    check_multi_metrics(scrape)
    promtool_check(scrape.text)


# --- 2 ----------------------------------------------------------------------------------------------------------


def test_names_are_re_resolved_every_sweep(
    nginx_lab: NginxLabFactory, dns: DnsLab, start_daemon: Daemons, tmp_path: Path
) -> None:
    """An edge dropped from DNS (hosts file rewritten, dnsmasq SIGHUPed) leaves the daemon's metrics within a few
    seconds: tls_scanner_addresses drops to 3, and every series of the dropped address vanishes."""
    port = common_port(list(EDGES))
    edges_nginx(nginx_lab, port, EDGES)
    config = multi_config(tmp_path, dns, port)
    d = start_daemon(config)
    d.wait_metrics(lambda s: s.value(ADDRESSES, target="multi", edge="cdn") == 4, 15, "4 addresses")

    dropped = "127.0.0.4"
    dns.set({"multi.lab.test": [a for a in EDGES if a != dropped]})
    changed_at = time.monotonic()

    def gone(scrape: Scrape) -> bool:
        return scrape.value(ADDRESSES, target="multi", edge="cdn") == 3 and not any(
            s.labels.get("address") == dropped for s in scrape.samples
        )

    scrape = d.wait_metrics(gone, 6, f"{dropped} to vanish")
    assert time.monotonic() - changed_at < 6
    assert scrape.value(ACCEPTED_ADDRESSES, target="multi", protocol="TLSv1.0") == 1
    assert scrape.value(ACCEPTED_ADDRESSES, target="multi", protocol="TLSv1.2") == 3
    assert scrape.value(ADDRESSES, target="multi-v4") == len(V4_EDGES) - 1
    assert {s.labels["address"] for s in scrape.find(ACCEPTED, target="multi")} == set(EDGES) - {dropped}
    assert scrape.value("tls_scanner_scan_success", target="multi") == 1
    assert "multi.lab.test" in dns.queries()

    # And back: the edge reappears with its old answers, nothing counted as a flip.
    dns.set({"multi.lab.test": list(EDGES)})
    scrape = d.wait_metrics(lambda s: s.value(ADDRESSES, target="multi") == 4, 6, f"{dropped} to come back")
    assert scrape.value(ACCEPTED, target="multi", address=dropped, protocol="TLSv1.0") == 1
    assert scrape.value("tls_scanner_protocol_changes_total", target="multi", address=dropped, protocol="TLSv1.0") == 0


def test_dns_outage_keeps_the_last_determined_states(nginx_lab: NginxLabFactory, dns: DnsLab, tmp_path: Path) -> None:
    """The name's nameserver goes away: the sweep errors with reason dns, and the per-address states stay."""
    port = common_port(list(EDGES))
    edges_nginx(nginx_lab, port, EDGES)
    config = load_config(
        write_config(
            tmp_path / "c.yaml",
            {
                "resolver": dns.resolver_config("1s"),
                "targets": [{"name": "multi", "host": "multi.lab.test", "port": port, "timeout": "2s"}],
            },
        )
    )
    (target,) = config.targets
    store = ResultStore(None)
    store.set_targets([target])

    async def sweep() -> SweepResult:
        engine = SweepEngine(8, config.politeness, config.resolver)
        try:
            return await engine.sweep(target)
        finally:
            engine.close()

    first = asyncio.run(sweep())
    assert len(first.addresses) == 4 and first.complete, first
    store.record(first)
    dns.stop()
    outage = asyncio.run(sweep())
    assert outage.error_reason is ErrorReason.DNS, outage.error
    store.record(outage)
    scrape = Scrape(ScannerMetrics(store).render())
    store.close()
    assert scrape.value("tls_scanner_scan_success", target="multi") == 0
    assert scrape.value("tls_scanner_scan_errors_total", target="multi", reason="dns") == 1
    for address, states in EDGES.items():
        got = {s.labels["protocol"]: s.value for s in scrape.find(ACCEPTED, target="multi", address=address)}
        assert got == {p: float(state == "accepted") for p, state in states.items()}, address


# --- 3 ----------------------------------------------------------------------------------------------------------


class RecordingServer(TLSServer):
    """A TLS 1.2/1.3 server that records the SNI of every handshake (None: none sent) and every Host header."""

    def __init__(self, certs: LabCerts, host: str) -> None:
        super().__init__({P.TLSv1_2, P.TLSv1_3}, certs.server, http_status=200, host=host)
        self.server_names: list[str | None] = []
        self.host_headers: list[str] = []
        self.context.sni_callback = self._sni

    def _sni(self, _: ssl.SSLObject, server_name: str | None, __: ssl.SSLContext) -> None:
        with self._lock:
            self.server_names.append(server_name)

    def handle(self, conn: socket.socket) -> None:
        tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self._tracked(tls), contextlib.suppress(ssl.SSLError, OSError):
            tls.settimeout(5)
            tls.do_handshake()
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("host:"):
                    with self._lock:
                        self.host_headers.append(line.split(":", 1)[1].strip())
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@contextlib.contextmanager
def recording_server(certs: LabCerts, host: str) -> Iterator[RecordingServer]:
    server = RecordingServer(certs, host)
    with server:
        yield server


def test_ipv6_literal_pinned_address_and_sni(
    nginx_lab: NginxLabFactory, dns: DnsLab, tmp_certs: LabCerts, tmp_path: Path
) -> None:
    """`"[::1]:PORT"` is scanned over IPv6 with no SNI; `address:` connects to that address without resolving the
    name (which does not resolve at all), SNI and Host still the name; `sni: false` sends no SNI, Host unchanged."""
    if not HAS_V6:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    v6_port = common_port(["::1"])
    nginx_lab([NginxServer("v6", v6_port, NGINX_ALL, listen="::1")])
    with recording_server(tmp_certs, "127.0.0.3") as named, recording_server(tmp_certs, "127.0.0.3") as bare:
        config = write_config(
            tmp_path / "c.yaml",
            {
                "resolver": dns.resolver_config(),
                "defaults": {"timeout": "2s"},
                "targets": [
                    f"[::1]:{v6_port}",
                    {
                        "name": "pinned",
                        "host": "pinned.lab.test",
                        "port": named.endpoint.port,
                        "address": "127.0.0.3",
                        "http": True,
                    },
                    {
                        "name": "pinned-nosni",
                        "host": "pinned.lab.test",
                        "port": bare.endpoint.port,
                        "address": "127.0.0.3",
                        "sni": False,
                        "http": True,
                    },
                ],
            },
        )
        document = once_json(config)
        sni_names, sni_hosts = list(named.server_names), list(named.host_headers)
        bare_names, bare_hosts = list(bare.server_names), list(bare.host_headers)
    targets = {t["name"]: t for t in document["targets"]}
    assert list(targets) == [f"[::1]:{v6_port}", "pinned", "pinned-nosni"]

    v6 = targets[f"[::1]:{v6_port}"]
    assert (v6["host"], v6["port"], v6["address"], v6["sni"]) == ("::1", v6_port, "::1", None)
    assert v6["protocols"] == LEGACY and by_address(v6) == {"::1": LEGACY}

    modern = {p: "accepted" if p in ("TLSv1.2", "TLSv1.3") else "rejected" for p in PROTOCOLS}
    pinned = targets["pinned"]
    assert (pinned["address"], pinned["sni"], pinned["host"]) == ("127.0.0.3", "pinned.lab.test", "pinned.lab.test")
    assert by_address(pinned) == {"127.0.0.3": modern} and pinned["error"] is None
    assert pinned["http"] == {"TLSv1.2": 200, "TLSv1.3": 200}
    # The server saw the name, never an address, and never no SNI.
    assert sni_names and set(sni_names) == {"pinned.lab.test"}, sni_names
    assert sni_hosts and set(sni_hosts) == {f"pinned.lab.test:{named.endpoint.port}"}, sni_hosts
    assert "pinned.lab.test" not in dns.queries()  # pinned: the name was never looked up

    nosni = targets["pinned-nosni"]
    assert (nosni["address"], nosni["sni"]) == ("127.0.0.3", None)
    assert by_address(nosni) == {"127.0.0.3": modern}
    assert nosni["http"] == {"TLSv1.2": 200, "TLSv1.3": 200}
    assert bare_names and set(bare_names) == {None}, bare_names
    assert bare_hosts and set(bare_hosts) == {f"pinned.lab.test:{bare.endpoint.port}"}, bare_hosts


# --- 4 ----------------------------------------------------------------------------------------------------------


RANGE = "127.0.0.0/28"


def test_network_range(nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path) -> None:
    """A /28 on two ports is 32 endpoints: only the 2 that accept TCP are scanned and reported (named address:port,
    with the range's labels); the 30 closed ones are only counted, and give no per-target series."""
    hosts = [f"127.0.0.{i}" for i in range(16)]
    p1, p2 = (common_port(hosts) for _ in range(2))
    while p2 == p1:
        p2 = common_port(hosts)
    nginx_lab(
        [
            NginxServer("r1", p1, NGINX_ALL, listen="127.0.0.2"),
            NginxServer("r2", p2, NGINX_MODERN, listen="127.0.0.3"),
        ]
    )
    config = write_config(
        tmp_path / "c.yaml",
        {
            "resolver": {"nameservers": ["127.0.0.1:9"], "timeout": "1s"},  # never asked: ranges are addresses
            "defaults": {"interval": "1s", "timeout": "2s"},
            "targets": [{"network": RANGE, "ports": [p1, p2], "labels": {"zone": "dmz"}}],
        },
    )
    open_names = [f"127.0.0.2:{p1}", f"127.0.0.3:{p2}"]

    document = once_json(config)
    targets = {t["name"]: t for t in document["targets"]}
    assert sorted(targets) == sorted(open_names)
    assert document["ranges_closed_endpoints"] == {RANGE: 30}
    for name, states in zip(open_names, (LEGACY, MODERN), strict=True):
        t = targets[name]
        assert t["labels"] == {"zone": "dmz"}, name
        assert (t["host"], t["port"], t["address"]) == (name.split(":")[0], int(name.split(":")[1]), t["host"])
        assert t["protocols"] == states and t["complete"] and t["error"] is None, name

    def check(scrape: Scrape) -> None:
        assert scrape.value(RANGE_ENDPOINTS, range=RANGE, state="open") == 2
        assert scrape.value(RANGE_ENDPOINTS, range=RANGE, state="closed") == 30
        assert scrape.targets() == set(open_names)  # closed endpoints: no error series, nothing per target
        assert [s.value for s in scrape.find("tls_scanner_scan_errors_total")] == [0.0] * 5 * 2  # 5 reasons
        assert scrape.value(ACCEPTED, target=open_names[0], address="127.0.0.2", protocol="TLSv1.0", zone="dmz") == 1
        assert scrape.value(ACCEPTED, target=open_names[1], address="127.0.0.3", protocol="TLSv1.0", zone="dmz") == 0
        assert scrape.value(RANGE_ENDPOINTS, range=RANGE, state="silent") == 0
        assert scrape.value("tls_scanner_targets") == 2  # only the endpoints that accepted TCP became targets

    check(once_prometheus(config))

    d = start_daemon(config)
    scrape = d.wait_metrics(
        lambda s: (
            (s.value(RANGE_ENDPOINTS, range=RANGE, state="open") or 0)
            + (s.value(RANGE_ENDPOINTS, range=RANGE, state="closed") or 0)
            == 32
            and all(s.value(ADDRESSES, target=n) == 1 for n in open_names)
        ),
        15,
        "every endpoint of the range swept",
    )
    check(scrape)
    promtool_check(scrape.text)


def test_range_larger_than_max_range_endpoints_is_refused(tmp_path: Path) -> None:
    """Ranges expanding past max_range_endpoints: exit 2, nothing scanned, PATH:LINE at the range crossing the cap."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "max_range_endpoints: 39\n"
        "targets:\n"
        "  - 127.0.0.1:9\n"
        f"  - network: {RANGE}\n"
        "    ports: [9, 10]\n"
        "  - network: 127.0.1.0/29\n"
        "    ports: [9]\n"
    )
    for mode in ("--check-config", "--once"):
        proc = run_scanner(mode, "--config", config, timeout=30)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == ""
        assert proc.stderr == (
            f"tls-scanner: {config}:6: network 127.0.1.0/29 with 1 port(s) brings the ranges to 40 endpoints, "
            "more than max_range_endpoints (39)\n"
        )
    config.write_text(config.read_text().replace("39", "40"))
    proc = run_scanner("--check-config", "--config", config, timeout=30)
    assert proc.returncode == 0, proc.stderr
    # 1 + 32 + 8, less the range endpoint 127.0.0.1:9 that is already an explicit target
    assert proc.stderr.endswith(": OK, 40 targets\n"), proc.stderr
