"""One sweep of one target with sslyze: one handshake per protocol version, errors as data."""

from __future__ import annotations

import asyncio
import enum
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nassl import _nassl
from nassl.ssl_client import ClientCertificateRequested, SslClient
from sslyze.connection_helpers.http_response_parser import HttpResponseParser
from sslyze.connection_helpers.opportunistic_tls_helpers import ProtocolWithOpportunisticTlsEnum
from sslyze.connection_helpers.tls_connection import SslConnection
from sslyze.errors import (
    ConnectionToServerFailed,
    ConnectionToServerTimedOut,
    HttpProxyRejectedConnection,
    ServerRejectedConnection,
    ServerRejectedTlsHandshake,
    ServerTlsConfigurationNotSupported,
    TlsHandshakeTimedOut,
)
from sslyze.server_connectivity import TlsVersionEnum
from sslyze.server_setting import (
    ClientAuthenticationCredentials,
    HttpProxySettings,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
)

from scanner.config import HttpCheck, Politeness, Resolver, StartTls, TargetConfig
from scanner.protocols import Protocol
from scanner.resolve import ResolveError, resolve

# Past its timeout a target gets this long before its hung connections are torn down.
DEADLINE_GRACE_SECONDS = 0.8

_SSLYZE_VERSION = {
    Protocol.SSLv2: TlsVersionEnum.SSL_2_0,
    Protocol.SSLv3: TlsVersionEnum.SSL_3_0,
    Protocol.TLSv1_0: TlsVersionEnum.TLS_1_0,
    Protocol.TLSv1_1: TlsVersionEnum.TLS_1_1,
    Protocol.TLSv1_2: TlsVersionEnum.TLS_1_2,
    Protocol.TLSv1_3: TlsVersionEnum.TLS_1_3,
}

_TLS13_ALL_SUITES = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:"
    "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"
)
_TLS13_DEFAULT_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

# First every suite the version can use, then sslyze's shorter fallback for servers that choke on a long hello.
_CIPHER_LISTS: Mapping[Protocol, tuple[str, ...]] = {
    Protocol.SSLv2: ("SSLv2",),
    Protocol.SSLv3: ("ALL:COMPLEMENTOFALL:-PSK:-SRP", "DEFAULT"),
    Protocol.TLSv1_0: ("ALL:COMPLEMENTOFALL:-PSK:-SRP", "DEFAULT"),
    Protocol.TLSv1_1: ("ALL:COMPLEMENTOFALL:-PSK:-SRP", "DEFAULT"),
    Protocol.TLSv1_2: ("ALL:COMPLEMENTOFALL:-PSK:-SRP", "DEFAULT"),
    Protocol.TLSv1_3: (_TLS13_ALL_SUITES, _TLS13_DEFAULT_SUITES),
}


