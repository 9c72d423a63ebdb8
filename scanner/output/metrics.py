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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from prometheus_client.utils import floatToGoString

from scanner import __version__
from scanner.config import SafeConfig, TargetConfig
from scanner.results.deep import DeepResult, DeepState, deep_changes
from scanner.results.sweep import ErrorReason, ProtocolState, SweepResult
from scanner.state.policy import deadlines, has_policy, verdict
from scanner.state.status import TargetStatus, ended_at, sweep_status
from scanner.state.store import ResultStore
from scanner.targets import Shard

_FROM_SWEEP = "(from the last sweep, not measured at scrape time)"


@dataclass(frozen=True, eq=False)  # each family is one object: hashed by identity, fast as a dict key
class Family:
    """One metric family: its name as exposed, its type and its help text."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str

    def header(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"


def _gauge(name: str, text: str) -> Family:
    return Family(name, "gauge", f"{text} {_FROM_SWEEP}")


def _counter(name: str, text: str) -> Family:
    return Family(name, "counter", f"{text} {_FROM_SWEEP}")


# The per-target families, in the order they are exposed.
ACCEPTED = _gauge(
    "tls_scanner_protocol_accepted",
    "1 if the address accepts the protocol, 0 if it rejects it; an error keeps the last determined value",
)
CHANGES = _counter("tls_scanner_protocol_changes_total", "Flips between accepted and rejected observed")
LAST_CHANGE = _gauge(
    "tls_scanner_protocol_last_change_timestamp_seconds",
    "When the protocol's state last flipped, or was first determined",
)
PROTOCOL_ERROR = _gauge(
    "tls_scanner_protocol_error", "1 if the last sweep could not determine the protocol on the address"
)
HTTP_STATUS = _gauge("tls_scanner_http_status_code", "HTTP status answered over the protocol's handshake")
HTTP_CHANGES = _counter(
    "tls_scanner_http_status_changes_total", "Changes of the HTTP status answered over the protocol (200 -> 403 ...)"
)
HTTP_LAST_CHANGE = _gauge(
    "tls_scanner_http_status_last_change_timestamp_seconds",
    "When the HTTP status over the protocol last changed, or was first seen",
)
ACCEPTED_ADDRESSES = _gauge(
    "tls_scanner_protocol_accepted_addresses", "How many of the target's addresses accepted the protocol"
)
ADDRESSES = _gauge("tls_scanner_addresses", "How many addresses the target's name resolved to (probed)")
SUCCESS = _gauge("tls_scanner_scan_success", "1 if the last sweep determined every protocol on every address")
LAST_SCAN = _gauge("tls_scanner_last_scan_timestamp_seconds", "When the last sweep of the target ended")
LAST_SUCCESS = _gauge(
    "tls_scanner_last_success_timestamp_seconds", "When the last sweep that determined every protocol ended"
)
DURATION = _gauge("tls_scanner_scan_duration_seconds", "How long the last sweep of the target took")
INTERVAL = Family("tls_scanner_scan_interval_seconds", "gauge", "The target's configured interval between sweeps")
ERRORS = _counter("tls_scanner_scan_errors_total", "Sweeps that hit an error, by reason")
RETRIES = _counter(
    "tls_scanner_handshake_retries_total", "Hellos sent again because a refusal came without a TLS alert"
)
EXPECTATION = _gauge("tls_scanner_expectation_met", "1 if the last sweep met the target's expect policy")
_FROM_DEEP = "(from the last deep scan, not measured at scrape time)"
CERT_NOT_AFTER = Family(
    "tls_scanner_certificate_not_after_timestamp_seconds", "gauge", f"When the leaf certificate expires {_FROM_DEEP}"
)
CHAIN_NOT_AFTER = Family(
    "tls_scanner_certificate_chain_not_after_timestamp_seconds",
    "gauge",
    f"Earliest expiry in the served chain, a trust anchor excluded {_FROM_DEEP}",
)
CERT_VALID = Family(
    "tls_scanner_certificate_valid", "gauge", f"1 if the chain validates for the target's name, else 0 {_FROM_DEEP}"
)
CERT_INFO = Family("tls_scanner_certificate_info", "gauge", f"The leaf certificate, always 1 {_FROM_DEEP}")
CIPHER_ACCEPTED = Family(
    "tls_scanner_cipher_suite_accepted", "gauge", f"1 for each cipher suite the address accepts {_FROM_DEEP}"
)
CIPHER_CHANGES = Family(
    "tls_scanner_cipher_suite_changes_total",
    "counter",
    f"Cipher suites that appeared or disappeared between deep scans (persisted) {_FROM_DEEP}",
)
MOZILLA = Family(
    "tls_scanner_mozilla_compliant", "gauge", f"1 if the address meets Mozilla's TLS profile, else 0 {_FROM_DEEP}"
)
DEEP_TIMESTAMP = Family(
    "tls_scanner_deep_scan_timestamp_seconds", "gauge", "When the last deep scan of the target ended"
)
DEEP_SUCCESS = Family(
    "tls_scanner_deep_scan_success", "gauge", f"1 if the last deep scan scanned every address in full {_FROM_DEEP}"
)
HTTP_MATCH = _gauge(
    "tls_scanner_http_match", "1 if the target's http.match was found in the answer over the protocol, else 0"
)
CLIENT_COMPATIBLE = _gauge(
    "tls_scanner_client_compatible", "1 if the client profile can connect to the address, 0 if it cannot"
)
CLIENT_CHANGES = _counter(
    "tls_scanner_client_compatibility_changes_total", "Times the client profile gained or lost the address"
)
CLIENT_LAST_CHANGE = _gauge(
    "tls_scanner_client_compatibility_last_change_timestamp_seconds",
    "When the client profile last gained or lost the address, or was first checked",
)
DEADLINE = Family(
    "tls_scanner_expectation_deadline_timestamp_seconds", "gauge", "When a dated expect policy is enforced from"
)
DEADLINE_MET = _gauge(
    "tls_scanner_expectation_deadline_met", "1 if the last sweep meets the dated policy (enforced yet or not)"
)
TARGET_FAMILIES = (
    ACCEPTED, CHANGES, LAST_CHANGE, PROTOCOL_ERROR, HTTP_STATUS, HTTP_CHANGES, HTTP_LAST_CHANGE, ACCEPTED_ADDRESSES,
    ADDRESSES, SUCCESS, LAST_SCAN, LAST_SUCCESS, DURATION, INTERVAL, ERRORS, RETRIES, EXPECTATION,
    HTTP_MATCH, CLIENT_COMPATIBLE, CLIENT_CHANGES, CLIENT_LAST_CHANGE, DEADLINE, DEADLINE_MET,
    CERT_NOT_AFTER, CHAIN_NOT_AFTER, CERT_VALID, CERT_INFO, CIPHER_ACCEPTED, CIPHER_CHANGES, MOZILLA, DEEP_TIMESTAMP,
    DEEP_SUCCESS,
)  # fmt: skip
RANGES = _gauge("tls_scanner_range_endpoints", "Endpoints of a network range by whether they accepted TCP")
TARGETS = Family("tls_scanner_targets", "gauge", "Targets configured (on this shard)")
BUILD_INFO = Family("tls_scanner_build_info", "gauge", "Versions of tls-scanner and sslyze")
SHARD_INFO = Family("tls_scanner_shard_info", "gauge", "This replica's shard of the targets")
RELOAD_OK = Family("tls_scanner_config_last_reload_successful", "gauge", "1 if the last config (re)load succeeded")
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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_COMMON_NUMBERS = {0.0: "0.0", 1.0: "1.0"}  # most samples: spare floatToGoString


def _number(value: float) -> str:
    text = _COMMON_NUMBERS.get(value)
    return text if text is not None else str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _pairs(labels: Mapping[str, str]) -> str:
    """`a="1",b="2"`: the label pairs sorted by name, as prometheus_client writes them."""
    return ",".join(f'{key}="{_escape(labels[key])}"' for key in sorted(labels))


def sample(family: Family, labels: dict[str, str], value: float) -> str:
    """One exposition line."""
    if not labels:
        return f"{family.name} {_number(value)}\n"
    return f"{family.name}{{{_pairs(labels)}}} {_number(value)}\n"


class _Labels:
    """A target's labels plus each set of extra ones, written out once however many of its lines use them."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._base = dict(labels)
        self._texts: dict[tuple[tuple[str, str], ...], str] = {}

    def __call__(self, *extra: tuple[str, str]) -> str:
        text = self._texts.get(extra)
        if text is None:
            text = self._texts[extra] = _pairs({**self._base, **dict(extra)})
        return text


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
    shard: Shard | None,
    reload: SafeConfig | None,
    store: ResultStore | None = None,
) -> Iterator[list[bytes]]:
    """The whole text exposition in pieces, a family after another: its header, then each target's lines (the cached
    bytes themselves, not a copy), and last the scanner's own state."""
    ranges: dict[str, Counter[str]] = {}
    for target, entry in targets:
        if target.range is not None:
            counts = ranges.setdefault(target.range, Counter())
            if entry.range_state is not None:
                counts[entry.range_state] += 1
    for index, family in enumerate(TARGET_FAMILIES):
        parts = [family.header().encode(), *(lines for _, entry in targets if (lines := entry.lines[index]))]
        for start in range(0, len(parts), _PARTS_PER_PIECE):
            yield parts[start : start + _PARTS_PER_PIECE]
    own = [
        RANGES.header()
        + "".join(
            sample(RANGES, {"range": r, "state": state}, counts[state])
            for r, counts in ranges.items()
            for state in ("open", "closed")
        )
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
    ) -> None:
        self.store = store
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
        return (self.store.generation, self.store.write_errors, reload)

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
                self._cache[name] = (entry, _build(self.store.status(name)))
                if time.monotonic() > pause:
                    yield
                    pause = time.monotonic() + RENDER_SLICE_SECONDS
        # A target swept during the pauses is taken as built: the next render rebuilds it.
        built = [self._cache[name] for name in names if name in self._cache]
        for part in _expose([(entry[0], lines) for (entry, lines) in built], self.shard, self.reload, self.store):
            emit(part)
            if time.monotonic() > pause:
                yield
                pause = time.monotonic() + RENDER_SLICE_SECONDS


