"""The sweep engine: one sweep of one target, every address, one handshake per version, errors as data; and a burst's
probe, one version on one address, judged the same way.

Asyncio on top; the blocking handshakes of the TLS library (scanner.engine.handshake, the sslyze adapter, loaded when
an engine is made) run in a bounded thread pool, a probe's on the event loop. What to send and how to read the
answers: scanner.engine.attempts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

from scanner.config import ClientProfile, HttpCheck, Politeness, Resolver, TargetConfig
from scanner.engine.attempts import TIMED_OUT, Attempt, Peer, TlsLibrary, classify_error, first_attempt, next_attempt
from scanner.engine.locate import Located, locate
from scanner.engine.politeness import AddressGate
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult
from scanner.results.sweep import (
    AddressResult,
    ErrorReason,
    Evidence,
    ProtocolResult,
    ProtocolState,
    SweepResult,
    ended_sweep,
    probed,
)

T = TypeVar("T")

# Past its timeout a target gets this long before its hung connections are torn down.
DEADLINE_GRACE_SECONDS = 0.8


class _Found(NamedTuple):
    """What a sweep found on its addresses: their answers, and the error that ended it or that all of them share."""

    addresses: tuple[AddressResult, ...] = ()
    error: str | None = None
    reason: ErrorReason | None = None
    closed: bool = False  # a range endpoint that did not accept TCP


class SweepEngine:
    """Sweeps targets: asyncio on top, the TLS library's blocking handshakes in a bounded thread pool."""

    def __init__(
        self,
        concurrency: int,
        politeness: Politeness | None = None,
        resolver: Resolver | None = None,
        tls: TlsLibrary | None = None,
    ) -> None:
        if tls is None:
            from scanner.engine.handshake import Sslyze

            tls = Sslyze()
        self.tls = tls  # sslyze, or a fake in unit tests
        self.concurrency = concurrency
        self.politeness = politeness or Politeness()
        self.resolver = resolver
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="handshake")
        self._slots: asyncio.Semaphore | None = None
        self.gate = AddressGate(self.politeness)
        self.stopping = False  # set on shutdown: queued handshakes end as errors instead of starting

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        self.stopping = True

    async def shutdown(self) -> None:
        self.close()

    async def deep(self, target: TargetConfig, addresses: Sequence[str]) -> DeepResult:
        """A deep scan of `target` (sslyze's scan commands, loaded on first use: the fast tier never needs them)."""
        from scanner.engine.deep import deep_scan

        return await deep_scan(target, addresses)

    async def sweep(self, target: TargetConfig, addresses: list[str] | None = None) -> SweepResult:
        """Resolve the target once (unless `addresses` are given), then try each protocol on each address.

        Never raises for a misbehaving server: every failure is in the result.
        """
        return await self.sweep_located(target, await locate(target, addresses, self.resolver))

    async def sweep_located(self, target: TargetConfig, located: Located) -> SweepResult:
        """The sweep of `target` on the addresses `located` found (it started when they were looked for)."""
        if located.error is not None:
            found = _Found(error=located.error, reason=ErrorReason.DNS)
        else:
            found = await self._sweep_addresses(target, located.addresses)
        return ended_sweep(
            target,
            located.started_at,
            located.clock,
            addresses=found.addresses,
            error=found.error,
            error_reason=found.reason,
            closed=found.closed,
            dns_error=located.dns_error,
        )

    async def probe(self, target: TargetConfig, protocol: Protocol, address: str, route: str = "") -> SweepResult:
        """A burst re-probe of `target`: `protocol` alone on one `address`, as a SweepResult (`route` is the worker
        pool's)."""
        started_at, clock = time.time(), time.monotonic()
        found = await self.probe_address(target, protocol, address)
        return probed(target, started_at, clock, found)

    async def probe_address(self, target: TargetConfig, protocol: Protocol, address: str) -> AddressResult:
        """`protocol` alone on one address of `target`, without client profiles, judged as a sweep judges it (a
        refusal without an alert is believed only once another version shows the peer speaks TLS). Its hellos run
        on the event loop where the TLS library can (the same answers as from a handshake thread, at a fraction of
        the CPU for the few hellos at a time a burst makes)."""
        try:
            peer = self.tls.peers(target)(address)
        except Exception as exc:
            error = ProtocolResult(ProtocolState.ERROR, detail=_unusable(exc), reason=ErrorReason.OTHER)
            return AddressResult(address, {protocol: error}, error.detail, ErrorReason.OTHER)
        deadline = asyncio.get_running_loop().time() + target.timeout + DEADLINE_GRACE_SECONDS
        return await self._sweep_address(peer, deadline, (protocol,), probing=True)

    async def _sweep_addresses(self, target: TargetConfig, addresses: tuple[str, ...]) -> _Found:
        """Each address of the target, under one deadline; a range endpoint only once its port accepts TCP."""
        try:
            peer = self.tls.peers(target)
        except Exception as exc:
            return _Found(error=_unusable(exc), reason=ErrorReason.OTHER)
        # One deadline for the whole sweep, on the loop's clock: waiting for a slot counts against it, and at the
        # deadline the loop tears down what is left without waiting for any handshake thread.
        deadline = asyncio.get_running_loop().time() + target.timeout + DEADLINE_GRACE_SECONDS
        if target.range is not None:
            opened = await self._tcp_open(addresses[0], target, deadline)
            if opened is not None:
                return _Found(error=opened.detail, reason=opened.reason, closed=True)
        results = await _each([self._sweep_address(peer(a), deadline, target.protocols) for a in addresses])
        if not all(r.error is not None for r in results):
            return _Found(tuple(results))
        error = results[0].error
        if len(results) > 1:
            error = f"all {len(results)} addresses failed: {error}"
        return _Found(tuple(results), error, results[0].error_reason)

    async def _sweep_address(
        self, peer: Peer, deadline: float, versions: Sequence[Protocol], probing: bool = False
    ) -> AddressResult:
        """`versions` on one address, then the target's client profiles; a burst's probe (`probing`) sends its
        hellos from the event loop and tries no profile."""
        protocols, error, reason = await self._try_versions(peer, deadline, versions, probing)
        clients = {} if probing else await self._try_profiles(peer, protocols)
        return AddressResult(peer.address, protocols, error, reason, clients)

    async def _try_versions(
        self, peer: Peer, deadline: float, versions: Sequence[Protocol], on_loop: bool
    ) -> tuple[dict[Protocol, ProtocolResult], str | None, ErrorReason | None]:
        """The answer for each version, judged: refusals the peer gave no sign of meaning become errors."""
        http = peer.target.http
        results = await _each([self._try_version(peer, p, http, deadline, on_loop) for p in versions])
        protocols = dict(zip(versions, results, strict=True))
        if not _speaks_tls(protocols.values()) and any(r.state is ProtocolState.REJECTED for r in results):
            # Refusals without an alert prove nothing by themselves (a version downgrade and a non-TLS peer read
            # the same to OpenSSL); a version outside the configured ones can show the peer speaks TLS.
            for extra in (p for p in (Protocol.TLSv1_2, Protocol.TLSv1_3, Protocol.TLSv1_0) if p not in protocols):
                proof = await self._try_version(peer, extra, None, deadline, on_loop)
                if _speaks_tls([proof]):
                    return protocols, None, None
        return _judge_peer(protocols)

    async def _try_profiles(self, peer: Peer, versions: Mapping[Protocol, ProtocolResult]) -> dict[str, ProtocolResult]:
        """Each client profile of the target, after the version sweep, on a deadline of its own."""
        profiles = peer.target.clients
        if not profiles:
            return {}
        deadline = asyncio.get_running_loop().time() + peer.target.timeout + DEADLINE_GRACE_SECONDS
        results = await asyncio.gather(*(self._try_profile(peer, profile, versions, deadline) for profile in profiles))
        return {profile.name: result for profile, result in zip(profiles, results, strict=True)}

    async def _tcp_open(self, address: str, target: TargetConfig, deadline: float) -> ProtocolResult | None:
        """For range endpoints: None if the port accepts TCP, else why not."""
        try:
            async with asyncio.timeout_at(deadline - DEADLINE_GRACE_SECONDS):
                # The global slot too: a /16 must not open 65,536 sockets at once.
                async with self.gate.connection(address), self._global_slot():
                    _, writer = await asyncio.open_connection(address, target.port)
        except (OSError, TimeoutError) as exc:
            return classify_error(exc)
        writer.close()
        return None

    def _global_slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def _try_version(
        self, peer: Peer, protocol: Protocol, http: HttpCheck | None, deadline: float, on_loop: bool = False
    ) -> ProtocolResult:
        """The answer for one version: a first hello, and more only as next_attempt's rules say."""
        tried: list[Attempt] = []
        result = TIMED_OUT
        attempt: Attempt | None = first_attempt(protocol)
        while attempt is not None:
            outcome = await self._hello(peer, protocol, attempt, http, deadline, on_loop)
            if outcome is None:
                break  # no time left: a retry keeps the answer before it, a first attempt times out
            result, started = outcome
            if started:
                tried.append(attempt)
            attempt = next_attempt(protocol, tried, result)
        retries = sum(a.retry for a in tried)
        if (result.connections, result.retries) == (len(tried), retries):
            return result  # one hello's answer, as it came (a replace() costs as much as the rest of this function)
        return replace(result, connections=len(tried), retries=retries)

    async def _try_profile(
        self, peer: Peer, profile: ClientProfile, versions: Mapping[Protocol, ProtocolResult], deadline: float
    ) -> ProtocolResult:
        """Whether the client can connect: one handshake offering exactly its hello, at the best common version."""
        accepted = {p for p, r in versions.items() if r.state is ProtocolState.ACCEPTED}
        protocol = profile.best_version(accepted)
        if protocol is None:
            mine = [versions[p] for p in profile.protocols if p in versions]
            if len(mine) < len(profile.protocols) or any(r.state is ProtocolState.ERROR for r in mine):
                return ProtocolResult(
                    ProtocolState.ERROR, detail="its versions are not all known", reason=ErrorReason.OTHER
                )
            # Every version it speaks is refused: proven as well as those refusals were.
            evidence = Evidence.ALERT if all(r.evidence is Evidence.ALERT for r in mine) else Evidence.CLOSED
            return ProtocolResult(ProtocolState.REJECTED, detail="no version in common", evidence=evidence)
        outcome = await self._hello(peer, protocol, self.tls.profile_attempt(profile, protocol), None, deadline)
        if outcome is None:
            return TIMED_OUT
        result, started = outcome
        detail = f"{protocol.value} {result.detail}".strip()
        return replace(result, detail=detail, connections=int(started))

    async def _hello(
        self,
        peer: Peer,
        protocol: Protocol,
        attempt: Attempt,
        http: HttpCheck | None,
        deadline: float,
        on_loop: bool = False,
    ) -> tuple[ProtocolResult, bool] | None:
        """One hello on a fresh connection within the deadline: (answer, whether a connection was opened), or None
        when there was no time left to start it."""
        loop = asyncio.get_running_loop()
        handshake = None
        try:
            async with asyncio.timeout_at(deadline):
                # The address's turn comes before the global slot: a rate limit must not hold up other addresses.
                async with self.gate.connection(peer.address), self._global_slot():
                    if self.stopping:
                        return ProtocolResult(
                            ProtocolState.ERROR, detail="shutting down", reason=ErrorReason.OTHER
                        ), False
                    budget = min(peer.target.timeout, deadline - loop.time() - DEADLINE_GRACE_SECONDS / 2)
                    if budget < 0.2:
                        return None
                    handshake = peer.handshake(budget)
                    if on_loop:
                        answer = await handshake.run_on_loop(protocol, attempt, http, peer.http_host)
                        if answer is not None:
                            return answer, True
                    future = loop.run_in_executor(
                        self._executor, handshake.run, protocol, attempt, http, peer.http_host
                    )
                    return await asyncio.shield(future), True
        except TimeoutError:
            if handshake is not None:
                handshake.abort()
            return TIMED_OUT, handshake is not None