class ProtocolState(enum.StrEnum):
    """What a sweep learned about one protocol version."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"


class ErrorReason(enum.StrEnum):
    """Why a protocol or target could not be determined; a small fixed set, used as a metric label."""

    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    TLS = "tls"
    OTHER = "other"


class Evidence(enum.StrEnum):
    """How a rejection was observed; only an alert proves on its own that the peer speaks TLS."""

    ALERT = "alert"
    CLOSED = "closed"
    NOT_TLS = "not-tls"


@dataclass(frozen=True)
class ProtocolResult:
    """The answer for one protocol version in one sweep."""

    state: ProtocolState
    detail: str = ""  # the alert, error or cipher behind the answer
    reason: ErrorReason | None = None  # set when state is ERROR
    evidence: Evidence | None = None  # set when state is REJECTED
    http_status: int | None = None  # set when ACCEPTED, the target has an http check, and it was answered
    http_error: str | None = None  # set when ACCEPTED, the target has an http check, and it failed
    connections: int = 0  # TCP connections this answer took


@dataclass(frozen=True)
class AddressResult:
    """One address of a target: a state per configured protocol, plus an address-level error if any."""

    address: str  # the IP connected to; "" when connecting through an HTTP proxy
    protocols: Mapping[Protocol, ProtocolResult]
    error: str | None = None  # unreachable, not a TLS server
    error_reason: ErrorReason | None = None  # set with error

    @property
    def complete(self) -> bool:
        """Every configured protocol was determined (accepted or rejected)."""
        return self.error is None and all(r.state is not ProtocolState.ERROR for r in self.protocols.values())


@dataclass(frozen=True)
class SweepResult:
    """One sweep of one target: every address it resolved to, plus a target-level error if any."""

    target: TargetConfig
    started_at: float  # unix time
    duration_seconds: float
    addresses: tuple[AddressResult, ...] = ()
    error: str | None = None  # target-level: DNS failure, or every address failed
    error_reason: ErrorReason | None = None  # set with error
    closed: bool = False  # a range endpoint that did not accept TCP: counted, not scanned

    @property
    def address(self) -> str | None:
        """The first address probed; None when the name did not resolve."""
        return self.addresses[0].address if self.addresses else None

    @property
    def protocols(self) -> Mapping[Protocol, ProtocolResult]:
        """Per protocol, the target's answer: accepted if any address accepted, else an error if any, else rejected."""
        if not self.addresses:
            error = ProtocolResult(ProtocolState.ERROR, detail=self.error or "", reason=self.error_reason)
            return {p: error for p in self.target.protocols}
        merged: dict[Protocol, ProtocolResult] = {}
        rank = {ProtocolState.ACCEPTED: 0, ProtocolState.ERROR: 1, ProtocolState.REJECTED: 2}
        for address in self.addresses:
            for protocol, result in address.protocols.items():
                best = merged.get(protocol)
                if best is None or rank[result.state] < rank[best.state]:
                    merged[protocol] = result
        return merged

    @property
    def complete(self) -> bool:
        """Every configured protocol was determined on every address."""
        return self.error is None and bool(self.addresses) and all(a.complete for a in self.addresses)

    @property
    def connections(self) -> int:
        return sum(r.connections for a in self.addresses for r in a.protocols.values())

    def state(self, protocol: Protocol) -> ProtocolState | None:
        result = self.protocols.get(protocol)
        return None if result is None else result.state

    def accepted_addresses(self, protocol: Protocol) -> int:
        """How many addresses accepted the protocol in this sweep."""
        return sum(1 for a in self.addresses if (r := a.protocols.get(protocol)) and r.state is ProtocolState.ACCEPTED)


def classify(exc: BaseException) -> ProtocolResult:
    """Map anything a handshake attempt raised to a ProtocolResult: the one place exceptions become reasons."""
    if isinstance(exc, ServerTlsConfigurationNotSupported):
        # sslyze raises this when our own OpenSSL refuses the server's DH group: the server did pick this version.
        return ProtocolResult(ProtocolState.ACCEPTED, detail=exc.error_message)
    if isinstance(exc, TlsHandshakeTimedOut | ConnectionToServerTimedOut | socket.timeout | TimeoutError):
        return ProtocolResult(ProtocolState.ERROR, detail="timed out", reason=ErrorReason.TIMEOUT)
    if isinstance(exc, ServerRejectedTlsHandshake):
        message = exc.error_message.strip()
        if message.startswith("TLS alert"):
            evidence = Evidence.ALERT
        elif "wrong version number" in message or "wrong SSL version" in message:
            evidence = Evidence.NOT_TLS
        else:
            evidence = Evidence.CLOSED
        return ProtocolResult(ProtocolState.REJECTED, detail=message, evidence=evidence)
    if isinstance(exc, ServerRejectedConnection):
        return ProtocolResult(ProtocolState.ERROR, detail="connection refused", reason=ErrorReason.REFUSED)
    if isinstance(exc, ConnectionToServerFailed):
        return ProtocolResult(ProtocolState.ERROR, detail=exc.error_message, reason=ErrorReason.OTHER)
    if isinstance(exc, socket.gaierror):
        return ProtocolResult(ProtocolState.ERROR, detail=f"cannot resolve: {exc.strerror}", reason=ErrorReason.DNS)
    if isinstance(exc, _nassl.OpenSSLError):
        return ProtocolResult(ProtocolState.ERROR, detail=f"TLS error: {exc}", reason=ErrorReason.TLS)
    if isinstance(exc, ConnectionRefusedError):
        return ProtocolResult(ProtocolState.ERROR, detail="connection refused", reason=ErrorReason.REFUSED)
    if isinstance(exc, OSError):
        return ProtocolResult(ProtocolState.ERROR, detail=f"network error: {exc}", reason=ErrorReason.OTHER)
    return ProtocolResult(ProtocolState.ERROR, detail=f"{type(exc).__name__}: {exc}", reason=ErrorReason.OTHER)


