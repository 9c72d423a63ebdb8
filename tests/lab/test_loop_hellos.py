"""Burst re-probes send their hellos from the worker's event loop (SweepEngine.probe), sweeps from handshake threads:
against real servers, well and badly behaved, both must give the same verdict on every version, or a burst would see
flips the sweeps do not (a false brownout alarm). Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import replace

import pytest

from bench.servers import Endpoint, NginxServer, free_ports
from scanner.config import TargetConfig
from scanner.engine.sweep import SweepEngine
from scanner.protocols import ALL_PROTOCOLS
from scanner.protocols import Protocol as P
from scanner.results.sweep import ErrorReason, ProtocolState, SweepResult
from scanner.state.status import Transition
from scanner.state.store import ResultStore
from tests.lab.peers import FlakyForwarder
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

TIMEOUT = 2.0


def verdicts(sweep: SweepResult) -> tuple[object, ...]:
    """What a sweep says of its one version: the target's error and the version's answer, minus counters."""
    (answer,) = sweep.protocols.values()
    return sweep.error, sweep.error_reason, answer.state, answer.evidence, answer.reason, answer.detail


def answer_state(sweep: SweepResult) -> ProtocolState:
    """The state of a sweep's one version."""
    (answer,) = sweep.protocols.values()
    return answer.state


async def _both(engine: SweepEngine, target: TargetConfig, protocol: P) -> tuple[SweepResult, SweepResult]:
    address = target.address or target.host
    threaded = await engine.sweep(replace(target, protocols=(protocol,)), [address])
    looped = await engine.probe(target, protocol, address)
    return threaded, looped


def compare(targets: list[TargetConfig]) -> list[tuple[str, P, SweepResult, SweepResult]]:
    """Each target at each version, one sweep by threads and one on the loop, all targets at once."""

    async def main() -> list[tuple[str, P, SweepResult, SweepResult]]:
        engine = SweepEngine(64)
        try:
            jobs = [(t, p) for t in targets for p in ALL_PROTOCOLS]
            pairs = await asyncio.gather(*(_both(engine, t, p) for t, p in jobs))
        finally:
            engine.close()
        return [(t.name, p, threaded, looped) for (t, p), (threaded, looped) in zip(jobs, pairs, strict=True)]

    return asyncio.run(main())


def test_loop_and_thread_hellos_give_the_same_verdicts(nginx_lab: NginxLabFactory, lab: LabStack) -> None:
    modern, every = free_ports(2)
    nginx = nginx_lab(
        [
            NginxServer("modern", modern, ["TLSv1.2", "TLSv1.3"]),
            NginxServer("every", every, ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]),
        ]
    )
    peers: dict[str, Callable[[], contextlib.AbstractContextManager[Endpoint]]] = {
        "tarpit": tarpit,
        "garbage": garbage_server,
        "plain-http": plain_http_server,
        "closing": closing_server,
        "reset": rst_server,
        "closed-port": closed_port,
    }
    endpoints = {name: lab.peer(factory) for name, factory in peers.items()}
    endpoints |= {
        "nginx-modern": nginx.endpoint("modern"),
        "nginx-every": nginx.endpoint("every"),
        # A TLS 1.2 server with only suites the modern client lacks: accepted only after the legacy retry.
        "legacy-suites": lab.tls_server({P.TLSv1_2}, ciphers="NULL-SHA256:@SECLEVEL=0"),
        "python-tls13": lab.tls_server({P.TLSv1_3}),
        "client-cert": lab.tls_server({P.TLSv1_2}, require_client_cert=True),  # asks who we are: accepted
    }
    targets = [TargetConfig(name=name, host=e.host, port=e.port, timeout=TIMEOUT) for name, e in endpoints.items()]
    results = compare(targets)
    # Two peers answer differently from one connection to the next, whoever connects: random bytes (so OpenSSL's
    # complaint varies), and a reset right after accept that races the client's connect() (seen at connect, "connection
    # refused", or at the first read). For them only the state must agree: an error, never a rejection.
    varying = {"garbage", "reset"}
    differ = [
        (name, p.value, verdicts(threaded), verdicts(looped))
        for name, p, threaded, looped in results
        if (
            answer_state(threaded) != answer_state(looped)
            if name in varying
            else verdicts(threaded) != verdicts(looped)
        )
    ]
    assert differ == []
    looped = {(name, p): loop_sweep for name, p, _, loop_sweep in results}

    def state(name: str, protocol: P) -> str:
        return looped[(name, protocol)].protocols[protocol].state.value

    # The comparison means something: the servers gave every kind of answer.
    assert state("nginx-every", P.TLSv1_0) == "accepted" and state("nginx-modern", P.TLSv1_0) == "rejected"
    assert state("legacy-suites", P.TLSv1_2) == "accepted" and state("python-tls13", P.TLSv1_3) == "accepted"
    assert looped[("client-cert", P.TLSv1_2)].protocols[P.TLSv1_2].detail == "client certificate requested"
    assert looped[("tarpit", P.TLSv1_2)].error_reason is ErrorReason.TIMEOUT
    assert looped[("closed-port", P.TLSv1_2)].error_reason is ErrorReason.REFUSED
    assert "not a TLS server" in str(looped[("garbage", P.TLSv1_2)].error)
    assert {state("reset", p) for p in ALL_PROTOCOLS} == {"error"}


