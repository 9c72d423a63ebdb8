"""What this replica sweeps: its share of the explicit targets, and of the range endpoints, lazily, for discovery."""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import ipaddress
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace

from scanner.config import Config, RangeConfig, TargetConfig, is_ip
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
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _score(name: str, replica: int) -> int:
    digest = hashlib.blake2b(f"{replica}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def expand(config: Config, shard: Shard = ALL) -> tuple[TargetConfig, ...]:
    """The explicit targets this replica sweeps, in config order. Range endpoints are not among them: they are
    discovered (range_blocks, block_endpoints), and only those that accept TCP become targets (range_target)."""
    return tuple(t for t in config.targets if shard.owns(t.name))


# Endpoints per discovery block: a block is what one worker process connects to at a time, so blocks are small
# enough to spread a range over the workers and to report what was found as it is found.
BLOCK_ENDPOINTS = 16384


@dataclass(frozen=True)
class RangeBlock:
    """A slice of one range's endpoints for discovery, small to send to a worker process: endpoint `i` of the range
    is `ports[i // addresses]` on the range's address `i % addresses` (port after port, so consecutive connects go
    to different addresses)."""

    network: str
    ports: tuple[int, ...]
    start: int
    stop: int
    timeout: float  # for each connect
    earlier: tuple[tuple[int, int, int], ...] = ()  # (port, first, last address): discovered in an earlier range
    explicit: frozenset[tuple[int, int]] = frozenset()  # (address, port) named like an explicit target: swept as it
    shard: Shard = ALL  # only this replica's share is connected to


def range_blocks(
    config: Config, shard: Shard = ALL, size: int = BLOCK_ENDPOINTS, only: int | None = None
) -> Iterator[RangeBlock]:
    """The discovery blocks of every range (`only`: of config.ranges[only]), in config order, made as they are asked
    for; the endpoints themselves are never listed."""
    explicit = _explicit_endpoints(config)
    for index, entry in enumerate(config.ranges):
        if only is not None and index != only:
            continue
        network = ipaddress.ip_network(entry.network)
        earlier = tuple(
            (port, int(other.network_address), int(other.broadcast_address))
            for previous in config.ranges[:index]
            if (other := ipaddress.ip_network(previous.network)).version == network.version and other.overlaps(network)
            for port in previous.ports
            if port in entry.ports
        )
        base, addresses = int(network.network_address), network.num_addresses
        # Explicit targets among the range's endpoints, by endpoint index: each block carries only its own.
        mine = sorted(
            (entry.ports.index(p) * addresses + a - base, a, p)
            for a, p, v in explicit
            if v == network.version and p in entry.ports and base <= a < base + addresses
        )
        for start in range(0, entry.size, size):
            stop = min(entry.size, start + size)
            own = mine[bisect.bisect_left(mine, (start,)) : bisect.bisect_left(mine, (stop,))]
            yield RangeBlock(
                entry.network, entry.ports, start, stop, entry.template.timeout,
                earlier, frozenset((a, p) for _, a, p in own), shard,
            )  # fmt: skip


def block_endpoints(block: RangeBlock) -> Iterator[tuple[str, int]]:
    """The block's endpoints as (host, port), lazily: those of earlier ranges, named like explicit targets or of
    another shard left out."""
    network = ipaddress.ip_network(block.network)
    base, addresses = int(network.network_address), network.num_addresses
    text = _v4_text if network.version == 4 else _v6_text
    owns = block.shard.owns if block.shard.count > 1 else None
    for port_index in range(block.start // addresses, (block.stop - 1) // addresses + 1):
        port = block.ports[port_index]
        skips = [(first, last) for p, first, last in block.earlier if p == port]
        if any(first <= base and base + addresses - 1 <= last for first, last in skips):
            continue  # an earlier range covers this one on this port
        explicit = {a for a, p in block.explicit if p == port}
        first_offset = max(block.start - port_index * addresses, 0)
        stop_offset = min(block.stop - port_index * addresses, addresses)
        for value in range(base + first_offset, base + stop_offset):
            if (skips and any(first <= value <= last for first, last in skips)) or value in explicit:
                continue
            host = text(value)
            if owns is None or owns(join_host_port(host, port)):
                yield host, port


def _v4_text(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))  # as str(IPv4Address), at a fifth of the cost


def _v6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def _explicit_endpoints(config: Config) -> set[tuple[int, int, int]]:
    """(address, port, IP version) of explicit targets named exactly as a range endpoint would be."""
    found: set[tuple[int, int, int]] = set()
    for target in config.targets:
        try:
            host, port = parse_host_port(target.name)
            address = ipaddress.ip_address(host) if host and is_ip(host) else None
        except ValueError:
            continue
        if address is not None and port is not None and join_host_port(str(address), port) == target.name:
            found.add((int(address), port, address.version))
    return found


def range_target(entry: RangeConfig, host: str, port: int) -> TargetConfig:
    """The target a range endpoint that accepted TCP becomes: named address:port, with the range's settings."""
    return replace(entry.template, name=join_host_port(host, port), host=host, port=port, range=entry.network)


def count_endpoints(config: Config) -> int:
    """Explicit targets plus the distinct endpoints of all ranges, counted without listing them."""
    by_port: dict[tuple[int, int], list[IPNetwork]] = {}
    for entry in config.ranges:
        network = ipaddress.ip_network(entry.network)
        for port in entry.ports:
            by_port.setdefault((network.version, port), []).append(network)
    ranged = 0
    for networks in by_port.values():
        for network in ipaddress.collapse_addresses(networks):  # type: ignore[type-var]
            ranged += network.num_addresses
    covered = sum(
        1
        for address, port, version in _explicit_endpoints(config)
        if any(ipaddress.ip_address(address) in n for n in by_port.get((version, port), ()))
    )
    return len(config.targets) + ranged - covered


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
            return range_target(entry, str(address), port)
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
