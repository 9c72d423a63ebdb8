"""Politeness: connections open at once per remote address, and new connections per second to it, whichever targets
share the address; observed by a TLS server that records what it gets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanner.cli import scan_round
from scanner.config import Politeness, load_config
from scanner.protocols import Protocol
from scanner.results.sweep import ProtocolState, SweepResult
from scanner.targets import expand
from tests.lab.daemon import write_config
from tests.lab.peers import CountingTLSServer
from tests.lab.servers import LabCerts

MODERN = {Protocol.TLSv1_2, Protocol.TLSv1_3}
ServerFactory = Callable[..., CountingTLSServer]


@pytest.fixture
def counting_server(tmp_certs: LabCerts) -> Iterator[ServerFactory]:
    with contextlib.ExitStack() as stack:

        def start(hold: float = 0.0, host: str = "127.0.0.1") -> CountingTLSServer:
            return stack.enter_context(CountingTLSServer(MODERN, tmp_certs.server, hold=hold, host=host))

        yield start


@pytest.fixture(params=[0, 2], ids=["in-process", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """Every politeness test runs with sweeps in this process and in two worker processes (each with its own caps:
    targets sharing an address must land in the same one)."""
    return int(request.param)


def sweep(tmp_path: Path, text: str, workers: int) -> list[SweepResult]:
    """Load the config text and sweep every target once, as --once does."""
    config = load_config(write_config(tmp_path / "endpoints.yaml", f"workers: {workers}\n{text}"))
    return asyncio.run(scan_round(config, expand(config), None, deep=False))[0]


def shared_address_targets(port: int) -> str:
    """Six targets, 12 connections, all to 127.0.0.1:port: three by IP, three names pinned to the address."""
    by_ip = [f"  - {{name: ip{i}, host: 127.0.0.1, port: {port}}}\n" for i in range(3)]
    pinned = [f"  - {{host: www{i}.lab.test, address: 127.0.0.1, port: {port}}}\n" for i in range(3)]
    return "defaults: {timeout: 5s, protocols: [TLSv1.2, TLSv1.3]}\ntargets:\n" + "".join(by_ip + pinned)


def all_accepted(results: list[SweepResult]) -> bool:
    return all(r.state(p) is ProtocolState.ACCEPTED for r in results for p in (Protocol.TLSv1_2, Protocol.TLSv1_3))


@pytest.mark.parametrize(("politeness", "low", "high"), [("{connections_per_address: 2}", 2, 2), ("{}", 3, 8)])
def test_connections_per_address_caps_what_one_address_sees(
    counting_server: ServerFactory, tmp_path: Path, politeness: str, low: int, high: int, workers: int
) -> None:
    """With the cap of 2 the server never holds more than 2; with the default of 8 it holds more (so this can fail)."""
    server = counting_server(hold=0.25)
    results = sweep(tmp_path, f"politeness: {politeness}\n" + shared_address_targets(server.endpoint.port), workers)
    assert all_accepted(results), [r.protocols for r in results]
    assert len(server.starts) == 12
    assert low <= server.max_open <= high


def test_connections_per_second_spaces_connection_starts(
    counting_server: ServerFactory, tmp_path: Path, workers: int
) -> None:
    rate = 5.0
    server = counting_server()
    text = shared_address_targets(server.endpoint.port)
    results = sweep(tmp_path, f"politeness: {{connections_per_second: {rate}}}\n" + text, workers)
    assert all_accepted(results)
    starts = sorted(server.starts)
    n = len(starts)
    assert n == 12
    # N connections take at least (N-1)/rate seconds, and no one-second window holds more than rate (+1 for edges).
    assert starts[-1] - starts[0] >= 0.9 * (n - 1) / rate, starts
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= rate + 1
    # The same sweep without the limit is far quicker, so the bound above does bite.
    unlimited = counting_server()
    results = sweep(tmp_path, shared_address_targets(unlimited.endpoint.port), workers)
    assert all_accepted(results)
    assert max(unlimited.starts) - min(unlimited.starts) < 0.5 * (n - 1) / rate


def test_politeness_defaults_and_config(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("targets: [127.0.0.1:8443]\n")
    assert load_config(path).politeness == Politeness(connections_per_address=8, connections_per_second=0.0)
    path.write_text("politeness: {connections_per_address: 3, connections_per_second: 0.5}\ntargets: [127.0.0.1:1]\n")
    assert load_config(path).politeness == Politeness(connections_per_address=3, connections_per_second=0.5)


def test_cap_holds_for_every_spelling_of_one_ipv6_address(
    counting_server: ServerFactory, tmp_path: Path, workers: int
) -> None:
    server = counting_server(hold=0.25, host="::1")
    spellings = ["::1", "0::1", "0:0::1", "::0:1", "0:0:0:0:0:0:0:1", "0000::0001"]
    targets = "".join(
        f"  - {{name: v6-{i}, host: '{s}', port: {server.endpoint.port}}}\n" for i, s in enumerate(spellings)
    )
    results = sweep(
        tmp_path,
        "politeness: {connections_per_address: 2}\n"
        "defaults: {timeout: 5s, protocols: [TLSv1.2, TLSv1.3]}\ntargets:\n" + targets,
        workers,
    )
    assert all_accepted(results)
    assert server.max_open <= 2


def test_rate_limit_on_one_address_does_not_stall_another(
    counting_server: ServerFactory, tmp_path: Path, workers: int
) -> None:
    busy, other = counting_server(), counting_server(host="127.0.0.2")
    targets = "".join(f"  - {{name: busy{i}, host: 127.0.0.1, port: {busy.endpoint.port}}}\n" for i in range(3))
    targets += f"  - {{name: other, host: 127.0.0.2, port: {other.endpoint.port}}}\n"
    results = sweep(
        tmp_path,
        "concurrency: 2\npoliteness: {connections_per_second: 2}\n"
        "defaults: {timeout: 5s, protocols: [TLSv1.2, TLSv1.3]}\ntargets:\n" + targets,
        workers,
    )
    assert all_accepted(results)
    # busy's six connections are paced 0.5 s apart; other's first one has no reason to wait for them.
    assert max(busy.starts) - min(busy.starts) >= 2.0
    assert min(other.starts) - min(busy.starts) < 0.5
