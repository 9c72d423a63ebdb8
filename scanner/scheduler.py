"""When each target is swept: its own interval with jitter, a spread-out first round, never two sweeps at once."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from scanner.config import TargetConfig
from scanner.deep_results import DeepResult
from scanner.pool import Sweeper
from scanner.results import ErrorReason, ProtocolState, SweepResult
from scanner.status import Transition, TransitionKind
from scanner.store import ResultStore

log = logging.getLogger(__name__)

JITTER = 0.1  # each interval is stretched or shrunk by up to this fraction
FIRST_ROUND_RATE = 200.0  # targets started per second, at most, in the first round
DEEP_CONCURRENCY = 1  # deep scans in flight at once: the slow tier's small share, so sweeps keep their timing
DeepScan = Callable[[TargetConfig, Sequence[str]], Awaitable[DeepResult]]


@dataclass
class _Entry:
    target: TargetConfig
    first_at: float
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_started: float | None = None
    jitter: float = 1.0
    removed: bool = False
    failing: frozenset[tuple[str, ErrorReason]] = frozenset()  # (address, reason) of the errors last logged
    deep_wake: asyncio.Event = field(default_factory=asyncio.Event)
    deep_woken: bool = False  # the deep loop was told of the target's first addresses
    deep_error: str | None = None  # the deep scan error last logged


class Scheduler:
    """Runs one loop per target; reload swaps targets in place without losing their timing."""

    def __init__(
        self,
        prober: Sweeper,
        store: ResultStore,
        rng: random.Random | None = None,
        deep: DeepScan | None = None,
        deep_concurrency: int = DEEP_CONCURRENCY,
    ) -> None:
        self.prober = prober
        self.store = store
        self.rng = rng or random.Random()
        self.deep = deep or prober.deep
        self._deep_slots = asyncio.Semaphore(deep_concurrency)
        self._deep_tasks: set[asyncio.Task[None]] = set()
        self._entries: dict[str, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every target loop still running, removed targets' too
        self._stopping = False
        self.running = False
        # target -> its first sweep, until every target of the first round has one (then the summary, then None)
        self._first_round: dict[str, SweepResult | None] | None = None

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
                entry.wake.set()
                entry.deep_wake.set()
                del self._entries[name]
        fresh = [t for t in targets if t.name not in self._entries]
        if self._first_round is None and not self.running:
            self._first_round = {t.name: None for t in fresh}
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
                deep = asyncio.create_task(self._run_deep(entry), name=f"deep scan {target.name}")
                self._deep_tasks.add(deep)
                deep.add_done_callback(self._deep_tasks.discard)
            elif existing.target != target:
                existing.target = target
                existing.wake.set()  # recompute its next sweep from the new interval
                existing.deep_wake.set()
        self.running = True

    async def stop(self) -> None:
        """Start no new sweep; wait for the ones in flight (each bounded by its timeout)."""
        self._stopping = True
        for entry in self._entries.values():
            entry.wake.set()
        for task in self._deep_tasks:
            task.cancel()  # a deep scan says nothing urgent: not worth delaying a shutdown for
        await asyncio.gather(*self._tasks, *self._deep_tasks, return_exceptions=True)
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
            try:
                transitions = self.store.record(sweep)
            except Exception:  # a bug in the store must not stop the target's loop either
                log.exception("recording the sweep of %s failed", entry.target.name)
                continue
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
            if sweep.addresses and not entry.deep_woken:
                entry.deep_woken = True
                entry.deep_wake.set()  # its deep loop waits for the addresses of the first sweep

    async def _run_deep(self, entry: _Entry) -> None:
        """Deep-scan the target every deep_interval, the first time at random within its first deep_interval.

        Spread like the first round, so 2,000 targets at 6h start one about every 11 s, never in a burst.
        """
        loop = asyncio.get_running_loop()
        due: float | None = None
        while not (self._stopping or entry.removed):
            entry.deep_wake.clear()
            interval = entry.target.deep_interval
            addresses = self.store.last_addresses(entry.target.name)
            if interval <= 0:
                due = None
                await entry.deep_wake.wait()  # off until a reload turns it on
                continue
            if addresses is None:  # not swept yet: the deep scan needs the addresses the sweep found
                await entry.deep_wake.wait()  # set by the target's first sweep (or a reload)
                continue
            else:
                if due is None or due - loop.time() > interval * (1 + JITTER):  # the first, or a shorter interval
                    due = loop.time() + self._first_deep_delay(entry.target)
                delay = due - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(entry.deep_wake.wait(), delay)
                except TimeoutError:
                    pass
                continue  # look again: woken by a reload, or the first sweep may have come
            async with self._deep_slots:
                if self._stopping or entry.removed:
                    return
                started = loop.time()
                addresses = self.store.last_addresses(entry.target.name)  # the latest: the wait for a slot may be long
                try:
                    result = await self.deep(entry.target, addresses or [])
                    transitions = self.store.record_deep(result)
                except Exception:  # a bug in one deep scan must not stop the target's deep loop
                    log.exception("deep scan of %s failed", entry.target.name)
                    due = started + interval
                    continue
            due = started + interval * (1.0 + self.rng.uniform(-JITTER, JITTER))
            self._report_deep(entry, result, transitions)

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