async def _each(awaitables: list[Coroutine[Any, Any, T]]) -> list[T]:
    """asyncio.gather, without making a task for a lone awaitable (a burst's one version on one address)."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return list(await asyncio.gather(*awaitables))


def _unusable(exc: Exception) -> str:
    """Why a target's hellos cannot be made: the TLS library refused its client certificate."""
    return f"client certificate unusable: {exc}"


def _speaks_tls(results: Iterable[ProtocolResult]) -> bool:
    """Whether these answers prove the peer is a TLS server: it completed a handshake or sent a TLS alert."""
    return any(r.state is ProtocolState.ACCEPTED or r.evidence is Evidence.ALERT for r in results)


def _judge_peer(
    protocols: dict[Protocol, ProtocolResult],
) -> tuple[dict[Protocol, ProtocolResult], str | None, ErrorReason | None]:
    """Decide whether rejections can be believed, and what target-level error the sweep carries."""
    if _speaks_tls(protocols.values()):
        return protocols, None, None
    errors = [r for r in protocols.values() if r.state is ProtocolState.ERROR]
    if len(errors) == len(protocols):
        # Nothing got through at all: the target is unreachable; report the first reason.
        first = errors[0]
        return protocols, first.detail, first.reason
    # No handshake completed and no TLS alert came back: the peer gave no sign of speaking TLS, so its
    # refusals prove nothing about versions (a false "rejected" is a false brownout alarm).
    detail = "not a TLS server: no handshake completed and no TLS alert received"
    if any(r.evidence is Evidence.NOT_TLS for r in protocols.values()):
        detail = "not a TLS server: the peer answered with non-TLS data"
    judged = {
        p: r
        if r.state is ProtocolState.ERROR
        else ProtocolResult(ProtocolState.ERROR, detail=r.detail, reason=ErrorReason.TLS, connections=r.connections)
        for p, r in protocols.items()
    }
    return judged, detail, ErrorReason.TLS
