"""Expand the config into the targets this replica sweeps: explicit targets, range endpoints, this shard's share."""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import re
from dataclasses import dataclass, replace

from scanner.config import Config, TargetConfig, is_ip
from scanner.hostport import join_host_port, parse_host_port


@dataclass(frozen=True)
class Shard:
    """This replica's place among `count` replicas that split the targets between them."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`INDEX/COUNT`, 0-based: `0/3`, `1/3`, `2/3`."""
        match = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())
        if match is None or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ValueError(f"invalid --shard {text!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/3")
        return cls(int(match.group(1)), int(match.group(2)))

    def owns(self, name: str) -> bool:
        """Rendezvous hashing: the replica with the highest score for a name owns it, so going from N to N+1
        replicas moves only the ~1/(N+1) of names that the new replica now wins."""
        if self.count == 1:
            return True
        scores = [_score(name, replica) for replica in range(self.count)]
        return scores.index(max(scores)) == self.index


ALL = Shard(0, 1)


def _score(name: str, replica: int) -> int:
    digest = hashlib.blake2b(f"{replica}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def expand(config: Config, shard: Shard = ALL) -> tuple[TargetConfig, ...]:
    """Every target this replica sweeps, in config order; a range endpoint named like an explicit target is skipped."""
    targets = list(config.targets)
    names = {t.name for t in targets}
    for entry in config.ranges:
        network = ipaddress.ip_network(entry.network)
        hosts = [network.network_address] if network.num_addresses == 1 else list(network)
        for address in hosts:
            for port in entry.ports:
                host = str(address)
                name = join_host_port(host, port)
                if name in names:
                    continue
                names.add(name)
                targets.append(replace(entry.template, name=name, host=host, port=port, range=entry.network))
    return tuple(t for t in targets if shard.owns(t.name))


def find_configured(config: Config, spec: str) -> TargetConfig | None:
    """The configured target named `spec`, or listening at `spec` as host:port (range endpoints included)."""
    for target in config.targets:
        if spec == target.name:
            return target
    host, port = parse_host_port(spec)
    for target in config.targets:
        if (host, port) == (target.host, target.port):
            return target
    if port is None or not is_ip(host):
        return None
    address = ipaddress.ip_address(host)
    for entry in config.ranges:
        if address in ipaddress.ip_network(entry.network) and port in entry.ports:
            return replace(entry.template, name=join_host_port(host, port), host=host, port=port, range=entry.network)
    return None


def probe_refusal(allow: tuple[str, ...], host: str, addresses: list[str] | None) -> str | None:
    """Why /probe may not scan `host` at `addresses` under the allowlist, or None when it may.

    With addresses None, only what can be judged before resolving (the name) is checked.

    Name patterns restrict names, networks restrict addresses; a name is checked by the addresses it resolved to
    *now*, and the sweep connects to exactly those, so a rebinding DNS answer cannot take it elsewhere.
    """
    networks = [ipaddress.ip_network(a) for a in allow if "/" in a]
    patterns = [a.lower() for a in allow if "/" not in a]
    if not allow:
        return "only configured targets may be probed (see probe.allow)"
    if not is_ip(host):
        if patterns and not any(fnmatch.fnmatchcase(host.lower().rstrip("."), p) for p in patterns):
            return f"{host} matches no name in probe.allow"
        if not patterns and not networks:
            return f"{host} is not allowed"
    elif not networks:
        return f"{host}: no network in probe.allow"
    if networks and addresses is not None:
        for address in addresses:
            if not any(ipaddress.ip_address(address) in n for n in networks):
                if address == host:
                    return f"{host} is outside probe.allow"
                return f"{host} resolves to {address}, outside probe.allow"
    return None
