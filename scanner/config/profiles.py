"""Client profiles: what a real client offers in its ClientHello, to decide on every sweep whether it can connect."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from scanner.config.nodes import (
    TAG_STR,
    InvalidNode,
    bool_flag,
    describe,
    line_of,
    nonempty_items,
    protocol_lines,
    quote,
    read_mapping,
    read_pairs,
    str_list,
    str_value,
)
from scanner.protocols import ALL_PROTOCOLS, Protocol

# Named groups a profile may list (the modern OpenSSL in sslyze can offer them; the legacy one offers its own).
GROUPS = ("X25519", "X448", "secp256r1", "secp384r1", "secp521r1")
CIPHER_NAME_RE = re.compile(r"TLS_[A-Z0-9_]+")  # an IANA cipher suite name
PROFILE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_PROFILE_KEYS = ("protocols", "ciphers", "sni", "groups")
# The profiles a config can name: the built-in ones and its own `clients:`, while it is being parsed.
_IN_FORCE: contextvars.ContextVar[Mapping[str, ClientProfile]] = contextvars.ContextVar("profiles")


@dataclass(frozen=True)
class ClientProfile:
    """One client: its versions, cipher suites (IANA names, in its order), whether it sends SNI, its groups."""

    name: str
    protocols: tuple[Protocol, ...]
    ciphers: tuple[str, ...]
    sni: bool = True
    groups: tuple[str, ...] = ()  # empty: the OpenSSL's defaults
    source: str = ""  # where the facts come from

    def best_version(self, accepted: set[Protocol]) -> Protocol | None:
        """The highest version both this client and the server accept, or None."""
        common = [p for p in self.protocols if p in accepted]
        return max(common, key=list(Protocol).index) if common else None


@functools.cache
def builtin_profiles() -> MappingProxyType[str, ClientProfile]:
    """The shipped profiles (scanner/data/clients.yaml), by name."""
    text = resources.files("scanner").joinpath("data/clients.yaml").read_text(encoding="utf-8")
    data: dict[str, dict[str, Any]] = yaml.safe_load(text)
    return MappingProxyType(
        {
            name: ClientProfile(
                name=name,
                protocols=tuple(Protocol(p) for p in entry["protocols"]),
                ciphers=tuple(entry["ciphers"]),
                sni=bool(entry.get("sni", True)),
                groups=tuple(entry.get("groups", ())),
                source=str(entry["source"]),
            )
            for name, entry in data.items()
        }
    )


@contextlib.contextmanager
def profiles_in_force(own: Mapping[str, ClientProfile]) -> Iterator[None]:
    """While a config is parsed, its targets may name the built-in profiles and its own (which win)."""
    token = _IN_FORCE.set({**builtin_profiles(), **own})
    try:
        yield
    finally:
        _IN_FORCE.reset(token)


def target_profiles(node: yaml.Node) -> tuple[ClientProfile, ...]:
    """A target's `clients:`: profile names, or `all` for every profile the config knows."""
    profiles = _IN_FORCE.get(builtin_profiles())
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR and node.value == "all":
        return tuple(profiles.values())
    if not isinstance(node, yaml.SequenceNode):
        raise InvalidNode(node, f"clients: expected a list of client profile names or all, got {describe(node)}")
    chosen: dict[str, ClientProfile] = {}
    for item in node.value:
        name = str_value(item, "clients")
        if name not in profiles:
            known = ", ".join(profiles)
            raise InvalidNode(item, f"clients: unknown client profile {quote(name)} (known: {known})")
        if name in chosen:
            raise InvalidNode(item, f"clients: {quote(name)} is listed twice")
        chosen[name] = profiles[name]
    return tuple(chosen.values())


def config_profiles(node: yaml.Node) -> dict[str, ClientProfile]:
    """The top-level `clients:` mapping: the config's own profiles, beside (or over) the built-in ones."""
    if not isinstance(node, yaml.MappingNode):
        raise InvalidNode(node, f"clients: expected a mapping of profile names to profiles, got {describe(node)}")
    profiles: dict[str, ClientProfile] = {}
    for name, (key_node, value_node) in read_pairs(node, "clients").items():
        if not PROFILE_NAME_RE.fullmatch(name):
            raise InvalidNode(key_node, f"clients: profile name {quote(name)} must be lowercase letters, digits, . _ -")
        pairs = read_mapping(value_node, f"clients.{name}", _PROFILE_KEYS)
        for required in ("protocols", "ciphers"):
            if required not in pairs:
                raise InvalidNode(value_node, f'clients.{name}: missing required key "{required}"')
        protocols = protocol_lines(pairs["protocols"][1], f"clients.{name}.protocols")
        if not protocols:
            raise InvalidNode(pairs["protocols"][1], f"clients.{name}.protocols: at least one protocol is required")
        ciphers = []
        expected = f"clients.{name}.ciphers: expected a non-empty list of IANA cipher suite names"
        for item in nonempty_items(pairs["ciphers"][1], expected):
            cipher = str_value(item, f"clients.{name}.ciphers")
            if not CIPHER_NAME_RE.fullmatch(cipher):
                raise InvalidNode(
                    item, f"clients.{name}.ciphers: {quote(cipher)} is not an IANA cipher suite name (TLS_...)"
                )
            ciphers.append(cipher)
        groups: list[str] = []
        if "groups" in pairs:
            for item, group in str_list(pairs["groups"][1], f"clients.{name}.groups"):
                if group not in GROUPS:
                    raise InvalidNode(
                        item, f"clients.{name}.groups: unknown group {quote(group)} (known: {', '.join(GROUPS)})"
                    )
                groups.append(group)
        sni = bool_flag(pairs["sni"][1], f"clients.{name}.sni") if "sni" in pairs else True
        ordered = tuple(p for p in ALL_PROTOCOLS if p in protocols)
        profiles[name] = ClientProfile(name, ordered, tuple(ciphers), sni, tuple(groups), source=f"{line_of(key_node)}")
    return profiles
