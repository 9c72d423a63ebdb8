"""What a deep scan found (certificates, cipher suites, groups, Mozilla profiles), as plain values free of sslyze."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scanner.config import TargetConfig
from scanner.protocols import Protocol


class MozillaProfile(enum.StrEnum):
    """Mozilla's server-side TLS configurations, as sslyze's checker knows them."""

    OLD = "old"
    INTERMEDIATE = "intermediate"
    MODERN = "modern"


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The leaf certificate an address serves, and whether its chain validates for the target's name."""

    subject: str  # RFC 4514
    issuer: str
    serial: str  # hex
    fingerprint_sha256: str  # hex, lower case
    key: str  # e.g. "RSA 2048", "EC secp256r1"
    not_after: float  # unix time, the leaf's
    chain_not_after: float  # the earliest not-after in the served chain, a trust anchor sent along excluded
    valid: bool  # validated for the target's name against sslyze's trust stores or the target's ca_file
    error: str | None = None  # why validation failed; set when not valid


@dataclass(frozen=True, slots=True)
class DeepAddressResult:
    """One address's deep answers; an error leaves the parts it prevented empty."""

    address: str
    certificate: CertificateInfo | None = None  # None when the chain could not be read
    cipher_suites: Mapping[Protocol, tuple[str, ...]] = field(default_factory=dict)  # accepted, IANA names, sorted
    groups: tuple[str, ...] = ()  # supported key exchange groups (curves)
    compliance: Mapping[MozillaProfile, tuple[str, ...]] = field(default_factory=dict)  # profile -> reasons; () ok
    error: str | None = None  # what could not be scanned (connectivity, a scan command that failed)

    def compliant(self, profile: MozillaProfile) -> bool | None:
        """Whether the address meets the profile; None when it could not be checked."""
        reasons = self.compliance.get(profile)
        return None if reasons is None else not reasons


@dataclass(frozen=True, slots=True)
class DeepResult:
    """One deep scan of one target: every address it resolved to, plus a target-level error if any."""

    target: TargetConfig
    started_at: float  # unix time
    duration_seconds: float
    addresses: tuple[DeepAddressResult, ...] = ()
    error: str | None = None  # target-level: DNS failure

    @property
    def success(self) -> bool:
        """Every address was scanned in full."""
        return self.error is None and bool(self.addresses) and all(a.error is None for a in self.addresses)

    @property
    def ended_at(self) -> float:
        return self.started_at + self.duration_seconds


def strictest_profile(addresses: Sequence[DeepAddressResult]) -> str:
    """The strictest Mozilla profile every address meets, `none`, or `-` when it could not be checked."""
    if not addresses:
        return "-"
    for profile in (MozillaProfile.MODERN, MozillaProfile.INTERMEDIATE, MozillaProfile.OLD):
        verdicts = [a.compliant(profile) for a in addresses]
        if None in verdicts:
            return "-"
        if all(verdicts):
            return profile.value
    return "none"


def deep_to_dict(result: DeepAddressResult) -> dict[str, Any]:
    """One address's deep answers as JSON-able data (`--once --deep --format json`, the web API)."""
    cert = result.certificate
    return {
        "certificate": None
        if cert is None
        else {
            "subject": cert.subject,
            "issuer": cert.issuer,
            "serial": cert.serial,
            "fingerprint_sha256": cert.fingerprint_sha256,
            "key": cert.key,
            "not_after": cert.not_after,
            "chain_not_after": cert.chain_not_after,
            "valid": cert.valid,
            "error": cert.error,
        },
        "cipher_suites": {p.value: list(suites) for p, suites in result.cipher_suites.items()},
        "groups": list(result.groups),
        "mozilla": {
            p.value: {"compliant": not reasons, "reasons": list(reasons)} for p, reasons in result.compliance.items()
        },
        "error": result.error,
    }


def deep_from_dict(address: str, data: Mapping[str, Any]) -> DeepAddressResult:
    """The inverse of deep_to_dict (the state file keeps the last deep scan as that JSON)."""
    cert = data.get("certificate")
    return DeepAddressResult(
        address,
        certificate=None if cert is None else CertificateInfo(**cert),
        cipher_suites={Protocol(p): tuple(suites) for p, suites in data.get("cipher_suites", {}).items()},
        groups=tuple(data.get("groups", ())),
        compliance={MozillaProfile(p): tuple(v["reasons"]) for p, v in data.get("mozilla", {}).items()},
        error=data.get("error"),
    )


@dataclass(frozen=True, slots=True)
class DeepState:
    """What the last deep scans established about one address, kept to detect changes between scans."""

    cipher_suites: Mapping[Protocol, frozenset[str]] = field(default_factory=dict)
    fingerprint: str | None = None
    changes: Mapping[Protocol, int] = field(default_factory=dict)  # suites that appeared or disappeared, per version


@dataclass(frozen=True, slots=True)
class DeepChange:
    """A cipher suite appearing or disappearing on a version, or the certificate being replaced."""

    address: str
    protocol: Protocol | None  # None: the certificate
    old: str  # the suite when removed, else ""; the old fingerprint for a certificate
    new: str  # the suite when added, else ""


def deep_changes(previous: DeepState | None, result: DeepAddressResult) -> tuple[DeepState, list[DeepChange]]:
    """The state after one address's deep scan, and what changed since the previous one.

    A version the scan could not enumerate (absent from cipher_suites) keeps its last suites: an outage is not a
    cipher-level brownout. The first scan of an address sets the state without changes.
    """
    if previous is None:
        suites = {p: frozenset(s) for p, s in result.cipher_suites.items()}
        fingerprint = result.certificate.fingerprint_sha256 if result.certificate else None
        return DeepState(suites, fingerprint, dict.fromkeys(suites, 0)), []
    changes: list[DeepChange] = []
    suites = dict(previous.cipher_suites)
    counts = dict(previous.changes)
    for protocol, accepted in result.cipher_suites.items():
        now, before = frozenset(accepted), previous.cipher_suites.get(protocol)
        suites[protocol] = now
        counts.setdefault(protocol, 0)
        if before is None or before == now:
            continue
        for suite in sorted(before - now):
            changes.append(DeepChange(result.address, protocol, suite, ""))
        for suite in sorted(now - before):
            changes.append(DeepChange(result.address, protocol, "", suite))
        counts[protocol] += len(before ^ now)
    fingerprint = previous.fingerprint
    if result.certificate is not None:
        fingerprint = result.certificate.fingerprint_sha256
        if previous.fingerprint is not None and fingerprint != previous.fingerprint:
            changes.append(DeepChange(result.address, None, previous.fingerprint, fingerprint))
    return DeepState(suites, fingerprint, counts), changes
