"""Load and validate the YAML config into a frozen Config, or raise one ConfigError naming file:line."""

from __future__ import annotations

import contextvars
import datetime
import enum
import ipaddress
import json
import math
import os
import re
import stat
import sys
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from scanner.config.profiles import CIPHER_NAME_RE, GROUPS, PROFILE_NAME_RE, ClientProfile, builtin_profiles
from scanner.errors import ConfigError
from scanner.hostport import Endpoint, join_host_port, parse_port, split_host_port
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
DEFAULT_DEEP_INTERVAL = 6 * 3600.0  # the deep tier (certificates, cipher suites); 0 turns it off
MAX_RANGE_ENDPOINTS = 2**24  # the most max_range_endpoints may allow
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_ALIAS_NODES = 1_000_000  # nodes YAML aliases may add to the document (a "billion laughs" bound)
MAX_DURATION = 86400.0  # one day: timers past it are a mistake, and far past it overflow
STDIN = "<stdin>"  # the name of a config read from standard input (`--config -`)


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
class ClientCert:
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
    client_cert: ClientCert | None = None
    https_proxy: str | None = None  # http://host:port, CONNECT tunnel
    range: str | None = None  # set for endpoints expanded from a `network:` range
    confirm_sweeps: int = DEFAULT_CONFIRM_SWEEPS  # sweeps a flip seen only as a closed/reset connection must hold
    deep_interval: float = DEFAULT_DEEP_INTERVAL  # seconds between deep scans; 0: no deep scans
    ca_file: str | None = None  # PEM CA certificate(s) trusted besides sslyze's stores, for the deep tier

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.address)


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


class SafeConfig:
    """The config in force and the truth about its last (re)load (blackbox_exporter's SafeConfig)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reload_successful = True
        self.last_success_at = time.time()

    def reload(self) -> Config:
        """Re-read the config file; on ConfigError the old config stays in force.

        A config that did not come from a file (standard input, `<...>` names given to parse_config) cannot be read
        again: it stays in force as it is.
        """
        if not _names_a_file(self.config.path):
            return self.config
        try:
            config = load_config(self.config.path)
        except ConfigError:
            self.reload_successful = False
            raise
        self.config = config
        self.reload_successful = True
        self.last_success_at = time.time()
        return config


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {_BOOL: "boolean", "tag:yaml.org,2002:timestamp": "timestamp", "tag:yaml.org,2002:binary": "binary"}

_TOP_KEYS = (
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
# The client profiles a config can name: the built-in ones and its own `clients:`, while it is being parsed.
_PROFILES: contextvars.ContextVar[Mapping[str, ClientProfile]] = contextvars.ContextVar("profiles")
_RESOLVER_KEYS = ("nameservers", "timeout")
_PROBE_KEYS = ("allow", "max_concurrent")
_POLITENESS_KEYS = ("connections_per_address", "connections_per_second")
_CLIENT_CERT_KEYS = ("cert", "key")
_EXPECT_KEYS = ("accept", "reject", "http_ok")
_DATED_KEYS = (*_EXPECT_KEYS, "from", "name")
_CLIENT_KEYS = ("protocols", "ciphers", "sni", "groups")
_HTTP_KEYS = ("path", "method", "host", "match")
# The scanner's own metric labels; a user label of the same name would clash with them.
_RESERVED_LABELS = (
    "target", "protocol", "reason", "address", "name", "host", "port", "client", "policy",
    "cipher", "profile", "subject", "issuer", "serial", "fingerprint_sha256", "key", "error",
)  # fmt: skip
# Labels Prometheus itself sets or gives a meaning (scrape target, histogram bucket, summary quantile).
_PROMETHEUS_LABELS = ("job", "instance", "le", "quantile")

_KNOWN_PROTOCOLS = ", ".join(ALL_PROTOCOLS)
_DURATION_RE = re.compile(r"(-?)([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "use e.g. 500ms, 3s, 5m, 1h"
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_METHOD_RE = re.compile(r"[A-Z]+")
_VISIBLE_ASCII_RE = re.compile(r"[\x21-\x7e]+")  # these strings go verbatim into an HTTP request
_UNQUOTED_IPV6_RE = re.compile(r"\s*-?\s*\[[0-9A-Fa-f:.%]*\]:")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_NOT_UTF8 = "is not valid UTF-8 (surrogate code point)"


def parse_duration(text: str) -> float:
    """Return the seconds in a duration like 500ms, 1.5s, 5m or 1h; raise ValueError if malformed or not > 0."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad duration {_quote(text)}: {_DURATION_HINT}")
    sign, number, unit = match.groups()
    return _positive_seconds(float(sign + number) * _DURATION_UNITS[unit], _quote(text))


def _positive_seconds(seconds: float, shown: str) -> float:
    """Return `seconds` if finite and > 0, else raise ValueError naming the value as `shown`."""
    if math.isnan(seconds):
        raise ValueError(f"bad duration {shown}: {_DURATION_HINT}")
    if seconds <= 0:
        raise ValueError(f"bad duration {shown}: must be greater than 0")
    if math.isinf(seconds):
        raise ValueError(f"bad duration {shown}: too large")
    if seconds > MAX_DURATION:
        raise ValueError(f"bad duration {shown}: must be at most 1 day (24h)")
    return seconds


class _Invalid(Exception):
    """A problem at a node (or line), raised inside the walker and turned into ConfigError with the path."""

    def __init__(self, where: yaml.Node | int, message: str) -> None:
        super().__init__(message)
        self.line = where if isinstance(where, int) else _line(where)
        self.message = message


_ProtoLines = dict[Protocol, int]  # protocol -> line it was written on, in the order written
_Pairs = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (key node, value node)
# The keys of each mapping read so far in the config being parsed, by id(node): aliases share nodes, so a merge
# chain is followed once, not once per reference to it.
_PAIRS_READ: contextvars.ContextVar[dict[int, _Pairs]] = contextvars.ContextVar("_PAIRS_READ")


class _Given(typing.NamedTuple):
    """One per-target key as written at one level: its parsed value, and where it was written."""

    value: typing.Any
    key: yaml.Node
    node: yaml.Node


_Layer = dict[str, _Given]  # per-target settings written at one level (defaults, a target or a range)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the config at `path` ("-": standard input); raise ConfigError on anything wrong."""
    name = STDIN if str(path) == "-" else str(path)
    data = _read_stdin() if name == STDIN else _read_file(path, name)
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
        raise ConfigError(name, 1, _TOO_LARGE)
    root = compose_yaml(name, text)
    token = _PAIRS_READ.set({})
    try:
        return _build(name, root)
    except _Invalid as exc:
        raise ConfigError(name, exc.line, exc.message) from None
    finally:
        _PAIRS_READ.reset(token)