class _Connection(SslConnection):
    """sslyze's connection, opening HTTP proxy tunnels itself: sslyze's own CONNECT parser spins forever on EOF."""

    def _do_pre_handshake(self) -> None:
        proxy = self._server_location.http_proxy_settings
        if proxy is None:
            super()._do_pre_handshake()
            return
        timeout = self._network_configuration.network_timeout
        sock = socket.create_connection((proxy.hostname, proxy.port), timeout=timeout)
        try:
            location = self._server_location
            host = f"[{location.hostname}]" if ":" in location.hostname else location.hostname
            request = f"CONNECT {host}:{location.port} HTTP/1.1\r\nHost: {host}:{location.port}\r\n"
            if proxy.proxy_authorization_header:
                request += f"Proxy-Authorization: Basic {proxy.proxy_authorization_header}\r\n"
            sock.sendall((request + "\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk or len(head) > 65536:
                    raise HttpProxyRejectedConnection(
                        location, self._network_configuration, "the HTTP proxy closed the connection on CONNECT"
                    )
                head += chunk
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split()
            if len(parts) < 2 or parts[1] != "200":
                raise HttpProxyRejectedConnection(
                    location, self._network_configuration, f"the HTTP proxy refused CONNECT: {status_line[:80]}"
                )
        except BaseException:
            sock.close()
            raise
        self.ssl_client.set_underlying_socket(sock)


class _Handshake:
    """One blocking handshake attempt, abortable from another thread when its deadline passes."""

    def __init__(self, location: ServerNetworkLocation, network: ServerNetworkConfiguration, sni: bool) -> None:
        self.location = location
        self.network = network
        self.sni = sni
        self._lock = threading.Lock()
        self._connection: SslConnection | None = None
        self._aborted = False

    def run(
        self,
        protocol: Protocol,
        cipher_list: str,
        http: HttpCheck | None,
        http_host: str,
        ignore_client_auth: bool = False,
    ) -> ProtocolResult:
        connection = _Connection(
            server_location=self.location,
            network_configuration=self.network,
            tls_version=_SSLYZE_VERSION[protocol],
            # Be told when a client certificate is asked for: carrying on without one may end in an alert
            # that would read as a rejection.
            should_ignore_client_auth=ignore_client_auth,
            should_enable_server_name_indication=self.sni,
        )
        if protocol is Protocol.TLSv1_3:
            assert isinstance(connection.ssl_client, SslClient)
            connection.ssl_client.set_ciphersuites(cipher_list)
        else:
            connection.ssl_client.set_cipher_list(cipher_list)
        with self._lock:
            if self._aborted:
                return ProtocolResult(ProtocolState.ERROR, detail="timed out", reason=ErrorReason.TIMEOUT)
            self._connection = connection
        try:
            connection.connect(should_retry_connection=False)
            cipher = connection.ssl_client.get_current_cipher_name()
            status, http_error = (None, None) if http is None else _http_request(connection, http, http_host)
            return ProtocolResult(
                ProtocolState.ACCEPTED, detail=cipher, http_status=status, http_error=http_error, connections=1
            )
        except ClientCertificateRequested:
            # The server got as far as asking who we are: it accepts this version.
            if http is None or ignore_client_auth:
                return ProtocolResult(ProtocolState.ACCEPTED, detail="client certificate requested", connections=1)
        except Exception as exc:  # every failure becomes data, in classify()
            if self._aborted:
                return ProtocolResult(ProtocolState.ERROR, detail="timed out", reason=ErrorReason.TIMEOUT)
            return _with_connections(classify(exc), 1)
        finally:
            self._close(connection)
            with self._lock:
                self._connection = None
            # nassl's legacy client points at itself (do_handshake = do_ssl2_iis_handshake), so only a full garbage
            # collection would free its OpenSSL context; break the cycle to give the memory back at once.
            vars(connection.ssl_client).pop("do_handshake", None)
        # To see what an HTTP client without a certificate gets (nginx: 400), go on without one.
        second = self.run(protocol, cipher_list, http, http_host, ignore_client_auth=True)
        return ProtocolResult(
            ProtocolState.ACCEPTED,
            detail="client certificate requested",
            http_status=second.http_status,
            http_error=second.http_error
            or (None if second.http_status else f"no HTTP answer without a client certificate: {second.detail}"),
            connections=1 + second.connections,
        )

    def abort(self) -> None:
        """Tear down the socket so a thread stuck in recv() returns now."""
        with self._lock:
            self._aborted = True
            connection = self._connection
        if connection is not None:
            sock = connection.ssl_client.get_underlying_socket()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _close(connection: SslConnection) -> None:
        try:
            connection.close()
        except Exception:
            pass


def _with_connections(result: ProtocolResult, connections: int) -> ProtocolResult:
    return ProtocolResult(
        result.state,
        detail=result.detail,
        reason=result.reason,
        evidence=result.evidence,
        http_status=result.http_status,
        http_error=result.http_error,
        connections=connections,
    )


def _http_request(connection: SslConnection, http: HttpCheck, host: str) -> tuple[int | None, str | None]:
    """Send the target's HTTP request over the established TLS connection; return (status, error)."""
    request = (
        f"{http.method} {http.path} HTTP/1.1\r\n"
        f"Host: {http.host or host}\r\n"
        "User-Agent: tls-scanner\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    try:
        connection.ssl_client.write(request)
        response = HttpResponseParser.parse_from_ssl_connection(connection.ssl_client)
    except Exception as exc:
        return None, f"HTTP request failed: {type(exc).__name__}: {exc}".strip()
    return response.status, None


def _host_header(host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


class Prober:
    """Sweeps targets: asyncio on top, sslyze's blocking handshakes in a bounded thread pool."""

    def __init__(
        self, concurrency: int, politeness: Politeness | None = None, resolver: Resolver | None = None
    ) -> None:
        self.concurrency = concurrency
        self.politeness = politeness or Politeness()
        self.resolver = resolver
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="handshake")
        self._slots: asyncio.Semaphore | None = None
        self._per_address: dict[str, asyncio.Semaphore] = {}
        self._next_connection: dict[str, float] = {}
        self.stopping = False  # set on shutdown: queued handshakes end as errors instead of starting

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def sweep(self, target: TargetConfig, addresses: list[str] | None = None) -> SweepResult:
        """Resolve the target once (unless `addresses` are given), then try each protocol on each address.

        Never raises for a misbehaving server: every failure is in the result.
        """
        started_at = time.time()
        clock = time.monotonic()

        def done(results: tuple[AddressResult, ...] = (), error: str | None = None, **kw: Any) -> SweepResult:
            reason = kw.pop("reason", None)
            return SweepResult(target, started_at, time.monotonic() - clock, results, error, reason, **kw)

        if target.https_proxy is not None:
            addresses = [""]  # the proxy resolves and connects
        elif addresses is None:
            if target.address is not None:
                addresses = [target.address]
            else:
                try:
                    addresses = await resolve(target.host, target.addresses, self.resolver, target.timeout)
                except ResolveError as exc:
                    return done(error=f"cannot resolve {target.host}: {exc}", reason=ErrorReason.DNS)
        try:
            credentials = _credentials(target)
        except Exception as exc:
            return done(error=f"client certificate unusable: {exc}", reason=ErrorReason.OTHER)
        if target.range is not None:
            opened = await self._tcp_open(addresses[0], target)
            if opened is not None:
                return done(error=opened.detail, reason=opened.reason, closed=True)
        results = await asyncio.gather(*(self._sweep_address(target, a, credentials) for a in addresses))
        error, reason = None, None
        if all(r.error is not None for r in results):
            error, reason = results[0].error, results[0].error_reason
            if len(results) > 1:
                error = f"all {len(results)} addresses failed: {error}"
        return done(tuple(results), error, reason=reason)

    async def _sweep_address(
        self, target: TargetConfig, address: str, credentials: ClientAuthenticationCredentials | None
    ) -> AddressResult:
        proxy = None if target.https_proxy is None else HttpProxySettings.from_url(target.https_proxy)
        location = ServerNetworkLocation(
            hostname=target.host, port=target.port, ip_address=address or None, http_proxy_settings=proxy
        )
        results = await asyncio.gather(
            *(self._probe_protocol(target, location, address, p, credentials) for p in target.protocols)
        )
        protocols = dict(zip(target.protocols, results, strict=True))
        if not _speaks_tls(protocols.values()) and any(r.state is ProtocolState.REJECTED for r in results):
            # Refusals without an alert prove nothing by themselves (a version downgrade and a non-TLS peer read
            # the same to OpenSSL); a version outside the configured ones can show the peer speaks TLS.
            for extra in (p for p in (Protocol.TLSv1_2, Protocol.TLSv1_3, Protocol.TLSv1_0) if p not in protocols):
                proof = await self._probe_protocol(replace(target, http=None), location, address, extra, credentials)
                if _speaks_tls([proof]):
                    return AddressResult(address, protocols)
        protocols, error, reason = _judge_peer(protocols)
        return AddressResult(address, protocols, error, reason)

    async def _tcp_open(self, address: str, target: TargetConfig) -> ProtocolResult | None:
        """For range endpoints: None if the port accepts TCP, else why not."""
        async with self._address_slot(address):
            await self._pace(address)
            async with self._global_slot():  # a /16 must not open 65,536 sockets at once
                try:
                    connecting = asyncio.open_connection(address, target.port)
                    _, writer = await asyncio.wait_for(connecting, target.timeout)
                except (OSError, TimeoutError) as exc:
                    return classify(exc)
                writer.close()
                return None

    def _global_slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def _address_slot(self, address: str) -> asyncio.Semaphore:
        slot = self._per_address.get(address)
        if slot is None:
            slot = self._per_address[address] = asyncio.Semaphore(self.politeness.connections_per_address)
        return slot

    async def _pace(self, address: str) -> None:
        """Wait for this address's next connection slot under the optional per-address rate limit."""
        rate = self.politeness.connections_per_second
        if rate <= 0:
            return
        now = time.monotonic()
        at = max(now, self._next_connection.get(address, now))
        self._next_connection[address] = at + 1.0 / rate
        if at > now:
            await asyncio.sleep(at - now)

    async def _probe_protocol(
        self,
        target: TargetConfig,
        location: ServerNetworkLocation,
        address: str,
        protocol: Protocol,
        credentials: ClientAuthenticationCredentials | None,
    ) -> ProtocolResult:
        loop = asyncio.get_running_loop()
        http_host = _host_header(target.host, target.port)
        connections = 0
        result = ProtocolResult(ProtocolState.ERROR, detail="not tried", reason=ErrorReason.OTHER)
        deadline: float | None = None
        for attempt, cipher_list in enumerate(_CIPHER_LISTS[protocol]):
            async with self._address_slot(address):
                await self._pace(address)  # outside the global slot: a rate limit must not hold up other addresses
                async with self._global_slot():
                    if self.stopping:
                        result = ProtocolResult(ProtocolState.ERROR, detail="shutting down", reason=ErrorReason.OTHER)
                        break
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + target.timeout + DEADLINE_GRACE_SECONDS
                    budget = min(target.timeout, deadline - now - DEADLINE_GRACE_SECONDS / 2)
                    if attempt > 0 and budget < 0.2:
                        break  # no time left for the fallback; keep the first answer
                    network = ServerNetworkConfiguration(
                        tls_server_name_indication=target.sni or target.host,
                        tls_opportunistic_encryption=_STARTTLS[target.starttls] if target.starttls else None,
                        tls_client_auth_credentials=credentials,
                        network_timeout=budget,  # type: ignore[arg-type]  # sockets take float seconds
                        network_max_retries=1,
                    )
                    handshake = _Handshake(location, network, sni=target.sni is not None)
                    future = loop.run_in_executor(
                        self._executor, handshake.run, protocol, cipher_list, target.http, http_host
                    )
                    try:
                        result = await asyncio.wait_for(asyncio.shield(future), deadline - now)
                    except TimeoutError:
                        handshake.abort()
                        result = ProtocolResult(ProtocolState.ERROR, detail="timed out", reason=ErrorReason.TIMEOUT)
            connections += 1
            # Only a rejection without an alert (closed, reset) is worth the shorter hello.
            if result.state is not ProtocolState.REJECTED or result.evidence is Evidence.ALERT:
                break
        return _with_connections(result, connections)


def _credentials(target: TargetConfig) -> ClientAuthenticationCredentials | None:
    if target.client_cert is None:
        return None
    return ClientAuthenticationCredentials(
        certificate_chain_path=Path(target.client_cert.cert), key_path=Path(target.client_cert.key)
    )


_STARTTLS = {
    StartTls.SMTP: ProtocolWithOpportunisticTlsEnum.SMTP,
    StartTls.IMAP: ProtocolWithOpportunisticTlsEnum.IMAP,
    StartTls.POP3: ProtocolWithOpportunisticTlsEnum.POP3,
    StartTls.FTP: ProtocolWithOpportunisticTlsEnum.FTP,
    StartTls.XMPP: ProtocolWithOpportunisticTlsEnum.XMPP,
    StartTls.LDAP: ProtocolWithOpportunisticTlsEnum.LDAP,
    StartTls.POSTGRES: ProtocolWithOpportunisticTlsEnum.POSTGRES,
    StartTls.RDP: ProtocolWithOpportunisticTlsEnum.RDP,
}


def _speaks_tls(results: Iterable[ProtocolResult]) -> bool:
    """Whether these answers prove the peer is a TLS server: it completed a handshake or sent a TLS alert."""
    return any(r.state is ProtocolState.ACCEPTED or r.evidence is Evidence.ALERT for r in results)


def _judge_peer(
    protocols: dict[Protocol, ProtocolResult],
) -> tuple[dict[Protocol, ProtocolResult], str | None, ErrorReason | None]:
    """Decide whether rejections can be believed, and what target-level error the sweep carries."""
    if _speaks_tls(protocols.values()):
        return protocols, None, None
    errors = [r for r in protocols.values() if r.state is ProtocolState.ERROR]
    if len(errors) == len(protocols):
        # Nothing got through at all: the target is unreachable; report the first reason.
        first = errors[0]
        return protocols, first.detail, first.reason
    # No handshake completed and no TLS alert came back: the peer gave no sign of speaking TLS, so its
    # refusals prove nothing about versions (a false "rejected" is a false brownout alarm).
    detail = "not a TLS server: no handshake completed and no TLS alert received"
    if any(r.evidence is Evidence.NOT_TLS for r in protocols.values()):
        detail = "not a TLS server: the peer answered with non-TLS data"
    judged = {
        p: r
        if r.state is ProtocolState.ERROR
        else ProtocolResult(ProtocolState.ERROR, detail=r.detail, reason=ErrorReason.TLS, connections=r.connections)
        for p, r in protocols.items()
    }
    return judged, detail, ErrorReason.TLS
