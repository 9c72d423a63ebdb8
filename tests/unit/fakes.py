"""Fakes for tests of timing: an event loop on a virtual clock (it jumps to the next timer instead of waiting for
it), and a sweeper whose sweeps and deep scans take the time they are told on that clock."""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from scanner.config import TargetConfig
from scanner.protocols import Protocol
from scanner.results.deep import DeepAddressResult, DeepResult
from scanner.results.sweep import SweepResult
from tests.unit.factories import A, sweep

T = TypeVar("T")


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without waiting; a wait for the next timer moves the clock to it instead."""

    loop: VirtualClockLoop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: nothing scheduled and nothing to wait for")
        self.loop.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """loop.time() starts at 0 and only moves when every task waits for a timer: sleeps take no real time."""

    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run() on a virtual clock."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


@dataclass
class FakeSweeper:
    """Sweeps and deep scans that take the time they are told (on the loop's clock), and note when they ran."""

    sweep_seconds: float = 0.1
    deep_seconds: float = 0.1
    fail_sweeps: int = 0  # the first this many sweeps raise
    addresses: bool = True  # whether sweeps find addresses (False: a DNS outage)
    sweeps: list[tuple[str, float, float]] = field(default_factory=list)  # (target, start, end) of each sweep ended
    deeps: list[tuple[str, float, tuple[str, ...]]] = field(default_factory=list)  # (target, start, addresses)
    running: dict[str, int] = field(default_factory=dict)
    most_at_once: int = 0  # sweeps of one target in flight at once, at most
    cancelled_deeps: int = 0

    async def sweep(self, t: TargetConfig) -> SweepResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.running[t.name] = self.running.get(t.name, 0) + 1
        self.most_at_once = max(self.most_at_once, self.running[t.name])
        try:
            await asyncio.sleep(self.sweep_seconds)
        finally:
            self.running[t.name] -= 1
        self.sweeps.append((t.name, start, loop.time()))
        if self.fail_sweeps > 0:
            self.fail_sweeps -= 1
            raise RuntimeError("a bug")
        result = sweep(t, {Protocol.TLSv1_2: A}, at=time.time())
        return result if self.addresses else replace(result, addresses=(), dns_error="no such name")

    async def deep(self, t: TargetConfig, addresses: Sequence[str]) -> DeepResult:
        self.deeps.append((t.name, asyncio.get_running_loop().time(), tuple(addresses)))
        try:
            await asyncio.sleep(self.deep_seconds)
        except asyncio.CancelledError:
            self.cancelled_deeps += 1
            raise
        return DeepResult(t, time.time(), self.deep_seconds, tuple(DeepAddressResult(a) for a in addresses))

    def starts(self, name: str = "t") -> list[float]:
        return [start for n, start, _ in self.sweeps if n == name]

    def deep_starts(self, name: str = "t") -> list[float]:
        return [start for n, start, _ in self.deeps if n == name]