def _build(status: TargetStatus) -> _TargetLines:
    """Every line one target contributes, by family."""
    lines: dict[Family, list[str]] = {}
    at = _Labels({"target": status.target.name, **dict(status.target.labels)})

    def add(family: Family, labels: str, value: float) -> None:
        lines.setdefault(family, []).append(f"{family.name}{{{labels}}} {_number(value)}\n")

    def done() -> _TargetLines:
        return _TargetLines(tuple("".join(lines.get(f, ())).encode() for f in TARGET_FAMILIES), range_state)

    target = status.target
    sweep = status.last_sweep
    range_state = None
    if target.range is not None and sweep is not None:
        range_state = "closed" if sweep.closed else "open"
        if sweep.closed:
            return done()  # counted, not reported one by one
    add(INTERVAL, at(), target.interval)
    for address, statuses in status.addresses.items():
        for protocol, state in statuses.items():
            labels = at(("address", address), ("protocol", protocol.value))
            add(ACCEPTED, labels, 1.0 if state.state is ProtocolState.ACCEPTED else 0.0)
            add(CHANGES, labels, state.changes)
            add(LAST_CHANGE, labels, state.last_change)
            if state.http_last_change is not None:
                add(HTTP_CHANGES, labels, state.http_changes)
                add(HTTP_LAST_CHANGE, labels, state.http_last_change)
    for address, by_client in status.clients.items():
        for client, state in by_client.items():
            labels = at(("address", address), ("client", client))
            add(CLIENT_COMPATIBLE, labels, 1.0 if state.state is ProtocolState.ACCEPTED else 0.0)
            add(CLIENT_CHANGES, labels, state.changes)
            add(CLIENT_LAST_CHANGE, labels, state.last_change)
    for reason in ErrorReason:
        add(ERRORS, at(("reason", reason.value)), status.errors.get(reason, 0))
    add(RETRIES, at(), status.retries)
    if status.deep is not None:
        _deep_lines(status, at, add)
    if sweep is None:
        return done()
    for result in sweep.addresses:
        for protocol, outcome in result.protocols.items():
            labels = at(("address", result.address), ("protocol", protocol.value))
            add(PROTOCOL_ERROR, labels, float(outcome.state is ProtocolState.ERROR))
            if outcome.http_status is not None:
                add(HTTP_STATUS, labels, outcome.http_status)
            if outcome.http_match is not None:
                add(HTTP_MATCH, labels, float(outcome.http_match))
    for protocol in target.protocols:
        add(ACCEPTED_ADDRESSES, at(("protocol", protocol.value)), sweep.accepted_addresses(protocol))
    add(ADDRESSES, at(), len(sweep.addresses))
    add(SUCCESS, at(), float(sweep.complete))
    add(LAST_SCAN, at(), ended_at(sweep))
    add(DURATION, at(), sweep.duration_seconds)
    if status.last_success_at is not None:
        add(LAST_SUCCESS, at(), status.last_success_at)
    if has_policy(target, sweep.started_at):
        add(EXPECTATION, at(), float(verdict(sweep).met))
    for dated, judged in deadlines(sweep):
        add(DEADLINE, at(("policy", dated.name)), dated.start)
        add(DEADLINE_MET, at(("policy", dated.name)), float(judged.met))
    return done()


