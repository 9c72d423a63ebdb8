"""The endpoints file: load and validate it into a frozen Config, or raise one ConfigError naming file:line.

Top-level keys that set one Config field each are a `{key: parser}` table (_SETTINGS); the keys defaults, targets
and ranges share are another (scanner.config.settings). Either way a new key is a field and an entry.
"""

from __future__ import annotations

import ipaddress
import math
import re
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from scanner.config.hosts import host_name, host_port, is_ip, sni_value
from scanner.config.model import (
    DEFAULT_MAX_RANGE_ENDPOINTS,
    MAX_RANGE_ENDPOINTS,
    MAX_WORKERS,
    Config,
    Politeness,
    ProbeSettings,
    RangeConfig,
    Resolver,
    TargetConfig,
)
from scanner.config.nodes import (
    MAX_DURATION,
    TAG_NULL,
    TAG_STR,
    InvalidNode,
    Pairs,
    build_document,
    compose_yaml,
    describe,
    duration_value,
    int_value,
    line_of,
    nonempty_items,
    number_value,
    quote,
    quote_hint,
    read_mapping,
    read_pairs,
    str_list,
    str_value,
)
from scanner.config.policies import check_expect
from scanner.config.profiles import config_profiles, profiles_in_force
from scanner.config.settings import (
    LAYER_KEYS,
    LAYER_PARSERS,
    RANGE_ONLY_KEYS,
    Given,
    Layer,
    expect_of,
    target_settings,
)
from scanner.config.source import MAX_CONFIG_BYTES, STDIN, TOO_LARGE, read_file, read_stdin
from scanner.errors import ConfigError
from scanner.hostport import join_host_port

