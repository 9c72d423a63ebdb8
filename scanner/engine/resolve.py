"""Name resolution for a sweep: every A and AAAA address behind a name, from the system or the configured servers."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver

from scanner.config import AddressMode, Resolver, is_ip
from scanner.errors import ResolveError

MAX_ADDRESSES = 16  # per name: a CDN answering with more is sampled, not swept whole


@dataclass(frozen=True)
class Resolved:
    """The addresses to try for a name, and the address families whose lookup failed while another answered."""

    addresses: list[str]
    failed: tuple[str, ...] = ()  # e.g. "AAAA: DNS lookup failed: ...": a DNS error of the target, not its failure


async def resolve(host: str, mode: AddressMode, resolver: Resolver | None, timeout: float) -> Resolved:
    """The addresses to try for `host`, in the resolver's order, filtered by `mode` and capped.

    ResolveError only when no family gave an address.
    """
    if is_ip(host):
        return Resolved([host])
    if host.rstrip(".").lower().endswith(".invalid"):
        # RFC 6761: .invalid never resolves, and resolvers should not even send the query.
        raise ResolveError(".invalid never resolves")
    try:
        lookup = _system(host, mode) if resolver is None else _servers(host, mode, resolver)
        found = await asyncio.wait_for(lookup, timeout)
    except TimeoutError:
        raise ResolveError("DNS lookup timed out") from None
    addresses = list(dict.fromkeys(found.addresses))
    if mode is AddressMode.IPV4:
        addresses = [a for a in addresses if ":" not in a]
    elif mode is AddressMode.IPV6:
        addresses = [a for a in addresses if ":" in a]
    if not addresses:
        if found.failed:
            reasons = dict.fromkeys(failure.split(": ", 1)[1] for failure in found.failed)
            raise ResolveError("; ".join(reasons))
        raise ResolveError(f"no {'' if mode is AddressMode.ALL else mode.value + ' '}address")
    return Resolved(addresses[:1] if mode is AddressMode.FIRST else addresses[:MAX_ADDRESSES], found.failed)


async def _system(host: str, mode: AddressMode) -> Resolved:
    family = {AddressMode.IPV4: socket.AF_INET, AddressMode.IPV6: socket.AF_INET6}.get(mode, socket.AF_UNSPEC)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolveError(exc.strerror or str(exc)) from None
    return Resolved([str(info[4][0]) for info in infos])


async def _servers(host: str, mode: AddressMode, config: Resolver) -> Resolved:
    # Imported on first use: dnspython costs every run start-up time, and most configs never need it.
    import dns.asyncresolver
    import dns.nameserver

    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in config.nameservers]
    resolver.lifetime = config.timeout
    kinds = {AddressMode.IPV4: ["A"], AddressMode.IPV6: ["AAAA"]}.get(mode, ["A", "AAAA"])
    # One family failing (SERVFAIL, REFUSED, a timeout) leaves the other's addresses to try.
    answers = await asyncio.gather(*(_query(resolver, host, kind) for kind in kinds), return_exceptions=True)
    addresses: list[str] = []
    failed: list[str] = []
    for kind, answer in zip(kinds, answers, strict=True):
        if isinstance(answer, ResolveError):
            failed.append(f"{kind}: {answer}")
        elif isinstance(answer, BaseException):
            raise answer
        else:
            addresses += answer
    return Resolved(addresses, tuple(failed))


async def _query(resolver: dns.asyncresolver.Resolver, host: str, kind: str) -> list[str]:
    import dns.exception
    import dns.resolver

    try:
        answer = await resolver.resolve(host, kind, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise ResolveError("DNS lookup timed out") from None
    except dns.exception.DNSException as exc:
        raise ResolveError(f"DNS lookup failed: {exc}") from None
    return [rdata.address for rdata in answer]
