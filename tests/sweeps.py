"""Build SweepResult values by hand, for unit tests of the stages after the probe."""

from __future__ import annotations

from scanner.config import Expectation, TargetConfig
from scanner.probe import ErrorReason, ProtocolResult, ProtocolState, SweepResult
from scanner.protocols import Protocol

A, R, E = ProtocolState.ACCEPTED, ProtocolState.REJECTED, ProtocolState.ERROR


def target(
    name: str = "t", expect: Expectation | None = None, labels: tuple[tuple[str, str], ...] = ()
) -> TargetConfig:
    return TargetConfig(name=name, host="127.0.0.1", port=443, expect=expect or Expectation(), labels=labels)


def sweep(
    t: TargetConfig,
    states: dict[Protocol, ProtocolState],
    at: float = 1000.0,
    http: dict[Protocol, int] | None = None,
) -> SweepResult:
    results = {}
    for protocol, state in states.items():
        results[protocol] = ProtocolResult(
            state,
            reason=ErrorReason.TIMEOUT if state is E else None,
            http_status=(http or {}).get(protocol),
            connections=1,
        )
    return SweepResult(target=t, started_at=at, duration_seconds=0.5, address="127.0.0.1", protocols=results)
