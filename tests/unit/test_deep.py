"""The deep tier without sslyze: change detection, the store's memory of it, its metrics, JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from scanner.output.metrics import ScannerMetrics, render_sweeps
from scanner.output.report import render_json, render_table
from scanner.protocols import Protocol
from scanner.results.deep import (
    CertificateInfo,
    DeepAddressResult,
    DeepChange,
    DeepResult,
    MozillaProfile,
    deep_changes,
)
from scanner.state.status import TransitionKind
from scanner.state.store import ResultStore
from tests.unit.factories import A, R, sweep, target

T12, T13 = Protocol.TLSv1_2, Protocol.TLSv1_3
RSA_CBC = "TLS_RSA_WITH_AES_256_CBC_SHA"
GCM = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
MODERN = {MozillaProfile.OLD: (), MozillaProfile.INTERMEDIATE: (), MozillaProfile.MODERN: ("tls_versions: TLSv1.2",)}


def cert(fingerprint: str = "aa", not_after: float = 2_000_000_000.0, valid: bool = True) -> CertificateInfo:
    return CertificateInfo(
        subject="CN=web",
        issuer="CN=ca",
        serial="1f",
        fingerprint_sha256=fingerprint,
        key="RSA 2048",
        not_after=not_after,
        chain_not_after=not_after - 10,
        valid=valid,
        error=None if valid else "validation failed: cert expired",
    )


def scanned(
    suites: tuple[str, ...], fingerprint: str = "aa", address: str = "127.0.0.1", at: float = 1000.0
) -> DeepResult:
    result = DeepAddressResult(
        address,
        certificate=cert(fingerprint),
        cipher_suites={T12: suites, T13: ()},
        groups=("X25519",),
        compliance=MODERN,
    )
    return DeepResult(target("web"), at, 2.0, addresses=(result,))


def test_first_scan_sets_the_state_without_changes() -> None:
    state, changes = deep_changes(None, scanned((GCM, RSA_CBC)).addresses[0])
    assert changes == []
    assert state.cipher_suites == {T12: frozenset({GCM, RSA_CBC}), T13: frozenset()}
    assert state.fingerprint == "aa"


def test_a_suite_removed_and_a_certificate_replaced_are_changes() -> None:
    first, _ = deep_changes(None, scanned((GCM, RSA_CBC)).addresses[0])
    state, changes = deep_changes(first, scanned((GCM,), fingerprint="bb").addresses[0])
    assert changes == [DeepChange("127.0.0.1", T12, RSA_CBC, ""), DeepChange("127.0.0.1", None, "aa", "bb")]
    assert state.changes[T12] == 1
    state, changes = deep_changes(state, scanned((GCM, RSA_CBC), fingerprint="bb").addresses[0])
    assert changes == [DeepChange("127.0.0.1", T12, "", RSA_CBC)]
    assert state.changes[T12] == 2


def test_a_version_not_enumerated_keeps_its_suites() -> None:
    first, _ = deep_changes(None, scanned((GCM,)).addresses[0])
    state, changes = deep_changes(first, DeepAddressResult("127.0.0.1", error="cannot connect: timed out"))
    assert changes == []
    assert state == first


def test_store_keeps_the_deep_state_across_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = ResultStore(path)
    store.set_targets([target("web")])
    assert store.record_deep(scanned((GCM, RSA_CBC))) == []
    store.close()
    store = ResultStore(path)
    store.set_targets([target("web")])
    # The last deep scan itself is back, so its metrics do not vanish until the next one.
    assert store.status("web").deep == scanned((GCM, RSA_CBC))
    assert store.last_deep_at("web") == 1002.0
    transitions = store.record_deep(scanned((GCM,), fingerprint="bb", at=2000.0))
    assert [(t.kind, t.protocol, t.old, t.new) for t in transitions] == [
        (TransitionKind.CIPHER, T12, RSA_CBC, ""),
        (TransitionKind.CERTIFICATE, T12, "aa", "bb"),
    ]
    assert [(t.kind, t.old) for t in store.snapshot(with_transitions=5)[0].transitions] == [
        (TransitionKind.CERTIFICATE, "aa"),
        (TransitionKind.CIPHER, RSA_CBC),
    ]
    assert store.status("web").deep_states["127.0.0.1"].changes[T12] == 1
    store.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_of_a_deep_scan() -> None:
    store = ResultStore()
    store.set_targets([target("web")])
    store.record(sweep(target("web"), {T12: A, T13: R}))
    store.record_deep(scanned((GCM, RSA_CBC)))
    store.record_deep(scanned((GCM,), at=2000.0))
    samples = _samples(ScannerMetrics(store).render())
    at = (("address", "127.0.0.1"), ("target", "web"))
    assert samples[("tls_scanner_certificate_not_after_timestamp_seconds", at)] == 2_000_000_000.0
    assert samples[("tls_scanner_certificate_chain_not_after_timestamp_seconds", at)] == 2_000_000_000.0 - 10
    assert samples[("tls_scanner_certificate_valid", at)] == 1.0
    assert samples[("tls_scanner_cipher_suite_accepted", (*at[:1], ("cipher", GCM), ("protocol", "TLSv1.2"), at[1]))]
    assert (
        "tls_scanner_cipher_suite_accepted",
        (*at[:1], ("cipher", RSA_CBC), ("protocol", "TLSv1.2"), at[1]),
    ) not in (samples)
    assert samples[("tls_scanner_cipher_suite_changes_total", (*at[:1], ("protocol", "TLSv1.2"), at[1]))] == 1.0
    # A version that never had a suite adds no change series.
    assert ("tls_scanner_cipher_suite_changes_total", (*at[:1], ("protocol", "TLSv1.3"), at[1])) not in samples
    profile = {
        p.value: samples[("tls_scanner_mozilla_compliant", (*at[:1], ("profile", p.value), at[1]))]
        for p in MozillaProfile
    }
    assert profile == {"old": 1.0, "intermediate": 1.0, "modern": 0.0}
    assert samples[("tls_scanner_deep_scan_timestamp_seconds", (("target", "web"),))] == 2002.0
    assert samples[("tls_scanner_deep_scan_success", (("target", "web"),))] == 1.0
    info = [k for k in samples if k[0] == "tls_scanner_certificate_info"]
    assert dict(info[0][1])["fingerprint_sha256"] == "aa" and dict(info[0][1])["key"] == "RSA 2048"


def test_once_outputs_carry_the_deep_scan() -> None:
    swept = sweep(target("web"), {T12: A, T13: R})
    deep = {"web": scanned((GCM,))}
    document = json.loads(render_json([swept], deep))
    entry = document["targets"][0]
    assert entry["deep_scan"]["success"] is True
    address = entry["addresses"][0]["deep"]
    assert address["cipher_suites"]["TLSv1.2"] == [GCM]
    assert address["certificate"]["not_after"] == 2_000_000_000.0
    assert address["mozilla"]["modern"] == {"compliant": False, "reasons": ["tls_versions: TLSv1.2"]}
    table = render_table([swept], deep).splitlines()
    assert table[0].split()[-2:] == ["EXPIRY", "MOZILLA"]
    assert table[1].split()[-1] == "intermediate"
    assert table[1].split()[-2].endswith("d")
    assert "tls_scanner_cipher_suite_accepted{" in render_sweeps([swept], deep=deep)
    assert "deep" not in json.loads(render_json([swept]))["targets"][0]["addresses"][0]


def test_table_notes_an_invalid_certificate_and_a_deep_scan_error() -> None:
    swept = sweep(target("web"), {T12: A}, more={"127.0.0.2": {T12: A}})
    bad = DeepAddressResult("127.0.0.1", certificate=cert(not_after=0.0, valid=False), compliance=MODERN)
    down = DeepAddressResult("127.0.0.2", error="cannot connect: timed out")
    table = render_table([swept], {"web": DeepResult(target("web"), 1000.0, 1.0, (bad, down))})
    row = table.splitlines()[1].split()
    assert row[-2:] == ["EXPIRED!", "-"]
    assert "web 127.0.0.1: certificate not valid: validation failed: cert expired" in table
    assert "web 127.0.0.2: deep scan error: cannot connect: timed out" in table
