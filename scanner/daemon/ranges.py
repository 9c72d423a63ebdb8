"""Network ranges: discovery passes that make the endpoints accepting TCP targets, the others only counted; in the
daemon, again every `range_interval`, so a server that appears is swept and one that goes away is retired.

Discovery runs in the worker processes when there are any (blocks dealt to them in turn), else in a thread of this
process; each keeps at most its share of `concurrency` connects in flight. With `--shard`, a replica connects only
to the endpoints it owns (rendezvous hashing on the `address:port` name, as for every target).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial

from scanner.config import Config, Politeness, RangeConfig, TargetConfig
from scanner.daemon.pool import Sweeper, WorkerPool
from scanner.errors import WorkerError
from scanner.hostport import parse_host_port
from scanner.results.ranges import Discovered, RangePass, RangeTally
from scanner.targets import ALL, RangeBlock, Shard, block_endpoints, count_endpoints, range_blocks, range_target

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0  # after a discovery that failed (a worker died), before the range is tried again
# What one connect costs next to one sweep (6 handshakes and more), for `workers: auto`: a /16 weighs ~1,000 targets.
CONNECTS_PER_TARGET = 64


def discover_here(block: RangeBlock, window: int, politeness: Politeness, cancelled: Callable[[], bool]) -> Discovered:
    """Discovery of one block in this process (blocking: run it in a thread)."""
    from scanner.engine.discover import discover  # the engine loads only where it runs

    responders, tally = discover(block_endpoints(block), window, block.timeout, politeness, cancelled)
    return Discovered(block.network, tuple(responders), tally)


async def discover_in_thread(
    block: RangeBlock, window: int, politeness: Politeness, stopping: Callable[[], bool]
) -> Discovered:
    """discover_here in a thread; cancelled, it tells the thread to stop and waits for it (a fraction of a second),
    so no two blocks of one process ever run at once."""
    cancelled = False
    thread = asyncio.ensure_future(
        asyncio.to_thread(discover_here, block, window, politeness, lambda: cancelled or stopping())
    )
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        cancelled = True
        await asyncio.wait([thread])
        raise


def workload(config: Config, shard: Shard = ALL) -> int:
    """What `workers: auto` weighs: this replica's explicit targets, plus its share of the range endpoints."""
    ranged = count_endpoints(config) - len(config.targets)
    mine = sum(1 for t in config.targets if shard.owns(t.name))
    return mine + ranged // shard.count // CONNECTS_PER_TARGET


@dataclass(frozen=True)
class RangeRound:
    """What one discovery pass over a range found, for the range's entry in the config."""

    entry: RangeConfig
    responders: tuple[tuple[str, int], ...]
    tally: RangeTally
    started_at: float = 0.0  # unix time
    seconds: float = 0.0

    def targets(self) -> list[TargetConfig]:
        return [range_target(self.entry, host, port) for host, port in self.responders]


class Discovery:
    """Runs discovery: blocks in the worker processes, or one at a time in a thread here."""

    def __init__(self, sweeper: Sweeper, concurrency: int, politeness: Politeness) -> None:
        self.sweeper = sweeper
        self.window = concurrency
        self.politeness = politeness
        self.stopping = False
        self._here: asyncio.Lock | None = None

    async def block(self, block: RangeBlock) -> Discovered:
        if isinstance(self.sweeper, WorkerPool):
            return await self.sweeper.discover(block)
        if self._here is None:
            self._here = asyncio.Lock()
        async with self._here:
            return await discover_in_thread(block, self.window, self.politeness, lambda: self.stopping)

    async def range(
        self, config: Config, index: int, shard: Shard, each: Callable[[Discovered], object] | None = None
    ) -> RangeRound:
        """One pass over the range `config.ranges[index]`, its blocks in parallel over the workers; `each` is told
        what each block found as it is found."""
        entry = config.ranges[index]
        started_at, clock = time.time(), time.monotonic()

        async def one(block: RangeBlock) -> Discovered:
            found = await self.block(block)
            if each is not None:
                each(found)
            return found

        found = await asyncio.gather(*(one(b) for b in range_blocks(config, shard, only=index)))
        tally = sum((d.tally for d in found), RangeTally())
        # Address after address, as the range reads (discovery goes port after port).
        responders = sorted(
            (e for d in found for e in d.responders),
            key=lambda e: (ipaddress.ip_address(e[0]), entry.ports.index(e[1])),
        )
        return RangeRound(entry, tuple(responders), tally, started_at, time.monotonic() - clock)

    async def all(self, config: Config, shard: Shard) -> list[RangeRound]:
        """One pass over every range, in config order."""
        return [await self.range(config, index, shard) for index in range(len(config.ranges))]