def _deep_lines(status: TargetStatus, at: _Labels, add: Callable[[Family, str, float], None]) -> None:
    """The deep tier's lines of one target: per address its certificate, suites, profiles; per target when and how."""
    deep = status.deep
    assert deep is not None
    add(DEEP_TIMESTAMP, at(), deep.ended_at)
    add(DEEP_SUCCESS, at(), float(deep.success))
    for result in deep.addresses:
        address = ("address", result.address)
        cert = result.certificate
        if cert is not None:
            add(CERT_NOT_AFTER, at(address), cert.not_after)
            add(CHAIN_NOT_AFTER, at(address), cert.chain_not_after)
            add(CERT_VALID, at(address), float(cert.valid))
            info = (
                ("subject", cert.subject),
                ("issuer", cert.issuer),
                ("serial", cert.serial),
                ("fingerprint_sha256", cert.fingerprint_sha256),
                ("key", cert.key),
                ("error", (cert.error or "")[:200]),  # a bounded label: the start of the validation error says why
            )
            add(CERT_INFO, at(address, *info), 1)
        state = status.deep_states.get(result.address)
        # The suites last enumerated per version: a version this scan could not enumerate keeps its series (an
        # outage is not a cipher-level brownout, and TLSCipherSuiteRemoved reads vanished series as one).
        known = state.cipher_suites if state is not None else result.cipher_suites
        for protocol, suites in known.items():
            for suite in sorted(suites):
                add(CIPHER_ACCEPTED, at(address, ("protocol", protocol.value), ("cipher", suite)), 1)
        if state is not None:
            for protocol, count in state.changes.items():
                if state.cipher_suites.get(protocol) or count:  # versions that never had a suite add no series
                    add(CIPHER_CHANGES, at(address, ("protocol", protocol.value)), count)
        for profile, reasons in result.compliance.items():
            add(MOZILLA, at(address, ("profile", profile.value)), float(not reasons))


