"""When targets are swept and deep-scanned: a fake sweeper on a virtual clock (no sockets, no sslyze, no waiting)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from scanner.config import TargetConfig
from scanner.daemon.scheduler import FIRST_ROUND_RATE, JITTER, Scheduler
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult
from scanner.state.store import ResultStore
from tests.unit.factories import target
from tests.unit.fakes import FakeSweeper, run

T12 = Protocol.TLSv1_2
LOW, HIGH = 1 - JITTER, 1 + JITTER


def configured(name: str = "t", interval: float = 10.0, deep_interval: float = 0.0) -> TargetConfig:
    return replace(target(name), interval=interval, deep_interval=deep_interval)


def schedule(
    engine: FakeSweeper,
    targets: list[TargetConfig],
    until: float,
    store: ResultStore | None = None,
    at: dict[float, Callable[[Scheduler], None]] | None = None,
    seed: int = 1,
) -> Scheduler:
    """Run a scheduler on `targets` until loop time `until`, calling each of `at` at its time; then stop it."""

    async def main() -> Scheduler:
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(engine, store or ResultStore(), random.Random(seed))
        scheduler.apply(targets)
        for when, action in sorted((at or {}).items()):
            await asyncio.sleep(when - loop.time())
            action(scheduler)
        await asyncio.sleep(until - loop.time())
        await scheduler.stop()
        return scheduler

    return run(main())


def test_the_first_round_is_spread_at_first_round_rate() -> None:
    engine = FakeSweeper()
    targets = [configured(f"t{i}", interval=600) for i in range(1000)]
    spread = len(targets) / FIRST_ROUND_RATE  # 5 s
    scheduler = schedule(engine, targets, until=spread + 1)
    starts = sorted(start for _, start, _ in engine.sweeps)
    assert len(starts) == 1000  # each target once: the next round is 600 s away
    assert starts[-1] <= spread
    assert starts[0] < 0.5 and starts[-1] > spread - 0.5  # spread over the whole span, not bunched
    assert sum(1 for s in starts if s < spread / 2) in range(400, 600)
    assert scheduler.first_round_done.is_set()


def test_a_short_interval_bounds_the_first_round() -> None:
    engine = FakeSweeper(sweep_seconds=0.01)
    schedule(engine, [configured(f"t{i}", interval=0.2) for i in range(5)], until=0.2)
    assert all(start < 0.2 for start in (min(engine.starts(f"t{i}")) for i in range(5)))


def test_the_next_sweep_is_interval_times_jitter_after_the_last_start() -> None:
    engine = FakeSweeper(sweep_seconds=3)
    schedule(engine, [configured(interval=10)], until=100)
    starts = engine.starts()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 8
    assert all(10 * LOW <= gap <= 10 * HIGH for gap in gaps)  # from the start: from the end would be 12 to 14
    assert len({round(gap, 6) for gap in gaps}) > 1  # jittered


def test_a_slow_sweep_delays_the_next_never_two_at_once() -> None:
    engine = FakeSweeper(sweep_seconds=25)
    schedule(engine, [configured(interval=10)], until=100)
    assert engine.most_at_once == 1
    assert len(engine.sweeps) >= 3
    for (_, _, end), (_, start, _) in zip(engine.sweeps, engine.sweeps[1:], strict=False):
        assert 0 <= start - end < 0.01  # due while it ran: started as soon as it ended


def test_a_sweep_that_raises_does_not_stop_the_targets_sweeps(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeSweeper(fail_sweeps=2)
    store = ResultStore()
    with caplog.at_level(logging.ERROR, "scanner.daemon.scheduler"):
        schedule(engine, [configured(interval=10)], until=50, store=store)
    assert len(engine.sweeps) >= 4
    assert caplog.text.count("sweep of t failed") == 2
    assert store.last_addresses("t") == ["127.0.0.1"]  # the sweeps after the failures were recorded


def test_the_first_deep_scan_waits_for_a_sweep_that_found_addresses() -> None:
    engine = FakeSweeper(addresses=False)

    def dns_back(_: Scheduler) -> None:
        engine.addresses = True

    schedule(engine, [configured(interval=10, deep_interval=30)], until=150, at={60: dns_back})
    first_with_addresses = min(start for start in engine.starts() if start >= 60)
    deep = engine.deep_starts()
    assert deep and deep[0] >= first_with_addresses
    assert deep[0] <= first_with_addresses + 30 + 1  # within deep_interval of that sweep's end
    assert engine.deeps[0][2] == ("127.0.0.1",)  # on the addresses the sweep found


def test_deep_scans_come_within_and_then_every_deep_interval() -> None:
    engine = FakeSweeper(deep_seconds=5)
    schedule(engine, [configured(interval=10, deep_interval=100)], until=500)
    deep = engine.deep_starts()
    assert deep[0] <= engine.starts()[0] + 1 + 100
    gaps = [b - a for a, b in itertools.pairwise(deep)]
    assert len(gaps) >= 3
    assert all(100 * LOW <= gap <= 100 * HIGH for gap in gaps)


def test_a_stored_last_deep_scan_keeps_its_cadence() -> None:
    engine = FakeSweeper()
    store = ResultStore()
    t = configured(interval=10, deep_interval=100)
    store.set_targets([t])
    store.record_deep(DeepResult(t, time.time() - 31, 1.0))  # ended 30 s ago: the next is due in about 70 s
    schedule(engine, [t], until=150, store=store)
    planned_at = engine.sweeps[0][2]
    assert 70 - 2 <= engine.deep_starts()[0] - planned_at <= 70 + 2


def test_deep_scans_are_off_with_deep_interval_0() -> None:
    engine = FakeSweeper()
    schedule(engine, [configured(interval=10, deep_interval=0)], until=200)
    assert engine.sweeps and not engine.deeps


def test_a_reload_brings_a_far_deep_scan_forward() -> None:
    engine = FakeSweeper()
    far = configured(interval=10, deep_interval=100_000)

    def shorten(s: Scheduler) -> None:
        s.apply([replace(far, deep_interval=20)])

    # Seed 1 plans the first deep scan ~13,000 s away; the reload at 50 s replans it within 20 s.
    schedule(engine, [far], until=100, at={50: shorten})
    deep = engine.deep_starts()
    assert deep and 50 <= deep[0] <= 70


def test_a_reload_keeps_timing_from_the_last_start() -> None:
    engine = FakeSweeper()
    t = configured(interval=100)

    def shorten(s: Scheduler) -> None:
        s.apply([replace(t, interval=30)])

    schedule(engine, [t], until=60, at={10: shorten})
    first, second = engine.starts()[:2]
    assert 30 * LOW <= second - first <= 30 * HIGH  # counted from the last start (~0), not from the reload (10)


def test_a_removed_target_stops_and_its_sweep_in_flight_is_dropped() -> None:
    engine = FakeSweeper(sweep_seconds=5)
    store = ResultStore()
    a, b = configured("a", interval=10), configured("b", interval=10)

    def remove_b(s: Scheduler) -> None:
        s.apply([a])

    schedule(engine, [a, b], until=60, store=store, at={2: remove_b})
    assert len(engine.starts("b")) == 1  # the one in flight at the reload, and none after
    assert store.last_addresses("b") is None  # its result was not recorded
    assert len(engine.starts("a")) >= 5


def test_a_new_target_starts_within_the_first_round_spread() -> None:
    engine = FakeSweeper()
    a, b = configured("a", interval=100), configured("b", interval=100)

    def add_b(s: Scheduler) -> None:
        s.apply([a, b])

    schedule(engine, [a], until=50, at={20: add_b})
    assert 20 <= engine.starts("b")[0] <= 21  # at most max(1 s, 1 target / FIRST_ROUND_RATE) later


def test_stop_waits_for_sweeps_and_cancels_deep_scans() -> None:
    engine = FakeSweeper(sweep_seconds=4, deep_seconds=1000)
    store = ResultStore()
    t = configured(interval=10, deep_interval=5)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(engine, store, random.Random(1))
        scheduler.apply([t])
        while not (engine.deeps and engine.running.get("t")):  # a deep scan and a sweep in flight
            await asyncio.sleep(0.1)
        in_flight = len(engine.sweeps) + 1
        await scheduler.stop()
        assert len(engine.sweeps) == in_flight  # the sweep in flight ended, and no new one started
        return loop.time()

    stopped = run(main())
    assert engine.cancelled_deeps == 1
    assert stopped == pytest.approx(engine.sweeps[-1][2], abs=0.01)
    assert store.last_deep_at("t") is None  # the cancelled deep scan recorded nothing
