"""The pure path from sweeps to what is exported: the same answer as through the store, without SQLite."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from scanner.config import Expectation
from scanner.metrics import ScannerMetrics, render_probe, render_sweeps
from scanner.protocols import Protocol
from scanner.status import advance, sweep_status
from scanner.store import ResultStore
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
