"""Expectations: what counts as a violation, and what is merely unknown."""

from __future__ import annotations

import pytest

from scanner.config import Expectation
from scanner.protocols import Protocol
from scanner.state.policy import evaluate
from tests.unit.factories import A, E, R, sweep, target

S3, T10, T12 = Protocol.SSLv3, Protocol.TLSv1_0, Protocol.TLSv1_2
POLICY = Expectation(accept=frozenset({T12}), reject=frozenset({S3, T10}), http_ok=frozenset({T12}))


@pytest.mark.parametrize(
    ("states", "http", "violations"),
    [
        ({S3: R, T10: R, T12: A}, {T12: 200}, []),
        ({S3: R, T10: A, T12: A}, {T12: 301}, ["TLSv1.0 expected rejected, is accepted"]),
        (
            {S3: R, T10: R, T12: R},
            {},
            ["TLSv1.2 expected accepted, is rejected", "TLSv1.2 expected HTTP 2xx/3xx, handshake rejected"],
        ),
        ({S3: R, T10: R, T12: A}, {T12: 403}, ["TLSv1.2 expected HTTP 2xx/3xx, got 403"]),
        ({S3: E, T10: E, T12: E}, {}, []),  # unknown is not a violation
    ],
)
def test_evaluate(states: dict[Protocol, object], http: dict[Protocol, int], violations: list[str]) -> None:
    verdict = evaluate(POLICY, sweep(target(expect=POLICY), states, http=http).protocols)  # type: ignore[arg-type]
    assert list(verdict.violations) == violations
    assert verdict.met is (not violations)


def test_a_dated_policy_is_enforced_from_its_date_and_reported_before() -> None:
    from dataclasses import replace

    from scanner.config import DatedPolicy
    from scanner.state.policy import deadlines, has_policy, verdict

    dated = DatedPolicy("pypi-2018", Expectation(reject=frozenset({T10})), start=2000.0)
    t = replace(target(), deadlines=(dated,))
    before, after = sweep(t, {T10: A, T12: A}, at=1000.0), sweep(t, {T10: A, T12: A}, at=3000.0)
    assert verdict(before).met and not has_policy(t, 1000.0)
    assert verdict(after).violations == ("pypi-2018: TLSv1.0 expected rejected, is accepted",)
    assert [(d.name, v.met) for d, v in deadlines(before)] == [("pypi-2018", False)]
