"""Client profiles: what a real client offers in its ClientHello, to decide on every sweep whether it can connect."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from scanner.protocols import Protocol

# Named groups a profile may list (the modern OpenSSL in sslyze can offer them; the legacy one offers its own).
GROUPS = ("X25519", "X448", "secp256r1", "secp384r1", "secp521r1")
CIPHER_NAME_RE = re.compile(r"TLS_[A-Z0-9_]+")  # an IANA cipher suite name
PROFILE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


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
