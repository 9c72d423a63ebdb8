"""When each target is swept: its own interval with jitter, a spread-out first round, never two sweeps at once; and
when each scheduled tier (scanner.tiers: the registry, not this module, knows which) runs on it.

One dispatcher task and a heap of due times, not a sleeping task per target: at 10,000 targets those tasks (and their
timers, events and futures) were half a million objects for the garbage collector to walk, in pauses of 0.3 s.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scanner.config import TargetConfig
from scanner.daemon.burst import Bursts
from scanner.daemon.pool import Sweeper
from scanner.results.sweep import SweepResult
from scanner.state.store import ResultStore
from scanner.tiers import TIERS, ScheduledTier, Tier
from scanner.tiers.base import log_transitions
from scanner.tiers.sweep import SWEEP, Failing

log = logging.getLogger(__name__)

JITTER = 0.1  # each interval is stretched or shrunk by up to this fraction
FIRST_ROUND_RATE = 200.0  # targets started per second, at most, in the first round
AnyScheduled = ScheduledTier[Any]


@dataclass(slots=True)
class _Run:
    """Where a target stands with one scheduled tier."""

    due: float | None = None  # loop time of the next run; None: none planned (off, not ready yet, running)
    running: bool = False
    error: str | None = None  # the error last logged


@dataclass(slots=True)
class _Entry:
    target: TargetConfig
    due: float | None  # loop time of the next sweep; None while one runs
    last_started: float | None = None
    jitter: float = 1.0
    removed: bool = False
    failing: Failing = frozenset()  # (address, reason) of the errors last logged
    runs: dict[AnyScheduled, _Run] | None = None  # per scheduled tier, once first planned (None: none yet)

    def run(self, tier: AnyScheduled) -> _Run | None:
        """Where the target stands with `tier`; None before it was first planned."""
        return None if self.runs is None else self.runs.get(tier)

    def planned(self, tier: AnyScheduled) -> _Run:
        """Where the target stands with `tier`, made when it is first planned."""
        if self.runs is None:
            self.runs = {}
        found = self.runs.get(tier)
        if found is None:
            found = self.runs[tier] = _Run()
        return found


class Scheduler:
    """Sweeps each target when it is due, and runs each scheduled tier on it when that is due; reload swaps targets
    in place without losing their timing."""

    def __init__(
        self,
        engine: Sweeper,
        store: ResultStore,
        rng: random.Random | None = None,
        tiers: Sequence[Tier] = TIERS,
    ) -> None:
        self.engine = engine
        self.store = store
        self.rng = rng or random.Random()
        self.tiers = tuple(tiers)
        self.scheduled: tuple[AnyScheduled, ...] = tuple(t for t in self.tiers if isinstance(t, ScheduledTier))
        self._slots = {tier: asyncio.Semaphore(tier.concurrency) for tier in self.scheduled}
        self._entries: dict[str, _Entry] = {}
        # (loop time due, tie-breaker, target, what: None for its sweep, else a scheduled tier)
        self._heap: list[tuple[float, int, str, AnyScheduled | None]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # sweeps in flight
        self._tier_tasks: set[asyncio.Task[None]] = set()  # scheduled tiers' runs in flight
        self._stopping = False
        self.running = False
        # target -> its first sweep, until every target of the first round has one (then the summary, then None)
        self._first_round: dict[str, SweepResult | None] | None = None
        self.first_round_done = asyncio.Event()
        self.bursts = Bursts(engine, store, self._configured, self.tiers)  # re-probes after flips

    def _configured(self, name: str) -> TargetConfig | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.target

    def apply(self, targets: Iterable[TargetConfig]) -> None:
        """Schedule these targets: new ones start within the first-round spread, removed ones stop."""
        loop = asyncio.get_running_loop()
        targets = list(targets)
        new_names = {t.name for t in targets}
        for name, entry in list(self._entries.items()):
            if name not in new_names:
                if self._first_round is not None:
                    self._first_round.pop(name, None)
                entry.removed = True
                del self._entries[name]
        fresh = [t for t in targets if t.name not in self._entries]
        if self._first_round is None and not self.running:
            self._first_round = {t.name: None for t in fresh}
        elif self._first_round == {}:  # there was nothing to sweep (ranges not yet discovered): the first found are
            self._first_round = {t.name: None for t in fresh}
        spread = max(1.0, len(fresh) / FIRST_ROUND_RATE)
        for target in targets:
            existing = self._entries.get(target.name)
            if existing is None:
                first = loop.time() + self.rng.uniform(0, min(target.interval, spread))
                self._entries[target.name] = _Entry(target, due=first)
                self._push(first, target.name, None)
            elif existing.target != target:
                existing.target = target
                if existing.due is not None and existing.last_started is not None:
                    # The next sweep from the new interval, counted from the last one.
                    existing.due = existing.last_started + target.interval * existing.jitter
                    self._push(existing.due, target.name, None)
                for tier in self.scheduled:
                    self._plan(existing, tier, replan=True)
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="scheduler")
        self.running = True

    async def stop(self) -> None:
        """Start no new sweep; wait for the ones in flight (each bounded by its timeout); cancel the tiers' runs."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        for task in self._tier_tasks:
            task.cancel()  # a scheduled tier says nothing urgent: not worth delaying a shutdown for
        await self.bursts.stop()
        dispatcher = [] if self._dispatcher is None else [self._dispatcher]
        await asyncio.gather(*dispatcher, *self._tasks, *self._tier_tasks, return_exceptions=True)
        self.running = False

    def _push(self, when: float, name: str, tier: AnyScheduled | None) -> None:
        heapq.heappush(self._heap, (when, next(self._order), name, tier))
        self._wake.set()

    async def _dispatch(self) -> None:
        """Start whatever is due, then sleep until the next due time or a change. Heap items made stale by a reload
        or a removal are recognised by their time no longer being the entry's, and dropped."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, _, name, tier = heapq.heappop(self._heap)
                entry = self._entries.get(name)
                if entry is None:
                    continue
                if tier is None:
                    if entry.due == when:
                        entry.due = None
                        self._start(self._tasks, self._sweep(entry), f"sweep {name}")
                elif (run := entry.run(tier)) is not None and run.due == when:
                    run.due = None
                    run.running = True
                    self._start(self._tier_tasks, self._run(entry, tier, run), f"{tier.name} {name}")
            delay = self._heap[0][0] - now if self._heap else None
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    @staticmethod
    def _start(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _sweep(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        entry.last_started = loop.time()
        entry.jitter = 1.0 + self.rng.uniform(-JITTER, JITTER)
        try:
            await self._sweep_once(entry)
        finally:
            if not (entry.removed or self._stopping):
                entry.due = entry.last_started + entry.target.interval * entry.jitter
                self._push(entry.due, entry.target.name, None)

    async def _sweep_once(self, entry: _Entry) -> None:
        try:
            sweep = await self.engine.sweep(entry.target)
        except Exception:  # a bug in one sweep must not stop the target's sweeps
            log.exception("sweep of %s failed", entry.target.name)
            return
        if entry.removed or (self._stopping and not sweep.complete):
            return  # a sweep cut short by shutdown says nothing about the target
        try:
            transitions = self.store.record(sweep)
        except Exception:  # a bug in the store must not stop the target's sweeps either
            log.exception("recording the sweep of %s failed", entry.target.name)
            return
        log_transitions(self.tiers, transitions)
        self.bursts.flipped(entry.target, transitions)
        entry.failing = SWEEP.report(sweep, entry.failing)
        self._first_round_swept(sweep)
        if sweep.addresses:
            for tier in self.scheduled:
                self._plan(entry, tier)  # a scheduled tier waits for the addresses of a first sweep

    def _first_round_swept(self, sweep: SweepResult) -> None:
        """Note the target's first sweep; once every target of the first round has one, sum the round up."""
        if self._first_round is not None and sweep.target.name in self._first_round:
            self._first_round[sweep.target.name] = sweep
            if all(s is not None for s in self._first_round.values()):
                SWEEP.report_first_round(s for s in self._first_round.values() if s is not None)
                self._first_round = None
                self.first_round_done.set()

    def _plan(self, entry: _Entry, tier: AnyScheduled, replan: bool = False) -> None:
        """Plan the target's next run of `tier` if none is: the first at random within its first interval (spread
        like the first round: 2,000 targets at 6h start one about every 11 s), once the tier is ready for it.
        With `replan` (its config changed), a run planned beyond a shorter interval is brought forward."""
        run = entry.run(tier)
        if (run is not None and run.running) or self._stopping:
            return
        interval = tier.interval(entry.target)
        if interval <= 0:
            if run is not None:
                run.due = None  # off until a reload turns it on
            return
        if not tier.ready(self.store, entry.target.name):
            return
        run = entry.planned(tier)
        now = asyncio.get_running_loop().time()
        if run.due is None or (replan and run.due - now > interval * (1 + JITTER)):
            run.due = now + self._first_delay(entry.target, tier, interval)
            self._push(run.due, entry.target.name, tier)

    async def _run(self, entry: _Entry, tier: AnyScheduled, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._slots[tier]:
                if self._stopping or entry.removed:
                    return
                started = loop.time()
                try:
                    result = await tier.scan(self.engine, self.store, entry.target)
                    transitions = tier.record(self.store, result)
                except Exception:  # a bug in one run must not stop the target's runs
                    log.exception("%s of %s failed", tier.name, entry.target.name)
                    due = started + tier.interval(entry.target)
                else:
                    due = started + tier.interval(entry.target) * (1.0 + self.rng.uniform(-JITTER, JITTER))
                    run.error = tier.report(result, transitions, run.error)
        finally:
            run.running = False
        if not (self._stopping or entry.removed) and tier.interval(entry.target) > 0:
            run.due = due
            self._push(due, entry.target.name, tier)

    def _first_delay(self, target: TargetConfig, tier: AnyScheduled, interval: float) -> float:
        """Keep the cadence of a run kept from before a restart; otherwise at random within the interval."""
        last = tier.last_ended_at(self.store, target.name)
        wait = None if last is None else last + interval - time.time()
        if wait is not None and 0 <= wait <= interval:
            return wait
        return self.rng.uniform(0, interval)
