"""Expand the config into the targets this replica sweeps: explicit targets, range endpoints, this shard's share."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, replace

from scanner.config import Config, TargetConfig


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
                name = f"[{host}]:{port}" if address.version == 6 else f"{host}:{port}"
                if name in names:
                    continue
                names.add(name)
                targets.append(replace(entry.template, name=name, host=host, port=port, range=entry.network))
    return tuple(t for t in targets if shard.owns(t.name))
