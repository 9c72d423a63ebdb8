"""Prometheus metrics rendered from the results store on each scrape (our custom collector).

It writes the text exposition format itself, and keeps each target's lines until that target is swept again:
with 2,000 targets (80,000 series) a scrape then joins cached strings instead of rebuilding and formatting every
sample, which took prometheus_client's generic path over a second.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from scanner import __version__
from scanner.config import SafeConfig, TargetConfig
from scanner.results.deep import DeepResult
from scanner.results.ranges import RangePass
from scanner.results.sweep import SweepResult
from scanner.state.status import TargetStatus, sweep_status
from scanner.state.store import ResultStore
from scanner.targets import Shard
from scanner.tiers import TIERS, Tier
from scanner.tiers.deep import alone as deep_alone
from scanner.tiers.series import Family, Labels, gauge, pairs
from scanner.tiers.sweep import INTERVAL

__all__ = ["INTERVAL", "TARGET_FAMILIES", "Family", "ScannerMetrics", "render_probe", "render_sweeps", "sample"]


def families_of(tiers: Sequence[Tier]) -> tuple[Family, ...]:
    """The per-target families of these tiers, in the order they are exposed: tier after tier."""
    return tuple(family for tier in tiers for family in tier.families)


TARGET_FAMILIES = families_of(TIERS)
_ONCE_TIERS = tuple(tier for tier in TIERS if not tier.daemon_only)  # what one sweep alone can say
_ONCE_FAMILIES = families_of(_ONCE_TIERS)

RANGES = gauge(
    "tls_scanner_range_endpoints",
    "Endpoints of a network range at its last discovery pass: open (accepted TCP), closed (refused), silent "
    "(no answer)",
)
RANGE_PASS_AT = Family(
    "tls_scanner_range_last_discovery_timestamp_seconds", "gauge", "When the range's last discovery pass started"
)
RANGE_PASS_SECONDS = Family(
    "tls_scanner_range_discovery_duration_seconds", "gauge", "How long the range's last discovery pass took"
)
TARGETS = Family(
    "tls_scanner_targets", "gauge", "Targets swept (on this shard): those configured, and range endpoints found open"
)
BUILD_INFO = Family("tls_scanner_build_info", "gauge", "Versions of tls-scanner and sslyze")
SHARD_INFO = Family("tls_scanner_shard_info", "gauge", "This replica's shard of the targets")
RELOAD_OK = Family(
    "tls_scanner_config_last_reload_successful",
    "gauge",
    "1 if the last (re)load of the config and the web config succeeded",
)
RELOAD_AT = Family(
    "tls_scanner_config_last_reload_success_timestamp_seconds", "gauge", "When the config was last loaded successfully"
)
STATE_WRITABLE = Family(
    "tls_scanner_state_writable", "gauge", "1 if the last write to the state file succeeded (sweeps go on either way)"
)
STATE_WRITE_ERRORS = Family(
    "tls_scanner_state_write_errors_total", "counter", "Writes to the state file that failed (disk full, I/O error)"
)
PROBE_OPEN = Family(
    "tls_scanner_probe_open_to_everything", "gauge", "1 if probe.allow lets /probe scan any address (a warning sign)"
)
PROBE_SUCCESS = Family("tls_scanner_probe_success", "gauge", "1 if the probe determined every protocol")
PROBE_DURATION = Family("tls_scanner_probe_duration_seconds", "gauge", "How long the probe took")


_COMMON_NUMBERS = {0.0: "0.0", 1.0: "1.0"}  # most samples: spare floatToGoString


def number(value: float) -> str:
    """A sample value as prometheus_client writes it."""
    text = _COMMON_NUMBERS.get(value)
    return text if text is not None else str(floatToGoString(value))  # type: ignore[no-untyped-call]


def sample(family: Family, labels: dict[str, str], value: float) -> str:
    """One exposition line."""
    if not labels:
        return f"{family.name} {number(value)}\n"
    return f"{family.name}{{{pairs(labels)}}} {number(value)}\n"


@dataclass(frozen=True, slots=True)
class _TargetLines:
    # Per family in TARGET_FAMILIES order, its lines (UTF-8), b"" for none: a tuple of bytes is not even walked by the
    # garbage collector, which matters with 10,000 of them.
    lines: tuple[bytes, ...]
    range_state: str | None  # "open" / "closed" for range endpoints that were swept


@functools.cache
def _sslyze_version() -> str:
    # From the installed package's metadata: importing sslyze costs a third of a second.
    try:
        return importlib.metadata.version("sslyze")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Targets' line sets per piece of a family: ~300 KB, compressed in a millisecond or two, so slices stay short.
_PARTS_PER_PIECE = 1000


def _expose(
    targets: Sequence[tuple[TargetConfig, _TargetLines]],
    families: tuple[Family, ...],
    shard: Shard | None,
    reload: SafeConfig | None,
    store: ResultStore | None = None,
    ranges: Mapping[str, RangePass] | None = None,
) -> Iterator[list[bytes]]:
    """The whole text exposition in pieces, a family after another: its header, then each target's lines (the cached
    bytes themselves, not a copy), and last the scanner's own state."""
    ranged = sorted((ranges or {}).items())
    for index, family in enumerate(families):
        parts = [family.header().encode(), *(lines for _, entry in targets if (lines := entry.lines[index]))]
        for start in range(0, len(parts), _PARTS_PER_PIECE):
            yield parts[start : start + _PARTS_PER_PIECE]
    own = [
        RANGES.header()
        + "".join(
            sample(RANGES, {"range": r, "state": state}, count)
            for r, each in (ranges or {}).items()
            for state, count in each.tally.counts().items()
        ),
        RANGE_PASS_AT.header() + "".join(sample(RANGE_PASS_AT, {"range": r}, p.started_at) for r, p in ranged),
        RANGE_PASS_SECONDS.header() + "".join(sample(RANGE_PASS_SECONDS, {"range": r}, p.seconds) for r, p in ranged),
    ]
    own.append(TARGETS.header() + sample(TARGETS, {}, len(targets)))
    version = {"version": __version__, "sslyze_version": _sslyze_version()}
    own.append(BUILD_INFO.header() + sample(BUILD_INFO, version, 1))
    if shard is not None:
        labels = {"index": str(shard.index), "count": str(shard.count)}
        own.append(SHARD_INFO.header() + sample(SHARD_INFO, labels, 1))
    if store is not None and store.path is not None:
        own.append(STATE_WRITABLE.header() + sample(STATE_WRITABLE, {}, float(store.writable)))
        own.append(STATE_WRITE_ERRORS.header() + sample(STATE_WRITE_ERRORS, {}, store.write_errors))
    if reload is not None:
        own.append(PROBE_OPEN.header() + sample(PROBE_OPEN, {}, float(reload.config.probe.open_to_everything)))
        own.append(RELOAD_OK.header() + sample(RELOAD_OK, {}, float(reload.reload_successful)))
        own.append(RELOAD_AT.header() + sample(RELOAD_AT, {}, reload.last_success_at))
    yield ["".join(own).encode()]


