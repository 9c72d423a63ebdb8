"""Where a sweep goes, found before its first handshake: the addresses to try, or why there are none.

Kept apart from the sweep engine (scanner.engine.sweep) so the daemon's main process can resolve names and route
sweeps to worker processes without starting a sweep engine (and loading sslyze).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from scanner.config import Resolver, TargetConfig
from scanner.engine.resolve import resolve
from scanner.errors import ResolveError


@dataclass(frozen=True)
class Located:
    """Where a sweep goes: the addresses it tries, or why there are none; and when it started (the lookup's start)."""

    started_at: float  # unix time
    clock: float  # time.monotonic() at the start: CLOCK_MONOTONIC, the same in every process of the machine
    addresses: tuple[str, ...] = ()
    dns_error: str | None = None  # an address family whose lookup failed while another answered
    error: str | None = None  # no address to try: the sweep ends here, a DNS error

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
