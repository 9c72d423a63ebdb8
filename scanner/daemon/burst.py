"""Burst re-probing: after a version flips on an address (its handshake, or the HTTP status over it), that one
(target, address, version) is swept again every `burst_interval` until it flips back or `burst_for` has passed.

A burst's probe is the one version on the one address, without client profiles, judged as a sweep judges it
(Sweeper.probe): in the worker process the target's sweeps go to (never sslyze in this process then), under the same
per-address politeness caps; the store takes it in like a sweep (ResultStore.record_burst), so a flip it sees is a
flip and its observations bound the refusal windows. An error is no observation: never a refusal.

Cheap enough to run beside the sweeps: every burst with the same interval probes on the same tick of a shared clock
(one wake-up of this process and of each worker for all of them, where probes spread over the interval would each pay
for their own); a probe's hellos run on the worker's event loop rather than in a handshake thread; and what goes to
the worker and back is a few hundred bytes (scanner.daemon.pool.ProbeRequest), not a sweep.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from scanner.config import TargetConfig
from scanner.daemon.pool import Sweeper
from scanner.protocols import Protocol
from scanner.state.status import Transition, TransitionKind
from scanner.state.store import ResultStore
from scanner.tiers import Tier
from scanner.tiers.base import log_transitions

log = logging.getLogger(__name__)

# Bursts running at once, at most: a fleet-wide flip (a CDN's change) must not turn into a handshake storm; flips
# beyond it are followed at the normal interval.
MAX_BURSTS = 256
_FLIPS = (TransitionKind.HANDSHAKE, TransitionKind.HTTP)

Key = tuple[str, str, Protocol]  # (target, address, protocol)


@dataclass(slots=True)
class _Burst:
    started_by: Transition  # the flip that started it: the opposite flip ends it
    task: asyncio.Task[None] | None = None


def until_tick(now: float, interval: float) -> float:
    """Seconds from `now` to the next tick of a clock ticking every `interval` (never 0: a tick due now is past)."""
    return (math.floor(now / interval) + 1) * interval - now


def flips_back(started_by: Transition, t: Transition) -> bool:
    """Whether `t` undoes the flip that started a burst: accepted again, or for an HTTP status, back on the same side
    of 400 (a 200 -> 403 is undone by a 200 or a 301)."""
    if t.kind is not started_by.kind:
        return False
    if t.kind is TransitionKind.HTTP:
        return _http_ok(t.new) == _http_ok(started_by.old)
    return t.new == started_by.old


def _http_ok(status: str) -> bool:
    return status.isdigit() and int(status) < 400


class Bursts:
    """The bursts in flight, one per flipped (target, address, version)."""

    def __init__(
        self,
        engine: Sweeper,
        store: ResultStore,
        targets: Callable[[str], TargetConfig | None],
        tiers: Sequence[Tier],
    ) -> None:
        self.engine = engine
        self.store = store
        self.targets = targets  # the target as configured now; None once a reload removed it
        self.tiers = tuple(tiers)
        self._bursts: dict[Key, _Burst] = {}
        self._stopping = False
        self._full_logged = False
        self.started = 0  # bursts started, all time

    def __len__(self) -> int:
        return len(self._bursts)

    def flipped(self, target: TargetConfig, transitions: Iterable[Transition]) -> None:
        """Take in a sweep's transitions: a flip starts a burst on its (address, version), a flip back ends one."""
        for t in transitions:
            if t.kind not in _FLIPS:
                continue
            key = (t.target, t.address, t.protocol)
            running = self._bursts.get(key)
            if running is not None:
                if flips_back(running.started_by, t):
                    self._end(key)
                continue
            if target.burst_interval <= 0 or self._stopping or (not t.address and target.https_proxy is None):
                continue
            if len(self._bursts) >= MAX_BURSTS:
                if not self._full_logged:
                    log.warning("%d bursts running: further flips are followed at the normal interval", MAX_BURSTS)
                    self._full_logged = True
                continue
            burst = self._bursts[key] = _Burst(t)
            burst.task = asyncio.create_task(self._run(key, burst), name=f"burst {t.target} {t.address} {t.protocol}")
            self.started += 1

    def _end(self, key: Key) -> None:
        burst = self._bursts.pop(key, None)
        if burst is not None and burst.task is not None and burst.task is not asyncio.current_task():
            burst.task.cancel()
        if len(self._bursts) < MAX_BURSTS:
            self._full_logged = False

    async def _run(self, key: Key, burst: _Burst) -> None:
        name, address, protocol = key
        loop = asyncio.get_running_loop()
        try:
            target = self.targets(name)
            if target is None:
                return
            until = loop.time() + target.burst_for
            log.info("%s %s %s: burst every %gs", name, address or "-", protocol.value, target.burst_interval)
            while True:
                await asyncio.sleep(until_tick(loop.time(), target.burst_interval))
                target = self.targets(name)
                if target is None or self._stopping or target.burst_interval <= 0 or protocol not in target.protocols:
                    return
                if loop.time() >= until:
                    log.info("%s %s %s: burst ended after %gs", name, address or "-", protocol.value, target.burst_for)
                    return
                # Routed as the target's sweeps are (by their lowest address): one worker's politeness caps cover both.
                route = min(self.store.last_addresses(name) or [address])
                sweep = await self.engine.probe(target, protocol, address, route)
                if self._stopping or self.targets(name) is None:
                    return
                transitions = self.store.record_burst(sweep)
                log_transitions(self.tiers, transitions)
                if any(flips_back(burst.started_by, t) for t in transitions):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one burst must not stop the sweeps
            log.exception("burst of %s %s %s failed", name, address, protocol.value)
        finally:
            if self._bursts.get(key) is burst:
                self._end(key)

    async def stop(self) -> None:
        """Cancel every burst and wait for them: nothing a burst finds is worth delaying a shutdown for."""
        self._stopping = True
        tasks = [b.task for b in self._bursts.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._bursts.clear()