@pytest.mark.parametrize("probing", [False, True], ids=["one-version sweeps", "probes"])
def test_burst_probes_make_no_false_flips_behind_a_path_that_resets(nginx_lab: NginxLabFactory, probing: bool) -> None:
    """A sweep, then 80 single-version hellos recorded as bursts are (burst probes, and as a check of the test
    itself one-version sweeps from threads), through a forwarder resetting 30 % of connections: not one flip of a
    version the server accepts all along."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"])])
    with FlakyForwarder(nginx.endpoint("web"), reset_fraction=0.3, seed=11) as path:
        target = TargetConfig(name="web", host="127.0.0.1", port=path.endpoint.port, timeout=3.0)
        store = ResultStore(None)
        store.set_targets([target])

        async def probes() -> list[Transition]:
            engine = SweepEngine(16)
            try:
                flips = store.record(await engine.sweep(target, ["127.0.0.1"]))
                narrowed = replace(target, protocols=(P.TLSv1_0,))
                for _ in range(80):
                    if probing:
                        sweep = await engine.probe(target, P.TLSv1_0, "127.0.0.1")
                    else:
                        sweep = replace(await engine.sweep(narrowed, ["127.0.0.1"]), target=target)
                    flips += store.record_burst(sweep)
                return flips
            finally:
                engine.close()

        flips = asyncio.run(probes())
    assert path.resets > 20  # the path really did reset
    assert [f for f in flips if f.kind.value == "handshake"] == []
    store.close()


def test_loop_socket_sends_what_the_kernel_could_not_take_at_once() -> None:
    """nassl ignores short sends: the loop hello's socket keeps what did not fit and sends it when it can, in order."""
    from scanner.engine.handshake import _Socket, _WouldBlock

    async def main() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        wrapped = _Socket(ours, loop)
        payload = bytes(range(256)) * 4096  # 1 MiB: far more than the send buffer
        pieces = [payload[i : i + 10_000] for i in range(0, len(payload), 10_000)]
        claimed = sum(wrapped.send(piece) for piece in pieces)
        assert claimed == len(payload)  # as a blocking socket would say
        kept = bool(wrapped.unsent)
        theirs.setblocking(False)
        received = bytearray()
        until = loop.time() + 10
        while len(received) < len(payload) and loop.time() < until:
            with contextlib.suppress(BlockingIOError):
                received += theirs.recv(1 << 20)
            await asyncio.sleep(0.001)
        with pytest.raises(_WouldBlock):  # nothing was sent back: the read says "not yet", not an error
            wrapped.recv(10)
        wrapped.close()
        theirs.close()
        return bytes(received), kept

    received, kept = asyncio.run(main())
    assert kept  # the case under test happened: the kernel took only part of it at once
    assert received == bytes(range(256)) * 4096
