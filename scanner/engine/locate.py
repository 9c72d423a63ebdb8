"""Where a sweep goes, found before its first handshake: the addresses to probe, or why there are none.

Kept apart from the handshake engine (scanner.engine.sweep) so the daemon's main process can resolve names and route
sweeps to worker processes without loading sslyze.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from scanner.config import Resolver, TargetConfig
from scanner.engine.resolve import resolve
from scanner.errors import ResolveError
from scanner.results.sweep import ErrorReason, SweepResult

# Past its timeout a target gets this long before its hung connections are torn down.
DEADLINE_GRACE_SECONDS = 0.8


@dataclass(frozen=True)
class Located:
    """A sweep's start and the addresses it probes (error set instead when the name gave none)."""

    started_at: float  # unix time
    clock: float  # time.monotonic() at the start: CLOCK_MONOTONIC, the same in every process of the machine
    addresses: tuple[str, ...] = ()
    dns_error: str | None = None  # an address family whose lookup failed while another answered
    error: str | None = None  # no address to probe: the sweep ends here

    def result(self, target: TargetConfig, **fields: Any) -> SweepResult:
        """The sweep's result as of now, from these addresses and what `fields` add (addresses, error, ...)."""
        elapsed = time.monotonic() - self.clock
        return SweepResult(target, self.started_at, elapsed, dns_error=self.dns_error, **fields)

    def failed(self, target: TargetConfig) -> SweepResult:
        """The result of a sweep that found no address."""
        return self.result(target, error=self.error, error_reason=ErrorReason.DNS)

    @property
    def route(self) -> str:
        """What decides the worker process a sweep runs in: its lowest address, so targets behind the same addresses
        share one worker's per-address politeness (a name's round-robin order does not move it)."""
        return min(self.addresses, default="")


async def locate(target: TargetConfig, addresses: list[str] | None, resolver: Resolver | None) -> Located:
    """Resolve the target once (unless `addresses` are given); a proxied target's proxy resolves for itself."""
    started = Located(time.time(), time.monotonic())
    if target.https_proxy is not None:
        return _at(started, [""], None)
    if addresses is not None:
        return _at(started, addresses, None)
    if target.address is not None:
        return _at(started, [target.address], None)
    try:
        found = await resolve(target.host, target.addresses, resolver, target.timeout)
    except ResolveError as exc:
        return Located(started.started_at, started.clock, error=f"cannot resolve {target.host}: {exc}")
    dns_error = None
    if found.failed:
        dns_error = f"cannot resolve {target.host} fully: {'; '.join(found.failed)}"
    return _at(started, found.addresses, dns_error)


def _at(started: Located, addresses: list[str], dns_error: str | None) -> Located:
    return Located(started.started_at, started.clock, tuple(addresses), dns_error)