# Between slices of this long, a render hands the event loop back (health checks, sweeps' results). A new
# connection's request takes the loop ~6 turns to answer (accept, connect, read, handle, write), each behind a slice.
RENDER_SLICE_SECONDS = 0.005
GZIP_LEVEL = 1  # 40 MB of exposition to ~2 MB in ~50 ms; higher levels cost twice the time for a few percent


class Exposition(list[bytes]):
    """One render of /metrics in parts, sent in batches: at 10,000 targets it is 40 MB. Plain text is held as
    references to each target's cached lines, so a scrape in flight copies nothing; a list subclass so the scrapes
    that come while it is current share it.

    gzip-compressed as it is rendered when the scraper accepts that (Prometheus does): 40 MB becomes ~2 MB held while
    it is sent, for ~50 ms of CPU at level 1."""

    def __init__(self, gzip: bool = False) -> None:
        super().__init__()
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None

    def add(self, parts: list[bytes]) -> None:
        """Append `parts`, compressed when this is a gzip body."""
        if self._compressor is None:
            self.extend(parts)
            return
        if chunk := self._compressor.compress(b"".join(parts)):
            self.append(chunk)

    def close(self) -> None:
        """End the gzip stream (nothing for plain text)."""
        if self._compressor is not None:
            self.append(self._compressor.flush())
            self._compressor = None


