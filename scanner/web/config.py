"""The --web.config.file (exporter-toolkit's format): TLS, basic auth and extra headers for the HTTP endpoint."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType

import bcrypt
import yaml
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from scanner.config.endpoints import compose_yaml
from scanner.errors import ConfigError

log = logging.getLogger(__name__)

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
_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # an old spelling exporter-toolkit still takes

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
_NEED_CLIENT_CA = ("RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

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

# exporter-toolkit allows only these response headers, some with a fixed set of values; an empty value unsets one.
EXTRA_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
        "Content-Security-Policy": (),
    }
)

REALM = "tls-scanner"
CACHE_SIZE = 1024

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS = ("headers", "http2")
# Keys exporter-toolkit knows that tls-scanner refuses, each with why.
_TOP_NOT_SUPPORTED = {"rate_limit": "rate_limit is not supported by tls-scanner; remove it"}
_TLS_NOT_SUPPORTED = {
    "cert": "inline cert is not supported, use cert_file",
    "key": "inline key is not supported, use key_file",
    "client_ca": "inline client_ca is not supported, use client_ca_file",
    "client_allowed_sans": "client_allowed_sans is not supported by tls-scanner; remove it",
}

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


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


@dataclass(frozen=True)
class WebConfig:
    """A validated web config: no tls means plain HTTP, no users means no auth."""

    path: str
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    headers: tuple[tuple[str, str], ...] = ()


class _Invalid(Exception):
    """A problem at one node; load_web_config turns it into ConfigError."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.line = _line(node)
        self.message = message


