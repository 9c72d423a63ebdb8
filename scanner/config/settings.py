"""Per-target settings: one `{key: parser}` entry per key defaults, targets and ranges share; how levels combine."""

from __future__ import annotations

import enum
import os
import re
import typing

import yaml

from scanner.config.hosts import https_proxy, is_ip
from scanner.config.model import (
    AddressMode,
    ClientCertificate,
    DatedPolicy,
    Expectation,
    HttpCheck,
    StartTls,
    TargetConfig,
)
from scanner.config.nodes import (
    NOT_UTF8,
    TAG_STR,
    InvalidNode,
    ProtocolLines,
    bool_value,
    describe,
    duration_value,
    int_value,
    is_utf8,
    line_of,
    protocol_lines,
    quote,
    quote_hint,
    read_mapping,
    read_pairs,
    str_value,
)
from scanner.config.policies import check_expect, expect_policies
from scanner.config.profiles import target_profiles
from scanner.config.source import read_file
from scanner.errors import ConfigError
from scanner.protocols import ALL_PROTOCOLS, Protocol

_CLIENT_CERT_KEYS = ("cert", "key")
_HTTP_KEYS = ("path", "method", "host", "match")
# The scanner's own metric labels; a user label of the same name would clash with them.
_RESERVED_LABELS = (
    "target", "protocol", "reason", "address", "name", "host", "port", "client", "policy",
    "cipher", "profile", "subject", "issuer", "serial", "fingerprint_sha256", "key", "error",
    "kind", "pattern",
)  # fmt: skip
# Labels Prometheus itself sets or gives a meaning (scrape target, histogram bucket, summary quantile).
_PROMETHEUS_LABELS = ("job", "instance", "le", "quantile")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METHOD_RE = re.compile(r"[A-Z]+")
_VISIBLE_ASCII_RE = re.compile(r"[\x21-\x7e]+")  # these strings go verbatim into an HTTP request


class Given(typing.NamedTuple):
    """One per-target key as written at one level: its parsed value, and where it was written."""

    value: typing.Any
    key: yaml.Node
    node: yaml.Node


Layer = dict[str, Given]  # per-target settings written at one level (defaults, a target or a range)


def target_settings(own: Layer, defaults: Layer, *, name: str, host: str, port: int, node: yaml.Node) -> TargetConfig:
    """Merge one level's settings over the defaults into a TargetConfig, checking combinations.

    A key given at the target's level replaces the default's, except where _MERGED says how the two combine.
    """
    given = {
        key: (own[key] if key in own else defaults[key]).value for key in LAYER_KEYS if key in own or key in defaults
    }
    for key, merge in _MERGED.items():
        given[key] = merge(defaults.get(key), own.get(key))
    given["deadlines"] = _merge_deadlines(defaults.get("expect"), own.get("expect"))
    expect = {**expect_of(defaults), **expect_of(own)}
    check_expect(expect, set(expect_of(own)))
    http = given.get("http")
    http_node = own["http"].key if "http" in own else None
    if http is None and "http_ok" in expect and expect["http_ok"][1]:
        where = http_node or expect_of(own).get("http_ok", (node, {}))[0]
        raise InvalidNode(
            where,
            f"expect.http_ok needs an HTTP check, but target {quote(name)} has none "
            "(set http: true or a mapping, or http_ok: [])",
        )
    starttls = given.get("starttls")
    if starttls is not None and http is not None:
        where = (own["starttls"].node if "starttls" in own else None) or http_node or node
        raise InvalidNode(where, f"starttls: {starttls} endpoints do not speak HTTP; drop the http check (http: false)")
    return TargetConfig(name=name, host=host, port=port, sni=None if is_ip(host) else host, line=line_of(node), **given)


def expect_of(layer: Layer) -> dict[str, tuple[yaml.Node, ProtocolLines]]:
    """The `expect:` keys written at one level (each with its key node and protocols), without dated policies."""
    return layer["expect"].value[0] if "expect" in layer else {}


def _merge_expect(default: Given | None, own: Given | None) -> Expectation:
    """Each key of `expect` given at the target replaces the default's key."""
    expect = {**(default.value[0] if default else {}), **(own.value[0] if own else {})}
    return Expectation(**{key: frozenset(protocols) for key, (_, protocols) in expect.items()})


