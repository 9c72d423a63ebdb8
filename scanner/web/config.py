"""The --web.config.file (exporter-toolkit's format): read and validated into a frozen WebConfig, or one ConfigError.

Read with the config layer's node helpers, so its messages are worded as the endpoints file's are.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import yaml

from scanner.config.nodes import (
    TAG_INT,
    InvalidNode,
    Pairs,
    bool_flag,
    build_document,
    compose_yaml,
    is_null,
    line_of,
    quote,
    read_mapping,
    str_list,
    str_value,
)
from scanner.errors import ConfigError, TlsContextError
from scanner.web.tls import CIPHER_SUITES, CLIENT_AUTH_TYPES, CURVES, TLS_VERSIONS, TlsSettings, server_ssl_context

_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # an old spelling exporter-toolkit still takes
# Python's ssl verifies any client certificate it asks for (see scanner.web.tls), so these need client_ca_file.
_NEED_CLIENT_CA = ("RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

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

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class WebConfig:
    """A validated web config: no tls means plain HTTP, no users means no auth."""

    path: str
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    headers: tuple[tuple[str, str], ...] = ()


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
    return build_document(path, compose_yaml(path, text), lambda root: _web_config(path, root))


def _web_config(path: str, root: yaml.Node | None) -> WebConfig:
    """Validate the document and build the WebConfig."""
    if root is None or is_null(root):
        return WebConfig(path)  # empty: no TLS, no auth, as in exporter-toolkit
    top = read_mapping(root, "top level", _TOP_KEYS, _TOP_NOT_SUPPORTED)
    base_dir = os.path.dirname(os.path.abspath(path))
    tls: TlsSettings | None = None
    users: dict[str, bytes] = {}
    headers: tuple[tuple[str, str], ...] = ()
    if "tls_server_config" in top and not is_null(top["tls_server_config"][1]):
        tls = _tls(base_dir, *top["tls_server_config"])
    if "http_server_config" in top and not is_null(top["http_server_config"][1]):
        headers = _headers(top["http_server_config"][1])
    if "basic_auth_users" in top and not is_null(top["basic_auth_users"][1]):
        users = _users(top["basic_auth_users"][1])
    return WebConfig(path, tls, MappingProxyType(users), headers)


def _tls(base_dir: str, key: yaml.Node, node: yaml.Node) -> TlsSettings:
    """Validate tls_server_config, load its files into a trial context, and build TlsSettings."""
    given = read_mapping(node, "tls_server_config", _TLS_KEYS, _TLS_NOT_SUPPORTED)
    for required in ("cert_file", "key_file"):
        if required not in given:
            raise InvalidNode(key, f'tls_server_config: missing required key "{required}"')
    cert_file = _file(base_dir, "cert_file", given["cert_file"][1])
    key_file = _file(base_dir, "key_file", given["key_file"][1])
    client_ca_file = None
    if "client_ca_file" in given:
        client_ca_file = _file(base_dir, "client_ca_file", given["client_ca_file"][1])

    auth = "NoClientCert"
    if "client_auth_type" in given:
        value = given["client_auth_type"][1]
        auth = str_value(value, "client_auth_type")
        auth = _CLIENT_AUTH_ALIASES.get(auth, auth)
        if auth not in CLIENT_AUTH_TYPES:
            known = ", ".join(CLIENT_AUTH_TYPES)
            raise InvalidNode(value, f"unknown client_auth_type {quote(value.value)} (known: {known})")
        if auth in _NEED_CLIENT_CA and client_ca_file is None:
            why = " (Python's ssl cannot require a certificate without verifying it)"
            extra = why if auth == "RequireAnyClientCert" else ""
            raise InvalidNode(value, f"client_auth_type {auth} needs client_ca_file{extra}")
    if client_ca_file is not None and auth == "NoClientCert":
        raise InvalidNode(given["client_ca_file"][0], "client_ca_file is set but client_auth_type is NoClientCert")

    min_version = _version(given, "min_version", ssl.TLSVersion.TLSv1_2)
    max_version = _version(given, "max_version", ssl.TLSVersion.TLSv1_3)
    if min_version > max_version:
        names = {version: name for name, version in TLS_VERSIONS.items()}
        where = given["max_version"][1] if "max_version" in given else given["min_version"][1]
        raise InvalidNode(where, f"min_version {names[min_version]} is above max_version {names[max_version]}")

    cipher_suites: tuple[str, ...] = ()
    if "cipher_suites" in given:
        items = _str_list(given["cipher_suites"][1], "cipher_suites")
        for item, suite in items:
            if suite not in CIPHER_SUITES:
                raise InvalidNode(item, f"unknown cipher suite {quote(suite)} (known: {', '.join(CIPHER_SUITES)})")
        cipher_suites = tuple(suite for _, suite in items)
        if cipher_suites and min_version < ssl.TLSVersion.TLSv1_3 and not any(CIPHER_SUITES[s] for s in cipher_suites):
            raise InvalidNode(
                given["cipher_suites"][0],
                "cipher_suites lists only TLS 1.3 suites, which cannot be configured; add TLS 1.2 suites",
            )

    curve = None
    if "curve_preferences" in given:
        items = _str_list(given["curve_preferences"][1], "curve_preferences")
        for item, name in items:
            if name not in CURVES:
                raise InvalidNode(item, f"unknown curve {quote(name)} (known: {', '.join(CURVES)})")
        if len(items) > 1:
            raise InvalidNode(
                items[1][0],
                "curve_preferences: Python's ssl can use only one curve; list one (or none for OpenSSL's defaults)",
            )
        curve = items[0][1] if items else None

    prefer = True
    if "prefer_server_cipher_suites" in given:
        prefer = bool_flag(given["prefer_server_cipher_suites"][1], "prefer_server_cipher_suites")

    tls = TlsSettings(
        cert_file, key_file, client_ca_file, auth, min_version, max_version, cipher_suites, curve, prefer, line_of(key)
    )
    try:
        server_ssl_context(tls)
    except TlsContextError as exc:
        raise InvalidNode(given[exc.key][0], exc.message) from None
    return tls


def _headers(node: yaml.Node) -> tuple[tuple[str, str], ...]:
    """Validate http_server_config into its extra headers; http2 is accepted and ignored (aiohttp serves HTTP/1.1)."""
    given = read_mapping(node, "http_server_config", _HTTP_KEYS)
    if "http2" in given:
        bool_flag(given["http2"][1], "http2")
    if "headers" not in given or is_null(given["headers"][1]):
        return ()
    headers: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    canonical = {name.lower(): name for name in EXTRA_HEADERS}
    for name, (key, value) in read_mapping(given["headers"][1], "headers", number_keys=True).items():
        if not _TOKEN_RE.fullmatch(name):
            raise InvalidNode(key, f"header name {quote(name)} is not a valid HTTP token")
        if name.lower() not in canonical:
            raise InvalidNode(key, f"header {quote(name)} cannot be set (allowed: {', '.join(EXTRA_HEADERS)})")
        proper = canonical[name.lower()]
        if proper in seen:
            raise InvalidNode(key, f"header {quote(proper)} given twice (first on line {seen[proper]})")
        seen[proper] = line_of(key)
        text = _header_value(value, f"header {proper}")
        if any(char in text for char in "\r\n\0"):
            raise InvalidNode(value, f"header {proper} value contains CR, LF or NUL")
        if not text:
            continue  # blank unsets the header, as in exporter-toolkit
        allowed = EXTRA_HEADERS[proper]
        if allowed and text not in allowed:
            raise InvalidNode(value, f"header {proper}: expected one of {', '.join(allowed)}, got {quote(text)}")
        headers.append((proper, text))
    return tuple(headers)


def _users(node: yaml.Node) -> dict[str, bytes]:
    """Validate basic_auth_users: user -> bcrypt hash."""
    users: dict[str, bytes] = {}
    for user, (key, value) in read_mapping(node, "basic_auth_users", number_keys=True).items():
        if ":" in user:
            raise InvalidNode(key, f'user name {quote(user)} contains ":", which basic auth cannot carry')
        hashed = str_value(value, f"password hash of {quote(user)}")
        if not _BCRYPT_RE.fullmatch(hashed):
            raise InvalidNode(value, f"password of {quote(user)} is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31)")
        users[user] = hashed.encode("ascii")
    return users


def _file(base_dir: str, key: str, node: yaml.Node) -> str:
    """A readable file (relative paths are from the web config's directory, as in exporter-toolkit)."""
    name = str_value(node, key)
    if not name:
        raise InvalidNode(node, f"{key}: must not be empty")
    path = os.path.join(base_dir, os.path.expanduser(name))
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise InvalidNode(node, f"cannot read {key} {path}: {exc.strerror or exc}") from None
    return path


def _version(given: Pairs, key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    """A TLS version key (TLS10..TLS13)."""
    if key not in given:
        return default
    node = given[key][1]
    name = str_value(node, key)
    if name not in TLS_VERSIONS:
        raise InvalidNode(node, f"unknown {key} {quote(name)} (known: {', '.join(TLS_VERSIONS)})")
    return TLS_VERSIONS[name]


def _str_list(node: yaml.Node, key: str) -> list[tuple[yaml.Node, str]]:
    """A list of strings, each with its node; null is an empty list."""
    return [] if is_null(node) else str_list(node, key)


def _header_value(node: yaml.Node, key: str) -> str:
    """A header's value: a string, or an integer as written (a fine header value); null is blank."""
    if is_null(node):
        return ""
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_INT:
        return str(node.value)
    return str_value(node, key)
