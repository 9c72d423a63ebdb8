"""The fast tier: one handshake per protocol version on each address, every `interval` (the scheduler's own cadence).

Records the determined states, their flips and the HTTP status over each version (ResultStore.record); logs each
flip and each change of HTTP status, a target's errors when they start, change and end, and the first round's sum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

from scanner.results.sweep import ErrorReason, ProtocolState, SweepResult
from scanner.state.policy import deadlines, has_policy, verdict
from scanner.state.status import TargetStatus, Transition, TransitionKind, ended_at
from scanner.tiers.base import Tier, log
from scanner.tiers.series import Add, Family, Labels, counter, gauge

ACCEPTED = gauge(
    "tls_scanner_protocol_accepted",
    "1 if the address accepts the protocol, 0 if it rejects it; an error keeps the last determined value",
)
CHANGES = counter("tls_scanner_protocol_changes_total", "Flips between accepted and rejected observed")
LAST_CHANGE = gauge(
    "tls_scanner_protocol_last_change_timestamp_seconds",
    "When the protocol's state last flipped, or was first determined",
)
PROTOCOL_ERROR = gauge(
    "tls_scanner_protocol_error", "1 if the last sweep could not determine the protocol on the address"
)
HTTP_STATUS = gauge("tls_scanner_http_status_code", "HTTP status answered over the protocol's handshake")
HTTP_CHANGES = counter(
    "tls_scanner_http_status_changes_total", "Changes of the HTTP status answered over the protocol (200 -> 403 ...)"
)
HTTP_LAST_CHANGE = gauge(
    "tls_scanner_http_status_last_change_timestamp_seconds",
    "When the HTTP status over the protocol last changed, or was first seen",
)
ACCEPTED_ADDRESSES = gauge(
    "tls_scanner_protocol_accepted_addresses", "How many of the target's addresses accepted the protocol"
)
ADDRESSES = gauge("tls_scanner_addresses", "How many addresses the target's name resolved to (probed)")
SUCCESS = gauge("tls_scanner_scan_success", "1 if the last sweep determined every protocol on every address")
LAST_SCAN = gauge("tls_scanner_last_scan_timestamp_seconds", "When the last sweep of the target ended")
LAST_SUCCESS = gauge(
    "tls_scanner_last_success_timestamp_seconds", "When the last sweep that determined every protocol ended"
)
DURATION = gauge("tls_scanner_scan_duration_seconds", "How long the last sweep of the target took")
INTERVAL = Family("tls_scanner_scan_interval_seconds", "gauge", "The target's configured interval between sweeps")
ERRORS = counter("tls_scanner_scan_errors_total", "Sweeps that hit an error, by reason")
RETRIES = counter("tls_scanner_handshake_retries_total", "Hellos sent again because a refusal came without a TLS alert")
EXPECTATION = gauge("tls_scanner_expectation_met", "1 if the last sweep met the target's expect policy")
HTTP_MATCH = gauge(
    "tls_scanner_http_match", "1 if the target's http.match was found in the answer over the protocol, else 0"
)
DEADLINE = Family(
    "tls_scanner_expectation_deadline_timestamp_seconds", "gauge", "When a dated expect policy is enforced from"
)
DEADLINE_MET = gauge(
    "tls_scanner_expectation_deadline_met", "1 if the last sweep meets the dated policy (enforced yet or not)"
)


Failing = frozenset[tuple[str, ErrorReason]]  # (address, reason) of a target's errors as last logged


class SweepTier(Tier):
    """The version sweep: the base of the schedule, which the other tiers ride along with or follow."""

    name = "sweep"
    families: ClassVar[tuple[Family, ...]] = (
        ACCEPTED, CHANGES, LAST_CHANGE, PROTOCOL_ERROR, HTTP_STATUS, HTTP_CHANGES, HTTP_LAST_CHANGE, ACCEPTED_ADDRESSES,
        ADDRESSES, SUCCESS, LAST_SCAN, LAST_SUCCESS, DURATION, INTERVAL, ERRORS, RETRIES, EXPECTATION, HTTP_MATCH,
        DEADLINE, DEADLINE_MET,
    )  # fmt: skip
    kinds = (TransitionKind.HANDSHAKE, TransitionKind.HTTP)

    def log_transition(self, t: Transition) -> None:
        if t.kind is TransitionKind.HTTP:
            log.warning("%s %s HTTP %s -> %s", t.target, t.protocol.value, t.old, t.new)
        else:
            super().log_transition(t)

    def lines(self, status: TargetStatus, at: Labels, add: Add) -> None:
        target = status.target
        sweep = status.last_sweep
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
        for reason in ErrorReason:
            add(ERRORS, at(("reason", reason.value)), status.errors.get(reason, 0))
        add(RETRIES, at(), status.retries)
        if sweep is None:
            return
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

    def report(self, sweep: SweepResult, failing: Failing) -> Failing:
        """Log a target's errors when they start or change and when they end, not every sweep; what is failing now."""
        log.debug(
            "%s swept in %.2fs: %s",
            sweep.target.name,
            sweep.duration_seconds,
            " ".join(f"{p.value}={r.state.value}" for p, r in sweep.protocols.items()),
        )
        found = failures(sweep)
        kinds = {(address, reason) for address, reason, _ in found}
        if kinds == failing:
            return failing
        for address, reason, message in found:
            if (address, reason) not in failing:
                where = f"{sweep.target.name} {address}" if address else sweep.target.name
                log.warning("%s: sweep error (%s): %s", where, reason.value, message)
        if not kinds and failing:
            log.info("%s: sweeps complete again", sweep.target.name)
        return frozenset(kinds)

    def report_first_round(self, sweeps: Iterable[SweepResult]) -> None:
        """One line summing up the first round, once every target has been swept."""
        log.info("first round: %s", summary(list(sweeps)))


SWEEP = SweepTier()


def failures(sweep: SweepResult) -> list[tuple[str, ErrorReason, str]]:
    """(address, reason, message) of what the sweep could not determine; a target-level error stands for all."""
    if sweep.closed:
        return []
    if sweep.error is not None:
        return [("", sweep.error_reason or ErrorReason.OTHER, sweep.error)]
    found: dict[tuple[str, ErrorReason], str] = {}
    if sweep.dns_error is not None:
        found[("", ErrorReason.DNS)] = sweep.dns_error
    for result in sweep.addresses:
        if result.error is not None:
            found.setdefault((result.address, result.error_reason or ErrorReason.OTHER), result.error)
        for protocol, outcome in result.protocols.items():
            if outcome.state is ProtocolState.ERROR:
                key = (result.address, outcome.reason or ErrorReason.OTHER)
                found.setdefault(key, f"{protocol.value}: {outcome.detail}")
    return [(address, reason, message) for (address, reason), message in found.items()]


def summary(sweeps: list[SweepResult]) -> str:
    """`5 targets, 3 complete, 2 with errors (dns: 1, refused: 1)`."""
    failed = [s for s in sweeps if not s.closed and not s.complete]
    reasons = Counter(found[0][1].value for s in failed if (found := failures(s)))
    text = f"{len(sweeps)} targets, {len(sweeps) - len(failed)} complete, {len(failed)} with errors"
    if reasons:
        text += " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())) + ")"
    return text
