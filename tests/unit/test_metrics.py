"""The collector: series come from the store on each scrape, removed targets vanish, promtool accepts the output."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scanner.config import Config, Expectation, ProbeSettings, SafeConfig, TargetConfig
from scanner.output import metrics as metrics_module
from scanner.output.metrics import ScannerMetrics
from scanner.protocols import Protocol
from scanner.state.store import ResultStore
from tests.unit.factories import A, E, R, sweep, target

T10, T12 = Protocol.TLSv1_0, Protocol.TLSv1_2


class _Scraper:
    """Scrapes one long-lived ScannerMetrics (so its per-target cache is exercised) and looks samples up."""

    def __init__(self, store: ResultStore) -> None:
        self.metrics = ScannerMetrics(store, _reload(successful=False, at=5.0))

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        for family in text_string_to_metric_families(self.metrics.render()):
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return float(sample.value)
        return None


def _reload(successful: bool, at: float) -> SafeConfig:
    safe = SafeConfig(Config(path="config.yaml", targets=()))
    safe.config_loaded, safe.last_success_at = successful, at
    return safe


def render(store: ResultStore, reload: SafeConfig | None = None) -> str:
    return ScannerMetrics(store, reload).render()


def _registry(store: ResultStore) -> _Scraper:
    return _Scraper(store)


def test_values_follow_the_store() -> None:
    store = ResultStore(None)
    t = target("web", expect=Expectation(reject=frozenset({T10})), labels=(("team", "infra"),))
    store.set_targets([t])
    registry = _registry(store)
    store.record(sweep(t, {T10: A, T12: A}, at=100, http={T12: 200}))
    labels = {"target": "web", "team": "infra"}
    at = {**labels, "address": "127.0.0.1"}
    get = registry.get_sample_value
    assert get("tls_scanner_protocol_accepted", {**at, "protocol": "TLSv1.0"}) == 1
    assert get("tls_scanner_expectation_met", labels) == 0
    assert get("tls_scanner_http_status_code", {**at, "protocol": "TLSv1.2"}) == 200
    store.record(sweep(t, {T10: R, T12: E}, at=200))
    assert get("tls_scanner_protocol_accepted", {**at, "protocol": "TLSv1.0"}) == 0
    assert get("tls_scanner_protocol_changes_total", {**at, "protocol": "TLSv1.0"}) == 1
    assert get("tls_scanner_protocol_last_change_timestamp_seconds", {**at, "protocol": "TLSv1.0"}) == 200.5
    # the error leaves TLSv1.2 at its last determined value
    assert get("tls_scanner_protocol_accepted", {**at, "protocol": "TLSv1.2"}) == 1
    assert get("tls_scanner_protocol_error", {**at, "protocol": "TLSv1.2"}) == 1
    assert get("tls_scanner_scan_success", labels) == 0
    assert get("tls_scanner_last_success_timestamp_seconds", labels) == 100.5
    assert get("tls_scanner_scan_errors_total", {**labels, "reason": "timeout"}) == 1
    assert get("tls_scanner_scan_errors_total", {**labels, "reason": "dns"}) == 0
    assert get("tls_scanner_expectation_met", labels) == 1
    assert get("tls_scanner_config_last_reload_successful") == 0
    assert get("tls_scanner_targets") == 1


def test_removed_target_series_vanish() -> None:
    store = ResultStore(None)
    a, b = target("a"), target("b")
    store.set_targets([a, b])
    store.record(sweep(a, {T12: A}))
    store.record(sweep(b, {T12: A}))
    registry = _registry(store)
    assert (
        registry.get_sample_value(
            "tls_scanner_protocol_accepted", {"target": "a", "address": "127.0.0.1", "protocol": "TLSv1.2"}
        )
        == 1
    )
    store.set_targets([b])
    assert (
        registry.get_sample_value(
            "tls_scanner_protocol_accepted", {"target": "a", "address": "127.0.0.1", "protocol": "TLSv1.2"}
        )
        is None
    )
    assert 'target="a"' not in render(store)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (tests/run.sh installs it)")
def test_promtool_accepts_the_exposition() -> None:
    store = ResultStore(None)
    t = target("web", expect=Expectation(accept=frozenset({T12})), labels=(("team", 'a b "c"'),))
    store.set_targets([t])
    store.record(sweep(t, {T10: R, T12: A}, http={T12: 403}))
    text = render(store, _reload(successful=True, at=1.0)).encode()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_partial_rollout_counts_addresses() -> None:
    store = ResultStore(None)
    t = target("cdn")
    store.set_targets([t])
    edges = {"127.0.0.2": {T10: A, T12: A}, "127.0.0.3": {T10: R, T12: A}, "::1": {T10: R, T12: A}}
    store.record(sweep(t, {T10: A, T12: A}, more=edges))
    get = _registry(store).get_sample_value
    assert get("tls_scanner_addresses", {"target": "cdn"}) == 4
    assert get("tls_scanner_protocol_accepted_addresses", {"target": "cdn", "protocol": "TLSv1.0"}) == 2
    assert get("tls_scanner_protocol_accepted_addresses", {"target": "cdn", "protocol": "TLSv1.2"}) == 4
    assert get("tls_scanner_protocol_accepted", {"target": "cdn", "address": "::1", "protocol": "TLSv1.0"}) == 0


def test_matches_prometheus_client_formatting_of_escaped_labels() -> None:
    store = ResultStore(None)
    t = target("we\\ird", labels=(("team", 'a "quoted"\nline'),))
    store.set_targets([t])
    store.record(sweep(t, {T12: A}))
    (accepted,) = [
        f for f in text_string_to_metric_families(render(store)) if f.name == "tls_scanner_protocol_accepted"
    ]
    (only,) = accepted.samples
    assert only.labels == {
        "target": "we\\ird",
        "team": 'a "quoted"\nline',
        "address": "127.0.0.1",
        "protocol": "TLSv1.2",
    }


@pytest.mark.parametrize(("allow", "value"), [((), 0.0), (("192.0.2.0/24",), 0.0), (("0.0.0.0/0",), 1.0)])
def test_an_open_probe_allowlist_is_exported(allow: tuple[str, ...], value: float) -> None:
    safe = SafeConfig(Config(path="config.yaml", targets=(), probe=ProbeSettings(allow=allow)))
    scraper = _Scraper(ResultStore(None))
    scraper.metrics = ScannerMetrics(ResultStore(None), safe)
    assert scraper.get_sample_value("tls_scanner_probe_open_to_everything") == value


def _swept(n: int) -> tuple[ResultStore, list[TargetConfig], ScannerMetrics]:
    """n targets swept once, and the daemon's collector over them (with a process-collector stand-in after)."""
    store = ResultStore(None)
    targets = [target(f"t{i}") for i in range(n)]
    store.set_targets(targets)
    for t in targets:
        store.record(sweep(t, {T10: R, T12: A}, at=100, http={T12: 200}))
    return store, targets, ScannerMetrics(store, _reload(successful=True, at=5.0), also=lambda: b"# also\n")


