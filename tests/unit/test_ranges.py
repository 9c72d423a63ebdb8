"""The daemon's range passes (scanner.daemon.ranges.RangeWatcher) on a virtual clock: a fake discovery whose answers
change between passes; no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from scanner.config import Config, RangeConfig, TargetConfig
from scanner.daemon.ranges import Discovery, RangeRound, RangeWatcher, passes
from scanner.results.ranges import Discovered, RangePass, RangeTally
from scanner.targets import ALL, Shard
from tests.unit.fakes import FakeSweeper, run


def _range(network: str, ports: tuple[int, ...] = (443,), interval: float = 60.0, zone: str = "a") -> RangeConfig:
    template = TargetConfig(name=network, host=network.split("/")[0], range_interval=interval, labels=(("zone", zone),))
    return RangeConfig(network=network, ports=ports, template=template)


class _ScriptedDiscovery(Discovery):
    """Each pass over a range answers the next of its scripted responder lists (the last one from then on), after
    `seconds` of the loop's clock."""

    def __init__(self, script: dict[str, list[list[str]]], seconds: float = 1.0) -> None:
        super().__init__(FakeSweeper(), 8, Config(path="x", targets=()).politeness)  # type: ignore[arg-type]
        self.script = script
        self.seconds = seconds
        self.passes: list[tuple[str, float]] = []

    async def range(
        self, config: Config, index: int, shard: Shard, each: Callable[[Discovered], object] | None = None
    ) -> RangeRound:
        """Two blocks: the first half of the time finds the first responder, the rest the others."""
        entry = config.ranges[index]
        self.passes.append((entry.network, asyncio.get_running_loop().time()))
        answers = self.script[entry.network]
        hosts = [(h, 443) for h in (answers.pop(0) if len(answers) > 1 else answers[0])]
        tally = RangeTally(len(hosts), entry.size - len(hosts), 0)
        for block in (hosts[:1], hosts[1:]):
            await asyncio.sleep(self.seconds / 2)
            if each is not None:
                each(Discovered(entry.network, tuple(block), RangeTally(len(block), 0, 0)))
        return RangeRound(entry, tuple(hosts), tally)


def _watch(
    config: Config, discovery: _ScriptedDiscovery, until: float, reload_at: tuple[float, Config] | None = None
) -> tuple[RangeWatcher, list[tuple[float, list[str]]]]:
    seen: list[tuple[float, list[str]]] = []

    async def main() -> RangeWatcher:
        loop = asyncio.get_running_loop()
        watcher: RangeWatcher

        def changed() -> None:
            seen.append((loop.time(), sorted(t.name for t in watcher.targets())))

        watcher = RangeWatcher(discovery, config, ALL, changed)
        watcher.start()
        if reload_at is not None:
            await asyncio.sleep(reload_at[0])
            watcher.update(reload_at[1])
            await asyncio.sleep(until - reload_at[0])
        else:
            await asyncio.sleep(until)
        await watcher.stop()
        return watcher

    return run(main()), seen


def test_each_range_is_discovered_at_start_then_every_range_interval_from_the_last_start() -> None:
    config = Config(
        path="x", targets=(), ranges=(_range("127.10.0.0/30", interval=60), _range("127.11.0.0/30", interval=600))
    )
    discovery = _ScriptedDiscovery(
        {"127.10.0.0/30": [["127.10.0.1"], ["127.10.0.1", "127.10.0.2"], ["127.10.0.2"]], "127.11.0.0/30": [[]]}
    )
    watcher, seen = _watch(config, discovery, until=200)
    assert discovery.passes == [
        ("127.10.0.0/30", 0), ("127.11.0.0/30", 1),
        ("127.10.0.0/30", 60), ("127.10.0.0/30", 120), ("127.10.0.0/30", 180),
    ]  # fmt: skip
    at = dict(seen)  # loop time -> the targets after the last change then
    assert at[0.5] == ["127.10.0.1:443"]  # found by the pass's first block: a target before the pass ends
    assert at[1.0] == at[2.0] == ["127.10.0.1:443"]  # the second range found nothing
    assert at[61.0] == ["127.10.0.1:443", "127.10.0.2:443"]  # appeared
    assert at[120.5] == ["127.10.0.1:443", "127.10.0.2:443"]  # 127.10.0.1 is gone, but only the end of a pass retires
    assert at[121.0] == ["127.10.0.2:443"]
    tallies = {network: found.tally for network, found in watcher.passes().items()}
    assert tallies == {"127.10.0.0/30": RangeTally(1, 3, 0), "127.11.0.0/30": RangeTally(0, 4, 0)}
    found = watcher.targets()
    assert [(t.name, t.range, t.labels) for t in found] == [("127.10.0.2:443", "127.10.0.0/30", (("zone", "a"),))]


def test_a_reload_keeps_what_unchanged_ranges_found_with_new_settings_and_drops_removed_ranges() -> None:
    first = Config(path="x", targets=(), ranges=(_range("127.10.0.0/30"), _range("127.11.0.0/30")))
    second = Config(path="x", targets=(), ranges=(_range("127.10.0.0/30", zone="b"), _range("127.12.0.0/30")))
    discovery = _ScriptedDiscovery(
        {"127.10.0.0/30": [["127.10.0.1"]], "127.11.0.0/30": [["127.11.0.1"]], "127.12.0.0/30": [[]]}
    )
    watcher, seen = _watch(first, discovery, until=30, reload_at=(10, second))
    assert dict(seen)[2.0] == ["127.10.0.1:443", "127.11.0.1:443"]
    # At the reload 127.10.0.0/30 is not discovered again (its interval has not passed), 127.12.0.0/30 is, at once.
    assert discovery.passes[2:] == [("127.12.0.0/30", 10)]
    assert [(t.name, t.labels) for t in watcher.targets()] == [("127.10.0.1:443", (("zone", "b"),))]
    assert set(watcher.passes()) == {"127.10.0.0/30", "127.12.0.0/30"}


def test_passes_add_up_entries_of_one_network() -> None:
    a, b = _range("127.10.0.0/30", ports=(443,)), _range("127.10.0.0/30", ports=(8443,))
    rounds = [
        RangeRound(a, (), RangeTally(1, 2, 1), 100.0, 2.0),
        RangeRound(replace(b), (), RangeTally(0, 3, 1), 90.0, 1.0),
    ]
    assert passes(rounds) == {"127.10.0.0/30": RangePass(RangeTally(1, 5, 2), 90.0, 3.0)}
