"""The deep tier's engine: sslyze's Scanner on each address of a target, its results turned into DeepResult values."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.utils import CryptographyDeprecationWarning

# From the modules that define them: sslyze's __init__ re-exports them without __all__, which mypy --strict refuses.
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    ServerScanResultIncomplete,
    TlsConfigurationAsJson,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.plugins.certificate_info._cert_chain_analyzer import CertificateDeploymentAnalysisResult
from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
from sslyze.plugins.openssl_cipher_suites.implementation import CipherSuitesScanResult
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import (
    ScanCommandsExtraArguments,
    ServerConnectivityStatusEnum,
    ServerScanRequest,
    ServerScanResult,
)
from sslyze.scanner.scan_command_attempt import ScanCommandAttemptStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

from scanner.config import TargetConfig
from scanner.engine.handshake import STARTTLS
from scanner.protocols import Protocol
from scanner.results.deep import CertificateInfo, DeepAddressResult, DeepResult, MozillaProfile

DEFAULT_CONNECTIONS = 4  # per address: the deep tier's small share, beside the fast sweep's
# A deep scan that has not ended by then is reported as an error; its thread cannot be stopped and ends on its own
# (sslyze gives each connection the target's timeout), but it no longer holds the tier's slot.
DEEP_SCAN_TIMEOUT = 600.0

_CIPHER_COMMANDS = {
    Protocol.SSLv2: ScanCommand.SSL_2_0_CIPHER_SUITES,
    Protocol.SSLv3: ScanCommand.SSL_3_0_CIPHER_SUITES,
    Protocol.TLSv1_0: ScanCommand.TLS_1_0_CIPHER_SUITES,
    Protocol.TLSv1_1: ScanCommand.TLS_1_1_CIPHER_SUITES,
    Protocol.TLSv1_2: ScanCommand.TLS_1_2_CIPHER_SUITES,
    Protocol.TLSv1_3: ScanCommand.TLS_1_3_CIPHER_SUITES,
}
# Mozilla's checker needs the vulnerability commands too (heartbleed, ROBOT, ...): without them it refuses to judge.
_COMMANDS = {
    ScanCommand.CERTIFICATE_INFO,
    ScanCommand.ELLIPTIC_CURVES,
    *_CIPHER_COMMANDS.values(),
    *SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
}
_PROFILES = {
    MozillaProfile.OLD: TlsConfigurationEnum.MOZILLA_OLD,
    MozillaProfile.INTERMEDIATE: TlsConfigurationEnum.MOZILLA_INTERMEDIATE,
    MozillaProfile.MODERN: TlsConfigurationEnum.MOZILLA_MODERN,
}

_T = TypeVar("_T")

# A root in sslyze's own trust stores has a negative serial: cryptography warns on each load, and nobody can act on it.
warnings.filterwarnings("ignore", "Parsed a serial number which wasn't positive", CryptographyDeprecationWarning)


async def deep_scan(
    target: TargetConfig, addresses: Sequence[str], connections: int = DEFAULT_CONNECTIONS
) -> DeepResult:
    """Scan every address of `target` with sslyze, off the event loop; errors come back as data, never raised."""
    started, clock = time.time(), time.monotonic()
    if target.https_proxy is not None or target.client_cert is not None:
        error = "deep scans do not go through https_proxy" if target.https_proxy else "deep scans send no client_cert"
        return DeepResult(target, started, 0.0, error=error)
    if not addresses:
        return DeepResult(target, started, 0.0, error="no address to scan (the name did not resolve)")
    try:
        found = await asyncio.wait_for(
            _in_thread(lambda: scan_addresses(target, addresses, connections)), DEEP_SCAN_TIMEOUT
        )
    except TimeoutError:
        return DeepResult(target, started, time.monotonic() - clock, error=f"timed out after {DEEP_SCAN_TIMEOUT:.0f}s")
    except Exception as exc:  # a bug or an sslyze failure must not stop the daemon's deep loop
        return DeepResult(target, started, time.monotonic() - clock, error=f"deep scan failed: {_describe(exc)}")
    finally:
        # sslyze's scan leaves reference cycles that hold OpenSSL and certificate objects: left to the generational
        # collector they pile up past 100 MB within a few dozen scans; collected now, they stay at a few MB.
        gc.collect()
    return DeepResult(target, started, time.monotonic() - clock, addresses=found)


async def _in_thread(work: Callable[[], _T]) -> _T:
    """Run blocking work in its own daemon thread, so a shutdown never waits on the event loop's executor."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        try:
            value, error = work(), None
        except BaseException as exc:  # handed to the awaiting task
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown): nobody waits any more
            loop.call_soon_threadsafe(_settle, future, value, error)

    threading.Thread(target=run, name="deep scan", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[_T], value: _T | None, exc: BaseException | None) -> None:
    if future.done():
        return  # cancelled while the scan ran
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]


