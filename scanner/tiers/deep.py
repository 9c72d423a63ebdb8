"""The deep tier: certificates, cipher suites per version, groups and Mozilla profiles, every `deep_interval`.

Scheduled on its own (6h by default; 0: off), after a sweep found the target's addresses, one scan at a time in the
first worker process (the only one that loads all of sslyze). Records the suites and the certificate per address
(ResultStore.record_deep: suites added or removed and certificates replaced are transitions, kept in the state
file); logs each of those and the scan's errors when they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from scanner.config import TargetConfig
from scanner.results.deep import DeepResult, deep_changes, deep_to_dict
from scanner.results.sweep import SweepResult
from scanner.state.status import TargetStatus, Transition, TransitionKind
from scanner.tiers.base import Engine, ScheduledTier, log
from scanner.tiers.series import Add, Family, Labels

if TYPE_CHECKING:  # only named in hints: the store (and sqlite3) stays out of `--once`'s imports
    from scanner.state.store import ResultStore

DEEP_CONCURRENCY = 1  # deep scans in flight at once: the slow tier's small share, so sweeps keep their timing
ONCE_DEEP_CONCURRENCY = 4  # deep scans at once in `--once --deep`

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


class DeepTier(ScheduledTier[DeepResult]):
    """sslyze's full scan commands on each address the last sweep found."""

    name = "deep scan"
    families: ClassVar[tuple[Family, ...]] = (
        CERT_NOT_AFTER, CHAIN_NOT_AFTER, CERT_VALID, CERT_INFO, CIPHER_ACCEPTED, CIPHER_CHANGES, MOZILLA,
        DEEP_TIMESTAMP, DEEP_SUCCESS,
    )  # fmt: skip
    kinds = (TransitionKind.CIPHER, TransitionKind.CERTIFICATE)
    concurrency = DEEP_CONCURRENCY

    def interval(self, target: TargetConfig) -> float:
        return target.deep_interval

    def ready(self, store: ResultStore, name: str) -> bool:
        return store.last_addresses(name) is not None  # the deep scan needs the addresses the sweep found

    def last_ended_at(self, store: ResultStore, name: str) -> float | None:
        return store.last_deep_at(name)

    async def scan(self, engine: Engine, store: ResultStore, target: TargetConfig) -> DeepResult:
        addresses = store.last_addresses(target.name)  # the latest: the wait for a slot may be long
        return await engine.deep(target, addresses or [])

    def record(self, store: ResultStore, result: DeepResult) -> list[Transition]:
        return store.record_deep(result)

    def log_transition(self, t: Transition) -> None:
        if t.kind is TransitionKind.CERTIFICATE:
            log.warning("%s %s certificate replaced: %s -> %s", t.target, t.address, t.old, t.new)
        else:
            change = f"{t.old} removed" if t.old else f"{t.new} added"
            log.warning("%s %s cipher %s", t.target, t.protocol.value, change)

    def report(self, result: DeepResult, transitions: list[Transition], error: str | None) -> str | None:
        """Log each suite added or removed and each certificate replaced; a deep scan's errors when they change."""
        for t in transitions:
            self.log_transition(t)
        errors = "; ".join(
            f"{a.address}: {a.error}" if a.address else a.error for a in result.addresses if a.error is not None
        )
        now = result.error or errors or None
        if now != error:
            if now is not None:
                log.warning("%s: deep scan error: %s", result.target.name, now)
            elif error is not None:
                log.info("%s: deep scans complete again", result.target.name)
        log.debug("%s deep-scanned in %.2fs", result.target.name, result.duration_seconds)
        return now

    def lines(self, status: TargetStatus, at: Labels, add: Add) -> None:
        """Per address its certificate, suites, profiles; per target when and how."""
        deep = status.deep
        if deep is None:
            return
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


DEEP = DeepTier()


async def once(engine: Engine, sweeps: Sequence[SweepResult]) -> dict[str, DeepResult]:
    """Deep-scan each swept target (not those with deep_interval 0) on the addresses its sweep found, a few at once."""
    slots = asyncio.Semaphore(ONCE_DEEP_CONCURRENCY)

    async def one(sweep: SweepResult) -> tuple[str, DeepResult]:
        async with slots:
            return sweep.target.name, await engine.deep(sweep.target, [a.address for a in sweep.addresses])

    chosen = [s for s in sweeps if not s.closed and s.target.deep_interval > 0]
    return dict(await asyncio.gather(*(one(s) for s in chosen)))


def alone(status: TargetStatus, result: DeepResult | None) -> TargetStatus:
    """`status` with one deep scan taken on its own, as the target's first: no changes yet (`--once --deep`)."""
    if result is None:
        return status
    states = {a.address: deep_changes(None, a)[0] for a in result.addresses}
    return replace(status, deep=result, deep_states=states)


def scan_json(result: DeepResult) -> dict[str, Any]:
    """When and how a target's deep scan went (its per-address answers go under each address's `deep`)."""
    return {
        "started_at": result.started_at,
        "duration_seconds": round(result.duration_seconds, 6),
        "success": result.success,
        "error": result.error,
    }


def with_json(entry: dict[str, Any], result: DeepResult | None) -> dict[str, Any]:
    """A target's JSON with its deep scan: `deep_scan` for the target, `deep` in each address it scanned."""
    if result is None:
        return entry
    by_address = {a.address: a for a in result.addresses}
    for address in entry["addresses"]:
        found = by_address.get(address["address"])
        address["deep"] = None if found is None else deep_to_dict(found)
    entry["deep_scan"] = scan_json(result)
    return entry


def expiry(result: DeepResult | None, now: float) -> str:
    """Days until the earliest leaf expiry among the addresses (`41d`, `EXPIRED`), `!` when a chain is not valid."""
    certs = [a.certificate for a in result.addresses if a.certificate is not None] if result else []
    if not certs:
        return "-"
    days = (min(c.not_after for c in certs) - now) / 86400
    text = "EXPIRED" if days < 0 else f"{int(days)}d"
    return text if all(c.valid for c in certs) else f"{text}!"


def notes(name: str, result: DeepResult | None) -> list[str]:
    """A deep scan's errors and invalid certificates, one line each."""
    if result is None:
        return []
    if result.error is not None:
        return [f"{name}: deep scan error: {result.error}"]
    notes = []
    for each in result.addresses:
        where = f"{name} {each.address}" if len(result.addresses) > 1 else name
        if each.certificate is not None and each.certificate.error is not None:
            notes.append(f"{where}: certificate not valid: {each.certificate.error}")
        if each.error is not None:
            notes.append(f"{where}: deep scan error: {each.error}")
    return notes
