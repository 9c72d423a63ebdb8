"""A custom Prometheus collector that renders the results store on each scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import sslyze
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scanner import __version__
from scanner.probe import ErrorReason, ProtocolState, SweepResult
from scanner.store import ResultStore, TargetStatus
from scanner.targets import Shard

_FROM_SWEEP = "(from the last sweep, not measured at scrape time)"


@dataclass
class ReloadStatus:
    """What the daemon knows about its own config, for the self-metrics."""

    successful: bool = True
    last_success_at: float | None = None
    error: str | None = None


class ScannerCollector(Collector):
    """Yields every tls_scanner_* family from the store; removed targets vanish with the config."""

    def __init__(self, store: ResultStore, reload: ReloadStatus | None = None, shard: Shard | None = None) -> None:
        self.store = store
        self.reload = reload
        self.shard = shard

    def collect(self) -> Iterator[Metric]:
        accepted = _gauge(
            "tls_scanner_protocol_accepted",
            "1 if the address accepts the protocol, 0 if it rejects it; an error keeps the last determined value",
        )
        changes = CounterMetricFamily(
            "tls_scanner_protocol_changes", f"Flips between accepted and rejected observed {_FROM_SWEEP}"
        )
        last_change = _gauge(
            "tls_scanner_protocol_last_change_timestamp_seconds",
            "When the protocol's state last flipped, or was first determined",
        )
        protocol_error = _gauge(
            "tls_scanner_protocol_error", "1 if the last sweep could not determine the protocol on the address"
        )
        http_status = _gauge("tls_scanner_http_status_code", "HTTP status answered over the protocol's handshake")
        accepted_addresses = _gauge(
            "tls_scanner_protocol_accepted_addresses", "How many of the target's addresses accepted the protocol"
        )
        addresses = _gauge("tls_scanner_addresses", "How many addresses the target's name resolved to (probed)")
        success = _gauge("tls_scanner_scan_success", "1 if the last sweep determined every protocol on every address")
        last_scan = _gauge("tls_scanner_last_scan_timestamp_seconds", "When the last sweep of the target ended")
        last_success = _gauge(
            "tls_scanner_last_success_timestamp_seconds", "When the last sweep that determined every protocol ended"
        )
        duration = _gauge("tls_scanner_scan_duration_seconds", "How long the last sweep of the target took")
        interval = GaugeMetricFamily(
            "tls_scanner_scan_interval_seconds", "The target's configured interval between sweeps"
        )
        errors = CounterMetricFamily("tls_scanner_scan_errors", f"Sweeps that hit an error, by reason {_FROM_SWEEP}")
        expectation = _gauge("tls_scanner_expectation_met", "1 if the last sweep met the target's expect policy")
        ranges = _gauge("tls_scanner_range_endpoints", "Endpoints of a network range by whether they accepted TCP")

        range_counts: dict[str, Counter[str]] = {}
        snapshot = self.store.snapshot()
        for status in snapshot:
            labels = _target_labels(status)
            sweep = status.last_sweep
            if status.target.range is not None:
                counts = range_counts.setdefault(status.target.range, Counter())
                if sweep is None:
                    continue
                counts["closed" if sweep.closed else "open"] += 1
                if sweep.closed:
                    continue
            interval.add_sample(interval.name, labels, status.target.interval)
            for address, statuses in status.addresses.items():
                for protocol, state in statuses.items():
                    alabels = {**labels, "address": address, "protocol": protocol.value}
                    accepted.add_sample(accepted.name, alabels, 1.0 if state.state is ProtocolState.ACCEPTED else 0.0)
                    changes.add_sample(changes.name + "_total", alabels, float(state.changes))
                    last_change.add_sample(last_change.name, alabels, state.last_change)
            for reason in ErrorReason:
                errors.add_sample(
                    errors.name + "_total", {**labels, "reason": reason.value}, float(status.errors.get(reason, 0))
                )
            if sweep is None:
                continue
            for result in sweep.addresses:
                for protocol, outcome in result.protocols.items():
                    alabels = {**labels, "address": result.address, "protocol": protocol.value}
                    protocol_error.add_sample(protocol_error.name, alabels, float(outcome.state is ProtocolState.ERROR))
                    if outcome.http_status is not None:
                        http_status.add_sample(http_status.name, alabels, float(outcome.http_status))
            for protocol in status.target.protocols:
                plabels = {**labels, "protocol": protocol.value}
                accepted_addresses.add_sample(
                    accepted_addresses.name, plabels, float(sweep.accepted_addresses(protocol))
                )
            addresses.add_sample(addresses.name, labels, float(len(sweep.addresses)))
            ended = sweep.started_at + sweep.duration_seconds
            success.add_sample(success.name, labels, float(sweep.complete))
            last_scan.add_sample(last_scan.name, labels, ended)
            duration.add_sample(duration.name, labels, sweep.duration_seconds)
            if status.last_success_at is not None:
                last_success.add_sample(last_success.name, labels, status.last_success_at)
            if status.verdict is not None and not status.target.expect.empty:
                expectation.add_sample(expectation.name, labels, float(status.verdict.met))
        for name, counts in range_counts.items():
            for tcp in ("open", "closed"):
                ranges.add_sample(ranges.name, {"range": name, "state": tcp}, float(counts[tcp]))
        yield from (accepted, changes, last_change, protocol_error, http_status, accepted_addresses, addresses)
        yield from (success, last_scan, last_success, duration, interval, errors, expectation, ranges)

        yield _single("tls_scanner_targets", "Targets configured (on this shard)", float(len(snapshot)))
        info = GaugeMetricFamily(
            "tls_scanner_build_info", "Versions of tls-scanner and sslyze", labels=["version", "sslyze_version"]
        )
        info.add_metric([__version__, sslyze.__version__.__version__], 1.0)
        yield info
        if self.shard is not None:
            shard = GaugeMetricFamily(
                "tls_scanner_shard_info", "This replica's shard of the targets", labels=["index", "count"]
            )
            shard.add_metric([str(self.shard.index), str(self.shard.count)], 1.0)
            yield shard
        if self.reload is not None:
            yield _single(
                "tls_scanner_config_last_reload_successful",
                "1 if the last config (re)load succeeded",
                float(self.reload.successful),
            )
            if self.reload.last_success_at is not None:
                yield _single(
                    "tls_scanner_config_last_reload_success_timestamp_seconds",
                    "When the config was last loaded successfully",
                    self.reload.last_success_at,
                )


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, f"{documentation} {_FROM_SWEEP}")


def _single(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _target_labels(status: TargetStatus) -> dict[str, str]:
    return {"target": status.target.name, **dict(status.target.labels)}


def render(store: ResultStore, reload: ReloadStatus | None = None, shard: Shard | None = None) -> bytes:
    """The text exposition of the store alone (for --once, /probe and tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScannerCollector(store, reload, shard))
    return generate_latest(registry)


def render_probe(sweep: SweepResult) -> bytes:
    """/probe's answer: that one sweep's families, plus whether it determined everything and how long it took."""
    store = ResultStore(None)
    store.set_targets([sweep.target])
    store.record(sweep)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScannerCollector(store))
    text = generate_latest(registry).decode()
    success = _single("tls_scanner_probe_success", "1 if the probe determined every protocol", float(sweep.complete))
    duration = _single("tls_scanner_probe_duration_seconds", "How long the probe took", sweep.duration_seconds)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Fixed([success, duration]))
    return (text + generate_latest(extra).decode()).encode()


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families