def scan_addresses(target: TargetConfig, addresses: Sequence[str], connections: int) -> tuple[DeepAddressResult, ...]:
    """Blocking: one sslyze Scanner over the target's addresses, one at a time, results in the order given."""
    extra = ScanCommandsExtraArguments()
    if target.ca_file is not None:
        extra = ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(target.ca_file))
        )
    network = ServerNetworkConfiguration(
        tls_server_name_indication=target.sni or target.host,
        tls_opportunistic_encryption=None if target.starttls is None else STARTTLS[target.starttls],
        network_timeout=max(1, math.ceil(target.timeout)),
        network_max_retries=2,
    )
    requests = [
        ServerScanRequest(
            server_location=ServerNetworkLocation(hostname=target.host, port=target.port, ip_address=address),
            network_configuration=network,
            scan_commands=_COMMANDS,
            scan_commands_extra_arguments=extra,
        )
        for address in addresses
    ]
    scanner = Scanner(per_server_concurrent_connections_limit=connections, concurrent_server_scans_limit=1)
    scanner.queue_scans(requests)
    found = {str(r.server_location.ip_address): address_result(r) for r in scanner.get_results()}
    return tuple(found.get(a) or DeepAddressResult(a, error="not scanned") for a in addresses)


def address_result(scan: ServerScanResult) -> DeepAddressResult:
    """One address's sslyze result as plain values."""
    address = str(scan.server_location.ip_address)
    if scan.connectivity_status is not ServerConnectivityStatusEnum.COMPLETED or scan.scan_result is None:
        trace = scan.connectivity_error_trace
        reason = "".join(trace.format_exception_only()).strip() if trace is not None else "not scanned"
        return DeepAddressResult(address, error=f"cannot connect: {reason}")
    result = scan.scan_result
    errors: list[str] = []
    suites: dict[Protocol, tuple[str, ...]] = {}
    for protocol, command in _CIPHER_COMMANDS.items():
        attempt = getattr(result, command.value)
        if attempt.status is ScanCommandAttemptStatusEnum.COMPLETED:
            found: CipherSuitesScanResult = attempt.result
            suites[protocol] = tuple(sorted(a.cipher_suite.name for a in found.accepted_cipher_suites))
        else:
            errors.append(f"{protocol.value} cipher suites: {_attempt_error(attempt)}")
    groups: tuple[str, ...] = ()
    if result.elliptic_curves.status is ScanCommandAttemptStatusEnum.COMPLETED:
        curves = result.elliptic_curves.result
        supported = (curves.supported_curves if curves is not None else None) or []
        groups = tuple(sorted(c.name for c in supported))
    else:
        errors.append(f"groups: {_attempt_error(result.elliptic_curves)}")
    certificate = None
    if result.certificate_info.status is ScanCommandAttemptStatusEnum.COMPLETED:
        info = result.certificate_info.result
        deployments = info.certificate_deployments if info is not None else []
        if deployments:
            certificate = _certificate(deployments[0])
    else:
        errors.append(f"certificate: {_attempt_error(result.certificate_info)}")
    compliance: dict[MozillaProfile, tuple[str, ...]] = {}
    for profile, name in _PROFILES.items():
        try:
            check_server_against_tls_configuration(scan, _profile(name))
        except ServerNotCompliantWithTlsConfiguration as exc:
            compliance[profile] = tuple(f"{key}: {text}" for key, text in sorted(exc.issues.items()))
        except ServerScanResultIncomplete:
            pass  # already said: the command it lacks is among the errors
        else:
            compliance[profile] = ()
    return DeepAddressResult(
        address,
        certificate=certificate,
        cipher_suites=suites,
        groups=groups,
        compliance=compliance,
        error="; ".join(errors) or None,
    )


@functools.cache
def _profile(name: TlsConfigurationEnum) -> TlsConfigurationAsJson:
    """Mozilla's profile as sslyze ships it (parsed once: it is read from JSON through pydantic)."""
    return MozillaTlsConfiguration.get(name)


def _certificate(deployment: CertificateDeploymentAnalysisResult) -> CertificateInfo:
    """The leaf the server sends, and what validating its chain said."""
    chain = deployment.received_certificate_chain
    verified = deployment.verified_certificate_chain
    validations = deployment.path_validation_results
    leaf = chain[0]
    anchor = verified[-1].fingerprint(hashes.SHA256()) if verified else None
    served = [leaf] + [
        c
        for c in chain[1:]
        if c.fingerprint(hashes.SHA256()) != anchor and c.subject != c.issuer  # anchors sent along
    ]
    error = None
    if not verified:
        # The last store is the ca_file when given (sslyze appends it): its error speaks for the CA the user named.
        detail = next((v.validation_error for v in reversed(validations) if v.validation_error), "")
        error = f"{_why(detail, leaf)}: {detail}" if detail else "untrusted"
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=format(leaf.serial_number, "x"),
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        key=_key(leaf),
        not_after=leaf.not_valid_after_utc.timestamp(),
        chain_not_after=min(c.not_valid_after_utc.timestamp() for c in served),
        valid=bool(verified),
        error=error,
    )


def _why(detail: str, leaf: x509.Certificate) -> str:
    """The short reason behind cryptography's validation error: expired, not yet valid, wrong name or untrusted."""
    if "not valid at validation time" in detail:
        return "expired" if leaf.not_valid_after_utc.timestamp() < time.time() else "not yet valid"
    if "subjectAltName" in detail or "subject" in detail.split("(")[0]:
        return "wrong name"
    return "untrusted"


def _key(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__.removeprefix("_").removesuffix("PublicKey") or "unknown"


def _attempt_error(attempt: object) -> str:
    trace = getattr(attempt, "error_trace", None)
    if isinstance(trace, traceback.TracebackException):
        return "".join(trace.format_exception_only()).strip()
    reason = getattr(attempt, "error_reason", None)
    return str(getattr(reason, "value", reason) or "not run")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
