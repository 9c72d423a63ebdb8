"""When each target is swept: its own interval with jitter, a spread-out first round, never two sweeps at once.

One dispatcher task and a heap of due times, not a sleeping task per target: at 10,000 targets those tasks (and their
timers, events and futures) were half a million objects for the garbage collector to walk, in pauses of 0.3 s.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scanner.config import TargetConfig
from scanner.daemon.pool import Sweeper
from scanner.results.deep import DeepResult
from scanner.results.sweep import ErrorReason, ProtocolState, SweepResult
from scanner.state.status import Transition, TransitionKind
from scanner.state.store import ResultStore

log = logging.getLogger(__name__)

JITTER = 0.1  # each interval is stretched or shrunk by up to this fraction
FIRST_ROUND_RATE = 200.0  # targets started per second, at most, in the first round
DEEP_CONCURRENCY = 1  # deep scans in flight at once: the slow tier's small share, so sweeps keep their timing
DeepScan = Callable[[TargetConfig, Sequence[str]], Awaitable[DeepResult]]


class _Kind(enum.Enum):
    SWEEP = "sweep"
    DEEP = "deep scan"


@dataclass(slots=True)
class _Entry:
    target: TargetConfig
    due: float | None  # loop time of the next sweep; None while one runs
    last_started: float | None = None
    jitter: float = 1.0
    removed: bool = False
    failing: frozenset[tuple[str, ErrorReason]] = frozenset()  # (address, reason) of the errors last logged
    deep_due: float | None = None  # loop time of the next deep scan; None: none planned (off, not swept yet, running)
    deep_running: bool = False
    deep_error: str | None = None  # the deep scan error last logged


class Scheduler:
    """Sweeps (and deep-scans) each target when it is due; reload swaps targets in place without losing their timing."""

    def __init__(
        self,
        engine: Sweeper,
        store: ResultStore,
        rng: random.Random | None = None,
        deep: DeepScan | None = None,
        deep_concurrency: int = DEEP_CONCURRENCY,
    ) -> None:
        self.engine = engine
        self.store = store
        self.rng = rng or random.Random()
        self.deep = deep or engine.deep
        self._deep_slots = asyncio.Semaphore(deep_concurrency)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, _Kind]] = []  # (loop time due, tie-breaker, target, what)
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # sweeps in flight
        self._deep_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.running = False
        # target -> its first sweep, until every target of the first round has one (then the summary, then None)
        self._first_round: dict[str, SweepResult | None] | None = None
        self.first_round_done = asyncio.Event()

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
        spread = max(1.0, len(fresh) / FIRST_ROUND_RATE)
        for target in targets:
            existing = self._entries.get(target.name)
            if existing is None:
                first = loop.time() + self.rng.uniform(0, min(target.interval, spread))
                self._entries[target.name] = _Entry(target, due=first)
                self._push(first, target.name, _Kind.SWEEP)
            elif existing.target != target:
                existing.target = target
                if existing.due is not None and existing.last_started is not None:
                    # The next sweep from the new interval, counted from the last one.
                    existing.due = existing.last_started + target.interval * existing.jitter
                    self._push(existing.due, target.name, _Kind.SWEEP)
                self._plan_deep(existing, replan=True)
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="scheduler")
        self.running = True

    async def stop(self) -> None:
        """Start no new sweep; wait for the ones in flight (each bounded by its timeout)."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        for task in self._deep_tasks:
            task.cancel()  # a deep scan says nothing urgent: not worth delaying a shutdown for
        dispatcher = [] if self._dispatcher is None else [self._dispatcher]
        await asyncio.gather(*dispatcher, *self._tasks, *self._deep_tasks, return_exceptions=True)
        self.running = False

    def _push(self, when: float, name: str, kind: _Kind) -> None:
        heapq.heappush(self._heap, (when, next(self._order), name, kind))
        self._wake.set()

    async def _dispatch(self) -> None:
        """Start whatever is due, then sleep until the next due time or a change. Heap items made stale by a reload
        or a removal are recognised by their time no longer being the entry's, and dropped."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, _, name, kind = heapq.heappop(self._heap)
                entry = self._entries.get(name)
                if entry is None:
                    continue
                if kind is _Kind.SWEEP and entry.due == when:
                    entry.due = None
                    self._start(self._tasks, self._sweep(entry), f"sweep {name}")
                elif kind is _Kind.DEEP and entry.deep_due == when:
                    entry.deep_due = None
                    entry.deep_running = True
                    self._start(self._deep_tasks, self._deep_scan(entry), f"deep scan {name}")
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
                self._push(entry.due, entry.target.name, _Kind.SWEEP)

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
        for t in transitions:
            if t.kind is TransitionKind.HTTP:
                log.warning("%s %s HTTP %s -> %s", t.target, t.protocol.value, t.old, t.new)
            elif t.kind is TransitionKind.CLIENT:
                where = f"{t.target} ({t.address})" if t.address else t.target
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t.at))
                if t.new == ProtocolState.REJECTED.value:
                    log.warning("%s can no longer connect to %s since %s", t.client, where, since)
                else:
                    log.warning("%s can connect to %s again since %s", t.client, where, since)
            else:
                log.warning("%s %s changed: %s -> %s", t.target, t.protocol.value, t.old, t.new)
        self._report(entry, sweep)
        if sweep.addresses:
            self._plan_deep(entry)  # the deep tier waits for the addresses of a first sweep

    def _plan_deep(self, entry: _Entry, replan: bool = False) -> None:
        """Plan the target's next deep scan if none is: the first at random within its first deep_interval (spread
        like the first round: 2,000 targets at 6h start one about every 11 s), after the addresses of a sweep.
        With `replan` (its config changed), a deep scan planned beyond a shorter interval is brought forward."""
        if entry.deep_running or self._stopping:
            return
        interval = entry.target.deep_interval
        if interval <= 0:
            entry.deep_due = None  # off until a reload turns it on
            return
        if self.store.last_addresses(entry.target.name) is None:
            return  # not swept yet: the deep scan needs the addresses the sweep found
        now = asyncio.get_running_loop().time()
        if entry.deep_due is None or (replan and entry.deep_due - now > interval * (1 + JITTER)):
            entry.deep_due = now + self._first_deep_delay(entry.target)
            self._push(entry.deep_due, entry.target.name, _Kind.DEEP)

    async def _deep_scan(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._deep_slots:
                if self._stopping or entry.removed:
                    return
                started = loop.time()
                addresses = self.store.last_addresses(entry.target.name)  # the latest: the wait for a slot may be long
                try:
                    result = await self.deep(entry.target, addresses or [])
                    transitions = self.store.record_deep(result)
                except Exception:  # a bug in one deep scan must not stop the target's deep scans
                    log.exception("deep scan of %s failed", entry.target.name)
                    due = started + entry.target.deep_interval
                else:
                    due = started + entry.target.deep_interval * (1.0 + self.rng.uniform(-JITTER, JITTER))
                    self._report_deep(entry, result, transitions)
        finally:
            entry.deep_running = False
        if not (self._stopping or entry.removed) and entry.target.deep_interval > 0:
            entry.deep_due = due
            self._push(due, entry.target.name, _Kind.DEEP)

    def _first_deep_delay(self, target: TargetConfig) -> float:
        """Keep the cadence of a deep scan kept from before a restart; otherwise at random within deep_interval."""
        last = self.store.last_deep_at(target.name)
        wait = None if last is None else last + target.deep_interval - time.time()
        if wait is not None and 0 <= wait <= target.deep_interval:
            return wait
        return self.rng.uniform(0, target.deep_interval)

    def _report_deep(self, entry: _Entry, result: DeepResult, transitions: list[Transition]) -> None:
        """Log each suite added or removed and each certificate replaced; a deep scan's errors when they change."""
        for t in transitions:
            if t.kind is TransitionKind.CERTIFICATE:
                log.warning("%s %s certificate replaced: %s -> %s", t.target, t.address, t.old, t.new)
            else:
                change = f"{t.old} removed" if t.old else f"{t.new} added"
                log.warning("%s %s cipher %s", t.target, t.protocol.value, change)
        errors = "; ".join(
            f"{a.address}: {a.error}" if a.address else a.error for a in result.addresses if a.error is not None
        )
        error = result.error or errors or None
        if error != entry.deep_error:
            if error is not None:
                log.warning("%s: deep scan error: %s", result.target.name, error)
            elif entry.deep_error is not None:
                log.info("%s: deep scans complete again", result.target.name)
            entry.deep_error = error
        log.debug("%s deep-scanned in %.2fs", result.target.name, result.duration_seconds)

    def _report(self, entry: _Entry, sweep: SweepResult) -> None:
        """Log a target's errors when they start or change and when they end, not every sweep; and the first round."""
        log.debug(
            "%s swept in %.2fs: %s",
            sweep.target.name,
            sweep.duration_seconds,
            " ".join(f"{p.value}={r.state.value}" for p, r in sweep.protocols.items()),
        )
        failures = _failures(sweep)
        kinds = {(address, reason) for address, reason, _ in failures}
        if kinds != entry.failing:
            for address, reason, message in failures:
                if (address, reason) not in entry.failing:
                    where = f"{sweep.target.name} {address}" if address else sweep.target.name
                    log.warning("%s: sweep error (%s): %s", where, reason.value, message)
            if not kinds and entry.failing:
                log.info("%s: sweeps complete again", sweep.target.name)
            entry.failing = frozenset(kinds)
        if self._first_round is not None and sweep.target.name in self._first_round:
            self._first_round[sweep.target.name] = sweep
            if all(s is not None for s in self._first_round.values()):
                log.info("first round: %s", _summary([s for s in self._first_round.values() if s is not None]))
                self._first_round = None
                self.first_round_done.set()