_RESOLVER_KEYS = ("nameservers", "timeout")
_PROBE_KEYS = ("allow", "max_concurrent")
_POLITENESS_KEYS = ("connections_per_address", "connections_per_second")
_TARGET_KEYS = ("host", "port", "name", "sni", "address", *(k for k in LAYER_KEYS if k not in RANGE_ONLY_KEYS))
_RANGE_KEYS = ("network", "ports", *LAYER_KEYS)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the config at `path` ("-": standard input); raise ConfigError on anything wrong."""
    name = STDIN if str(path) == "-" else str(path)
    data = read_stdin() if name == STDIN else read_file(path, name)
    try:
        if b"\0" in data:
            raise UnicodeError("NUL byte")
        text = data.decode("utf-8")
    except UnicodeError:
        raise ConfigError(name, 1, "not a text file (binary or not UTF-8)") from None
    return parse_config(text, name)


def parse_config(text: str, name: str) -> Config:
    """Parse and validate config text; `name` stands for its source in messages and in Config.path."""
    if len(text) > MAX_CONFIG_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError(name, 1, TOO_LARGE)
    return build_document(name, compose_yaml(name, text), lambda root: _build(name, root))


def _build(name: str, root: yaml.Node | None) -> Config:
    """Validate the whole document and build the Config."""
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == TAG_NULL):
        raise InvalidNode(1, 'config is empty: expected a mapping with a "targets" list')
    if not isinstance(root, yaml.MappingNode):
        raise InvalidNode(root, f"top level: expected a mapping, got {describe(root)}")
    pairs = read_mapping(root, "top level", _TOP_KEYS)
    with profiles_in_force(config_profiles(pairs["clients"][1]) if "clients" in pairs else {}):
        settings = {key: parse(pairs[key][1]) for key, parse in _SETTINGS.items() if key in pairs}
        defaults = _defaults(pairs["defaults"][1]) if "defaults" in pairs else {}
        targets, ranges = _targets(pairs, defaults)
    max_range_endpoints = settings.get("max_range_endpoints", DEFAULT_MAX_RANGE_ENDPOINTS)
    total = 0
    for entry in ranges:
        total += entry.size
        if total > max_range_endpoints:
            raise InvalidNode(
                entry.line,
                f"network {entry.network} with {len(entry.ports)} port(s) brings the ranges to {total} endpoints, "
                f"more than max_range_endpoints ({max_range_endpoints})",
            )
    return Config(path=name, targets=tuple(targets), ranges=tuple(ranges), **settings)


def _defaults(node: yaml.Node) -> Layer:
    """The `defaults:` mapping: per-target settings every target and range starts from."""
    if not isinstance(node, yaml.MappingNode):
        raise InvalidNode(node, f"defaults: expected a mapping, got {describe(node)}")
    defaults: Layer = {}
    for key, (key_node, value_node) in read_mapping(node, "defaults", LAYER_KEYS).items():
        defaults[key] = Given(LAYER_PARSERS[key](value_node), key_node, value_node)
    expect = expect_of(defaults)
    check_expect(expect, set(expect))
    return defaults


def _targets(pairs: Pairs, defaults: Layer) -> tuple[list[TargetConfig], list[RangeConfig]]:
    """The `targets:` list: targets (names unique) and `network:` ranges."""
    if "targets" not in pairs:
        raise InvalidNode(1, "targets: at least one target is required")
    node = pairs["targets"][1]
    if (isinstance(node, yaml.ScalarNode) and node.tag == TAG_NULL) or (
        isinstance(node, yaml.SequenceNode) and not node.value
    ):
        raise InvalidNode(node, "targets: at least one target is required")
    if not isinstance(node, yaml.SequenceNode):
        raise InvalidNode(node, f"targets: expected a list, got {describe(node)}")
    targets: list[TargetConfig] = []
    ranges: list[RangeConfig] = []
    name_lines: dict[str, int] = {}
    for item in node.value:
        if isinstance(item, yaml.MappingNode) and "network" in read_pairs(item, "target"):
            ranges.append(_range(item, defaults))
            continue
        target, name_line = _target(item, defaults)
        if target.name in name_lines:
            first = name_lines[target.name]
            raise InvalidNode(name_line, f"duplicate target name {quote(target.name)} (first defined on line {first})")
        name_lines[target.name] = name_line
        targets.append(target)
    return targets, ranges


def _workers(node: yaml.Node) -> int | None:
    """`workers:` "auto" (None: scanner.daemon.pool decides) or a count of worker processes, 0 for none."""
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR and node.value == "auto":
        return None
    value = int_value(node)
    if value is None or not 0 <= value <= MAX_WORKERS:
        raise InvalidNode(node, f'workers: expected "auto" or an integer 0-{MAX_WORKERS}, got {describe(node)}')
    return value


def _positive_int(node: yaml.Node, key: str) -> int:
    """An integer >= 1, or raise naming `key`."""
    value = int_value(node)
    if value is None or value < 1:
        raise InvalidNode(node, f"{key}: expected an integer >= 1, got {describe(node)}")
    return value


def _max_range_endpoints(node: yaml.Node) -> int:
    """`max_range_endpoints:` how many endpoints all `network:` ranges may bring together."""
    value = _positive_int(node, "max_range_endpoints")
    if value > MAX_RANGE_ENDPOINTS:
        raise InvalidNode(
            node, f"max_range_endpoints: expected an integer 1-{MAX_RANGE_ENDPOINTS}, got {describe(node)}"
        )
    return value


def _resolver(node: yaml.Node) -> Resolver:
    """Parse `resolver: {nameservers: [host:port, ...], timeout: 2s}`."""
    pairs = read_mapping(node, "resolver", _RESOLVER_KEYS)
    if "nameservers" not in pairs:
        raise InvalidNode(node, 'resolver: missing required key "nameservers"')
    servers_node = pairs["nameservers"][1]
    servers = []
    for item in nonempty_items(
        servers_node, f"resolver.nameservers: expected a non-empty list, got {describe(servers_node)}"
    ):
        text = str_value(item, "resolver.nameservers")
        host, port = host_port(text, item)
        if not is_ip(host):
            raise InvalidNode(item, f"resolver.nameservers: expected an IP address[:port], got {quote(text)}")
        servers.append((host, 53 if port is None else port))
    timeout = duration_value(pairs["timeout"][1], "resolver.timeout") if "timeout" in pairs else 2.0
    return Resolver(nameservers=tuple(servers), timeout=timeout)


def _probe_settings(node: yaml.Node) -> ProbeSettings:
    """Parse `probe: {allow: [CIDR or name pattern, ...], max_concurrent: N}`."""
    pairs = read_mapping(node, "probe", _PROBE_KEYS)
    allow: list[str] = []
    if "allow" in pairs:
        for item, text in str_list(pairs["allow"][1], "probe.allow"):
            if "/" in text or is_ip(text):
                try:
                    text = str(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    raise InvalidNode(item, f"probe.allow: {quote(text)} is not a valid network") from None
            elif not re.fullmatch(r"[A-Za-z0-9_.*?-]+", text):
                raise InvalidNode(
                    item, f"probe.allow: expected a CIDR network or a host name pattern, got {quote(text)}"
                )
            allow.append(text)
    max_concurrent = ProbeSettings.max_concurrent
    if "max_concurrent" in pairs:
        max_concurrent = _positive_int(pairs["max_concurrent"][1], "probe.max_concurrent")
    return ProbeSettings(allow=tuple(allow), max_concurrent=max_concurrent)


def _politeness(node: yaml.Node) -> Politeness:
    """Parse `politeness: {connections_per_address: 8, connections_per_second: 0}`."""
    pairs = read_mapping(node, "politeness", _POLITENESS_KEYS)
    per_address = Politeness.connections_per_address
    if "connections_per_address" in pairs:
        per_address = _positive_int(pairs["connections_per_address"][1], "politeness.connections_per_address")
    rate = Politeness.connections_per_second
    if "connections_per_second" in pairs:
        rate_node = pairs["connections_per_second"][1]
        number = number_value(rate_node)
        if number is None or number < 0 or not math.isfinite(number):
            raise InvalidNode(
                rate_node, f"politeness.connections_per_second: expected a number >= 0, got {describe(rate_node)}"
            )
        if 0 < number < 1 / MAX_DURATION:
            raise InvalidNode(
                rate_node,
                f"politeness.connections_per_second: {describe(rate_node)} is less than one connection a day; "
                "0 turns the limit off",
            )
        rate = number
    return Politeness(connections_per_address=per_address, connections_per_second=rate)


def _range(node: yaml.MappingNode, defaults: Layer) -> RangeConfig:
    """Build a `network:` range entry; its endpoints are expanded later, in scanner.targets."""
    pairs = read_mapping(node, "range", _RANGE_KEYS)
    own: Layer = {}
    network_node = pairs["network"][1]
    text = str_value(network_node, "network")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidNode(network_node, f"network: {quote(text)} is not a valid network ({exc})") from None
    ports: tuple[int, ...] = (443,)
    for key, (key_node, value_node) in pairs.items():
        if key == "ports":
            expected = f"ports: expected a non-empty list of ports, got {describe(value_node)}"
            ports = tuple(_port(item) for item in nonempty_items(value_node, expected))
            if len(set(ports)) != len(ports):
                raise InvalidNode(value_node, "ports: duplicate port")
        elif key != "network":
            own[key] = Given(LAYER_PARSERS[key](value_node), key_node, value_node)
    template = target_settings(
        own, defaults, name=str(network), host=str(network.network_address), port=ports[0], node=node
    )
    return RangeConfig(network=str(network), ports=ports, template=template, line=line_of(node))


def _port(node: yaml.Node) -> int:
    """A port number 1-65535 written as an integer."""
    port = int_value(node)
    if port is None or not 1 <= port <= 65535:
        raise InvalidNode(node, f"port: expected an integer 1-65535, got {describe(node)}")
    return port


def _target(node: yaml.Node, defaults: Layer) -> tuple[TargetConfig, int]:
    """Build one target from its short or long form; also return the line its name comes from."""
    own: Layer = {}
    port: int | None = None
    name: str | None = None
    name_line = line_of(node)
    address: str | None = None
    sni_given: str | bool = True  # True: derive from host
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR:
        host, port = host_port(node.value, node)
    elif isinstance(node, yaml.MappingNode):
        pairs = read_mapping(node, "target", _TARGET_KEYS)
        if "host" not in pairs:
            raise InvalidNode(node, 'target: missing required key "host"')
        host = ""
        for key, (key_node, value_node) in pairs.items():
            if key == "host":
                host = host_name(str_value(value_node, "host"), value_node)
            elif key == "port":
                port = _port(value_node)
            elif key == "address":
                address = str_value(value_node, "address")
                if not is_ip(address.strip("[]")):
                    raise InvalidNode(value_node, f"address: expected an IP address, got {quote(address)}")
                address = str(ipaddress.ip_address(address.strip("[]")))  # one spelling per address
            elif key == "name":
                name = str_value(value_node, "name")
                if not name.strip() or not name.isprintable():
                    raise InvalidNode(
                        value_node, f"name: expected a non-empty printable string, got {describe(value_node)}"
                    )
                name_line = line_of(value_node)
            elif key == "sni":
                sni_given = sni_value(value_node)
            else:
                own[key] = Given(LAYER_PARSERS[key](value_node), key_node, value_node)
    else:
        hint = ' (quote bracketed IPv6 addresses: "[::1]:8443")' if isinstance(node, yaml.SequenceNode) else ""
        hint = hint or quote_hint(node)
        raise InvalidNode(node, f'target: expected "host[:port]" or a mapping with host, got {describe(node)}{hint}')
    port = 443 if port is None else port
    if sni_given is True:
        sni = None if is_ip(host) else host
    else:
        sni = sni_given or None
    if name is None:
        name = join_host_port(host, port)
    target = target_settings(own, defaults, name=name, host=host, port=port, node=node)
    if target.https_proxy is not None and address is not None:
        raise InvalidNode(node, "address: cannot pin an address when connecting through https_proxy")
    return replace(target, sni=sni, address=address), name_line


# Top-level keys that each set the Config field of the same name, read in this order: a new one is a Config field,
# an entry here and its name in _TOP_KEYS.
_SETTINGS: dict[str, Callable[[yaml.Node], typing.Any]] = {
    "concurrency": lambda node: _positive_int(node, "concurrency"),
    "workers": _workers,
    "max_range_endpoints": _max_range_endpoints,
    "resolver": _resolver,
    "probe": _probe_settings,
    "politeness": _politeness,
}
_TOP_KEYS = (  # in the order the unknown-key message lists them
    "concurrency",
    "workers",
    "defaults",
    "targets",
    "resolver",
    "max_range_endpoints",
    "probe",
    "politeness",
    "clients",
)