def passes(rounds: Iterable[RangeRound]) -> dict[str, RangePass]:
    """Each network's last pass (two entries of one network, e.g. on other ports, add up)."""
    found: dict[str, RangePass] = {}
    for each in rounds:
        one = RangePass(each.tally, each.started_at, each.seconds)
        found[each.entry.network] = found[each.entry.network] + one if each.entry.network in found else one
    return found


def _key(entry: RangeConfig) -> tuple[str, tuple[int, ...]]:
    """What makes a range the same one across a reload: its network and ports (settings may change)."""
    return entry.network, entry.ports


class RangeWatcher:
    """The daemon's ranges: discovered at start, then again every `range_interval` (from the start of the last
    pass); calls `changed` when the targets it found may differ: after each pass, and during a pass whenever a block
    found responders (a pass over a large silent range takes hours; its responders need not wait for the end)."""

    def __init__(self, discovery: Discovery, config: Config, shard: Shard, changed: Callable[[], object]) -> None:
        self.discovery = discovery
        self.config = config
        self.shard = shard
        self.changed = changed
        self._found: dict[tuple[str, tuple[int, ...]], RangeRound] = {}  # each range's last complete pass
        self._partial: dict[tuple[str, tuple[int, ...]], RangeRound] = {}  # the pass in progress, so far
        self._due: dict[tuple[str, tuple[int, ...]], float] = {}  # loop time of the next pass
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.config.ranges:
            self._task = asyncio.create_task(self._run(), name="range discovery")

    def update(self, config: Config) -> None:
        """A reloaded config: ranges no longer in it are dropped (their targets retired), new ones discovered now."""
        self.config = config
        keys = {_key(entry) for entry in config.ranges}
        self._found = {
            key: replace(found, entry=entry)
            for entry in config.ranges
            if (found := self._found.get(key := _key(entry))) is not None
        }
        self._due = {key: at for key, at in self._due.items() if key in keys}
        self._partial = {key: found for key, found in self._partial.items() if key in keys}
        self._wake.set()
        self.start()

    def targets(self) -> list[TargetConfig]:
        """The range endpoints that accepted TCP at their range's last pass or so far in the one in progress (only
        the end of a pass retires), as targets with today's settings."""
        entries = {_key(entry): entry for entry in self.config.ranges}
        found = {t.name: t for found in self._found.values() for t in found.targets()}
        for key, so_far in self._partial.items():
            if key in entries:
                found |= {t.name: t for t in (range_target(entries[key], h, p) for h, p in so_far.responders)}
        return list(found.values())

    def covers(self, name: str) -> bool:
        """Whether `name` is an `address:port` endpoint of a range that has had a pass (so its answer is known)."""
        try:
            host, port = parse_host_port(name)
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(
            port in found.entry.ports and address in ipaddress.ip_network(found.entry.network)
            for found in self._found.values()
        )

    def passes(self) -> Mapping[str, RangePass]:
        """Each range's last complete pass; a range's first pass, while it runs, as counted so far."""
        first = [so_far for key, so_far in self._partial.items() if key not in self._found]
        return passes([*self._found.values(), *first])

    async def stop(self) -> None:
        self.discovery.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _block_found(self, key: tuple[str, tuple[int, ...]], found: Discovered) -> None:
        """A block of the pass in progress is done: count it, and make its responders targets now."""
        so_far = self._partial.get(key)
        if so_far is None:
            return  # the range was removed by a reload meanwhile
        seconds = time.time() - so_far.started_at
        self._partial[key] = RangeRound(
            so_far.entry, so_far.responders + found.responders, so_far.tally + found.tally, so_far.started_at, seconds
        )
        if found.responders:
            self.changed()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            config = self.config
            for index, entry in enumerate(config.ranges):
                key = _key(entry)
                if self._due.get(key, 0.0) > loop.time():
                    continue
                started = loop.time()
                self._partial[key] = RangeRound(entry, (), RangeTally(), time.time())
                try:
                    found = await self.discovery.range(config, index, self.shard, partial(self._block_found, key))
                except (WorkerError, OSError) as exc:
                    log.error("discovery of %s failed, trying again in %.0f s: %s", entry.network, RETRY_SECONDS, exc)
                    self._due[key] = started + RETRY_SECONDS
                    continue
                finally:
                    self._partial.pop(key, None)
                if self.config is not config:
                    break  # reloaded meanwhile: start over with the new ranges
                self._found[key] = found
                self._due[key] = started + entry.template.range_interval
                log.info(
                    "range %s: %d endpoints open, %d closed, %d silent (%.1f s)",
                    entry.network,
                    found.tally.open,
                    found.tally.closed,
                    found.tally.silent,
                    found.seconds,
                )
                self.changed()
            if self.config is not config:
                continue
            wait = min(self._due.values(), default=loop.time() + 3600.0) - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.0))
