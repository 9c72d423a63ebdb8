"""Which hellos a sweep sends and the TLS adapter that sends them, free of sslyze: the sweep engine's decisions.

The adapter itself (scanner.engine.handshake, sslyze and nassl) implements `TlsLibrary`; unit tests drive the engine
with a fake one.
"""

from __future__ import annotations

import socket
import typing
from collections.abc import Callable
from dataclasses import dataclass

from scanner.config import ClientProfile, HttpCheck, TargetConfig
from scanner.protocols import Protocol
from scanner.results.sweep import ErrorReason, Evidence, ProtocolResult, ProtocolState

TLS13_ALL_SUITES = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:"
    "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"
)
_TLS13_DEFAULT_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

_ALL_SUITES = "ALL:COMPLEMENTOFALL:-PSK:-SRP"
# nassl's legacy OpenSSL (1.0.2) still has what the modern one dropped: RC4, NULL, anonymous, export, DES, 3DES.
_LEGACY_ALL_SUITES = "ALL:COMPLEMENTOFALL"
# A hello with every suite the version can use; then sslyze's shorter one, for servers that choke on a long hello.
_FULL = {p: _ALL_SUITES for p in Protocol} | {Protocol.SSLv2: "SSLv2", Protocol.TLSv1_3: TLS13_ALL_SUITES}
_SHORT = {p: "DEFAULT" for p in Protocol} | {Protocol.SSLv2: "SSLv2", Protocol.TLSv1_3: _TLS13_DEFAULT_SUITES}
# A refusal without an alert is believed only when every one of this many hellos is refused that way: a flaky
# path that resets 30 % of connections then fakes one in 120 (the last of them is the shorter hello).
REFUSALS_TO_BELIEVE = 4

TIMED_OUT = ProtocolResult(ProtocolState.ERROR, detail="timed out", reason=ErrorReason.TIMEOUT)


@dataclass(frozen=True)
class Attempt:
    """One hello to send: its cipher list, and which of nassl's two OpenSSLs sends it."""

    cipher_list: str
    legacy: bool | None = None  # None: sslyze's choice (the legacy OpenSSL below TLS 1.2)
    retry: bool = False  # sent again because the hello before was refused without an alert
    sni: bool = True  # False: send no SNI even where the target has a name (a client profile without SNI)
    groups: tuple[str, ...] = ()  # a client profile's groups (the modern OpenSSL only); empty: its defaults


# TLS 1.0 and 1.1 are first offered by nassl's modern OpenSSL too: it speaks them at half the CPU of the legacy one
# (X25519 rather than the legacy one's generic P-256). What it lacks, the legacy OpenSSL is asked for as at TLS 1.2.
_MODERN_FIRST = frozenset({Protocol.TLSv1_0, Protocol.TLSv1_1})
_LEGACY_RETRY = _MODERN_FIRST | {Protocol.TLSv1_2}


def first_attempt(protocol: Protocol) -> Attempt:
    return Attempt(_FULL[protocol], legacy=False if protocol in _MODERN_FIRST else None)


def next_attempt(protocol: Protocol, tried: list[Attempt], result: ProtocolResult) -> Attempt | None:
    """What to send after `result`, or None when it stands."""
    if result.state is not ProtocolState.REJECTED or result.evidence is Evidence.NOT_TLS:
        return None
    if result.evidence is Evidence.ALERT:
        # A TLS 1.0-1.2 server that only has legacy suites refuses the modern hello with handshake_failure: offer
        # it the legacy OpenSSL's suites before calling the version rejected (protocol_version is final).
        legacy_tried = any(attempt.legacy for attempt in tried)
        if protocol in _LEGACY_RETRY and not legacy_tried and "protocol version" not in result.detail:
            return Attempt(_LEGACY_ALL_SUITES, legacy=True)
        return None
    # SSL 2.0 is refused by a close almost everywhere: one hello, or every sweep would cost four connections.
    if protocol is Protocol.SSLv2 or len(tried) >= REFUSALS_TO_BELIEVE:
        return None
    short = len(tried) == REFUSALS_TO_BELIEVE - 1
    # At TLS 1.0/1.1 the hellos after a modern one refused without an alert come from the legacy OpenSSL, as they
    # always did: an old server that closes on what it cannot serve still gets offered every suite.
    legacy = True if protocol in _MODERN_FIRST else tried[-1].legacy
    return Attempt(_SHORT[protocol] if short else _FULL[protocol], legacy, retry=True)


def classify_error(exc: BaseException) -> ProtocolResult:
    """Map an exception that is not the TLS library's own (timeouts, DNS, network errors) to a ProtocolResult.

    scanner.engine.handshake.classify maps sslyze's and nassl's exceptions and hands the rest to this.
    """
    if isinstance(exc, socket.timeout | TimeoutError):
        return TIMED_OUT
    if isinstance(exc, socket.gaierror):
        return ProtocolResult(ProtocolState.ERROR, detail=f"cannot resolve: {exc.strerror}", reason=ErrorReason.DNS)
    if isinstance(exc, ConnectionRefusedError):
        return ProtocolResult(ProtocolState.ERROR, detail="connection refused", reason=ErrorReason.REFUSED)
    if isinstance(exc, OSError):
        return ProtocolResult(ProtocolState.ERROR, detail=f"network error: {exc}", reason=ErrorReason.OTHER)
    return ProtocolResult(ProtocolState.ERROR, detail=f"{type(exc).__name__}: {exc}", reason=ErrorReason.OTHER)


class Handshake(typing.Protocol):
    """One blocking handshake attempt, run in a thread and abortable from another when its deadline passes."""

    def run(self, protocol: Protocol, attempt: Attempt, http: HttpCheck | None, http_host: str) -> ProtocolResult:
        """Send `attempt` at `protocol` on a fresh connection; the answer, never an exception."""
        ...

    async def run_on_loop(
        self, protocol: Protocol, attempt: Attempt, http: HttpCheck | None, http_host: str
    ) -> ProtocolResult | None:
        """`run` on the event loop, without a thread, where the library can: the same answer; None when it cannot."""
        ...

    def abort(self) -> None:
        """Make a `run` stuck on the network return now."""
        ...


class Peer(typing.Protocol):
    """One address of a target as the TLS library sees it; makes a Handshake per attempt."""

    target: TargetConfig
    address: str
    http_host: str  # the Host header of the target's HTTP check

    def handshake(self, timeout: float) -> Handshake:
        """A handshake whose every network step gives up after `timeout` seconds."""
        ...


class TlsLibrary(typing.Protocol):
    """What the sweep engine needs from a TLS library: peers to send hellos to, and a client profile's hello."""

    def peers(self, target: TargetConfig) -> Callable[[str], Peer]:
        """What makes the target's Peer for an address; raises when the target's client certificate is unusable."""
        ...

    def profile_attempt(self, profile: ClientProfile, protocol: Protocol) -> Attempt:
        """The hello `profile` sends at `protocol`."""
        ...