def test_the_daemon_render_hands_the_loop_back_and_says_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a zero slice, exposition() yields to the event loop between targets and families (so a health check is
    answered mid-render), and its parts join to exactly render()'s text; a render reused while current is the same
    object, a changed store renders anew."""
    store, targets, metrics = _swept(20)

    async def run() -> tuple[bytes, str, int, bool, bool]:
        turns = 0

        async def count() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.create_task(count())
        parts = await metrics.exposition()
        seen = turns
        expected = metrics.render()
        again = await metrics.exposition()
        store.record(sweep(targets[0], {T10: A, T12: A}, at=200))
        changed = await metrics.exposition()
        counter.cancel()
        return b"".join(parts), expected, seen, again is parts, b"".join(changed) != b"".join(parts)

    monkeypatch.setattr(metrics_module, "RENDER_SLICE_SECONDS", 0.0)
    text, expected, turns, reused, rerendered = asyncio.run(run())
    assert turns >= 20  # a turn after each target built, at least
    assert text == (expected + "# also\n").encode()
    assert reused and rerendered


def test_gzip_exposition_is_the_same_text_compressed() -> None:
    _, _, metrics = _swept(50)

    async def both() -> tuple[bytes, bytes]:
        return b"".join(await metrics.exposition()), b"".join(await metrics.exposition(gzip=True))

    plain, packed = asyncio.run(both())
    assert gzip.decompress(packed) == plain
    assert len(packed) * 5 < len(plain)


def test_a_plain_exposition_holds_the_cached_lines_not_copies() -> None:
    """A scrape in flight must not hold a second copy of every target's lines (40 MB at 10,000 targets): the
    render after one target was swept again reuses every other target's line objects as they are."""
    store, targets, metrics = _swept(30)

    async def twice() -> tuple[list[bytes], list[bytes]]:
        first = list(await metrics.exposition())
        store.record(sweep(targets[0], {T10: A, T12: A}, at=200))
        return first, list(await metrics.exposition())

    first, second = asyncio.run(twice())
    assert b"".join(first) != b"".join(second)
    before = {id(part) for part in first}
    target_lines = [part for part in second if b'target="' in part and not part.startswith(b"#")]
    reused = [part for part in target_lines if id(part) in before]
    assert len(target_lines) > 30 * 5
    assert len(reused) >= len(target_lines) - len(metrics_module.TARGET_FAMILIES)  # all but the re-swept target's
