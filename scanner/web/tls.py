"""The HTTP endpoint's TLS: the validated tls_server_config, and the server SSLContext made from it."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from scanner.errors import TlsContextError

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# Python's ssl cannot ask for a client certificate without verifying one that is sent, nor require one without
# verifying it. RequestClientCert: Go asks but never checks, and nothing here reads the certificate, so not asking
# (CERT_NONE) lets in exactly who Go lets in. RequireAnyClientCert: CERT_REQUIRED, which also verifies the
# certificate against client_ca_file: stricter than Go, so client_ca_file is required for it.
_VERIFY_MODES: Mapping[str, ssl.VerifyMode] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "RequestClientCert": ssl.CERT_NONE,
        "RequireAnyClientCert": ssl.CERT_REQUIRED,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)
# Go's crypto/tls names (those tls.CipherSuites() lists, the ones exporter-toolkit takes) -> OpenSSL names.
# The TLS 1.3 suites map to None: neither Go nor OpenSSL's cipher list configures them.
CIPHER_SUITES: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    }
)

CURVES: Mapping[str, str] = MappingProxyType(
    {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
)


@dataclass(frozen=True)
class TlsSettings:
    """A validated tls_server_config; file paths are absolute."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()  # Go names; empty = Python's defaults
    curve: str | None = None  # Go name of the one ECDH curve; None = OpenSSL's defaults
    prefer_server_cipher_suites: bool = True
    line: int = field(default=1, compare=False)  # where tls_server_config is, for errors found later


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server SSLContext for `tls`; raises TlsContextError naming the key whose file or value is unusable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_policy(ctx, tls)
    ciphers = [name for name in (CIPHER_SUITES[suite] for suite in tls.cipher_suites) if name]
    if ciphers:
        try:
            # Keep Python's security level: a bare list would fall back to OpenSSL's laxer default.
            ctx.set_ciphers(f"@SECLEVEL={ctx.security_level}:" + ":".join(ciphers))
        except ssl.SSLError:
            raise TlsContextError("cipher_suites", "OpenSSL here can use none of cipher_suites") from None
    _check_certificates(tls.cert_file, "cert_file")
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_password)
    except _EncryptedKey:
        raise TlsContextError("key_file", f"key_file {tls.key_file} is encrypted; give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsContextError("key_file", f"key_file {tls.key_file} does not match cert_file") from None
        raise TlsContextError("key_file", f"no usable PEM private key in key_file {tls.key_file}") from None
    except OSError as exc:
        raise TlsContextError("key_file", f"cannot read key_file {tls.key_file}: {exc.strerror or exc}") from None
    if tls.client_ca_file is not None:
        _check_certificates(tls.client_ca_file, "client_ca_file")
        ctx.load_verify_locations(cafile=tls.client_ca_file)
    return ctx


class _EncryptedKey(Exception):
    """The key file wants a password; never prompt for one."""


def _refuse_password() -> bytes:
    """load_cert_chain's password callback: refuse instead of prompting on the terminal."""
    raise _EncryptedKey


def _check_certificates(path: str, key: str) -> None:
    """Raise TlsContextError unless `path` holds at least one PEM certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise TlsContextError(key, f"no PEM certificate in {key} {path}") from None
    except OSError as exc:
        raise TlsContextError(key, f"cannot read {key} {path}: {exc.strerror or exc}") from None


def apply_policy(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    """Set what the handshake reads from the listener's context: versions, verify mode, options and curve."""
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; the format allows them, and OpenSSL's security level still decides.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = tls.min_version
        ctx.maximum_version = tls.max_version
    ctx.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve is not None:
        try:
            ctx.set_ecdh_curve(CURVES[tls.curve])
        except (ssl.SSLError, ValueError):
            raise TlsContextError("curve_preferences", f"OpenSSL here cannot use {tls.curve}") from None