def _merge_deadlines(default: Given | None, own: Given | None) -> tuple[DatedPolicy, ...]:
    """A target's `expect:` brings its own dated policies, else it keeps the defaults'."""
    given = own or default
    return given.value[1] if given else ()


def _merge_labels(default: Given | None, own: Given | None) -> tuple[tuple[str, str], ...]:
    """A target's labels are merged over the default labels."""
    return tuple(sorted({**(default.value if default else {}), **(own.value if own else {})}.items()))


def _client_certificate(node: yaml.Node) -> ClientCertificate:
    """`client_cert: {cert: PATH, key: PATH}`: the mTLS client certificate (chain) and key, both readable."""
    pairs = read_mapping(node, "client_cert", _CLIENT_CERT_KEYS)
    paths = {}
    for name in _CLIENT_CERT_KEYS:
        if name not in pairs:
            raise InvalidNode(node, f'client_cert: missing required key "{name}"')
        path_node = pairs[name][1]
        path = str_value(path_node, f"client_cert.{name}")
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            raise InvalidNode(path_node, f"client_cert.{name}: cannot read {quote(path)}")
        paths[name] = path
    return ClientCertificate(**paths)


def _confirm_sweeps(node: yaml.Node) -> int:
    value = int_value(node)
    if value is None or not 1 <= value <= 10:
        raise InvalidNode(node, f"confirm_sweeps: expected an integer 1-10, got {describe(node)}")
    return value


def _deep_interval(node: yaml.Node) -> float:
    """A duration, or 0 (alone among durations) to turn the deep tier off."""
    return _duration_or_off(node, "deep_interval")


def _duration_or_off(node: yaml.Node, key: str) -> float:
    """A duration, or 0 to turn the thing off."""
    if isinstance(node, yaml.ScalarNode) and re.fullmatch(r"0+(\.0*)?(ms|s|m|h)?", node.value.strip()):
        return 0.0
    return duration_value(node, key)


MAX_SPAN_DAYS = 90
_SPAN_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)d")


def _span(node: yaml.Node, key: str) -> float:
    """A duration that may also be given in days (7d), up to MAX_SPAN_DAYS: pattern_window, permanent_after."""
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR and (days := _SPAN_RE.fullmatch(node.value.strip())):
        seconds = float(days.group(1)) * 86400
        if seconds <= 0:
            raise InvalidNode(node, f"{key}: bad duration {quote(node.value)}: must be greater than 0")
        if seconds > MAX_SPAN_DAYS * 86400:
            raise InvalidNode(node, f"{key}: bad duration {quote(node.value)}: must be at most {MAX_SPAN_DAYS}d")
        return seconds
    return duration_value(node, key)


def _protocols(node: yaml.Node) -> tuple[Protocol, ...]:
    """`protocols:` the versions to sweep, at least one, in the order of ALL_PROTOCOLS."""
    protocols = protocol_lines(node, "protocols")
    if not protocols:
        raise InvalidNode(node, "protocols: at least one protocol is required")
    return tuple(protocol for protocol in ALL_PROTOCOLS if protocol in protocols)