class TlsContextError(ValueError):
    """server_ssl_context could not use a file or setting; `key` names the tls_server_config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def load_web_config(path: str) -> WebConfig:
    """Read and validate the web config at `path` (files included); raise ConfigError at the offending line."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(path, 1, f"cannot read web config: {exc.strerror or exc}") from None
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ConfigError(path, line, "not a text file (NUL byte; binary?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, f"not UTF-8 (byte 0x{data[exc.start]:02x})") from None
    root = compose_yaml(path, text)
    try:
        return _build(path, root)
    except _Invalid as exc:
        raise ConfigError(path, exc.line, exc.message) from None


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server SSLContext for `tls`; raises TlsContextError naming the key whose file or value is unusable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_policy(ctx, tls)
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


class WebGuard:
    """The current web config at work: TLS context, basic auth and extra headers; swap it with update()."""

    def __init__(self, config: WebConfig, *, cache_size: int = CACHE_SIZE) -> None:
        self._config = config
        self._outer: ssl.SSLContext | None = None
        self._inner: ssl.SSLContext | None = None
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._cache_secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        # One worker: bcrypt is CPU-bound, so wrong passwords queue up instead of taking every core.
        self._bcrypt = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webconfig-bcrypt")

    @property
    def config(self) -> WebConfig:
        """The web config in force."""
        return self._config

    def update(self, config: WebConfig) -> None:
        """Put `config` in force; raise ConfigError (keeping the old one) when the change needs a restart."""
        old = self._config
        if (old.tls is None) != (config.tls is None):
            line = config.tls.line if config.tls is not None else 1
            now = "TLS" if config.tls is not None else "plain HTTP"
            raise ConfigError(
                config.path, line, f"switching the listener to {now} needs a restart; kept the old web config"
            )
        if self._outer is not None and config.tls is not None:
            assert old.tls is not None
            if old.tls.curve is not None and config.tls.curve is None:
                raise ConfigError(
                    config.path,
                    config.tls.line,
                    "removing curve_preferences needs a restart (the curve cannot be unset); kept the old web config",
                )
            try:
                inner = server_ssl_context(config.tls)
            except TlsContextError as exc:
                raise ConfigError(config.path, config.tls.line, exc.message) from None
            # The handshake takes versions, verify mode, options and curve from the listener's context, and the
            # certificate, key, client CAs and ciphers from the one the SNI callback switches to.
            _apply_policy(self._outer, config.tls)
            self._inner = inner
        self._config = config
        with self._lock:
            self._cache.clear()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's long-lived context (None without TLS); each handshake switches to the newest config's."""
        tls = self._config.tls
        if tls is None:
            return None
        if self._outer is None:
            self._outer = server_ssl_context(tls)
            self._inner = self._outer
            self._outer.sni_callback = self._on_client_hello
        return self._outer

    def check(self, authorization: str | None) -> bool:
        """Whether an Authorization header value passes basic auth (always True when no users are configured)."""
        config = self._config
        if not config.users:
            return True
        attempt = self._attempt(config, authorization)
        if attempt is None:
            return False
        if self._cached(attempt):
            return True
        return self._verify(attempt)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: basic auth (401 with WWW-Authenticate) and the extra headers on every response."""
        config = self._config
        response: web.StreamResponse
        try:
            if config.users and not await self._allowed(config, request.headers.get(hdrs.AUTHORIZATION)):
                response = web.Response(
                    status=401, text="401 Unauthorized\n", headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'}
                )
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            _set_headers(exc, config.headers)
            raise
        except Exception:
            log.exception("Error handling request %s %s", request.method, request.path)
            response = web.Response(status=500, text="500 Internal Server Error\n")
        _set_headers(response, config.headers)
        return response

    def headers(self, response: web.StreamResponse) -> None:
        """Add the configured extra headers to a response the handler streams itself (before it is prepared)."""
        _set_headers(response, self.config.headers)

    def close(self) -> None:
        """Stop the bcrypt worker thread."""
        self._bcrypt.shutdown(wait=False, cancel_futures=True)

    def _on_client_hello(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        """SNI callback (called with or without SNI): hand the handshake to the newest config's context."""
        inner = self._inner
        if inner is not None and inner is not ctx:
            sslobj.context = inner

    async def _allowed(self, config: WebConfig, authorization: str | None) -> bool:
        """check() for the event loop: a cache miss pays its bcrypt in the worker thread."""
        attempt = self._attempt(config, authorization)
        if attempt is None:
            return False
        if self._cached(attempt):
            return True
        return await asyncio.get_running_loop().run_in_executor(self._bcrypt, self._verify, attempt)

    def _attempt(self, config: WebConfig, authorization: str | None) -> _Attempt | None:
        """Parse the header and pick the hash to check against; None when malformed."""
        credentials = parse_basic_auth(authorization)
        if credentials is None:
            return None
        user, password = credentials
        hashed = config.users.get(user)
        known = hashed is not None
        if hashed is None:
            # An unknown user is checked against a configured user's hash, so the answer takes as long as for a
            # known one (no user enumeration by timing); the result is thrown away.
            hashed = next(iter(config.users.values()))
        mac = hmac.new(self._cache_secret, digestmod=hashlib.sha256)
        for part in (user.encode(), password, hashed):
            mac.update(len(part).to_bytes(4, "big") + part)
        return _Attempt(known, password, hashed, mac.digest())

    def _cached(self, attempt: _Attempt) -> bool:
        """Whether this exact user, password and hash passed before."""
        if not attempt.known:
            return False
        with self._lock:
            if attempt.key in self._cache:
                self._cache.move_to_end(attempt.key)
                return True
        return False

    def _verify(self, attempt: _Attempt) -> bool:
        """One bcrypt (constant-time compare inside checkpw); remember successes only."""
        try:
            ok = bcrypt.checkpw(attempt.password, attempt.hashed)
        except ValueError:  # e.g. a password over bcrypt's 72 bytes
            return False
        if not (ok and attempt.known):
            return False
        with self._lock:
            self._cache[attempt.key] = None
            self._cache.move_to_end(attempt.key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


@dataclass(frozen=True)
class _Attempt:
    """One basic auth try, ready to check."""

    known: bool
    password: bytes
    hashed: bytes
    key: bytes  # cache key: HMAC-SHA-256 of (user, password, hash) under a per-process secret


def parse_basic_auth(authorization: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` -> (user, password); None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


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


def _apply_policy(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
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


def _set_headers(response: web.StreamResponse, headers: tuple[tuple[str, str], ...]) -> None:
    """Add the configured headers, unless the handler already sent its headers (a streamed response)."""
    if response.prepared:
        return
    for name, value in headers:
        response.headers[name] = value


def _build(path: str, root: yaml.Node | None) -> WebConfig:
    """Validate the document and build the WebConfig."""
    if root is None or _is_null(root):
        return WebConfig(path)  # empty: no TLS, no auth, as in exporter-toolkit
    top = _mapping(root, "the web config", _TOP_KEYS, _TOP_NOT_SUPPORTED)
    base_dir = os.path.dirname(os.path.abspath(path))
    tls: TlsSettings | None = None
    users: dict[str, bytes] = {}
    headers: tuple[tuple[str, str], ...] = ()
    if "tls_server_config" in top and not _is_null(top["tls_server_config"][1]):
        tls = _tls(base_dir, *top["tls_server_config"])
    if "http_server_config" in top and not _is_null(top["http_server_config"][1]):
        headers = _http(top["http_server_config"][1])
    if "basic_auth_users" in top and not _is_null(top["basic_auth_users"][1]):
        users = _users(top["basic_auth_users"][1])
    return WebConfig(path, tls, MappingProxyType(users), headers)


def _tls(base_dir: str, key: yaml.Node, node: yaml.Node) -> TlsSettings:
    """Validate tls_server_config, load its files into a trial context, and build TlsSettings."""
    given = _mapping(node, "tls_server_config", _TLS_KEYS, _TLS_NOT_SUPPORTED)
    for required in ("cert_file", "key_file"):
        if required not in given:
            raise _Invalid(key, f"tls_server_config needs {required}")
    cert_file = _file(base_dir, "cert_file", given["cert_file"][1])
    key_file = _file(base_dir, "key_file", given["key_file"][1])
    client_ca_file = None
    if "client_ca_file" in given:
        client_ca_file = _file(base_dir, "client_ca_file", given["client_ca_file"][1])

    auth = "NoClientCert"
    if "client_auth_type" in given:
        value = given["client_auth_type"][1]
        auth = _string(value, "client_auth_type")
        auth = _CLIENT_AUTH_ALIASES.get(auth, auth)
        if auth not in CLIENT_AUTH_TYPES:
            raise _Invalid(value, f"unknown client_auth_type {value.value!r}; one of: {', '.join(CLIENT_AUTH_TYPES)}")
        if auth in _NEED_CLIENT_CA and client_ca_file is None:
            why = " (Python's ssl cannot require a certificate without verifying it)"
            extra = why if auth == "RequireAnyClientCert" else ""
            raise _Invalid(value, f"client_auth_type {auth} needs client_ca_file{extra}")
    if client_ca_file is not None and auth == "NoClientCert":
        raise _Invalid(given["client_ca_file"][0], "client_ca_file is set but client_auth_type is NoClientCert")

    min_version = _version(given, "min_version", ssl.TLSVersion.TLSv1_2)
    max_version = _version(given, "max_version", ssl.TLSVersion.TLSv1_3)
    if min_version > max_version:
        names = {version: name for name, version in TLS_VERSIONS.items()}
        where = given["max_version"][1] if "max_version" in given else given["min_version"][1]
        raise _Invalid(where, f"min_version {names[min_version]} is above max_version {names[max_version]}")

    cipher_suites: tuple[str, ...] = ()
    if "cipher_suites" in given:
        items = _string_list(given["cipher_suites"][1], "cipher_suites")
        for item in items:
            if item.value not in CIPHER_SUITES:
                raise _Invalid(item, f"unknown cipher suite {item.value!r}; one of: {', '.join(CIPHER_SUITES)}")
        cipher_suites = tuple(item.value for item in items)
        if cipher_suites and min_version < ssl.TLSVersion.TLSv1_3 and not any(CIPHER_SUITES[s] for s in cipher_suites):
            raise _Invalid(
                given["cipher_suites"][0],
                "cipher_suites lists only TLS 1.3 suites, which cannot be configured; add TLS 1.2 suites",
            )

    curve = None
    if "curve_preferences" in given:
        items = _string_list(given["curve_preferences"][1], "curve_preferences")
        for item in items:
            if item.value not in CURVES:
                raise _Invalid(item, f"unknown curve {item.value!r}; one of: {', '.join(CURVES)}")
        if len(items) > 1:
            raise _Invalid(
                items[1],
                "curve_preferences: Python's ssl can use only one curve; list one (or none for OpenSSL's defaults)",
            )
        curve = items[0].value if items else None

    prefer = True
    if "prefer_server_cipher_suites" in given:
        prefer = _bool(given["prefer_server_cipher_suites"][1], "prefer_server_cipher_suites")

    tls = TlsSettings(
        cert_file, key_file, client_ca_file, auth, min_version, max_version, cipher_suites, curve, prefer, _line(key)
    )
    try:
        server_ssl_context(tls)
    except TlsContextError as exc:
        raise _Invalid(given[exc.key][0], exc.message) from None
    return tls


def _http(node: yaml.Node) -> tuple[tuple[str, str], ...]:
    """Validate http_server_config; http2 is accepted and ignored (aiohttp serves HTTP/1.1 only)."""
    given = _mapping(node, "http_server_config", _HTTP_KEYS)
    if "http2" in given:
        _bool(given["http2"][1], "http2")
    if "headers" not in given or _is_null(given["headers"][1]):
        return ()
    headers: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    canonical = {name.lower(): name for name in EXTRA_HEADERS}
    for name, (key, value) in _mapping(given["headers"][1], "headers", None).items():
        if not _TOKEN_RE.fullmatch(name):
            raise _Invalid(key, f"header name {name!r} is not a valid HTTP token")
        if name.lower() not in canonical:
            raise _Invalid(key, f"header {name!r} cannot be set; allowed: {', '.join(EXTRA_HEADERS)}")
        proper = canonical[name.lower()]
        if proper in seen:
            raise _Invalid(key, f"header {proper!r} given twice (first at line {seen[proper]})")
        seen[proper] = _line(key)
        text = "" if _is_null(value) else _scalar_text(value, f"header {proper}", allow_int=True)
        if any(char in text for char in "\r\n\0"):
            raise _Invalid(value, f"header {proper} value contains CR, LF or NUL")
        if not text:
            continue  # blank unsets the header, as in exporter-toolkit
        allowed = EXTRA_HEADERS[proper]
        if allowed and text not in allowed:
            raise _Invalid(value, f"header {proper} must be one of: {', '.join(allowed)}; got {text!r}")
        headers.append((proper, text))
    return tuple(headers)


def _users(node: yaml.Node) -> dict[str, bytes]:
    """Validate basic_auth_users: user -> bcrypt hash."""
    users: dict[str, bytes] = {}
    for user, (key, value) in _mapping(node, "basic_auth_users", None).items():
        if ":" in user:
            raise _Invalid(key, f"user name {user!r} contains ':', which basic auth cannot carry")
        hashed = _string(value, f"password hash of {user!r}")
        if not _BCRYPT_RE.fullmatch(hashed):
            raise _Invalid(value, f"password of {user!r} is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31)")
        users[user] = hashed.encode("ascii")
    return users


def _file(base_dir: str, key: str, node: yaml.Node) -> str:
    """A readable file (relative paths are from the web config's directory, as in exporter-toolkit)."""
    name = _string(node, key)
    if not name:
        raise _Invalid(node, f"{key} is empty")
    path = os.path.join(base_dir, os.path.expanduser(name))
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise _Invalid(node, f"cannot read {key} {path}: {exc.strerror or exc}") from None
    return path


def _version(given: dict[str, tuple[yaml.Node, yaml.Node]], key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    """A TLS version key (TLS10..TLS13)."""
    if key not in given:
        return default
    node = given[key][1]
    name = _string(node, key)
    if name not in TLS_VERSIONS:
        raise _Invalid(node, f"unknown {key} {name!r}; one of: {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[name]


def _mapping(
    node: yaml.Node, what: str, allowed: tuple[str, ...] | None, refused: Mapping[str, str] | None = None
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping with string keys, no duplicates, and (when `allowed` is given) no unknown keys."""
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, f"{what} must be a mapping, not {_kind(node)}")
    given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag not in (_STR, _INT):
            raise _Invalid(key, f"keys in {what} must be strings, not {_kind(key)}")
        name = str(key.value)
        if name in given:
            raise _Invalid(key, f"duplicate key {name!r} in {what} (first at line {_line(given[name][0])})")
        if allowed is not None and name not in allowed:
            if refused and name in refused:
                raise _Invalid(key, refused[name])
            raise _Invalid(key, f"unknown key {name!r} in {what}; allowed: {', '.join(allowed)}")
        given[name] = (key, value)
    return given


def _string_list(node: yaml.Node, what: str) -> list[yaml.ScalarNode]:
    """A list of strings (null = empty)."""
    if _is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(node, f"{what} must be a list, not {_kind(node)}")
    items: list[yaml.ScalarNode] = []
    for item in node.value:
        _string(item, f"{what} item")
        assert isinstance(item, yaml.ScalarNode)
        items.append(item)
    return items


def _string(node: yaml.Node, what: str) -> str:
    """A string scalar."""
    return _scalar_text(node, what, allow_int=False)


def _scalar_text(node: yaml.Node, what: str, *, allow_int: bool) -> str:
    """A string scalar's text (or an integer's, written as is, where a number is a fine string)."""
    if isinstance(node, yaml.ScalarNode) and (node.tag == _STR or (allow_int and node.tag == _INT)):
        return str(node.value)
    raise _Invalid(node, f"{what} must be a string, not {_kind(node)}")


def _bool(node: yaml.Node, what: str) -> bool:
    """A YAML boolean."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
        return _BOOLS[str(node.value).lower()]
    raise _Invalid(node, f"{what} must be true or false, not {_kind(node)}")


def _is_null(node: yaml.Node) -> bool:
    """Whether the node is YAML null (empty, ~ or null)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _kind(node: yaml.Node) -> str:
    """What the node is, for messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kinds = {_STR: "a string", _INT: "a number", "tag:yaml.org,2002:float": "a number", _BOOL: "a boolean"}
    if node.tag == _NULL:
        return "empty"
    return kinds.get(node.tag, f"a {node.tag.rsplit(':', 1)[-1]}")


def _line(node: yaml.Node) -> int:
    """1-based line where the node starts."""
    return int(node.start_mark.line) + 1