class ScannerMetrics:
    """Renders every tls_scanner_* family from the store; removed targets vanish with the config."""

    def __init__(
        self,
        store: ResultStore,
        reload: SafeConfig | None = None,
        shard: Shard | None = None,
        also: Callable[[], bytes] | None = None,
        tiers: Sequence[Tier] = TIERS,
        ranges: Callable[[], Mapping[str, RangePass]] | None = None,
    ) -> None:
        self.store = store
        self.ranges = ranges  # each range's endpoints by state, at its last discovery pass
        self.tiers = tuple(tiers)
        self.families = families_of(tiers)
        self.reload = reload
        self.shard = shard
        self.also = also  # more text after ours (the process collector's)
        # name -> (what the lines were built from: the target's config and sweep count, the lines)
        self._cache: dict[str, tuple[tuple[TargetConfig, int], _TargetLines]] = {}
        # The last render while some scrape still holds it, and what it was rendered from: kept no longer, so the
        # 40 MB are not held between scrapes.
        self._last: tuple[tuple[object, ...], weakref.ref[Exposition]] | None = None

    def render(self) -> str:
        """The text exposition of the store, plus the scanner's own state."""
        parts: list[bytes] = []
        for _ in self._render(parts.extend):
            pass
        return b"".join(parts).decode()

    async def exposition(self, gzip: bool = False) -> Exposition:
        """render(), encoded (and with `gzip` compressed) in parts, giving the event loop a turn every
        RENDER_SLICE_SECONDS of the work."""
        key = (*self._key(), gzip)
        last = self._last[1]() if self._last is not None and self._last[0] == key else None
        if last is not None:
            return last
        parts = Exposition(gzip)
        for _ in self._render(parts.add):
            await asyncio.sleep(0)
        if self.also is not None:
            parts.add([self.also()])
        parts.close()
        self._last = (key, weakref.ref(parts))
        return parts

    def _key(self) -> tuple[object, ...]:
        reload = None if self.reload is None else (self.reload.config, self.reload.reload_successful)
        ranges = None if self.ranges is None else tuple(self.ranges().items())
        return (self.store.generation, self.store.write_errors, reload, ranges)

    def _render(self, emit: Callable[[list[bytes]], None]) -> Iterator[None]:
        """Emit the exposition a family at a time, building the lines of targets swept since the last render; yields
        between slices of the work."""
        pause = time.monotonic() + RENDER_SLICE_SECONDS
        names = self.store.names()
        self._cache = {name: self._cache[name] for name in names if name in self._cache}
        for name in names:
            entry = (self.store.target(name), self.store.version(name))
            cached = self._cache.get(name)
            if cached is None or cached[0] != entry:
                self._cache[name] = (entry, _build(self.store.status(name), self.tiers, self.families))
                if time.monotonic() > pause:
                    yield
                    pause = time.monotonic() + RENDER_SLICE_SECONDS
        # A target swept during the pauses is taken as built: the next render rebuilds it.
        built = [self._cache[name] for name in names if name in self._cache]
        targets = [(entry[0], lines) for (entry, lines) in built]
        ranges = None if self.ranges is None else self.ranges()
        for part in _expose(targets, self.families, self.shard, self.reload, self.store, ranges):
            emit(part)
            if time.monotonic() > pause:
                yield
                pause = time.monotonic() + RENDER_SLICE_SECONDS


def _build(status: TargetStatus, tiers: Sequence[Tier], families: tuple[Family, ...]) -> _TargetLines:
    """Every line one target contributes, by family, from each tier."""
    lines: dict[Family, list[str]] = {}
    at = Labels({"target": status.target.name, **dict(status.target.labels)})

    def add(family: Family, labels: str, value: float) -> None:
        lines.setdefault(family, []).append(f"{family.name}{{{labels}}} {number(value)}\n")

    sweep = status.last_sweep
    range_state = None
    if status.target.range is not None and sweep is not None:
        range_state = "closed" if sweep.closed else "open"
    if range_state != "closed":  # a range endpoint closed to TCP is counted, not reported one by one
        for tier in tiers:
            tier.lines(status, at, add)
    return _TargetLines(tuple("".join(lines.get(f, ())).encode() for f in families), range_state)


def render_sweeps(
    sweeps: Iterable[SweepResult],
    shard: Shard | None = None,
    deep: Mapping[str, DeepResult] | None = None,
    ranges: Mapping[str, RangePass] | None = None,
) -> str:
    """The text exposition of one round of sweeps alone (`--once`, with `--deep` their deep scans, and what discovery
    found in the ranges), without a store."""
    deep = deep or {}

    def status(sweep: SweepResult) -> TargetStatus:
        return deep_alone(sweep_status(sweep), deep.get(sweep.target.name))

    built = [(s.target, _build(status(s), _ONCE_TIERS, _ONCE_FAMILIES)) for s in sweeps]
    families = _expose(built, _ONCE_FAMILIES, shard, None, ranges=ranges)
    return b"".join(part for family in families for part in family).decode()


def render_probe(sweep: SweepResult) -> str:
    """/probe's answer: that one sweep's families, plus whether it determined everything and how long it took."""
    return (
        render_sweeps([sweep])
        + PROBE_SUCCESS.header()
        + sample(PROBE_SUCCESS, {}, float(sweep.complete))
        + PROBE_DURATION.header()
        + sample(PROBE_DURATION, {}, sweep.duration_seconds)
    )