_TOO_LARGE = f"config is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"
_FILE_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _names_a_file(path: str) -> bool:
    """Whether a Config.path names a file (not `<stdin>` or another `<...>` source)."""
    return not (path.startswith("<") and path.endswith(">"))


def _read_file(path: str | Path, name: str) -> bytes:
    """Read a regular file of at most MAX_CONFIG_BYTES; devices, FIFOs and sockets are refused before any read."""
    try:
        _check_regular(os.stat(path), name)
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, opening it still does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            _check_regular(info, name)
            if info.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(name, 1, _TOO_LARGE)
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(name, 1, f"cannot read config: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL character in the path
        raise ConfigError(name, 1, f"cannot read config: {exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(name, 1, _TOO_LARGE)
    return data


def _check_regular(info: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(name, 1, "cannot read config: Is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a file")
        raise ConfigError(name, 1, f"cannot read config: {kind}, not a regular file (for standard input use -)")


def _read_stdin() -> bytes:
    """Read standard input to its end, at most MAX_CONFIG_BYTES."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise ConfigError(STDIN, 1, "cannot read config: no standard input")
    try:
        data = stream.read(MAX_CONFIG_BYTES + 1) or b""
    except OSError as exc:
        raise ConfigError(STDIN, 1, f"cannot read config: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(STDIN, 1, _TOO_LARGE)
    return bytes(data)


class _AliasBomb(Exception):
    """Aliases in the document add more than MAX_ALIAS_NODES nodes; raised at the alias that crosses the bound."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _Loader(yaml.SafeLoader):
    """PyYAML's safe composer, counting the nodes each alias brings in (as a walk of the tree would meet them)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.alias_nodes = 0
        self._open: list[str] = []  # anchors of the nodes still being composed
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                unfinished = {id(self.anchors[anchor]) for anchor in self._open if anchor in self.anchors}
                self.alias_nodes += _tree_size(node, self._sizes, unfinished)
                if self.alias_nodes > MAX_ALIAS_NODES:
                    raise _AliasBomb(event.start_mark.line + 1 if event.start_mark else 1)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()


class _SizeFrame:
    """One node on _tree_size's stack: the children left to visit, the count when it was entered."""

    __slots__ = ("children", "node", "start", "unsure")

    def __init__(self, node: yaml.Node, start: int) -> None:
        self.node = node
        self.start = start
        self.unsure = False  # it reaches an unfinished node or a cycle: its size may still grow, so is not kept
        if isinstance(node, yaml.SequenceNode):
            self.children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            self.children = [child for pair in node.value for child in pair]
        else:
            self.children = []


def _tree_size(root: yaml.Node, sizes: dict[int, int], unfinished: set[int]) -> int:
    """How many nodes a walk of `root` as a tree meets (a shared node once per path to it), up to MAX_ALIAS_NODES + 1.

    Iterative, and stops at the bound, so a "billion laughs" costs no more than the bound; sizes of finished
    subtrees are kept in `sizes`. A node still being composed, or met again below itself, counts once.
    """
    cap = MAX_ALIAS_NODES + 1
    if id(root) in sizes:
        return sizes[id(root)]
    stack = [_SizeFrame(root, 0)]
    stack[0].unsure = id(root) in unfinished
    on_stack = {id(root)}
    count = 1
    while stack:
        if count >= cap:
            return cap
        frame = stack[-1]
        if frame.children:
            child = frame.children.pop()
            if id(child) in sizes:
                count += sizes[id(child)]
            elif id(child) in on_stack or id(child) in unfinished:
                count += 1
                frame.unsure = True
            else:
                on_stack.add(id(child))
                stack.append(_SizeFrame(child, count))
                count += 1
            continue
        stack.pop()
        on_stack.discard(id(frame.node))
        if not frame.unsure:
            sizes[id(frame.node)] = count - frame.start
        elif stack:
            stack[-1].unsure = True
    return count


def compose_yaml(name: str, text: str) -> yaml.Node | None:
    """Parse `text` into a node tree, turning YAML errors into ConfigError at the problem's line (also for the
    web config): aliases bounded, and every PyYAML failure a message."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        return loader.get_single_node()
    except _AliasBomb as exc:
        message = f"YAML aliases expand the config past {MAX_ALIAS_NODES} nodes here (each alias repeats its anchor)"
        raise ConfigError(name, exc.line, message) from None
    except (ValueError, OverflowError):  # PyYAML's chr() on a \U escape past U+10FFFF
        line = loader.line + 1 if loader is not None else 1
        raise ConfigError(name, line, "invalid YAML: escape beyond U+10FFFF") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and not exc.context.startswith("while "):
            message = f"{exc.context}, {exc.problem}"
        source = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        if _UNQUOTED_IPV6_RE.match(source):
            message += ' (quote bracketed IPv6 addresses: "[::1]:8443")'
        raise ConfigError(name, line, f"invalid YAML: {message}") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(name, line, f"invalid YAML: unacceptable character #x{exc.character:04x}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(name, 1, f"invalid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(name, 1, "invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _build(name: str, root: yaml.Node | None) -> Config:
    """Validate the whole document and build the Config."""
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL):
        raise _Invalid(1, 'config is empty: expected a mapping with a "targets" list')
    if not isinstance(root, yaml.MappingNode):
        raise _Invalid(root, f"top level: expected a mapping, got {_describe(root)}")
    pairs = _mapping(root, "top level", _TOP_KEYS)
    own_profiles = _client_profiles(pairs["clients"][1]) if "clients" in pairs else {}
    token = _PROFILES.set({**builtin_profiles(), **own_profiles})
    try:
        return _build_with_profiles(name, pairs)
    finally:
        _PROFILES.reset(token)


def _build_with_profiles(name: str, pairs: _Pairs) -> Config:
    concurrency = DEFAULT_CONCURRENCY
    if "concurrency" in pairs:
        node = pairs["concurrency"][1]
        value = _int(node)
        if value is None or value < 1:
            raise _Invalid(node, f"concurrency: expected an integer >= 1, got {_describe(node)}")
        concurrency = value
    workers = _workers(pairs["workers"][1]) if "workers" in pairs else None
    defaults: _Layer = {}
    if "defaults" in pairs:
        node = pairs["defaults"][1]
        if not isinstance(node, yaml.MappingNode):
            raise _Invalid(node, f"defaults: expected a mapping, got {_describe(node)}")
        for key, (key_node, value_node) in _mapping(node, "defaults", _LAYER_KEYS).items():
            defaults[key] = _Given(_LAYER_PARSERS[key](value_node), key_node, value_node)
        expect = _expect_of(defaults)
        _check_expect(expect, set(expect))
    if "targets" not in pairs:
        raise _Invalid(1, "targets: at least one target is required")
    node = pairs["targets"][1]
    if (isinstance(node, yaml.ScalarNode) and node.tag == _NULL) or (
        isinstance(node, yaml.SequenceNode) and not node.value
    ):
        raise _Invalid(node, "targets: at least one target is required")
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(node, f"targets: expected a list, got {_describe(node)}")
    targets: list[TargetConfig] = []
    ranges: list[RangeConfig] = []
    name_lines: dict[str, int] = {}
    for item in node.value:
        if isinstance(item, yaml.MappingNode) and "network" in _pairs(item, "target"):
            ranges.append(_range(item, defaults))
            continue
        target, name_line = _target(item, defaults)
        if target.name in name_lines:
            first = name_lines[target.name]
            raise _Invalid(name_line, f"duplicate target name {_quote(target.name)} (first defined on line {first})")
        name_lines[target.name] = name_line
        targets.append(target)
    max_range_endpoints = DEFAULT_MAX_RANGE_ENDPOINTS
    if "max_range_endpoints" in pairs:
        node = pairs["max_range_endpoints"][1]
        max_range_endpoints = _positive_int(node, "max_range_endpoints")
        if max_range_endpoints > MAX_RANGE_ENDPOINTS:
            raise _Invalid(
                node, f"max_range_endpoints: expected an integer 1-{MAX_RANGE_ENDPOINTS}, got {_describe(node)}"
            )
    total = 0
    for entry in ranges:
        total += entry.size
        if total > max_range_endpoints:
            raise _Invalid(
                entry.line,
                f"network {entry.network} with {len(entry.ports)} port(s) brings the ranges to {total} endpoints, "
                f"more than max_range_endpoints ({max_range_endpoints})",
            )
    return Config(
        path=name,
        targets=tuple(targets),
        concurrency=concurrency,
        workers=workers,
        ranges=tuple(ranges),
        max_range_endpoints=max_range_endpoints,
        resolver=_resolver(pairs["resolver"][1]) if "resolver" in pairs else None,
        probe=_probe_settings(pairs["probe"][1]) if "probe" in pairs else ProbeSettings(),
        politeness=_politeness(pairs["politeness"][1]) if "politeness" in pairs else Politeness(),
    )


def _workers(node: yaml.Node) -> int | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR and node.value == "auto":
        return None
    value = _int(node)
    if value is None or not 0 <= value <= MAX_WORKERS:
        raise _Invalid(node, f'workers: expected "auto" or an integer 0-{MAX_WORKERS}, got {_describe(node)}')
    return value


def _positive_int(node: yaml.Node, key: str) -> int:
    value = _int(node)
    if value is None or value < 1:
        raise _Invalid(node, f"{key}: expected an integer >= 1, got {_describe(node)}")
    return value


def _section(node: yaml.Node, key: str, allowed: tuple[str, ...]) -> _Pairs:
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, f"{key}: expected a mapping with {', '.join(allowed)}, got {_describe(node)}")
    return _mapping(node, key, allowed)


def _resolver(node: yaml.Node) -> Resolver:
    """Parse `resolver: {nameservers: [host:port, ...], timeout: 2s}`."""
    pairs = _section(node, "resolver", _RESOLVER_KEYS)
    if "nameservers" not in pairs:
        raise _Invalid(node, 'resolver: missing required key "nameservers"')
    servers_node = pairs["nameservers"][1]
    if not isinstance(servers_node, yaml.SequenceNode) or not servers_node.value:
        raise _Invalid(servers_node, f"resolver.nameservers: expected a non-empty list, got {_describe(servers_node)}")
    servers = []
    for item in servers_node.value:
        text = _str(item, "resolver.nameservers")
        host, port = _host_port(text, item)
        if not is_ip(host):
            raise _Invalid(item, f"resolver.nameservers: expected an IP address[:port], got {_quote(text)}")
        servers.append((host, 53 if port is None else port))
    timeout = _duration(pairs["timeout"][1], "resolver.timeout") if "timeout" in pairs else 2.0
    return Resolver(nameservers=tuple(servers), timeout=timeout)


def _probe_settings(node: yaml.Node) -> ProbeSettings:
    """Parse `probe: {allow: [CIDR or name pattern, ...], max_concurrent: N}`."""
    pairs = _section(node, "probe", _PROBE_KEYS)
    allow: list[str] = []
    if "allow" in pairs:
        allow_node = pairs["allow"][1]
        if not isinstance(allow_node, yaml.SequenceNode):
            raise _Invalid(allow_node, f"probe.allow: expected a list, got {_describe(allow_node)}")
        for item in allow_node.value:
            text = _str(item, "probe.allow")
            if "/" in text or is_ip(text):
                try:
                    text = str(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    raise _Invalid(item, f"probe.allow: {_quote(text)} is not a valid network") from None
            elif not re.fullmatch(r"[A-Za-z0-9_.*?-]+", text):
                raise _Invalid(item, f"probe.allow: expected a CIDR network or a host name pattern, got {_quote(text)}")
            allow.append(text)
    max_concurrent = ProbeSettings.max_concurrent
    if "max_concurrent" in pairs:
        max_concurrent = _positive_int(pairs["max_concurrent"][1], "probe.max_concurrent")
    return ProbeSettings(allow=tuple(allow), max_concurrent=max_concurrent)


def _politeness(node: yaml.Node) -> Politeness:
    """Parse `politeness: {connections_per_address: 8, connections_per_second: 0}`."""
    pairs = _section(node, "politeness", _POLITENESS_KEYS)
    per_address = Politeness.connections_per_address
    if "connections_per_address" in pairs:
        per_address = _positive_int(pairs["connections_per_address"][1], "politeness.connections_per_address")
    rate = Politeness.connections_per_second
    if "connections_per_second" in pairs:
        rate_node = pairs["connections_per_second"][1]
        number = _number(rate_node)
        if number is None or number < 0 or not math.isfinite(number):
            raise _Invalid(
                rate_node, f"politeness.connections_per_second: expected a number >= 0, got {_describe(rate_node)}"
            )
        if 0 < number < 1 / MAX_DURATION:
            raise _Invalid(
                rate_node,
                f"politeness.connections_per_second: {_describe(rate_node)} is less than one connection a day; "
                "0 turns the limit off",
            )
        rate = number
    return Politeness(connections_per_address=per_address, connections_per_second=rate)


def _range(node: yaml.MappingNode, defaults: _Layer) -> RangeConfig:
    """Build a `network:` range entry; its endpoints are expanded later, in scanner.targets."""
    pairs = _mapping(node, "range", _RANGE_KEYS)
    own: _Layer = {}
    network_node = pairs["network"][1]
    text = _str(network_node, "network")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise _Invalid(network_node, f"network: {_quote(text)} is not a valid network ({exc})") from None
    ports: tuple[int, ...] = (443,)
    for key, (key_node, value_node) in pairs.items():
        if key == "ports":
            if not isinstance(value_node, yaml.SequenceNode) or not value_node.value:
                raise _Invalid(value_node, f"ports: expected a non-empty list of ports, got {_describe(value_node)}")
            ports = tuple(_port(item) for item in value_node.value)
            if len(set(ports)) != len(ports):
                raise _Invalid(value_node, "ports: duplicate port")
        elif key != "network":
            own[key] = _Given(_LAYER_PARSERS[key](value_node), key_node, value_node)
    template = _settings(own, defaults, name=str(network), host=str(network.network_address), port=ports[0], node=node)
    return RangeConfig(network=str(network), ports=ports, template=template, line=_line(node))


def _port(node: yaml.Node) -> int:
    port = _int(node)
    if port is None or not 1 <= port <= 65535:
        raise _Invalid(node, f"port: expected an integer 1-65535, got {_describe(node)}")
    return port


def _target(node: yaml.Node, defaults: _Layer) -> tuple[TargetConfig, int]:
    """Build one target from its short or long form; also return the line its name comes from."""
    own: _Layer = {}
    port: int | None = None
    name: str | None = None
    name_line = _line(node)
    address: str | None = None
    sni_given: str | bool = True  # True: derive from host
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        host, port = _host_port(node.value, node)
    elif isinstance(node, yaml.MappingNode):
        pairs = _mapping(node, "target", _TARGET_KEYS)
        if "host" not in pairs:
            raise _Invalid(node, 'target: missing required key "host"')
        host = ""
        for key, (key_node, value_node) in pairs.items():
            if key == "host":
                host = _host(_str(value_node, "host"), value_node)
            elif key == "port":
                port = _port(value_node)
            elif key == "address":
                address = _str(value_node, "address")
                if not is_ip(address.strip("[]")):
                    raise _Invalid(value_node, f"address: expected an IP address, got {_quote(address)}")
                address = str(ipaddress.ip_address(address.strip("[]")))  # one spelling per address
            elif key == "name":
                name = _str(value_node, "name")
                if not name.strip() or not name.isprintable():
                    raise _Invalid(
                        value_node, f"name: expected a non-empty printable string, got {_describe(value_node)}"
                    )
                name_line = _line(value_node)
            elif key == "sni":
                sni_given = _sni(value_node)
            else:
                own[key] = _Given(_LAYER_PARSERS[key](value_node), key_node, value_node)
    else:
        hint = ' (quote bracketed IPv6 addresses: "[::1]:8443")' if isinstance(node, yaml.SequenceNode) else ""
        hint = hint or _quote_hint(node)
        raise _Invalid(node, f'target: expected "host[:port]" or a mapping with host, got {_describe(node)}{hint}')
    port = 443 if port is None else port
    if sni_given is True:
        sni = None if is_ip(host) else host
    else:
        sni = sni_given or None
    if name is None:
        name = join_host_port(host, port)
    target = _settings(own, defaults, name=name, host=host, port=port, node=node)
    if target.https_proxy is not None and address is not None:
        raise _Invalid(node, "address: cannot pin an address when connecting through https_proxy")
    return replace(target, sni=sni, address=address), name_line


def _settings(own: _Layer, defaults: _Layer, *, name: str, host: str, port: int, node: yaml.Node) -> TargetConfig:
    """Merge one level's settings over the defaults into a TargetConfig, checking combinations.

    A key given at the target's level replaces the default's, except where _MERGED says how the two combine.
    """
    given = {
        key: (own[key] if key in own else defaults[key]).value for key in _LAYER_KEYS if key in own or key in defaults
    }
    for key, merge in _MERGED.items():
        given[key] = merge(defaults.get(key), own.get(key))
    given["deadlines"] = _merge_deadlines(defaults.get("expect"), own.get("expect"))
    expect = {**_expect_of(defaults), **_expect_of(own)}
    _check_expect(expect, set(_expect_of(own)))
    http = given.get("http")
    http_node = own["http"].key if "http" in own else None
    if http is None and "http_ok" in expect and expect["http_ok"][1]:
        where = http_node or _expect_of(own).get("http_ok", (node, {}))[0]
        raise _Invalid(
            where,
            f"expect.http_ok needs an HTTP check, but target {_quote(name)} has none "
            "(set http: true or a mapping, or http_ok: [])",
        )
    starttls = given.get("starttls")
    if starttls is not None and http is not None:
        where = (own["starttls"].node if "starttls" in own else None) or http_node or node
        raise _Invalid(where, f"starttls: {starttls} endpoints do not speak HTTP; drop the http check (http: false)")
    return TargetConfig(name=name, host=host, port=port, sni=None if is_ip(host) else host, line=_line(node), **given)


def _expect_of(layer: _Layer) -> dict[str, tuple[yaml.Node, _ProtoLines]]:
    return layer["expect"].value[0] if "expect" in layer else {}


def _merge_expect(default: _Given | None, own: _Given | None) -> Expectation:
    """Each key of `expect` given at the target replaces the default's key."""
    expect = {**(default.value[0] if default else {}), **(own.value[0] if own else {})}
    return Expectation(**{key: frozenset(protocols) for key, (_, protocols) in expect.items()})


def _merge_deadlines(default: _Given | None, own: _Given | None) -> tuple[DatedPolicy, ...]:
    """A target's `expect:` brings its own dated policies, else it keeps the defaults'."""
    given = own or default
    return given.value[1] if given else ()


def _merge_labels(default: _Given | None, own: _Given | None) -> tuple[tuple[str, str], ...]:
    """A target's labels are merged over the default labels."""
    return tuple(sorted({**(default.value if default else {}), **(own.value if own else {})}.items()))


def _layer_protocols(node: yaml.Node) -> tuple[Protocol, ...]:
    protocols = _protocols(node, "protocols")
    if not protocols:
        raise _Invalid(node, "protocols: at least one protocol is required")
    return tuple(protocol for protocol in ALL_PROTOCOLS if protocol in protocols)


_ExpectGiven = tuple[dict[str, tuple[yaml.Node, _ProtoLines]], tuple[DatedPolicy, ...]]


def _expect(node: yaml.Node) -> _ExpectGiven:
    """`expect:` as one policy (a mapping), or a list of them where those with `from: DATE` are deadlines."""
    if isinstance(node, yaml.SequenceNode):
        base: dict[str, tuple[yaml.Node, _ProtoLines]] = {}
        dated: list[DatedPolicy] = []
        for item in node.value:
            if not isinstance(item, yaml.MappingNode):
                raise _Invalid(
                    item,
                    "expect: each policy in the list must be a mapping (accept, reject, http_ok, from, name), "
                    f"got {_describe(item)}",
                )
            if "from" in _pairs(item, "expect"):
                dated.append(_dated_policy(item))
            else:
                base.update(_policy(item))
        names = [d.name for d in dated]
        if len(set(names)) != len(names):
            raise _Invalid(
                node, f"expect: two dated policies are named the same ({', '.join(names)}); give each a name"
            )
        return base, tuple(dated)
    return _policy(node), ()


def _policy(node: yaml.Node, keys: tuple[str, ...] = _EXPECT_KEYS) -> dict[str, tuple[yaml.Node, _ProtoLines]]:
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, f"expect: expected a mapping with accept, reject, http_ok, got {_describe(node)}")
    return {
        name: (name_node, _protocols(value_node, f"expect.{name}"))
        for name, (name_node, value_node) in _mapping(node, "expect", keys).items()
        if name in _EXPECT_KEYS
    }


def _dated_policy(node: yaml.MappingNode) -> DatedPolicy:
    """`{reject: [...], from: 2018-06-30, name: pypi-2018}`."""
    pairs = _mapping(node, "expect", _DATED_KEYS)
    expect = _policy(node, _DATED_KEYS)
    _check_expect(expect, set(expect))
    from_node = pairs["from"][1]
    text = str(from_node.value) if isinstance(from_node, yaml.ScalarNode) else ""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise _Invalid(
            from_node, f"expect.from: expected an ISO 8601 date such as 2018-06-30, got {_describe(from_node)}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    name = _str(pairs["name"][1], "expect.name") if "name" in pairs else f"from {text}"
    if "name" in pairs and not name.strip():
        raise _Invalid(pairs["name"][1], "expect.name: expected a non-empty name")
    policy = Expectation(**{key: frozenset(protocols) for key, (_, protocols) in expect.items()})
    return DatedPolicy(name=name, expect=policy, start=when.timestamp())


def _clients(node: yaml.Node) -> tuple[ClientProfile, ...]:
    """A target's `clients:`: profile names, or `all` for every profile the config knows."""
    profiles = _PROFILES.get(builtin_profiles())
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR and node.value == "all":
        return tuple(profiles.values())
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(node, f"clients: expected a list of client profile names or all, got {_describe(node)}")
    chosen: dict[str, ClientProfile] = {}
    for item in node.value:
        name = _str(item, "clients")
        if name not in profiles:
            known = ", ".join(profiles)
            raise _Invalid(item, f"clients: unknown client profile {_quote(name)} (known: {known})")
        if name in chosen:
            raise _Invalid(item, f"clients: {_quote(name)} is listed twice")
        chosen[name] = profiles[name]
    return tuple(chosen.values())


def _client_profiles(node: yaml.Node) -> dict[str, ClientProfile]:
    """The top-level `clients:` mapping: the config's own profiles, beside (or over) the built-in ones."""
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, f"clients: expected a mapping of profile names to profiles, got {_describe(node)}")
    profiles: dict[str, ClientProfile] = {}
    for name, (key_node, value_node) in _pairs(node, "clients").items():
        if not PROFILE_NAME_RE.fullmatch(name):
            raise _Invalid(key_node, f"clients: profile name {_quote(name)} must be lowercase letters, digits, . _ -")
        pairs = _section(value_node, f"clients.{name}", _CLIENT_KEYS)
        for required in ("protocols", "ciphers"):
            if required not in pairs:
                raise _Invalid(value_node, f'clients.{name}: missing required key "{required}"')
        protocols = _protocols(pairs["protocols"][1], f"clients.{name}.protocols")
        if not protocols:
            raise _Invalid(pairs["protocols"][1], f"clients.{name}.protocols: at least one protocol is required")
        ciphers_node = pairs["ciphers"][1]
        if not isinstance(ciphers_node, yaml.SequenceNode) or not ciphers_node.value:
            raise _Invalid(
                ciphers_node, f"clients.{name}.ciphers: expected a non-empty list of IANA cipher suite names"
            )
        ciphers = []
        for item in ciphers_node.value:
            cipher = _str(item, f"clients.{name}.ciphers")
            if not CIPHER_NAME_RE.fullmatch(cipher):
                raise _Invalid(
                    item, f"clients.{name}.ciphers: {_quote(cipher)} is not an IANA cipher suite name (TLS_...)"
                )
            ciphers.append(cipher)
        groups: list[str] = []
        if "groups" in pairs:
            groups_node = pairs["groups"][1]
            if not isinstance(groups_node, yaml.SequenceNode):
                raise _Invalid(groups_node, f"clients.{name}.groups: expected a list, got {_describe(groups_node)}")
            for item in groups_node.value:
                group = _str(item, f"clients.{name}.groups")
                if group not in GROUPS:
                    raise _Invalid(
                        item, f"clients.{name}.groups: unknown group {_quote(group)} (known: {', '.join(GROUPS)})"
                    )
                groups.append(group)
        sni = True
        if "sni" in pairs:
            flag = _bool(pairs["sni"][1])
            if flag is None:
                raise _Invalid(pairs["sni"][1], f"clients.{name}.sni: expected true or false")
            sni = flag
        ordered = tuple(p for p in ALL_PROTOCOLS if p in protocols)
        profiles[name] = ClientProfile(name, ordered, tuple(ciphers), sni, tuple(groups), source=f"{_line(key_node)}")
    return profiles


def _client_cert(node: yaml.Node) -> ClientCert:
    pairs = _section(node, "client_cert", _CLIENT_CERT_KEYS)
    paths = {}
    for name in _CLIENT_CERT_KEYS:
        if name not in pairs:
            raise _Invalid(node, f'client_cert: missing required key "{name}"')
        path_node = pairs[name][1]
        path = _str(path_node, f"client_cert.{name}")
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            raise _Invalid(path_node, f"client_cert.{name}: cannot read {_quote(path)}")
        paths[name] = path
    return ClientCert(**paths)


def _confirm_sweeps(node: yaml.Node) -> int:
    value = _int(node)
    if value is None or not 1 <= value <= 10:
        raise _Invalid(node, f"confirm_sweeps: expected an integer 1-10, got {_describe(node)}")
    return value


def _deep_interval(node: yaml.Node) -> float:
    """A duration, or 0 (alone among durations) to turn the deep tier off."""
    if isinstance(node, yaml.ScalarNode) and re.fullmatch(r"0+(\.0*)?(ms|s|m|h)?", node.value.strip()):
        return 0.0
    return _duration(node, "deep_interval")


def _ca_file(node: yaml.Node) -> str:
    path = _str(node, "ca_file")
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise _Invalid(node, f"ca_file: cannot read {_quote(path)}")
    try:
        head = _read_file(path, path)
    except (OSError, ConfigError):
        raise _Invalid(node, f"ca_file: cannot read {_quote(path)}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise _Invalid(node, f"ca_file: no PEM certificate in {_quote(path)}")
    return path


def _https_proxy(node: yaml.Node) -> str:
    url = _str(node, "https_proxy")
    match = re.fullmatch(r"http://([^/:@\s]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})/?", url)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise _Invalid(node, f"https_proxy: expected http://host:port, got {_quote(url)}")
    host = match.group(1)
    if host.startswith("["):
        if not is_ip(host[1:-1]):
            raise _Invalid(node, f"https_proxy: expected http://host:port, got {_quote(url)}")
    elif not is_ip(host):
        _check_hostname(host, node, "https_proxy host")
    return url


_E = typing.TypeVar("_E", bound=enum.StrEnum)


def _choice(node: yaml.Node, key: str, choices: type[_E]) -> _E:
    """Parse one of an enum's values."""
    allowed = ", ".join(choice.value for choice in choices)
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR and node.value in {c.value for c in choices}:
        return choices(node.value)
    raise _Invalid(node, f"{key}: expected one of {allowed}, got {_describe(node)}")


def _check_expect(expect: dict[str, tuple[yaml.Node, _ProtoLines]], own: set[str]) -> None:
    """Reject a protocol both expected to work and to be rejected; blame the line written at the level `own`."""
    reject = expect.get("reject", (None, {}))[1]
    for other in ("accept", "http_ok"):
        protocols = expect.get(other, (None, {}))[1]
        for protocol, line in protocols.items():
            if protocol in reject:
                lines = [n for key, n in ((other, line), ("reject", reject[protocol])) if key in own]
                where = max(lines or [line, reject[protocol]])
                raise _Invalid(
                    where,
                    f"{protocol} is in both expect.{other} (line {line}) and expect.reject (line {reject[protocol]})",
                )


def _mapping(node: yaml.MappingNode, what: str, allowed: tuple[str, ...]) -> _Pairs:
    """Return the mapping's keys, rejecting keys not in `allowed`."""
    pairs = _pairs(node, what)
    for key, (key_node, _) in pairs.items():
        if key not in allowed:
            raise _Invalid(key_node, f"unknown key {_quote(key)} {_in(what)} (allowed: {', '.join(allowed)})")
    return pairs


def _in(what: str) -> str:
    """Say where a key is: "at top level" or "in <section>"."""
    return "at top level" if what == "top level" else f"in {what}"


class _MergeFrame:
    """One mapping on _pairs' stack: its pairs left to read, its own keys, the keys merged into it so far."""

    __slots__ = ("explicit", "items", "merged", "node", "sources")

    def __init__(self, node: yaml.MappingNode) -> None:
        self.node = node
        self.items: typing.Iterator[tuple[yaml.Node, yaml.Node]] = iter(node.value)
        self.sources: typing.Iterator[yaml.Node] = iter(())  # of the `<<` key being read
        self.explicit: _Pairs = {}
        self.merged: _Pairs = {}


def _pairs(node: yaml.MappingNode, what: str) -> _Pairs:
    """Return key -> (key node, value node) in file order, applying `<<` merges and rejecting duplicate keys.

    Merges are followed with a stack of our own, not by recursion, so a long chain of them is no RecursionError.
    """
    done = _PAIRS_READ.get({})
    if id(node) in done:
        return done[id(node)]
    stack = [_MergeFrame(node)]
    on_stack = {id(node)}
    while True:
        frame = stack[-1]
        source = next(frame.sources, None)
        if source is not None:
            if not isinstance(source, yaml.MappingNode):
                raise _Invalid(source, f"<<: expected a mapping to merge, got {_describe(source)}")
            if id(source) in on_stack:
                raise _Invalid(source, f"{what}: recursive merge")
            if id(source) in done:
                for key, pair in done[id(source)].items():
                    frame.merged.setdefault(key, pair)
            else:
                stack.append(_MergeFrame(source))
                on_stack.add(id(source))
            continue
        item = next(frame.items, None)
        if item is None:
            stack.pop()
            on_stack.discard(id(frame.node))
            pairs = {key: pair for key, pair in frame.merged.items() if key not in frame.explicit} | frame.explicit
            pairs = dict(sorted(pairs.items(), key=lambda entry: entry[1][0].start_mark.index))
            done[id(frame.node)] = pairs
            if not stack:
                return pairs
            for key, pair in pairs.items():
                stack[-1].merged.setdefault(key, pair)
            continue
        key_node, value_node = item
        if key_node.tag == _MERGE:
            frame.sources = iter(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
            raise _Invalid(key_node, f"{what}: keys must be strings, got {_describe(key_node)}")
        key = key_node.value
        if key in frame.explicit:
            first = _line(frame.explicit[key][0])
            raise _Invalid(key_node, f"duplicate key {_quote(key)} {_in(what)} (first on line {first})")
        frame.explicit[key] = (key_node, value_node)


def _host_port(text: str, node: yaml.Node) -> tuple[str, int | None]:
    """Split a short-form target `host`, `host:port`, `[v6]:port` or bare IPv6 into host and port."""
    _check_not_url(text, node)
    try:
        host, port_text = split_host_port(text)
    except ValueError as exc:
        raise _Invalid(node, f"bad target {_quote(text)}: {exc}") from None
    if text.startswith("[") and (":" not in host or not is_ip(host)):
        raise _Invalid(node, f"bad target {_quote(text)}: brackets are only for IPv6 addresses")
    host = _host(host, node, allow_brackets=False)
    if port_text is None:
        return host, None
    try:
        return host, parse_port(port_text)
    except ValueError:
        raise _Invalid(
            node, f"target {_quote(text)}: port must be an integer 1-65535, got {_quote(port_text)}"
        ) from None


def _host(text: str, node: yaml.Node, allow_brackets: bool = True) -> str:
    """Validate a host name or IP address (brackets around IPv6 are dropped) and return it."""
    _check_not_url(text, node)
    if allow_brackets and text.startswith("[") and text.endswith("]") and ":" in text and is_ip(text[1:-1]):
        text = text[1:-1]
    if not text:
        raise _Invalid(node, "host must not be empty")
    if is_ip(text):
        return str(ipaddress.ip_address(text))  # one spelling per address, for per-address limits and labels
    if ":" in text:
        if text.count(":") == 1:
            raise _Invalid(node, f"host {_quote(text)} must not include a port; use the port key")
        raise _Invalid(node, f"host {_quote(text)} is not a valid IPv6 address")
    _check_hostname(text, node, "host")
    return text


def _check_not_url(text: str, node: yaml.Node) -> None:
    """Reject URLs and paths where a bare host is expected."""
    if "://" in text or "/" in text:
        raise _Invalid(node, f"host must be a name or address, not a URL ({_quote(text)})")


def _check_hostname(text: str, node: yaml.Node, what: str) -> None:
    """Reject strings that cannot be a DNS name."""
    if not text.isascii():
        raise _Invalid(node, f"{what} {_quote(text)} must be ASCII: write internationalized names as xn--...")
    if any(char.isspace() or not char.isprintable() for char in text):
        raise _Invalid(node, f"{what} {_quote(text)} must not contain spaces or control characters")
    if not _HOSTNAME_RE.fullmatch(text) or len(text.removesuffix(".")) > 253:
        raise _Invalid(node, f"{what} {_quote(text)} is not a valid host name")
    for label in text.removesuffix(".").split("."):
        problem = ""
        if len(label) > 63:
            problem = "is longer than 63 characters"
        elif label.startswith("-") or label.endswith("-"):
            problem = 'starts or ends with "-"'
        if problem:
            raise _Invalid(node, f"{what} {_quote(text)} is not a valid host name: label {_quote(label)} {problem}")


def is_ip(text: str) -> bool:
    """Tell whether `text` is an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _sni(node: yaml.Node) -> str | bool:
    """Parse `sni`: a DNS name, or false for none."""
    if _bool(node) is False:
        return False
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        raise _Invalid(node, f"sni: expected a server name or false, got {_describe(node)}")
    if is_ip(node.value):
        raise _Invalid(node, "sni: must be a DNS name, not an IP address (use sni: false to send none)")
    _check_hostname(node.value, node, "sni")
    return str(node.value)


def _duration(node: yaml.Node, key: str) -> float:
    """Parse a duration given as text with a unit, or as a bare number of seconds."""
    if isinstance(node, yaml.ScalarNode) and _sexagesimal(node):
        value = _base_60(node)
        seconds = f"the base-60 number {value}; write {value}s" if value else "a base-60 number; write e.g. 90s"
        raise _Invalid(node, f"{key}: {_short(node.value)} is read by YAML 1.1 as {seconds}")
    try:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return parse_duration(node.value)
        number = _number(node)
        if number is not None:
            return _positive_seconds(number, _short(node.value))
    except ValueError as exc:
        raise _Invalid(node, f"{key}: {exc}") from None
    raise _Invalid(node, f"{key}: expected a duration such as 500ms, 3s, 5m, 1h, got {_describe(node)}")


def _protocols(node: yaml.Node, key: str) -> _ProtoLines:
    """Parse a list of protocol names, rejecting unknown and repeated ones."""
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(node, f"{key}: expected a list of protocols, got {_describe(node)}")
    protocols: _ProtoLines = {}
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or item.tag != _STR:
            raise _Invalid(item, f"{key}: expected a protocol name, got {_describe(item)}")
        if item.value not in Protocol.__members__.values():
            raise _Invalid(item, f"unknown protocol {_quote(item.value)} (known: {_KNOWN_PROTOCOLS})")
        protocol = Protocol(item.value)
        if protocol in protocols:
            raise _Invalid(item, f"{key}: duplicate protocol {protocol} (first on line {protocols[protocol]})")
        protocols[protocol] = _line(item)
    return protocols


def _http(node: yaml.Node) -> HttpCheck | None:
    """Parse `http`: true (all defaults), false (no check), or a mapping of path, method, host."""
    flag = _bool(node)
    if flag is not None:
        return HttpCheck() if flag else None
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, f"http: expected true, false or a mapping with path, method, host, got {_describe(node)}")
    values: dict[str, str] = {}
    for key, (_, value_node) in _mapping(node, "http", _HTTP_KEYS).items():
        value = _str(value_node, f"http.{key}")
        if key == "match":
            try:
                re.compile(value)
            except re.error as exc:
                raise _Invalid(value_node, f"http.match: not a regular expression ({exc}): {_quote(value)}") from None
            values[key] = value
            continue
        if key == "path" and not value.startswith("/"):
            raise _Invalid(value_node, f'http.path: must start with "/", got {_quote(value)}')
        if key == "method" and not _METHOD_RE.fullmatch(value):
            raise _Invalid(
                value_node, f"http.method: expected an uppercase method such as GET, HEAD, POST, got {_quote(value)}"
            )
        if not _VISIBLE_ASCII_RE.fullmatch(value):
            raise _Invalid(
                value_node, f"http.{key}: must be non-empty printable ASCII without spaces, got {_quote(value)}"
            )
        values[key] = value
    return HttpCheck(**values)


def _labels(node: yaml.Node) -> dict[str, str]:
    """Parse a mapping of Prometheus label names to string values."""
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(node, f"labels: expected a mapping of names to strings, got {_describe(node)}")
    labels: dict[str, str] = {}
    for key, (key_node, value_node) in _pairs(node, "labels").items():
        if not _LABEL_RE.fullmatch(key):
            raise _Invalid(
                key_node, f"label name {_quote(key)} is not valid: use letters, digits and _, not starting with a digit"
            )
        if key.startswith("__"):
            raise _Invalid(
                key_node, f'label name {_quote(key)} is reserved: names starting with "__" are for Prometheus'
            )
        if key in _RESERVED_LABELS:
            reserved = ", ".join(_RESERVED_LABELS)
            raise _Invalid(key_node, f"label name {_quote(key)} is reserved for the scanner's own labels ({reserved})")
        if key in _PROMETHEUS_LABELS:
            reserved = ", ".join(_PROMETHEUS_LABELS)
            raise _Invalid(key_node, f"label name {_quote(key)} is reserved for Prometheus' own labels ({reserved})")
        if not isinstance(value_node, yaml.ScalarNode) or value_node.tag != _STR:
            message = f"label {_quote(key)}: expected a string value, got {_describe(value_node)}"
            raise _Invalid(value_node, message + _quote_hint(value_node))
        if not _is_utf8(value_node.value):
            raise _Invalid(value_node, f"label {_quote(key)}: value {_quote(value_node.value)} {_NOT_UTF8}")
        labels[key] = value_node.value
    return labels


def _str(node: yaml.Node, key: str) -> str:
    """Return a string scalar's text, or raise naming `key`."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        raise _Invalid(node, f"{key}: expected a string, got {_describe(node)}{_quote_hint(node)}")
    if not _is_utf8(node.value):
        raise _Invalid(node, f"{key}: {_quote(node.value)} {_NOT_UTF8}")
    return str(node.value)


def _is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (YAML's \\ud800 escapes give lone surrogates, which do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _quote_hint(node: yaml.Node) -> str:
    """Suggest quoting a scalar that YAML read as a number, boolean or date instead of text."""
    return " (quote it)" if isinstance(node, yaml.ScalarNode) and node.tag != _NULL else ""


def _int(node: yaml.Node) -> int | None:
    """Return an integer scalar's value (not a boolean, not a quoted number, not base 60), else None."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != _INT or _sexagesimal(node):
        return None
    try:
        return yaml.constructor.SafeConstructor().construct_yaml_int(node)
    except (ValueError, IndexError):  # an explicit !!int tag on text that is not a number
        return None


def _number(node: yaml.Node) -> float | None:
    """Return an integer or float scalar's value (not base 60) as a float, else None."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _FLOAT and not _sexagesimal(node):
        try:
            return yaml.constructor.SafeConstructor().construct_yaml_float(node)
        except (ValueError, IndexError):
            return None
    value = _int(node)
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _sexagesimal(node: yaml.Node) -> bool:
    """Whether YAML 1.1 reads this scalar as a base-60 number (`1:30` is 90), which nobody means."""
    return isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT) and ":" in node.value


def _base_60(node: yaml.ScalarNode) -> str:
    """The value YAML 1.1 gives a base-60 scalar, as text ("" when too long to be worth working out)."""
    if len(node.value) > 40:
        return ""
    constructor = yaml.constructor.SafeConstructor()
    try:
        value = constructor.construct_yaml_int(node) if node.tag == _INT else constructor.construct_yaml_float(node)
    except (ValueError, IndexError):
        return ""
    return _short(f"{value:g}" if isinstance(value, float) else str(value))


def _bool(node: yaml.Node) -> bool | None:
    """Return a boolean scalar's value, else None."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
        return None
    return yaml.constructor.SafeConstructor.bool_values.get(str(node.value).lower())


def _line(node: yaml.Node) -> int:
    """Return the 1-based line where `node` starts."""
    return int(node.start_mark.line) + 1


def _describe(node: yaml.Node) -> str:
    """Describe a node for `got ...` in messages: a quoted string, a number, or the kind of value."""
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if node.tag == _STR:
        return _quote(node.value)
    if isinstance(node, yaml.ScalarNode) and _sexagesimal(node):
        value = _base_60(node)
        return f"{_short(node.value)} (YAML 1.1 reads it in base 60{': ' + value if value else ''})"
    if node.tag in (_INT, _FLOAT) and _number(node) is not None:
        return _short(str(node.value))
    if node.tag == _NULL:
        return "null"
    kind = _KINDS.get(node.tag, "a value tagged " + node.tag.replace("tag:yaml.org,2002:", "!!"))
    return f"{_short(kind)} {_short(str(node.value))}"


def _quote(text: str) -> str:
    """Quote user text for a message, escaping control characters and shortening long values."""
    if len(text) > 60:
        text = text[:57] + "..."
    return _escape_surrogates(json.dumps(text, ensure_ascii=False))


def _short(text: str) -> str:
    """Shorten unquoted user text (a number, a tag) for a message."""
    return _escape_surrogates(text if len(text) <= 60 else text[:57] + "...")


def _escape_surrogates(text: str) -> str:
    """Write lone surrogates as \\uXXXX, so that a message always encodes (as the YAML escape that made them)."""
    return _SURROGATE_RE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


# The keys shared by defaults, targets and ranges: each parses into the TargetConfig field of the same name.
# A new per-target key is one TargetConfig field and one entry here.
_LAYER_PARSERS: dict[str, typing.Callable[[yaml.Node], typing.Any]] = {
    "interval": lambda node: _duration(node, "interval"),
    "timeout": lambda node: _duration(node, "timeout"),
    "protocols": _layer_protocols,
    "expect": _expect,
    "http": _http,
    "labels": _labels,
    "addresses": lambda node: _choice(node, "addresses", AddressMode),
    "starttls": lambda node: _choice(node, "starttls", StartTls),
    "client_cert": _client_cert,
    "https_proxy": _https_proxy,
    "confirm_sweeps": _confirm_sweeps,
    "clients": _clients,
    "deep_interval": _deep_interval,
    "ca_file": _ca_file,
}
# Keys whose default and target values combine instead of the target's replacing the default's.
_MERGED: dict[str, typing.Callable[[_Given | None, _Given | None], typing.Any]] = {
    "expect": _merge_expect,
    "labels": _merge_labels,
}
_LAYER_KEYS = tuple(_LAYER_PARSERS)
_TARGET_KEYS = ("host", "port", "name", "sni", "address", *_LAYER_KEYS)
_RANGE_KEYS = ("network", "ports", *_LAYER_KEYS)
