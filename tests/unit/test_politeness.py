"""The per-address gate: a cap per address, a rate limit, and no memory of addresses nobody uses."""

from __future__ import annotations

import asyncio
import itertools
import time

from scanner.config import Politeness
from scanner.engine.politeness import AddressGate


async def test_cap_per_address_and_none_across_addresses() -> None:
    gate = AddressGate(Politeness(connections_per_address=2))
    open_now: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def use(address: str) -> None:
        async with gate.connection(address):
            open_now[address] = open_now.get(address, 0) + 1
            peak[address] = max(peak.get(address, 0), open_now[address])
            await asyncio.sleep(0.01)
            open_now[address] -= 1

    await asyncio.gather(*(use(a) for a in ["127.0.0.1", "127.0.0.2"] * 5))
    assert peak == {"127.0.0.1": 2, "127.0.0.2": 2}
    assert len(gate) == 0  # both idle again: forgotten


async def test_state_for_changing_addresses_stays_bounded() -> None:
    gate = AddressGate(Politeness())
    for i in range(5000):
        async with gate.connection(f"127.1.{i // 250}.{i % 250}"):
            pass
    assert len(gate) == 0


async def test_rate_limit_spaces_connections_and_keeps_a_pending_turn() -> None:
    gate = AddressGate(Politeness(connections_per_second=20))
    starts = []
    for _ in range(4):
        async with gate.connection("127.0.0.1"):
            starts.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.04  # 1/20 s apart, give or take the clock
    assert len(gate) == 1  # its next turn is still in the future: remembered until it passes
