"""What a sweep found, as plain values free of sslyze: read by the store, policy, metrics, reports and the web."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from scanner.config import TargetConfig
from scanner.protocols import Protocol


class ProtocolState(enum.StrEnum):
    """What a sweep learned about one protocol version."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"


class ErrorReason(enum.StrEnum):
    """Why a protocol or target could not be determined; a small fixed set, used as a metric label."""

    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    TLS = "tls"
    OTHER = "other"


class Evidence(enum.StrEnum):
    """How a rejection was observed; only an alert proves on its own that the peer speaks TLS."""

    ALERT = "alert"
    CLOSED = "closed"  # the peer closed the connection in answer to the hello
    RESET = "reset"  # the connection was reset during the handshake (also what a flaky load balancer does)
    NOT_TLS = "not-tls"


@dataclass(frozen=True, slots=True)
class ProtocolResult:
    """The answer for one protocol version in one sweep."""

    state: ProtocolState
    detail: str = ""  # the alert, error or cipher behind the answer
    reason: ErrorReason | None = None  # set when state is ERROR
    evidence: Evidence | None = None  # set when state is REJECTED
    http_status: int | None = None  # set when ACCEPTED, the target has an http check, and it was answered
    http_error: str | None = None  # set when ACCEPTED, the target has an http check, and it failed
    http_reason: str | None = None  # the reason phrase, with http_status
    http_match: bool | None = None  # whether http.match was found (targets whose http check has a match)
    http_excerpt: str | None = None  # the start of the body, whitespace folded (with http_match)
    connections: int = 0  # TCP connections this answer took
    retries: int = 0  # of those, hellos sent again because a refusal came without an alert


@dataclass(frozen=True, slots=True)
class AddressResult:
    """One address of a target: a state per configured protocol, plus an address-level error if any."""

    address: str  # the IP connected to; "" when connecting through an HTTP proxy
    protocols: Mapping[Protocol, ProtocolResult]
    error: str | None = None  # unreachable, not a TLS server
    error_reason: ErrorReason | None = None  # set with error
    # Per client profile of the target: ACCEPTED it can connect, REJECTED it cannot, ERROR unknown this sweep.
    clients: Mapping[str, ProtocolResult] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every configured protocol was determined (accepted or rejected)."""
        return self.error is None and all(r.state is not ProtocolState.ERROR for r in self.protocols.values())


@dataclass(frozen=True, slots=True)
class SweepResult:
    """One sweep of one target: every address it resolved to, plus a target-level error if any."""

    target: TargetConfig
    started_at: float  # unix time
    duration_seconds: float
    addresses: tuple[AddressResult, ...] = ()
    error: str | None = None  # target-level: DNS failure, or every address failed
    error_reason: ErrorReason | None = None  # set with error
    closed: bool = False  # a range endpoint that did not accept TCP: counted, not scanned
    dns_error: str | None = None  # an address family whose lookup failed while another answered (A or AAAA)

    @property
    def address(self) -> str | None:
        """The first address swept; None when the name did not resolve."""
        return self.addresses[0].address if self.addresses else None

    @property
    def protocols(self) -> Mapping[Protocol, ProtocolResult]:
        """Per protocol, the target's answer: accepted if any address accepted, else an error if any, else rejected."""
        if not self.addresses:
            error = ProtocolResult(ProtocolState.ERROR, detail=self.error or "", reason=self.error_reason)
            return {p: error for p in self.target.protocols}
        merged: dict[Protocol, ProtocolResult] = {}
        rank = {ProtocolState.ACCEPTED: 0, ProtocolState.ERROR: 1, ProtocolState.REJECTED: 2}
        for address in self.addresses:
            for protocol, result in address.protocols.items():
                best = merged.get(protocol)
                if best is None or rank[result.state] < rank[best.state]:
                    merged[protocol] = result
        return merged

    @property
    def complete(self) -> bool:
        """Every configured protocol was determined on every address."""
        return self.error is None and bool(self.addresses) and all(a.complete for a in self.addresses)

    @property
    def connections(self) -> int:
        """TCP connections the sweep used."""
        return sum(r.connections for a in self.addresses for r in a.protocols.values())

    def state(self, protocol: Protocol) -> ProtocolState | None:
        result = self.protocols.get(protocol)
        return None if result is None else result.state

    def accepted_addresses(self, protocol: Protocol) -> int:
        """How many addresses accepted the protocol in this sweep."""
        return sum(1 for a in self.addresses if (r := a.protocols.get(protocol)) and r.state is ProtocolState.ACCEPTED)


def ended_sweep(
    target: TargetConfig,
    started_at: float,
    clock: float,
    *,
    addresses: tuple[AddressResult, ...] = (),
    error: str | None = None,
    error_reason: ErrorReason | None = None,
    closed: bool = False,
    dns_error: str | None = None,
) -> SweepResult:
    """The result of a sweep ending now, from what it found: it started at `started_at` (unix time), when
    time.monotonic() read `clock` (CLOCK_MONOTONIC: the same in every process of the machine)."""
    duration = time.monotonic() - clock
    return SweepResult(target, started_at, duration, addresses, error, error_reason, closed, dns_error)


def probed(target: TargetConfig, started_at: float, clock: float, found: AddressResult) -> SweepResult:
    """A burst's probe of one address, ending now, as the sweep of that one address it stands for (the address's
    error is the sweep's, as in a sweep of one address)."""
    error, reason = found.error, found.error_reason
    return ended_sweep(target, started_at, clock, addresses=(found,), error=error, error_reason=reason)
