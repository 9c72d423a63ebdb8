"""The worker pool's pure parts: how many workers `auto` means, the frames, routing by address."""

from __future__ import annotations

import asyncio

import pytest

from scanner.daemon import pool
from scanner.daemon.pool import Reply, SweepRequest, frame, read_frame, worker_count
from scanner.engine.locate import Located
from scanner.protocols import Protocol
from tests.unit.factories import A, R, sweep, target


@pytest.mark.parametrize(
    ("cpus", "targets", "workers"),
    [(1, 10_000, 0), (2, 999, 0), (2, 1000, 1), (2, 1001, 2), (2, 10_000, 2), (4, 2500, 3), (64, 100_000, 8)],
)
def test_auto_is_one_worker_per_thousand_targets_up_to_one_per_cpu(
    monkeypatch: pytest.MonkeyPatch, cpus: int, targets: int, workers: int
) -> None:
    monkeypatch.setattr(pool, "available_cpus", lambda: cpus)
    assert worker_count(None, targets) == workers
    assert worker_count(3, 5) == 3  # a configured number is taken as it is
    assert worker_count(0, 100_000) == 0


def test_frames_round_trip_and_end_cleanly() -> None:
    t = target("web")
    result = sweep(t, {Protocol.TLSv1_2: A, Protocol.TLSv1_0: R})
    messages = [SweepRequest(7, t, Located(1.0, 2.0, ("127.0.0.1",))), Reply(7, result)]

    async def run() -> list[object]:
        reader = asyncio.StreamReader()
        for message in messages:
            reader.feed_data(frame(message))
        reader.feed_data(frame(Reply(8, None, "boom"))[:5])  # a worker that died mid-frame
        reader.feed_eof()
        return [await read_frame(reader) for _ in range(3)]

    assert asyncio.run(run()) == [*messages, None]


def test_route_is_the_lowest_address_whatever_the_order() -> None:
    """A name whose DNS answers rotate keeps its worker; a proxied target has no address to route by."""
    first = Located(0.0, 0.0, ("192.0.2.9", "192.0.2.1", "2001:db8::1"))
    rotated = Located(0.0, 0.0, ("2001:db8::1", "192.0.2.9", "192.0.2.1"))
    assert first.route == rotated.route == "192.0.2.1"
    assert Located(0.0, 0.0, ("",)).route == ""


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        pool.WorkerPool(0, 8, pool.Politeness(), None)
