"""What discovery found in a network range: the endpoints that accepted TCP, and how many did not, by how."""

from __future__ import annotations

from dataclasses import dataclass

RANGE_STATES = ("open", "closed", "silent")  # the `state` label of tls_scanner_range_endpoints, in this order


@dataclass(frozen=True, slots=True)
class RangeTally:
    """Endpoints of a range by their answer to one TCP connect: accepted (open), refused (closed), or no answer
    before the timeout or an unreachable error (silent)."""

    open: int = 0
    closed: int = 0
    silent: int = 0

    def __add__(self, other: RangeTally) -> RangeTally:
        return RangeTally(self.open + other.open, self.closed + other.closed, self.silent + other.silent)

    @property
    def total(self) -> int:
        return self.open + self.closed + self.silent

    def counts(self) -> dict[str, int]:
        """{state: endpoints}, every state of RANGE_STATES."""
        return {state: getattr(self, state) for state in RANGE_STATES}


@dataclass(frozen=True, slots=True)
class Discovered:
    """One discovery pass over (part of) a range: the endpoints that accepted TCP, as (host, port), and the tally."""

    network: str
    responders: tuple[tuple[str, int], ...]
    tally: RangeTally


@dataclass(frozen=True, slots=True)
class RangePass:
    """A range's last discovery pass: what it counted, when it started (unix time) and how long it took."""

    tally: RangeTally
    started_at: float
    seconds: float

    def __add__(self, other: RangePass) -> RangePass:
        """Two entries of one network (on other ports): counted together, from the first start, for both durations."""
        return RangePass(self.tally + other.tally, min(self.started_at, other.started_at), self.seconds + other.seconds)
