"""The tier registry: a fourth tier defined here alone is scheduled and rendered; each tier's log lines."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from scanner.config import TargetConfig
from scanner.daemon.scheduler import JITTER, Scheduler
from scanner.output.metrics import TARGET_FAMILIES, ScannerMetrics
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult
from scanner.results.sweep import ErrorReason
from scanner.state.status import TargetStatus, Transition, TransitionKind
from scanner.state.store import ResultStore
from scanner.tiers import TIERS, ScheduledTier
from scanner.tiers.base import Engine, log_transitions
from scanner.tiers.deep import DEEP
from scanner.tiers.series import Add, Family, Labels
from scanner.tiers.sweep import SWEEP
from tests.unit.factories import A, sweep, target
from tests.unit.fakes import FakeSweeper, run

TOY_CHECKS = Family("tls_scanner_toy_checks", "gauge", "Toy checks run on the target")


@dataclass(frozen=True)
class ToyResult:
    target: TargetConfig
    count: int


class ToyTier(ScheduledTier[ToyResult]):
    """A fourth tier: every 7 s, count something; kept in memory, rendered as one series."""

    name = "toy check"
    families: ClassVar[tuple[Family, ...]] = (TOY_CHECKS,)

    def __init__(self) -> None:
        self.starts: list[float] = []

    def interval(self, target: TargetConfig) -> float:
        return 7.0

    async def scan(self, engine: Engine, store: ResultStore, target: TargetConfig) -> ToyResult:
        self.starts.append(asyncio.get_running_loop().time())
        return ToyResult(target, len(self.starts))

    def record(self, store: ResultStore, result: ToyResult) -> list[Transition]:
        store.keep(self.name, result.target, result)
        return []

    def lines(self, status: TargetStatus, at: Labels, add: Add) -> None:
        found = status.findings.get(self.name)
        if isinstance(found, ToyResult):
            add(TOY_CHECKS, at(), found.count)


def test_a_fourth_tier_runs_on_its_interval_and_renders_its_family() -> None:
    toy = ToyTier()
    tiers = (*TIERS, toy)
    store = ResultStore()
    t = replace(target(), interval=10.0, deep_interval=0.0)
    store.set_targets([t])
    engine = FakeSweeper()

    async def main() -> None:
        scheduler = Scheduler(engine, store, random.Random(1), tiers=tiers)
        scheduler.apply([t])
        await asyncio.sleep(60)
        await scheduler.stop()

    run(main())
    first_sweep_end = engine.sweeps[0][2]
    assert first_sweep_end <= toy.starts[0] <= first_sweep_end + 7  # after a sweep, within its interval
    gaps = [b - a for a, b in itertools.pairwise(toy.starts)]
    assert len(gaps) >= 6
    assert all(7 * (1 - JITTER) <= gap <= 7 * (1 + JITTER) for gap in gaps)
    text = ScannerMetrics(store, tiers=tiers).render()
    assert "# TYPE tls_scanner_toy_checks gauge\n" in text
    assert f'tls_scanner_toy_checks{{target="t"}} {float(len(toy.starts))}\n' in text
    assert "tls_scanner_protocol_accepted{" in text  # the other tiers' series as before
    assert "tls_scanner_toy_checks" not in ScannerMetrics(store).render()  # the registry's three tiers only


def test_the_registry_orders_the_exposed_families() -> None:
    assert TARGET_FAMILIES == tuple(f for tier in TIERS for f in tier.families)
    assert len({f.name for f in TARGET_FAMILIES}) == len(TARGET_FAMILIES)  # each family owned by one tier
    kinds = [kind for tier in TIERS for kind in tier.kinds]
    assert sorted(kinds) == sorted(TransitionKind)  # each transition kind worded by exactly one tier


def test_each_transition_is_logged_in_its_tiers_words(caplog: pytest.LogCaptureFixture) -> None:
    t12 = Protocol.TLSv1_2
    transitions = [
        Transition("web", "192.0.2.1", t12, 0.0, "accepted", "rejected"),
        Transition("web", "192.0.2.1", t12, 0.0, "200", "403", TransitionKind.HTTP),
        Transition("web", "192.0.2.1", t12, 0.0, "accepted", "rejected", TransitionKind.CLIENT, "macos"),
        Transition("web", "192.0.2.1", t12, 0.0, "TLS_X", "", TransitionKind.CIPHER),
        Transition("web", "192.0.2.1", t12, 0.0, "aa", "bb", TransitionKind.CERTIFICATE),
    ]
    with caplog.at_level(logging.WARNING, "scanner.daemon.scheduler"):
        log_transitions(TIERS, transitions)
    assert [r.name for r in caplog.records] == ["scanner.daemon.scheduler"] * 5
    assert caplog.messages == [
        "web TLSv1.2 changed: accepted -> rejected",
        "web TLSv1.2 HTTP 200 -> 403",
        "macos can no longer connect to web (192.0.2.1) since 1970-01-01 00:00:00 UTC",
        "web TLSv1.2 cipher TLS_X removed",
        "web 192.0.2.1 certificate replaced: aa -> bb",
    ]


def test_sweep_errors_are_logged_when_they_start_change_and_end(caplog: pytest.LogCaptureFixture) -> None:
    t = target("down")
    failing = replace(sweep(t, {}), error="connection refused", error_reason=ErrorReason.REFUSED)
    state = frozenset[tuple[str, ErrorReason]]()
    with caplog.at_level(logging.INFO, "scanner.daemon.scheduler"):
        for each in (failing, failing, sweep(t, {Protocol.TLSv1_2: A}), sweep(t, {Protocol.TLSv1_2: A})):
            state = SWEEP.report(each, state)
        SWEEP.report_first_round([failing, sweep(target("up"), {Protocol.TLSv1_2: A})])
    assert caplog.messages == [
        "down: sweep error (refused): connection refused",
        "down: sweeps complete again",
        "first round: 2 targets, 1 complete, 1 with errors (refused: 1)",
    ]


def test_deep_scan_errors_are_logged_when_they_change(caplog: pytest.LogCaptureFixture) -> None:
    t = target("web")
    failed = DeepResult(t, 0.0, 1.0, error="timed out")
    fine = DeepResult(t, 0.0, 1.0)
    error = None
    with caplog.at_level(logging.INFO, "scanner.daemon.scheduler"):
        for each in (failed, failed, fine, fine):
            error = DEEP.report(each, [], error)
    assert caplog.messages == ["web: deep scan error: timed out", "web: deep scans complete again"]
