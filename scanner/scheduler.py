"""When each target is swept: its own interval with jitter, a spread-out first round, never two sweeps at once."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from scanner.config import TargetConfig
from scanner.probe import Prober
from scanner.store import ResultStore

log = logging.getLogger(__name__)

JITTER = 0.1  # each interval is stretched or shrunk by up to this fraction
FIRST_ROUND_RATE = 200.0  # targets started per second, at most, in the first round


@dataclass
class _Entry:
    target: TargetConfig
    first_at: float
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_started: float | None = None
    jitter: float = 1.0
    removed: bool = False


class Scheduler:
    """Runs one loop per target; reload swaps targets in place without losing their timing."""

    def __init__(self, prober: Prober, store: ResultStore, rng: random.Random | None = None) -> None:
        self.prober = prober
        self.store = store
        self.rng = rng or random.Random()
        self._entries: dict[str, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every target loop still running, removed targets' too
        self._stopping = False
        self.running = False

    def apply(self, targets: Iterable[TargetConfig]) -> None:
        """Schedule these targets: new ones start within the first-round spread, removed ones stop."""
        loop = asyncio.get_running_loop()
        targets = list(targets)
        new_names = {t.name for t in targets}
        for name, entry in list(self._entries.items()):
            if name not in new_names:
                entry.removed = True
                entry.wake.set()
                del self._entries[name]
        fresh = [t for t in targets if t.name not in self._entries]
        spread = max(1.0, len(fresh) / FIRST_ROUND_RATE)
        for target in targets:
            existing = self._entries.get(target.name)
            if existing is None:
                first_at = loop.time() + self.rng.uniform(0, min(target.interval, spread))
                entry = _Entry(target=target, first_at=first_at)
                self._entries[target.name] = entry
                task = asyncio.create_task(self._run(entry), name=f"sweep {target.name}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif existing.target != target:
                existing.target = target
                existing.wake.set()  # recompute its next sweep from the new interval
        self.running = True

    async def stop(self) -> None:
        """Start no new sweep; wait for the ones in flight (each bounded by its timeout)."""
        self._stopping = True
        for entry in self._entries.values():
            entry.wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.running = False

    def _due(self, entry: _Entry) -> float:
        if entry.last_started is None:
            return entry.first_at
        return entry.last_started + entry.target.interval * entry.jitter

    async def _run(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        while True:
            entry.wake.clear()
            delay = self._due(entry) - loop.time()
            if delay > 0 and not (self._stopping or entry.removed):
                try:
                    await asyncio.wait_for(entry.wake.wait(), delay)
                except TimeoutError:
                    pass
            if self._stopping or entry.removed:
                return
            if self._due(entry) > loop.time():
                continue  # woken by a reload: the interval changed
            entry.last_started = loop.time()
            entry.jitter = 1.0 + self.rng.uniform(-JITTER, JITTER)
            try:
                sweep = await self.prober.sweep(entry.target)
            except Exception:  # a bug in one sweep must not stop the target's loop
                log.exception("sweep of %s failed", entry.target.name)
                continue
            if entry.removed or (self._stopping and not sweep.complete):
                return  # a sweep cut short by shutdown says nothing about the target
            for t in self.store.record(sweep):
                log.warning("%s %s changed: %s -> %s", t.target, t.protocol.value, t.old.value, t.new.value)
