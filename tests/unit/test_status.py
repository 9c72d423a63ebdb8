"""The pure path from sweeps to what is exported: the same answer as through the store, without SQLite."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from scanner.config import Expectation, TargetConfig
from scanner.output.metrics import ScannerMetrics, render_probe, render_sweeps
from scanner.protocols import Protocol
from scanner.results.sweep import AddressResult, Evidence, ProtocolResult, ProtocolState, SweepResult
from scanner.state.status import TransitionKind, advance, sweep_status
from scanner.state.store import ResultStore
from tests.unit.factories import A, E, R, sweep, target

T10, T12 = Protocol.TLSv1_0, Protocol.TLSv1_2


def _samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_one_round_renders_as_through_a_store() -> None:
    web = target("web", expect=Expectation(reject=frozenset({T10})), labels=(("team", "infra"),))
    cdn = target("cdn")
    sweeps = [
        sweep(web, {T10: A, T12: E}, http={T10: 403}),
        sweep(cdn, {T10: R, T12: A}, more={"::1": {T10: A, T12: A}}),
    ]
    store = ResultStore(None)
    store.set_targets([web, cdn])
    for each in sweeps:
        store.record(each)
    assert _samples(render_sweeps(sweeps)) == _samples(ScannerMetrics(store).render())
    store.close()


def test_advance_is_pure_and_reports_flips() -> None:
    t = target()
    first, flips = advance({}, sweep(t, {T10: A, T12: E}, at=100))
    assert flips == [] and set(first["127.0.0.1"]) == {T10}  # an error determines nothing
    known = {"127.0.0.1": dict(first["127.0.0.1"])}
    changed, flips = advance(known, sweep(t, {T10: R, T12: A}, at=200))
    assert [(f.protocol, f.old, f.new, f.at) for f in flips] == [(T10, A, R, 200.5)]
    assert changed["127.0.0.1"][T10].changes == 1 and changed["127.0.0.1"][T12].changes == 0
    assert known["127.0.0.1"][T10].state is A  # the input is left alone


def test_sweep_status_of_a_failed_sweep() -> None:
    t = target()
    status = sweep_status(sweep(t, {T10: E, T12: E}))
    assert status.last_success_at is None
    assert status.addresses == {"127.0.0.1": {}}
    assert sum(status.errors.values()) == 1


def test_probe_adds_its_own_families() -> None:
    text = render_probe(sweep(target("p"), {T12: A}))
    samples = {name: value for name, _, value in _samples(text)}
    assert samples["tls_scanner_probe_success"] == 1
    assert samples["tls_scanner_probe_duration_seconds"] == 0.5
    assert samples["tls_scanner_targets"] == 1


def _rejected_by(evidence: Evidence) -> ProtocolResult:
    return ProtocolResult(ProtocolState.REJECTED, detail=evidence.value, evidence=evidence, connections=4)


def _one(t: TargetConfig, result: ProtocolResult, at: float) -> SweepResult:
    return SweepResult(t, at, 0.5, (AddressResult("127.0.0.1", {T10: result}),))


def test_a_flip_seen_only_as_a_reset_is_reported_once_it_holds() -> None:
    t = replace(target(), confirm_sweeps=2)
    accepted = ProtocolResult(ProtocolState.ACCEPTED, detail="AES128-SHA", connections=1)
    known, _ = advance({}, _one(t, accepted, 0))
    for evidence in (Evidence.RESET, Evidence.CLOSED):
        first, flips = advance(known, _one(t, _rejected_by(evidence), 100))
        assert flips == [] and first["127.0.0.1"][T10].state is A and first["127.0.0.1"][T10].pending == 1
        # Accepted again: the pending refusal is forgotten, nothing was ever reported.
        back, flips = advance(first, _one(t, accepted, 200))
        assert flips == [] and back["127.0.0.1"][T10].pending == 0 and back["127.0.0.1"][T10].changes == 0
        # Held for two sweeps: reported, stamped at the second.
        second, flips = advance(first, _one(t, _rejected_by(evidence), 300))
        assert [(f.old, f.new, f.at) for f in flips] == [("accepted", "rejected", 300.5)]
        assert second["127.0.0.1"][T10].changes == 1 and second["127.0.0.1"][T10].pending == 0


def test_an_alert_flips_at_once_and_confirm_1_trusts_every_refusal() -> None:
    accepted = ProtocolResult(ProtocolState.ACCEPTED, connections=1)
    for t, evidence in (
        (replace(target(), confirm_sweeps=3), Evidence.ALERT),
        (replace(target(), confirm_sweeps=1), Evidence.RESET),
    ):
        known, _ = advance({}, _one(t, accepted, 0))
        _, flips = advance(known, _one(t, _rejected_by(evidence), 100))
        assert [f.new for f in flips] == ["rejected"], evidence


def test_an_http_status_change_is_a_transition() -> None:
    t = target("pypi")
    known, flips = advance({}, sweep(t, {T10: A}, at=0, http={T10: 200}))
    assert (
        flips == [] and known["127.0.0.1"][T10].http_status == 200 and known["127.0.0.1"][T10].http_last_change == 0.5
    )
    changed, flips = advance(known, sweep(t, {T10: A}, at=100, http={T10: 403}))
    assert [(f.kind, f.protocol, f.old, f.new, f.at) for f in flips] == [
        (TransitionKind.HTTP, T10, "200", "403", 100.5)
    ]
    status = changed["127.0.0.1"][T10]
    assert (status.http_status, status.http_changes, status.changes) == (403, 1, 0)
    # A rejected handshake has no HTTP answer: the last status stands, nothing changes.
    after, flips = advance(changed, sweep(t, {T10: R}, at=200))
    assert [f.kind for f in flips] == [TransitionKind.HANDSHAKE] and after["127.0.0.1"][T10].http_status == 403


def test_http_changes_are_exported() -> None:
    t = target("pypi")
    store = ResultStore(None)
    store.set_targets([t])
    store.record(sweep(t, {T10: A}, at=0, http={T10: 200}))
    store.record(sweep(t, {T10: A}, at=100, http={T10: 403}))
    labels = (("address", "127.0.0.1"), ("protocol", "TLSv1.0"), ("target", "pypi"))
    samples = _samples(ScannerMetrics(store).render())
    assert ("tls_scanner_http_status_changes_total", labels, 1.0) in samples
    assert ("tls_scanner_http_status_last_change_timestamp_seconds", labels, 100.5) in samples
    (status,) = store.snapshot(with_transitions=5)
    assert [(x.kind, x.old, x.new) for x in status.transitions] == [(TransitionKind.HTTP, "200", "403")]
    store.close()
