"""What the sweeps of a target add up to: determined states, flips and errors, computed purely from sweeps.

The store keeps these across sweeps (and restarts); /probe and `--once` take one sweep through `sweep_status`
without any storage.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from scanner.config import TargetConfig
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult, DeepState
from scanner.results.sweep import ErrorReason, Evidence, ProtocolResult, ProtocolState, SweepResult


@dataclass(frozen=True, slots=True)
class ProtocolStatus:
    """The latest determined state of one protocol on one address, and the HTTP status answered over it."""

    state: ProtocolState  # ACCEPTED or REJECTED, never ERROR: an outage is not a brownout
    last_change: float  # when it last flipped, or when it was first determined
    changes: int  # flips observed
    http_status: int | None = None  # the last HTTP status answered over this version (targets with `http:`)
    http_last_change: float | None = None  # when that status last changed, or was first seen
    http_changes: int = 0  # changes of the HTTP status observed
    pending: int = 0  # sweeps an unproven flip (a close or reset, no alert) has held so far; not yet reported


class TransitionKind(enum.StrEnum):
    """What changed: the handshake's answer, or the HTTP status answered over it."""

    HANDSHAKE = "handshake"
    HTTP = "http"
    CIPHER = "cipher"  # a deep scan found a suite added (old "") or removed (new "") on the protocol
    CERTIFICATE = "certificate"  # a deep scan found a new leaf: old and new are SHA-256 fingerprints
    CLIENT = "client"  # a client profile can (accepted) or cannot (rejected) connect any more


@dataclass(frozen=True, slots=True)
class Transition:
    """A protocol flipping between accepted and rejected on one address of a target, or its HTTP status changing."""

    target: str
    address: str
    protocol: Protocol
    at: float
    old: str  # a ProtocolState value, or an HTTP status
    new: str
    kind: TransitionKind = TransitionKind.HANDSHAKE
    client: str = ""  # the client profile (kind CLIENT; protocol is then the best version it speaks)


AddressStatuses = Mapping[str, Mapping[Protocol, ProtocolStatus]]  # address -> protocol -> status
ClientStatuses = Mapping[
    str, Mapping[str, ProtocolStatus]
]  # address -> client profile -> status (accepted: can connect)


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """Everything the collector, the web pages and the reports need about one target."""

    target: TargetConfig
    last_sweep: SweepResult | None
    addresses: AddressStatuses  # the last sweep's addresses (all known before it)
    last_success_at: float | None
    errors: Mapping[ErrorReason, int]
    transitions: tuple[Transition, ...] = field(default=())  # most recent first
    retries: int = 0  # hellos sent again because a refusal came without an alert, over every sweep
    clients: ClientStatuses = field(default_factory=dict)  # the target's client profiles, per address
    deep: DeepResult | None = None  # the last deep scan (targets with deep_interval)
    deep_states: Mapping[str, DeepState] = field(default_factory=dict)  # address -> suites, certificate, changes


def ended_at(sweep: SweepResult) -> float:
    """When the sweep ended: the time its changes are stamped with."""
    return sweep.started_at + sweep.duration_seconds


def advance(
    known: AddressStatuses, sweep: SweepResult
) -> tuple[dict[str, dict[Protocol, ProtocolStatus]], list[Transition]]:
    """The statuses after `sweep` (only those it changed), and the flips and HTTP status changes it showed."""
    at = ended_at(sweep)
    changed: dict[str, dict[Protocol, ProtocolStatus]] = {}
    transitions: list[Transition] = []
    for result in sweep.addresses:
        statuses = known.get(result.address, {})
        for protocol, outcome in result.protocols.items():
            if outcome.state is ProtocolState.ERROR:
                continue  # keep the last determined state: an outage is not a brownout
            previous = statuses.get(protocol)
            status, steps = _step(previous, outcome, at, sweep.target.confirm_sweeps)
            if status != previous:
                changed.setdefault(result.address, {})[protocol] = status
            transitions += [
                Transition(sweep.target.name, result.address, protocol, at, old, new, kind) for kind, old, new in steps
            ]
    return changed, transitions


_UNPROVEN = (Evidence.CLOSED, Evidence.RESET, Evidence.NOT_TLS)