def _failures(sweep: SweepResult) -> list[tuple[str, ErrorReason, str]]:
    """(address, reason, message) of what the sweep could not determine; a target-level error stands for all."""
    if sweep.closed:
        return []
    if sweep.error is not None:
        return [("", sweep.error_reason or ErrorReason.OTHER, sweep.error)]
    found: dict[tuple[str, ErrorReason], str] = {}
    if sweep.dns_error is not None:
        found[("", ErrorReason.DNS)] = sweep.dns_error
    for result in sweep.addresses:
        if result.error is not None:
            found.setdefault((result.address, result.error_reason or ErrorReason.OTHER), result.error)
        for protocol, outcome in result.protocols.items():
            if outcome.state is ProtocolState.ERROR:
                key = (result.address, outcome.reason or ErrorReason.OTHER)
                found.setdefault(key, f"{protocol.value}: {outcome.detail}")
    return [(address, reason, message) for (address, reason), message in found.items()]


def _summary(sweeps: list[SweepResult]) -> str:
    """`5 targets, 3 complete, 2 with errors (dns: 1, refused: 1)`."""
    failed = [s for s in sweeps if not s.closed and not s.complete]
    reasons = Counter(failures[0][1].value for s in failed if (failures := _failures(s)))
    text = f"{len(sweeps)} targets, {len(sweeps) - len(failed)} complete, {len(failed)} with errors"
    if reasons:
        text += " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())) + ")"
    return text