def render_sweeps(
    sweeps: Iterable[SweepResult], shard: Shard | None = None, deep: Mapping[str, DeepResult] | None = None
) -> str:
    """The text exposition of one round of sweeps alone (`--once`, with `--deep` their deep scans), without a store."""
    deep = deep or {}

    def status(sweep: SweepResult) -> TargetStatus:
        return replace(sweep_status(sweep), deep=deep.get(sweep.target.name), deep_states=_first_states(deep, sweep))

    families = _expose([(s.target, _build(status(s))) for s in sweeps], shard, None)
    return b"".join(part for family in families for part in family).decode()


def _first_states(deep: Mapping[str, DeepResult], sweep: SweepResult) -> dict[str, DeepState]:
    """The states one deep scan gives on its own, as the target's first (no changes yet)."""
    result = deep.get(sweep.target.name)
    return {} if result is None else {a.address: deep_changes(None, a)[0] for a in result.addresses}


def render_probe(sweep: SweepResult) -> str:
    """/probe's answer: that one sweep's families, plus whether it determined everything and how long it took."""
    return (
        render_sweeps([sweep])
        + PROBE_SUCCESS.header()
        + sample(PROBE_SUCCESS, {}, float(sweep.complete))
        + PROBE_DURATION.header()
        + sample(PROBE_DURATION, {}, sweep.duration_seconds)
    )