def _step(
    previous: ProtocolStatus | None, outcome: ProtocolResult, at: float, confirm_sweeps: int
) -> tuple[ProtocolStatus, list[tuple[TransitionKind, str, str]]]:
    """One determined answer taken in: the new status, and what changed as (kind, old, new)."""
    http = outcome.http_status if outcome.state is ProtocolState.ACCEPTED else None
    if previous is None:
        return ProtocolStatus(outcome.state, at, 0, http, None if http is None else at), []
    status, steps = previous, []
    if outcome.state is not previous.state:
        if outcome.evidence in _UNPROVEN and previous.pending + 1 < confirm_sweeps:
            # A close or reset may be a flaky path rather than the server: report it once it holds.
            status = replace(status, pending=previous.pending + 1)
        else:
            status = replace(status, state=outcome.state, last_change=at, changes=previous.changes + 1, pending=0)
            steps.append((TransitionKind.HANDSHAKE, previous.state.value, outcome.state.value))
    elif previous.pending:
        status = replace(status, pending=0)
    if http is not None and http != previous.http_status:
        if previous.http_status is None:
            status = replace(status, http_status=http, http_last_change=at)
        else:
            status = replace(status, http_status=http, http_last_change=at, http_changes=previous.http_changes + 1)
            steps.append((TransitionKind.HTTP, str(previous.http_status), str(http)))
    return status, steps


def advance_clients(
    known: ClientStatuses, sweep: SweepResult
) -> tuple[dict[str, dict[str, ProtocolStatus]], list[Transition]]:
    """As advance(), for the client profiles: who can connect after `sweep`, and who gained or lost it."""
    at = ended_at(sweep)
    profiles = {c.name: c for c in sweep.target.clients}
    changed: dict[str, dict[str, ProtocolStatus]] = {}
    transitions: list[Transition] = []
    for result in sweep.addresses:
        statuses = known.get(result.address, {})
        for name, outcome in result.clients.items():
            if outcome.state is ProtocolState.ERROR or name not in profiles:
                continue
            previous = statuses.get(name)
            status, steps = _step(previous, outcome, at, sweep.target.confirm_sweeps)
            if status != previous:
                changed.setdefault(result.address, {})[name] = status
            best = profiles[name].protocols[-1]
            transitions += [
                Transition(sweep.target.name, result.address, best, at, old, new, TransitionKind.CLIENT, name)
                for kind, old, new in steps
                if kind is TransitionKind.HANDSHAKE
            ]
    return changed, transitions


def current_clients(target: TargetConfig, known: ClientStatuses, addresses: list[str] | None) -> ClientStatuses:
    """The client statuses to show: the target's profiles, on the last probed addresses."""
    names = {c.name for c in target.clients}
    shown = known if addresses is None else {a: known.get(a, {}) for a in addresses}
    return {address: {n: s for n, s in statuses.items() if n in names} for address, statuses in shown.items()}


def error_reasons(sweep: SweepResult) -> set[ErrorReason]:
    """The reasons a sweep counts once each in tls_scanner_scan_errors_total."""
    reasons = {r.reason for r in sweep.protocols.values() if r.reason is not None}
    if sweep.error_reason is not None:
        reasons.add(sweep.error_reason)
    if sweep.dns_error is not None:
        reasons.add(ErrorReason.DNS)
    return reasons


def retries(sweep: SweepResult) -> int:
    """Hellos the sweep sent again because a refusal came without an alert."""
    return sum(r.retries for a in sweep.addresses for r in a.protocols.values())


def current(target: TargetConfig, known: AddressStatuses, addresses: list[str] | None) -> AddressStatuses:
    """The statuses to show: those of the last probed addresses (all known before any), configured protocols only."""
    shown = known if addresses is None else {a: known.get(a, {}) for a in addresses}
    return {address: {p: statuses[p] for p in target.protocols if p in statuses} for address, statuses in shown.items()}


def sweep_status(sweep: SweepResult) -> TargetStatus:
    """The status one sweep gives on its own, as the target's first (for /probe and `--once`)."""
    changed, _ = advance({}, sweep)
    clients, _ = advance_clients({}, sweep)
    return TargetStatus(
        target=sweep.target,
        last_sweep=sweep,
        addresses=current(sweep.target, changed, [a.address for a in sweep.addresses] if sweep.addresses else None),
        last_success_at=ended_at(sweep) if sweep.complete else None,
        errors=dict.fromkeys(error_reasons(sweep), 1),
        retries=retries(sweep),
        clients=clients,
    )