def _ca_file(node: yaml.Node) -> str:
    """`ca_file:` a readable PEM file of CA certificates, for the deep tier."""
    path = str_value(node, "ca_file")
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise InvalidNode(node, f"ca_file: cannot read {quote(path)}")
    try:
        head = read_file(path, path)
    except (OSError, ConfigError):
        raise InvalidNode(node, f"ca_file: cannot read {quote(path)}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise InvalidNode(node, f"ca_file: no PEM certificate in {quote(path)}")
    return path


_E = typing.TypeVar("_E", bound=enum.StrEnum)


def _choice(node: yaml.Node, key: str, choices: type[_E]) -> _E:
    """Parse one of an enum's values."""
    allowed = ", ".join(choice.value for choice in choices)
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR and node.value in {c.value for c in choices}:
        return choices(node.value)
    raise InvalidNode(node, f"{key}: expected one of {allowed}, got {describe(node)}")


def _http(node: yaml.Node) -> HttpCheck | None:
    """Parse `http`: true (all defaults), false (no check), or a mapping of path, method, host."""
    flag = bool_value(node)
    if flag is not None:
        return HttpCheck() if flag else None
    if not isinstance(node, yaml.MappingNode):
        raise InvalidNode(
            node, f"http: expected true, false or a mapping with path, method, host, got {describe(node)}"
        )
    values: dict[str, str] = {}
    for key, (_, value_node) in read_mapping(node, "http", _HTTP_KEYS).items():
        value = str_value(value_node, f"http.{key}")
        if key == "match":
            try:
                re.compile(value)
            except re.error as exc:
                raise InvalidNode(value_node, f"http.match: not a regular expression ({exc}): {quote(value)}") from None
            values[key] = value
            continue
        if key == "path" and not value.startswith("/"):
            raise InvalidNode(value_node, f'http.path: must start with "/", got {quote(value)}')
        if key == "method" and not _METHOD_RE.fullmatch(value):
            raise InvalidNode(
                value_node, f"http.method: expected an uppercase method such as GET, HEAD, POST, got {quote(value)}"
            )
        if not _VISIBLE_ASCII_RE.fullmatch(value):
            raise InvalidNode(
                value_node, f"http.{key}: must be non-empty printable ASCII without spaces, got {quote(value)}"
            )
        values[key] = value
    return HttpCheck(**values)


def _labels(node: yaml.Node) -> dict[str, str]:
    """Parse a mapping of Prometheus label names to string values."""
    if not isinstance(node, yaml.MappingNode):
        raise InvalidNode(node, f"labels: expected a mapping of names to strings, got {describe(node)}")
    labels: dict[str, str] = {}
    for key, (key_node, value_node) in read_pairs(node, "labels").items():
        if not _LABEL_RE.fullmatch(key):
            raise InvalidNode(
                key_node, f"label name {quote(key)} is not valid: use letters, digits and _, not starting with a digit"
            )
        if key.startswith("__"):
            raise InvalidNode(
                key_node, f'label name {quote(key)} is reserved: names starting with "__" are for Prometheus'
            )
        if key in _RESERVED_LABELS:
            reserved = ", ".join(_RESERVED_LABELS)
            raise InvalidNode(
                key_node, f"label name {quote(key)} is reserved for the scanner's own labels ({reserved})"
            )
        if key in _PROMETHEUS_LABELS:
            reserved = ", ".join(_PROMETHEUS_LABELS)
            raise InvalidNode(key_node, f"label name {quote(key)} is reserved for Prometheus' own labels ({reserved})")
        if not isinstance(value_node, yaml.ScalarNode) or value_node.tag != TAG_STR:
            message = f"label {quote(key)}: expected a string value, got {describe(value_node)}"
            raise InvalidNode(value_node, message + quote_hint(value_node))
        if not is_utf8(value_node.value):
            raise InvalidNode(value_node, f"label {quote(key)}: value {quote(value_node.value)} {NOT_UTF8}")
        labels[key] = value_node.value
    return labels


# The keys shared by defaults, targets and ranges: each parses into the TargetConfig field of the same name.
# A new per-target key is one TargetConfig field and one entry here.
LAYER_PARSERS: dict[str, typing.Callable[[yaml.Node], typing.Any]] = {
    "interval": lambda node: duration_value(node, "interval"),
    "timeout": lambda node: duration_value(node, "timeout"),
    "protocols": _protocols,
    "expect": expect_policies,
    "http": _http,
    "labels": _labels,
    "addresses": lambda node: _choice(node, "addresses", AddressMode),
    "starttls": lambda node: _choice(node, "starttls", StartTls),
    "client_cert": _client_certificate,
    "https_proxy": https_proxy,
    "confirm_sweeps": _confirm_sweeps,
    "clients": target_profiles,
    "deep_interval": _deep_interval,
    "ca_file": _ca_file,
    "burst_interval": lambda node: _duration_or_off(node, "burst_interval"),
    "burst_for": lambda node: duration_value(node, "burst_for"),
    "pattern_window": lambda node: _span(node, "pattern_window"),
    "permanent_after": lambda node: _span(node, "permanent_after"),
    "range_interval": lambda node: duration_value(node, "range_interval"),
}
# Keys whose default and target values combine instead of the target's replacing the default's.
_MERGED: dict[str, typing.Callable[[Given | None, Given | None], typing.Any]] = {
    "expect": _merge_expect,
    "labels": _merge_labels,
}
LAYER_KEYS = tuple(LAYER_PARSERS)
RANGE_ONLY_KEYS = ("range_interval",)  # in defaults and ranges only: a target has no range to discover
