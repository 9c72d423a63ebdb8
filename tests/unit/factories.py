"""Build SweepResult values by hand, for unit tests of the stages after the sweep engine."""

from __future__ import annotations

from scanner.config import Expectation, TargetConfig
from scanner.protocols import Protocol
from scanner.results.sweep import AddressResult, ErrorReason, ProtocolResult, ProtocolState, SweepResult
from scanner.targets import Shard

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
    more: dict[str, dict[Protocol, ProtocolState]] | None = None,
) -> SweepResult:
    """A sweep whose first address (127.0.0.1) has `states`; `more` adds other addresses."""
    addresses = []
    for address, answers in {"127.0.0.1": states, **(more or {})}.items():
        results = {}
        for protocol, state in answers.items():
            results[protocol] = ProtocolResult(
                state,
                reason=ErrorReason.TIMEOUT if state is E else None,
                http_status=(http or {}).get(protocol),
                connections=1,
            )
        addresses.append(AddressResult(address, results))
    return SweepResult(target=t, started_at=at, duration_seconds=0.5, addresses=tuple(addresses))


def owner(name: str, count: int) -> int:
    """The one replica of `count` that owns `name`."""
    owners = [i for i in range(count) if Shard(i, count).owns(name)]
    assert len(owners) == 1, f"{name} owned by {owners} of {count}"
    return owners[0]
