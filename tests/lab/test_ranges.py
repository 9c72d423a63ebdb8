"""Network ranges at scale: `--check-config` counts a /8 without listing it, `--once` over a /14 finds its one
listener, and a daemon over a /16 picks up listeners that appear and retires those that go. Loopback only (Linux
routes all of 127.0.0.0/8 to lo); correctness here, the times and RSS in bench/run.py ranges."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.servers import TcpListeners
from scanner.protocols import Protocol
from tests.lab.daemon import Daemons, Scrape, promtool_check, run_once, run_scanner
from tests.lab.servers import LabCerts, TLSServer

RANGE_ENDPOINTS = "tls_scanner_range_endpoints"


def test_check_config_counts_a_slash_8_without_listing_it(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "max_range_endpoints: 16777216\ntargets:\n  - 127.1.2.3:443\n  - network: 127.0.0.0/8\n    ports: [443]\n"
    )
    proc = run_scanner("--check-config", "--config", str(config), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"{config}: OK, 16777216 targets\n"  # the explicit target is one of the range's
    proc = run_scanner("--check-config", "--config", str(config), "--shard", "1/4", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.endswith(" targets and about 4194303 of 16777215 range endpoints on this shard\n"), proc.stderr
    config.write_text(config.read_text().replace("16777216", "16777215"))
    proc = run_scanner("--check-config", "--config", str(config), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"tls-scanner: {config}:4: network 127.0.0.0/8 with 1 port(s) brings the ranges to 16777216 endpoints, "
        "more than max_range_endpoints (16777215)\n"
    )


def test_once_over_a_slash_14_reports_exactly_its_one_listener(tmp_certs: LabCerts, tmp_path: Path) -> None:
    with TLSServer({Protocol.TLSv1_2, Protocol.TLSv1_3}, tmp_certs.server, host="127.1.2.3") as server:
        port = server.endpoint.port
        config = tmp_path / "c.yaml"
        config.write_text(
            "max_range_endpoints: 262144\n"
            "defaults: {timeout: 2s}\n"
            f"targets:\n  - network: 127.0.0.0/14\n    ports: [{port}]\n    labels: {{zone: lo}}\n"
        )
        proc = run_once(config, "--format", "json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        document = json.loads(proc.stdout)
        (target,) = document["targets"]
        assert (target["name"], target["labels"]) == (f"127.1.2.3:{port}", {"zone": "lo"})
        assert {p: s for p, s in target["protocols"].items() if s == "accepted"} == {
            "TLSv1.2": "accepted",
            "TLSv1.3": "accepted",
        }
        assert document["ranges"] == {"127.0.0.0/14": {"open": 1, "closed": 262143, "silent": 0}}
        assert document["ranges_closed_endpoints"] == {"127.0.0.0/14": 262143}

        proc = run_once(config, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[1].startswith(f"127.1.2.3:{port} ")
        assert "range 127.0.0.0/14: 1 open, 262143 closed, 0 silent (TCP connect)" in proc.stdout


def test_once_on_small_ranges_v6_and_shared_addresses(tmp_path: Path) -> None:
    """Ports of one address under connections_per_address 1 and a rate limit; an IPv6 range; overlapping ranges
    and an explicit target each swept once."""
    listeners, port = TcpListeners.on_one_port(["127.0.0.5", "::1"])
    with listeners:
        config = tmp_path / "c.yaml"
        document = {
            "politeness": {"connections_per_address": 1, "connections_per_second": 20},
            "defaults": {"timeout": "1s"},
            "targets": [
                f"127.0.0.5:{port}",
                {"network": "127.0.0.4/30", "ports": [port, port + 1]},
                {"network": "127.0.0.0/29", "ports": [port]},
                {"network": "::1/128", "ports": [port]},
            ],
        }
        config.write_text(yaml.safe_dump(document))
        proc = run_once(config, "--format", "json", timeout=60)
        assert proc.returncode == 3, proc.stderr  # plain TCP listeners: not TLS servers
        found = json.loads(proc.stdout)
        assert sorted(t["name"] for t in found["targets"]) == sorted([f"127.0.0.5:{port}", f"[::1]:{port}"])
        assert found["ranges"] == {
            "127.0.0.4/30": {"open": 0, "closed": 7, "silent": 0},  # 127.0.0.5:port is the explicit target's
            "127.0.0.0/29": {"open": 0, "closed": 4, "silent": 0},  # the other 4 were the /30's
            "::1/128": {"open": 1, "closed": 0, "silent": 0},
        }


def test_daemon_over_a_slash_16_adds_and_retires_listeners(
    tmp_certs: LabCerts, tmp_path: Path, start_daemon: Daemons
) -> None:
    hosts = [f"127.0.{i}.{(i * 7) % 250 + 1}" for i in range(1, 51)]
    listeners, port = TcpListeners.on_one_port(hosts)
    with listeners, TLSServer({Protocol.TLSv1_2}, tmp_certs.server, host="127.0.200.9") as tls:
        config = tmp_path / "c.yaml"
        document = {
            "max_range_endpoints": 131072,
            # Sweeps every 5 s, not every second: 50 plain listeners swept each second took the CPU a slow machine's
            # discovery passes need (131,072 endpoints; 35-55 s a pass on one, against ~10 s on another).
            "defaults": {"interval": "5s", "timeout": "1s", "deep_interval": 0, "range_interval": "2s"},
            "targets": [{"network": "127.0.0.0/16", "ports": [port, tls.endpoint.port]}],
        }
        config.write_text(yaml.safe_dump(document))
        names = {f"{h}:{port}" for h in hosts} | {f"127.0.200.9:{tls.endpoint.port}"}
        d = start_daemon(config)

        def counted(s: Scrape) -> float:
            states = ("open", "closed", "silent")
            return sum(s.value(RANGE_ENDPOINTS, range="127.0.0.0/16", state=k) or 0 for k in states)

        def found(expected: set[str]) -> Scrape:
            # A first pass shows its counts and its responders as it goes: the responders of the early blocks can be
            # found and swept before the last block is counted, so wait for the pass to have counted every endpoint.
            return d.wait_metrics(
                lambda s: (
                    s.targets() == expected
                    and s.value(RANGE_ENDPOINTS, range="127.0.0.0/16", state="open") == len(expected)
                    and counted(s) == 131072
                    and all(s.value("tls_scanner_scan_success", target=n) is not None for n in expected)
                ),
                180,  # up to two passes (the one under way, then one that sees the change) on a slow machine
                f"{len(expected)} range endpoints found and swept",
            )

        scrape = found(names)
        assert scrape.value(RANGE_ENDPOINTS, range="127.0.0.0/16", state="closed") == 131072 - len(names)
        assert scrape.value(RANGE_ENDPOINTS, range="127.0.0.0/16", state="silent") == 0
        assert scrape.value("tls_scanner_targets") == len(names)
        assert (scrape.value("tls_scanner_range_discovery_duration_seconds", range="127.0.0.0/16") or 0) > 0
        assert (scrape.value("tls_scanner_range_last_discovery_timestamp_seconds", range="127.0.0.0/16") or 0) > 1.7e9
        tls_name = f"127.0.200.9:{tls.endpoint.port}"
        assert scrape.value("tls_scanner_protocol_accepted", target=tls_name, address="127.0.200.9",
                            protocol="TLSv1.2") == 1  # fmt: skip
        promtool_check(scrape.text)

        for host in hosts[:10]:
            listeners.remove(host, port)
        for i in range(5):
            listeners.add(f"127.0.250.{i + 1}", port)
        tls.stop()
        names = {f"{h}:{port}" for h in hosts[10:]} | {f"127.0.250.{i + 1}:{port}" for i in range(5)}
        found(names)
        with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
            rows = {t for (t,) in db.execute("SELECT DISTINCT target FROM protocol_state")}
        assert tls_name not in rows  # retired with its state
        assert "retired" in d.log_text()


def test_daemon_reload_relabels_found_endpoints_and_retires_a_removed_range(
    tmp_path: Path, start_daemon: Daemons
) -> None:
    listeners, port = TcpListeners.on_one_port(["127.0.3.2"])
    with listeners:
        config = tmp_path / "c.yaml"

        def write(targets: list[object]) -> None:
            defaults = {"interval": "1s", "timeout": "1s", "deep_interval": 0}
            config.write_text(yaml.safe_dump({"defaults": defaults, "targets": targets}))

        write([{"network": "127.0.3.0/28", "ports": [port], "labels": {"zone": "a"}}])
        d = start_daemon(config)
        name = f"127.0.3.2:{port}"
        d.wait_metrics(lambda s: s.value("tls_scanner_scan_success", target=name, zone="a") is not None, 30, "found")
        write([{"network": "127.0.3.0/28", "ports": [port], "labels": {"zone": "b"}}])
        assert d.request("POST", "/-/reload")[0] == 200
        scrape = d.wait_metrics(
            lambda s: s.value("tls_scanner_scan_success", target=name, zone="b") is not None, 30, "relabelled"
        )
        assert scrape.value(RANGE_ENDPOINTS, range="127.0.3.0/28", state="open") == 1  # not discovered again
        write([f"127.0.3.2:{port + 1}"])
        assert d.request("POST", "/-/reload")[0] == 200
        scrape = d.wait_metrics(lambda s: name not in s.targets(), 30, "the range's endpoint retired")
        assert scrape.find(RANGE_ENDPOINTS) == []
        assert "retired 1 range endpoints" in d.log_text()


def test_state_of_an_endpoint_gone_while_the_daemon_was_down_is_retired_at_the_next_pass(
    tmp_certs: LabCerts, tmp_path: Path, start_daemon: Daemons
) -> None:
    config = tmp_path / "c.yaml"
    state = tmp_path / "state.db"  # start_daemon's default, under tmp_path
    with TLSServer({Protocol.TLSv1_2}, tmp_certs.server, host="127.0.4.2") as tls:
        name = f"127.0.4.2:{tls.endpoint.port}"
        defaults = {"interval": "1s", "timeout": "1s", "deep_interval": 0}
        targets = [{"network": "127.0.4.0/29", "ports": [tls.endpoint.port]}]
        config.write_text(yaml.safe_dump({"defaults": defaults, "targets": targets}))
        first = start_daemon(config)
        first.wait_metrics(lambda s: s.value("tls_scanner_protocol_accepted", target=name, protocol="TLSv1.2") == 1,
                           30, "the TLS server swept")  # fmt: skip
        first.stop()
    with contextlib.closing(sqlite3.connect(state)) as db:
        assert {t for (t,) in db.execute("SELECT DISTINCT target FROM protocol_state")} == {name}
    second = start_daemon(config)
    second.wait_metrics(
        lambda s: s.value(RANGE_ENDPOINTS, range="127.0.4.0/29", state="closed") == 8, 30, "the range passed"
    )
    assert until_true(lambda: "retired 1 range endpoints" in second.log_text())
    with contextlib.closing(sqlite3.connect(state)) as db:
        assert {t for (t,) in db.execute("SELECT DISTINCT target FROM protocol_state")} == set()


def until_true(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_an_address_that_never_answers_is_counted_silent(tmp_path: Path) -> None:
    """A listener whose accept queue is full drops SYNs: its connect times out, as a firewall's would."""
    with socket.socket() as full:
        full.bind(("127.0.5.5", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for each in fillers:
                each.setblocking(False)
                each.connect_ex(("127.0.5.5", port))
            time.sleep(0.2)
            config = tmp_path / "c.yaml"
            config.write_text(f"defaults: {{timeout: 1s}}\ntargets:\n  - network: 127.0.5.4/30\n    ports: [{port}]\n")
            proc = run_once(config, "--format", "json")
            assert proc.returncode == 0, proc.stderr
            document = json.loads(proc.stdout)
            assert document["targets"] == []
            assert document["ranges"] == {"127.0.5.4/30": {"open": 0, "closed": 3, "silent": 1}}
            assert document["ranges_closed_endpoints"] == {"127.0.5.4/30": 4}
        finally:
            for each in fillers:
                each.close()
