"""The config model: the frozen values a validated endpoints file becomes, and their defaults."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from scanner.config.profiles import ClientProfile
from scanner.protocols import ALL_PROTOCOLS, Protocol

# Handshakes in flight (and handshake threads, started only as needed): at a 100 ms round trip a handshake holds its
# slot ~0.25 s, so 256 keep ~1,000 handshakes a second going, about what one core's CPU allows; more only adds
# threads (bench/run.py wan: 500 endpoints take 6.0 s with errors at 64, 3.7 s at 256, no faster at 384).
DEFAULT_CONCURRENCY = 256
MAX_WORKERS = 64
DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_RANGE_ENDPOINTS = 65536  # a /16 on one port
DEFAULT_CONFIRM_SWEEPS = 2
DEFAULT_RANGE_INTERVAL = 3600.0  # between discovery passes over a `network:` range
DEFAULT_DEEP_INTERVAL = 6 * 3600.0  # the deep tier (certificates, cipher suites); 0 turns it off
DEFAULT_BURST_INTERVAL = 2.0  # re-probes of a flipped (address, version); 0 turns bursts off
DEFAULT_BURST_FOR = 600.0  # how long a burst lasts at most, unless the version flips back first
DEFAULT_PATTERN_WINDOW = 7 * 86400.0  # two refusal windows ended within it: periodic
DEFAULT_PERMANENT_AFTER = 86400.0  # refused continuously for longer: permanent
MAX_RANGE_ENDPOINTS = 2**24  # the most max_range_endpoints may allow


@dataclass(frozen=True)
class Expectation:
    """A policy: protocols that must be accepted / rejected, and those over which HTTP must answer 2xx/3xx."""

    accept: frozenset[Protocol] = frozenset()
    reject: frozenset[Protocol] = frozenset()
    http_ok: frozenset[Protocol] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.accept or self.reject or self.http_ok)


@dataclass(frozen=True)
class DatedPolicy:
    """A policy with a deadline: reported before `start`, enforced from it."""

    name: str  # the `policy` label: its `name:`, or "from DATE"
    expect: Expectation
    start: float  # unix time the policy is enforced from (a date means 00:00 UTC)


@dataclass(frozen=True)
class HttpCheck:
    """The HTTP request sent over each accepted handshake (brownout-by-403 detection)."""

    path: str = "/"
    method: str = "GET"
    host: str | None = None  # Host header; None means the target's host
    match: str | None = None  # a regex searched in the status line and the first 4 KiB of the body


class AddressMode(enum.StrEnum):
    """Which of the addresses a name resolves to are probed."""

    ALL = "all"
    FIRST = "first"
    IPV4 = "ipv4"
    IPV6 = "ipv6"


class StartTls(enum.StrEnum):
    """Protocols that upgrade a plain connection to TLS (sslyze's opportunistic TLS)."""

    SMTP = "smtp"
    IMAP = "imap"
    POP3 = "pop3"
    FTP = "ftp"
    XMPP = "xmpp"
    LDAP = "ldap"
    POSTGRES = "postgres"
    RDP = "rdp"


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate (chain) and key, for endpoints that demand mTLS."""

    cert: str
    key: str


@dataclass(frozen=True)
class Resolver:
    """DNS servers to ask instead of the system's."""

    nameservers: tuple[tuple[str, int], ...]
    timeout: float = 2.0


@dataclass(frozen=True)
class ProbeSettings:
    """Who /probe may scan beyond the configured targets, and how many probes run at once."""

    allow: tuple[str, ...] = ()  # CIDR networks and host name patterns (fnmatch, e.g. *.example.org)
    max_concurrent: int = 4

    @property
    def open_to_everything(self) -> bool:
        """Whether `allow` lets /probe scan anything: a network with prefix length 0, or a name pattern of only `*`."""
        return any(
            ipaddress.ip_network(entry).prefixlen == 0 if "/" in entry else not entry.strip("*") for entry in self.allow
        )


@dataclass(frozen=True)
class Politeness:
    """Limits per remote address, whichever targets share it."""

    connections_per_address: int = 8
    connections_per_second: float = 0.0  # 0: no rate limit


@dataclass(frozen=True)
class TargetConfig:
    """One configured endpoint, with defaults already applied."""

    name: str
    host: str
    port: int = 443
    sni: str | None = None  # None: no SNI (IP literals)
    labels: tuple[tuple[str, str], ...] = ()
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    protocols: tuple[Protocol, ...] = ALL_PROTOCOLS
    expect: Expectation = field(default_factory=Expectation)
    deadlines: tuple[DatedPolicy, ...] = ()  # `expect:` entries with `from:`
    clients: tuple[ClientProfile, ...] = ()  # client profiles checked on every sweep
    http: HttpCheck | None = None
    line: int = 0  # where the target is defined, for messages
    addresses: AddressMode = AddressMode.ALL
    address: str | None = None  # pinned connect address; host stays the SNI and Host name
    starttls: StartTls | None = None
    client_cert: ClientCertificate | None = None
    https_proxy: str | None = None  # http://host:port, CONNECT tunnel
    range: str | None = None  # set for endpoints expanded from a `network:` range
    confirm_sweeps: int = DEFAULT_CONFIRM_SWEEPS  # sweeps a flip seen only as a closed/reset connection must hold
    deep_interval: float = DEFAULT_DEEP_INTERVAL  # seconds between deep scans; 0: no deep scans
    ca_file: str | None = None  # PEM CA certificate(s) trusted besides sslyze's stores, for the deep tier
    burst_interval: float = DEFAULT_BURST_INTERVAL  # seconds between re-probes after a flip; 0: no bursts
    burst_for: float = DEFAULT_BURST_FOR  # seconds a burst goes on at most
    pattern_window: float = DEFAULT_PATTERN_WINDOW  # refusal windows ended within it count towards "periodic"
    permanent_after: float = DEFAULT_PERMANENT_AFTER  # an open refusal window older than this is "permanent"
    range_interval: float = DEFAULT_RANGE_INTERVAL  # ranges and defaults only: seconds between discovery passes


@dataclass(frozen=True)
class RangeConfig:
    """A `network:` entry: every address:port in it is swept; template carries the shared settings."""

    network: str
    ports: tuple[int, ...]
    template: TargetConfig
    line: int = 0

    @property
    def size(self) -> int:
        return ipaddress.ip_network(self.network).num_addresses * len(self.ports)


@dataclass(frozen=True)
class Config:
    """The whole validated config."""

    path: str
    targets: tuple[TargetConfig, ...]
    concurrency: int = DEFAULT_CONCURRENCY
    workers: int | None = None  # worker processes for the handshakes; None: auto (scanner.daemon.pool.worker_count)
    ranges: tuple[RangeConfig, ...] = ()
    max_range_endpoints: int = DEFAULT_MAX_RANGE_ENDPOINTS
    resolver: Resolver | None = None
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    politeness: Politeness = field(default_factory=Politeness)
