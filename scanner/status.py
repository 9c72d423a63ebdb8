"""What the sweeps of a target add up to: determined states, flips and errors, computed purely from sweeps.

The store keeps these across sweeps (and restarts); /probe and `--once` take one sweep through `sweep_status`
without any storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from scanner.config import TargetConfig
from scanner.protocols import Protocol
from scanner.results import ErrorReason, ProtocolState, SweepResult


@dataclass(frozen=True)
class ProtocolStatus:
    """The latest determined state of one protocol on one address."""

    state: ProtocolState  # ACCEPTED or REJECTED, never ERROR: an outage is not a brownout
    last_change: float  # when it last flipped, or when it was first determined
    changes: int  # flips observed


@dataclass(frozen=True)
class Transition:
    """A protocol flipping between accepted and rejected on one address of a target."""

    target: str
    address: str
    protocol: Protocol
    at: float
    old: ProtocolState
    new: ProtocolState


AddressStatuses = Mapping[str, Mapping[Protocol, ProtocolStatus]]  # address -> protocol -> status


@dataclass(frozen=True)
class TargetStatus:
    """Everything the collector, the web pages and the reports need about one target."""

    target: TargetConfig
    last_sweep: SweepResult | None
    addresses: AddressStatuses  # the last sweep's addresses (all known before it)
    last_success_at: float | None
    errors: Mapping[ErrorReason, int]
    transitions: tuple[Transition, ...] = field(default=())  # most recent first


def ended_at(sweep: SweepResult) -> float:
    """When the sweep ended: the time its changes are stamped with."""
    return sweep.started_at + sweep.duration_seconds


def advance(
    known: AddressStatuses, sweep: SweepResult
) -> tuple[dict[str, dict[Protocol, ProtocolStatus]], list[Transition]]:
    """The determined states after `sweep` (only the addresses and protocols it changed), and the flips it showed."""
    at = ended_at(sweep)
    changed: dict[str, dict[Protocol, ProtocolStatus]] = {}
    transitions: list[Transition] = []
    for result in sweep.addresses:
        statuses = known.get(result.address, {})
        for protocol, outcome in result.protocols.items():
            if outcome.state is ProtocolState.ERROR:
                continue  # keep the last determined state: an outage is not a brownout
            previous = statuses.get(protocol)
            if previous is None:
                status = ProtocolStatus(outcome.state, at, 0)
            elif previous.state is outcome.state:
                continue
            else:
                status = ProtocolStatus(outcome.state, at, previous.changes + 1)
                transitions.append(
                    Transition(sweep.target.name, result.address, protocol, at, previous.state, outcome.state)
                )
            changed.setdefault(result.address, {})[protocol] = status
    return changed, transitions


def error_reasons(sweep: SweepResult) -> set[ErrorReason]:
    """The reasons a sweep counts once each in tls_scanner_scan_errors_total."""
    reasons = {r.reason for r in sweep.protocols.values() if r.reason is not None}
    if sweep.error_reason is not None:
        reasons.add(sweep.error_reason)
    return reasons


def current(target: TargetConfig, known: AddressStatuses, addresses: list[str] | None) -> AddressStatuses:
    """The statuses to show: those of the last probed addresses (all known before any), configured protocols only."""
    shown = known if addresses is None else {a: known.get(a, {}) for a in addresses}
    return {address: {p: statuses[p] for p in target.protocols if p in statuses} for address, statuses in shown.items()}


def sweep_status(sweep: SweepResult) -> TargetStatus:
    """The status one sweep gives on its own, as the target's first (for /probe and `--once`)."""
    changed, _ = advance({}, sweep)
    return TargetStatus(
        target=sweep.target,
        last_sweep=sweep,
        addresses=current(sweep.target, changed, [a.address for a in sweep.addresses] if sweep.addresses else None),
        last_success_at=ended_at(sweep) if sweep.complete else None,
        errors=dict.fromkeys(error_reasons(sweep), 1),
    )
