"""Check a sweep against its target's expectations (the policy in `expect:`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scanner.config import DatedPolicy, Expectation, TargetConfig
from scanner.protocols import Protocol
from scanner.results.sweep import ProtocolResult, ProtocolState, SweepResult


@dataclass(frozen=True)
class Verdict:
    """Whether a sweep met its policy; what could not be determined is neither met nor violated."""

    met: bool
    violations: tuple[str, ...] = ()


def evaluate(expect: Expectation, protocols: Mapping[Protocol, ProtocolResult]) -> Verdict:
    """Compare determined protocol states (and HTTP statuses) with the expectation."""
    violations: list[str] = []
    for protocol in Protocol:
        result: ProtocolResult | None = protocols.get(protocol)
        if result is None or result.state is ProtocolState.ERROR:
            continue
        if protocol in expect.accept and result.state is ProtocolState.REJECTED:
            violations.append(f"{protocol} expected accepted, is rejected")
        if protocol in expect.reject and result.state is ProtocolState.ACCEPTED:
            violations.append(f"{protocol} expected rejected, is accepted")
        if protocol in expect.http_ok:
            if result.state is ProtocolState.REJECTED:
                violations.append(f"{protocol} expected HTTP 2xx/3xx, handshake rejected")
            elif result.http_status is not None and not 200 <= result.http_status < 400:
                violations.append(f"{protocol} expected HTTP 2xx/3xx, got {result.http_status}")
    return Verdict(met=not violations, violations=tuple(violations))


def verdict(sweep: SweepResult) -> Verdict:
    """The sweep's verdict: every address must meet every policy in force at the sweep's time (the target's
    `expect:`, and its dated policies from their date on); a partial rollout is a violation."""
    violations: list[str] = list(_violations(sweep, sweep.target.expect))
    for dated in sweep.target.deadlines:
        if dated.start <= sweep.started_at:
            violations.extend(f"{dated.name}: {v}" for v in _violations(sweep, dated.expect))
    return Verdict(met=not violations, violations=tuple(violations))


def has_policy(target: TargetConfig, at: float) -> bool:
    """Whether any policy of the target is in force at `at` (unix time)."""
    return not target.expect.empty or any(d.start <= at for d in target.deadlines)


def deadlines(sweep: SweepResult) -> list[tuple[DatedPolicy, Verdict]]:
    """Each dated policy of the target with the verdict it would give on this sweep, in force or not yet."""
    return [(dated, Verdict(*_met(_violations(sweep, dated.expect)))) for dated in sweep.target.deadlines]


def _met(violations: list[str]) -> tuple[bool, tuple[str, ...]]:
    return not violations, tuple(violations)


def _violations(sweep: SweepResult, expect: Expectation) -> list[str]:
    violations: list[str] = []
    for result in sweep.addresses:
        found = evaluate(expect, result.protocols).violations
        prefix = f"{result.address}: " if len(sweep.addresses) > 1 else ""
        violations.extend(prefix + v for v in found)
    return violations


def wanted(expect: Expectation, protocol: Protocol) -> ProtocolState | None:
    """What the policy wants of one protocol: accepted, rejected, or nothing when it says nothing about it."""
    if protocol in expect.accept or protocol in expect.http_ok:
        return ProtocolState.ACCEPTED
    if protocol in expect.reject:
        return ProtocolState.REJECTED
    return None
