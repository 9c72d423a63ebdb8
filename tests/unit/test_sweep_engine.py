"""The sweep engine's decisions, driven by a fake TLS library: no sockets, no sslyze."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from scanner.config import ClientProfile, HttpCheck, TargetConfig
from scanner.engine import sweep as sweep_module
from scanner.engine.attempts import REFUSALS_TO_BELIEVE, TIMED_OUT, Attempt
from scanner.engine.locate import Located
from scanner.engine.sweep import SweepEngine
from scanner.protocols import Protocol
from scanner.results.sweep import ErrorReason, Evidence, ProtocolResult, ProtocolState, SweepResult

SSL2, SSL3, T10, T11, T12, T13 = Protocol
A, R, E = ProtocolState.ACCEPTED, ProtocolState.REJECTED, ProtocolState.ERROR
MODERN = (T10, T11, T12, T13)

ACCEPTED = ProtocolResult(A, detail="ECDHE-RSA-AES128-GCM-SHA256")
WRONG_VERSION = ProtocolResult(R, detail="TLS alert: protocol version", evidence=Evidence.ALERT)
HANDSHAKE_FAILURE = ProtocolResult(R, detail="TLS alert: handshake failure", evidence=Evidence.ALERT)
CLOSED = ProtocolResult(R, detail="Server closed the connection", evidence=Evidence.CLOSED)
NOT_TLS = ProtocolResult(R, detail="wrong version number", evidence=Evidence.NOT_TLS)
REFUSED = ProtocolResult(E, detail="connection refused", reason=ErrorReason.REFUSED)
HANG = None  # the handshake never returns until it is aborted

Answer = ProtocolResult | None
Script = Callable[[str, Protocol, Attempt], Answer]


@dataclass
class FakeTls:
    """A TLS library whose answers come from `script(address, protocol, attempt)`; it records every hello sent."""

    script: Script
    hellos: list[tuple[str, Protocol, Attempt]] = field(default_factory=list)
    aborted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    loop_capable: bool = True  # run_on_loop answers (False: it says a thread is needed)
    on_loop: int = 0  # hellos answered on the loop

    def peers(self, target: TargetConfig) -> Callable[[str], FakePeer]:
        return lambda address: FakePeer(self, target, address)

    def profile_attempt(self, profile: ClientProfile, protocol: Protocol) -> Attempt:
        return Attempt(f"{profile.name} hello", sni=profile.sni)

    def sent(self, protocol: Protocol | None = None) -> list[Attempt]:
        return [attempt for _, p, attempt in self.hellos if protocol in (None, p)]


@dataclass
class FakePeer:
    tls: FakeTls
    target: TargetConfig
    address: str
    http_host: str = "example.test"

    def handshake(self, timeout: float) -> FakeHandshake:
        return FakeHandshake(self)


class FakeHandshake:
    def __init__(self, peer: FakePeer) -> None:
        self.peer = peer
        self.released = threading.Event()

    def run(self, protocol: Protocol, attempt: Attempt, http: HttpCheck | None, http_host: str) -> ProtocolResult:
        tls = self.peer.tls
        with tls.lock:
            tls.hellos.append((self.peer.address, protocol, attempt))
        answer = tls.script(self.peer.address, protocol, attempt)
        if answer is None:
            self.released.wait(10)
            return TIMED_OUT
        return answer

    async def run_on_loop(
        self, protocol: Protocol, attempt: Attempt, http: HttpCheck | None, http_host: str
    ) -> ProtocolResult | None:
        tls = self.peer.tls
        if not tls.loop_capable or http is not None:
            return None
        tls.on_loop += 1
        tls.hellos.append((self.peer.address, protocol, attempt))
        answer = tls.script(self.peer.address, protocol, attempt)
        if answer is None:
            await asyncio.sleep(3600)  # hangs until the engine's deadline cancels it
        return answer

    def abort(self) -> None:
        with self.peer.tls.lock:
            self.peer.tls.aborted += 1
        self.released.set()


def by_version(answers: dict[Protocol, Answer], default: Answer = WRONG_VERSION) -> Script:
    """The same answer to every hello at a version, on every address."""
    return lambda address, protocol, attempt: answers.get(protocol, default)


def target(protocols: tuple[Protocol, ...] = MODERN, **settings: object) -> TargetConfig:
    return TargetConfig(name="t", host="example.test", protocols=protocols, **settings)  # type: ignore[arg-type]


def run_sweep(
    tls: FakeTls,
    t: TargetConfig,
    addresses: tuple[str, ...] = ("192.0.2.1",),
    stopping: bool = False,
) -> SweepResult:
    async def sweep() -> SweepResult:
        engine = SweepEngine(8, tls=tls)
        if stopping:
            engine.stop()
        try:
            return await engine.sweep(t, list(addresses))
        finally:
            engine.close()

    return asyncio.run(sweep())


def run_probe(tls: FakeTls, t: TargetConfig, protocol: Protocol, address: str = "192.0.2.1") -> SweepResult:
    async def probe() -> SweepResult:
        engine = SweepEngine(8, tls=tls)
        try:
            return await engine.probe(t, protocol, address)
        finally:
            engine.close()

    return asyncio.run(probe())


def test_every_version_refused_with_an_alert_is_rejected_per_version() -> None:
    tls = FakeTls(by_version({}))
    result = run_sweep(tls, target())
    assert result.error is None and result.complete
    for protocol in MODERN:
        answer = result.protocols[protocol]
        assert (answer.state, answer.evidence, answer.connections) == (R, Evidence.ALERT, 1)
    assert {p for _, p, _ in tls.hellos} == set(MODERN)  # an alert proves TLS: no other version is tried


def test_refusals_without_an_alert_make_the_target_not_a_tls_server_never_rejected() -> None:
    """A false "rejected" would be a false brownout alarm."""
    result = run_sweep(FakeTls(by_version({}, default=CLOSED)), target())
    assert result.error == "not a TLS server: no handshake completed and no TLS alert received"
    assert result.error_reason is ErrorReason.TLS
    assert {r.state for r in result.protocols.values()} == {E}
    assert all(r.connections == REFUSALS_TO_BELIEVE for r in result.protocols.values())

    result = run_sweep(FakeTls(by_version({}, default=NOT_TLS)), target())
    assert result.error == "not a TLS server: the peer answered with non-TLS data"
    assert {r.state for r in result.protocols.values()} == {E}
    assert all(r.connections == 1 for r in result.protocols.values())  # non-TLS data is not sent again


def test_a_version_outside_the_configured_ones_can_prove_the_refusals() -> None:
    tls = FakeTls(by_version({T12: ACCEPTED}, default=CLOSED))
    result = run_sweep(tls, target((T10, T11)))
    assert result.error is None
    assert {p: r.state for p, r in result.protocols.items()} == {T10: R, T11: R}
    assert result.protocols[T10].evidence is Evidence.CLOSED
    assert len(tls.sent(T12)) == 1 and not tls.sent(T13)  # the first proof found is enough

    tls = FakeTls(by_version({}, default=CLOSED))
    result = run_sweep(tls, target((T10, T11)))
    assert result.error is not None and result.error.startswith("not a TLS server")
    assert {p for _, p, _ in tls.hellos} == {T10, T11, T12, T13}  # TLS 1.0 is configured: not tried as a proof


def test_all_versions_erroring_make_the_first_reason_the_sweeps_error() -> None:
    def script(address: str, protocol: Protocol, attempt: Attempt) -> Answer:
        if address == "192.0.2.1":
            return REFUSED if protocol is T12 else ProtocolResult(E, "network error: x", reason=ErrorReason.OTHER)
        return TIMED_OUT

    one = run_sweep(FakeTls(script), target((T12, T13)))
    assert (one.error, one.error_reason) == ("connection refused", ErrorReason.REFUSED)
    both = run_sweep(FakeTls(script), target((T12, T13)), ("192.0.2.1", "192.0.2.2"))
    assert (both.error, both.error_reason) == ("all 2 addresses failed: connection refused", ErrorReason.REFUSED)
    assert [a.error for a in both.addresses] == ["connection refused", "timed out"]

    mixed = run_sweep(FakeTls(by_version({T12: ACCEPTED})), target((T12,)), ("192.0.2.1", "192.0.2.2"))
    assert mixed.error is None  # one address answering is enough


def test_a_refusal_without_an_alert_is_believed_after_every_hello_is_refused() -> None:
    tls = FakeTls(by_version({T12: ACCEPTED}, default=CLOSED))
    result = run_sweep(tls, target((T10, T12)))
    answer = result.protocols[T10]
    assert (answer.state, answer.connections, answer.retries) == (R, REFUSALS_TO_BELIEVE, REFUSALS_TO_BELIEVE - 1)
    sent = tls.sent(T10)
    assert [a.legacy for a in sent] == [False, True, True, True]  # TLS 1.0: the modern OpenSSL first
    assert [a.retry for a in sent] == [False, True, True, True]
    assert sent[-1].cipher_list == "DEFAULT" and sent[0].cipher_list != "DEFAULT"  # the last is the short hello


def test_a_flaky_refusal_is_retried_until_the_handshake_completes() -> None:
    answers = iter([CLOSED, ACCEPTED])
    result = run_sweep(FakeTls(lambda address, protocol, attempt: next(answers)), target((T12,)))
    answer = result.protocols[T12]
    assert (answer.state, answer.connections, answer.retries) == (A, 2, 1)


def test_a_handshake_failure_alert_gets_one_legacy_hello_but_protocol_version_is_final() -> None:
    tls = FakeTls(by_version({T12: HANDSHAKE_FAILURE, T13: HANDSHAKE_FAILURE}))
    result = run_sweep(tls, target((T11, T12, T13)))
    assert [a.legacy for a in tls.sent(T12)] == [None, True]  # sslyze's choice, then the legacy OpenSSL
    assert tls.sent(T12)[1].cipher_list == "ALL:COMPLEMENTOFALL"
    assert (result.protocols[T12].connections, result.protocols[T12].retries) == (2, 0)
    assert len(tls.sent(T13)) == 1  # TLS 1.3 has no legacy OpenSSL to ask
    assert len(tls.sent(T11)) == 1  # "protocol version" is final
    assert {r.state for r in result.protocols.values()} == {R}


def test_ssl2_refused_by_a_close_costs_one_hello() -> None:
    tls = FakeTls(by_version({T12: ACCEPTED}, default=CLOSED))
    result = run_sweep(tls, target((SSL2, T12)))
    assert result.protocols[SSL2].state is R
    assert len(tls.sent(SSL2)) == 1


def test_a_handshake_that_never_returns_times_out_within_the_deadline_and_is_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grace = 0.2  # a shorter grace than the daemon's, to keep this test fast; the deadline works the same
    monkeypatch.setattr(sweep_module, "DEADLINE_GRACE_SECONDS", grace)
    tls = FakeTls(by_version({T12: HANG, T13: ACCEPTED}))
    t = target((T12, T13), timeout=0.25)
    began = time.monotonic()
    result = run_sweep(tls, t)
    assert time.monotonic() - began < t.timeout + grace + 0.3
    answer = result.protocols[T12]
    assert (answer.state, answer.reason, answer.detail, answer.connections) == (E, ErrorReason.TIMEOUT, "timed out", 1)
    assert result.protocols[T13].state is A
    assert tls.aborted == 1


def test_a_stopping_engine_starts_no_handshake() -> None:
    tls = FakeTls(by_version({}, default=ACCEPTED))
    result = run_sweep(tls, target((T12, T13)), stopping=True)
    assert tls.hellos == []
    assert result.error == "shutting down"
    assert {(r.state, r.detail, r.connections) for r in result.protocols.values()} == {(E, "shutting down", 0)}


def profile(name: str, *protocols: Protocol) -> ClientProfile:
    return ClientProfile(name=name, protocols=protocols, ciphers=("TLS_AES_128_GCM_SHA256",))


def test_a_client_profile_connects_at_the_best_version_it_shares() -> None:
    def script(address: str, protocol: Protocol, attempt: Attempt) -> Answer:
        if attempt.cipher_list == "picky hello":
            return HANDSHAKE_FAILURE
        return ACCEPTED if protocol in (T11, T12) else WRONG_VERSION

    tls = FakeTls(script)
    profiles = (profile("modern", T10, T11, T12, T13), profile("picky", T12))
    clients = run_sweep(tls, target(clients=profiles)).addresses[0].clients
    assert (clients["modern"].state, clients["modern"].detail) == (A, "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256")
    assert clients["modern"].connections == 1
    profile_hellos = sorted((p, a.cipher_list) for _, p, a in tls.hellos if a.cipher_list.endswith("hello"))
    assert profile_hellos == [(T12, "modern hello"), (T12, "picky hello")]
    assert (clients["picky"].state, clients["picky"].evidence) == (R, Evidence.ALERT)


def test_a_client_profile_without_a_common_version_is_rejected_as_well_as_its_versions_were() -> None:
    tls = FakeTls(by_version({T12: ACCEPTED, T10: CLOSED}))
    profiles = (profile("old", T11), profile("older", T10), profile("oldest", T10, T11))
    clients = run_sweep(tls, target(clients=profiles)).addresses[0].clients
    assert {name: (r.state, r.detail, r.evidence) for name, r in clients.items()} == {
        "old": (R, "no version in common", Evidence.ALERT),
        "older": (R, "no version in common", Evidence.CLOSED),
        "oldest": (R, "no version in common", Evidence.CLOSED),
    }
    assert not [a for a in tls.sent() if a.cipher_list.endswith("hello")]  # no hello that could not succeed


def test_a_client_profile_whose_versions_are_unknown_is_an_error() -> None:
    tls = FakeTls(by_version({T12: ACCEPTED, T11: REFUSED}))
    profiles = (profile("flaky", T11), profile("ancient", SSL3))
    clients = run_sweep(tls, target(clients=profiles)).addresses[0].clients
    for name in ("flaky", "ancient"):  # TLS 1.1 errored; SSL 3.0 is not swept
        assert (clients[name].state, clients[name].reason) == (E, ErrorReason.OTHER)
        assert clients[name].detail == "its versions are not all known"


def test_a_range_endpoint_whose_port_is_shut_is_closed_without_a_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(host: str, port: int) -> object:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(asyncio, "open_connection", refuse)
    tls = FakeTls(by_version({}, default=ACCEPTED))
    result = run_sweep(tls, target(range="192.0.2.0/24"))
    assert result.closed
    assert (result.error, result.error_reason) == ("connection refused", ErrorReason.REFUSED)
    assert tls.hellos == [] and result.addresses == ()


def test_a_range_endpoint_whose_port_is_open_is_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    class Writer:
        def close(self) -> None:
            pass

    async def accept(host: str, port: int) -> tuple[None, Writer]:
        return None, Writer()

    monkeypatch.setattr(asyncio, "open_connection", accept)
    result = run_sweep(FakeTls(by_version({T12: ACCEPTED})), target(range="192.0.2.0/24"))
    assert not result.closed and result.error is None
    assert result.state(T12) is A


def test_an_unusable_client_certificate_is_the_sweeps_error() -> None:
    class NoCertificate(FakeTls):
        def peers(self, target: TargetConfig) -> Callable[[str], FakePeer]:
            raise OSError("no such file: client.pem")

    tls = NoCertificate(by_version({}, default=ACCEPTED))
    result = run_sweep(tls, target())
    assert (result.error, result.error_reason) == (
        "client certificate unusable: no such file: client.pem",
        ErrorReason.OTHER,
    )
    assert tls.hellos == []


def test_a_name_that_did_not_resolve_ends_the_sweep_as_a_dns_error() -> None:
    async def sweep() -> SweepResult:
        engine = SweepEngine(2, tls=tls)
        try:
            return await engine.sweep_located(t, Located(1000.0, time.monotonic() - 0.5, error="cannot resolve x"))
        finally:
            engine.close()

    tls = FakeTls(by_version({}, default=ACCEPTED))
    t = target()
    result = asyncio.run(sweep())
    assert (result.error, result.error_reason, result.started_at) == ("cannot resolve x", ErrorReason.DNS, 1000.0)
    assert result.duration_seconds >= 0.5  # measured from the lookup's start
    assert tls.hellos == []


def test_the_engine_imports_no_sslyze() -> None:
    code = (
        "import sys, scanner.engine.sweep, scanner.engine.attempts, scanner.engine.locate; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sslyze', 'nassl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "script",
    [
        by_version({}),  # every version refused with an alert
        by_version({}, default=CLOSED),  # closes without an alert: not a TLS server
        by_version({Protocol.TLSv1_2: ACCEPTED}, default=CLOSED),  # one accepted proves the closes are refusals
        by_version({Protocol.TLSv1_2: HANG}),  # a hang times out
    ],
)
def test_probes_on_the_loop_are_judged_as_one_version_sweeps_in_threads(script: Script) -> None:
    """Burst re-probes run their hellos on the loop: the same hellos, the same verdicts as a sweep of that one version
    from handshake threads."""
    t = target(timeout=1.0)
    for protocol in t.protocols:
        threaded, looped = FakeTls(script, loop_capable=False), FakeTls(script)
        by_thread, by_loop = run_sweep(threaded, replace(t, protocols=(protocol,))), run_probe(looped, t, protocol)
        assert looped.on_loop == len(looped.hellos) > 0 and threaded.on_loop == 0
        assert sorted(map(repr, looped.hellos)) == sorted(map(repr, threaded.hellos))
        assert (by_loop.error, by_loop.error_reason) == (by_thread.error, by_thread.error_reason)
        assert by_loop.protocols == by_thread.protocols
        assert by_loop.target is t  # the configured target, for the store


def test_a_probe_tries_its_one_version_and_no_client_profile() -> None:
    tls = FakeTls(by_version({Protocol.TLSv1_2: ACCEPTED, Protocol.TLSv1_3: ACCEPTED}))
    t = target(clients=(profile("old", Protocol.TLSv1_2),))
    result = run_probe(tls, t, Protocol.TLSv1_2)
    assert [p for _, p, _ in tls.hellos] == [Protocol.TLSv1_2]
    assert dict(result.protocols) == {Protocol.TLSv1_2: replace(ACCEPTED, connections=1)}
    assert result.addresses[0].clients == {}


def test_a_probe_with_an_unusable_client_certificate_is_an_error() -> None:
    class Broken(FakeTls):
        def peers(self, target: TargetConfig) -> Callable[[str], FakePeer]:
            raise ValueError("no such key file")

    result = run_probe(Broken(by_version({})), target(), Protocol.TLSv1_0)
    assert result.error == "client certificate unusable: no such key file"
    assert result.protocols[Protocol.TLSv1_0].state is E  # an error: never a refusal


def test_a_hello_the_library_cannot_run_on_the_loop_takes_a_thread() -> None:
    tls = FakeTls(by_version({Protocol.TLSv1_2: ACCEPTED}))
    result = run_probe(tls, target(http=HttpCheck()), Protocol.TLSv1_2)  # an HTTP check needs a thread
    assert tls.on_loop == 0 and result.protocols[Protocol.TLSv1_2].state is A
