"""Result values: what a target's answer is when its addresses disagree, and when a sweep is complete."""

from __future__ import annotations

import subprocess
import sys

from scanner.protocols import Protocol
from scanner.results.sweep import ErrorReason, SweepResult
from tests.unit.factories import A, E, R, sweep, target

T10, T12 = Protocol.TLSv1_0, Protocol.TLSv1_2


def test_accepted_anywhere_wins_then_error_then_rejected() -> None:
    result = sweep(target(), {T10: R, T12: E}, more={"127.0.0.2": {T10: A, T12: R}, "127.0.0.3": {T10: R, T12: R}})
    assert result.state(T10) is A
    assert result.state(T12) is E
    assert result.accepted_addresses(T10) == 1
    assert result.connections == 6
    assert result.address == "127.0.0.1"
    assert not result.complete


def test_complete_needs_every_protocol_on_every_address() -> None:
    assert sweep(target(), {T10: R, T12: A}, more={"::1": {T10: R, T12: A}}).complete
    assert not sweep(target(), {T10: R, T12: A}, more={"::1": {T10: E, T12: A}}).complete


def test_a_target_without_addresses_is_an_error_on_every_configured_protocol() -> None:
    t = target()
    failed = SweepResult(t, 0.0, 0.1, error="cannot resolve x: no address", error_reason=ErrorReason.DNS)
    assert failed.address is None and not failed.complete
    assert set(failed.protocols) == set(t.protocols)
    assert {r.state for r in failed.protocols.values()} == {E}
    assert {r.reason for r in failed.protocols.values()} == {ErrorReason.DNS}


def test_readers_of_results_do_not_import_sslyze() -> None:
    modules = (
        "scanner.state.store, scanner.output.metrics, scanner.output.report, "
        "scanner.web.app, scanner.state.policy, scanner.state.status, scanner.tiers"
    )
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('sslyze', 'nassl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
