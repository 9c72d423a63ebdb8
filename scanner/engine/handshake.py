"""The sslyze adapter: one blocking sslyze handshake at one version, run in a thread, abortable from the loop.

The sweep engine's TLS library (`Sslyze`, a scanner.engine.attempts.TlsLibrary). Besides scanner.engine.deep, the only
module that touches sslyze and nassl (including their private connection class); it hands back results as plain values
from scanner.results.sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from nassl import _nassl
from nassl.ephemeral_key_info import OpenSslEcNidEnum
from nassl.legacy_ssl_client import LegacySslClient
from nassl.ssl_client import (
    BaseSslClient,
    ClientCertificateRequested,
    OpenSslVerifyEnum,
    OpenSslVersionEnum,
    SslClient,
)

from scanner.config import ClientProfile, HttpCheck, StartTls, TargetConfig
from scanner.engine.attempts import TIMED_OUT, TLS13_ALL_SUITES, Attempt, classify_error
from scanner.hostport import bracket, join_host_port
from scanner.protocols import Protocol
from scanner.results.sweep import ErrorReason, Evidence, ProtocolResult, ProtocolState


@contextlib.contextmanager
def _sslyze_submodules_only() -> Iterator[None]:
    """Import sslyze's connection submodules without running its package `__init__`, which imports every plugin
    (pydantic, cryptography; ~0.15 s of every start). A bare placeholder stands for the package meanwhile and is
    removed after: a later `import sslyze` (the deep tier) then runs the real `__init__`, which reuses the submodules
    already loaded, so every class stays the same object."""
    if "sslyze" in sys.modules:
        yield
        return
    spec = importlib.util.find_spec("sslyze")
    assert spec is not None
    sys.modules["sslyze"] = importlib.util.module_from_spec(spec)
    try:
        yield
    finally:
        del sys.modules["sslyze"]


with _sslyze_submodules_only():
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

_SSLYZE_VERSION = {
    Protocol.SSLv2: TlsVersionEnum.SSL_2_0,
    Protocol.SSLv3: TlsVersionEnum.SSL_3_0,
    Protocol.TLSv1_0: TlsVersionEnum.TLS_1_0,
    Protocol.TLSv1_1: TlsVersionEnum.TLS_1_1,
    Protocol.TLSv1_2: TlsVersionEnum.TLS_1_2,
    Protocol.TLSv1_3: TlsVersionEnum.TLS_1_3,
}

_GROUPS = {
    "X25519": OpenSslEcNidEnum.X25519,
    "X448": OpenSslEcNidEnum.X448,
    "secp256r1": OpenSslEcNidEnum.SECP256R1,
    "secp384r1": OpenSslEcNidEnum.SECP384R1,
    "secp521r1": OpenSslEcNidEnum.SECP521R1,
}


@functools.cache
def _openssl_names() -> dict[str, str]:
    """IANA cipher suite name -> OpenSSL name, for TLS 1.2 and below (sslyze's table, read the other way)."""
    from sslyze.plugins.openssl_cipher_suites.cipher_suites import _TLS_OPENSSL_TO_RFC_NAMES_MAPPING

    return {iana: openssl for openssl, iana in _TLS_OPENSSL_TO_RFC_NAMES_MAPPING.items()}


@functools.cache
def _modern_suites() -> frozenset[str]:
    """The OpenSSL names the modern OpenSSL in nassl can offer at TLS 1.2."""
    client = SslClient(ssl_version=OpenSslVersionEnum.TLSV1_2, ssl_verify=OpenSslVerifyEnum.NONE)
    client.set_cipher_list("ALL:COMPLEMENTOFALL")
    return frozenset(client.get_cipher_list())


def profile_attempt(profile: ClientProfile, protocol: Protocol) -> Attempt:
    """The hello `profile` sends at `protocol`: exactly its suites (those OpenSSL knows), its SNI choice, its groups."""
    if protocol is Protocol.TLSv1_3:
        suites = [c for c in profile.ciphers if c in TLS13_ALL_SUITES.split(":")]
        return Attempt(":".join(suites), legacy=False, sni=profile.sni, groups=profile.groups)
    names = _openssl_names()
    suites = [names[c] for c in profile.ciphers if c in names]
    legacy: bool | None = None  # sslyze's choice: the legacy OpenSSL below TLS 1.2
    if protocol is Protocol.TLSv1_2:
        # The modern OpenSSL unless the client offers suites only the legacy one has (RC4, export, ...).
        legacy = not set(suites) <= _modern_suites()
    groups = profile.groups if protocol is Protocol.TLSv1_2 and not legacy else ()
    return Attempt(":".join(suites) or "NONE", legacy=legacy, sni=profile.sni, groups=groups)


def classify(exc: BaseException) -> ProtocolResult:
    """Map anything a hello raised to its answer, as one connection's: the one place exceptions become reasons
    (sslyze's and nassl's here, the rest in classify_error). The checks go from sslyze's narrowest class up."""
    if isinstance(exc, ServerTlsConfigurationNotSupported):
        # sslyze raises this when our own OpenSSL refuses the server's DH group: the server did pick this version.
        return ProtocolResult(ProtocolState.ACCEPTED, detail=exc.error_message, connections=1)
    if isinstance(exc, TlsHandshakeTimedOut | ConnectionToServerTimedOut):
        result = TIMED_OUT
    elif isinstance(exc, ServerRejectedTlsHandshake):
        message = exc.error_message.strip()
        if message.startswith("TLS alert"):
            evidence = Evidence.ALERT
        elif "wrong version number" in message or "wrong SSL version" in message:
            evidence = Evidence.NOT_TLS
        elif message == "Server rejected the connection":  # sslyze's words for a ConnectionError (RST, EPIPE)
            evidence = Evidence.RESET
        else:
            evidence = Evidence.CLOSED
        return ProtocolResult(ProtocolState.REJECTED, detail=message, evidence=evidence, connections=1)
    elif isinstance(exc, ServerRejectedConnection):
        result = ProtocolResult(ProtocolState.ERROR, detail="connection refused", reason=ErrorReason.REFUSED)
    elif isinstance(exc, ConnectionToServerFailed):
        result = ProtocolResult(ProtocolState.ERROR, detail=exc.error_message, reason=ErrorReason.OTHER)
    elif isinstance(exc, _nassl.OpenSSLError):
        result = ProtocolResult(ProtocolState.ERROR, detail=f"TLS error: {exc}", reason=ErrorReason.TLS)
    else:
        result = classify_error(exc)
    return replace(result, connections=1)


# nassl makes an SSL_CTX for every client (~50 µs: OpenSSL builds a default cipher list in it), though nothing a hello
# sets lives there: the clients of one OpenSSL, version and client-auth choice share one. Safe across the handshake
# threads: nassl holds the GIL in every OpenSSL call (even the legacy 1.0.2 one, which has no locking callbacks, sees
# one thread at a time). A client with a certificate keeps its own (the key is loaded into it).
_CONTEXTS: dict[tuple[type[BaseSslClient], OpenSslVersionEnum, bool], Any] = {}  # nassl's SSL_CTX: typed Any


def _shared_client(
    client_class: type[BaseSslClient], version: OpenSslVersionEnum, ignore_client_auth: bool
) -> BaseSslClient:
    """`client_class(ssl_version=version, ssl_verify=NONE, ignore_client_authentication_requests=...)`, as nassl 5's
    constructor makes it, but on the shared SSL_CTX for those settings."""
    key = (client_class, version, ignore_client_auth)
    context = _CONTEXTS.get(key)
    if context is None:
        context = client_class._NASSL_MODULE.SSL_CTX(version.value)
        context.set_verify(OpenSslVerifyEnum.NONE.value)
        if ignore_client_auth:
            context.set_client_cert_cb_NULL()
        context = _CONTEXTS.setdefault(key, context)
    client = client_class.__new__(client_class)
    client._is_handshake_completed = False
    client._ssl_version = version
    client._ssl_ctx = context
    client._sock = None
    client._init_ssl_objects()
    if isinstance(client, LegacySslClient) and version is OpenSslVersionEnum.SSLV2:
        client.do_handshake = client.do_ssl2_iis_handshake  # type: ignore[method-assign]  # as nassl's constructor
    return client


class _Connection(SslConnection):
    """sslyze's connection, opening HTTP proxy tunnels itself (sslyze's own CONNECT parser spins forever on EOF), or
    on a connection the event loop opened (`feed`: see Handshake.run_on_loop)."""

    feed: _Socket | OSError | None = None

    @classmethod
    def made(cls, handshake: Handshake, protocol: Protocol, attempt: Attempt, ignore_client_auth: bool) -> _Connection:
        """sslyze's connection for one attempt, its nassl client made as SslConnection.__init__ makes it (sslyze 6.3),
        but given the attempt's suites at once (sslyze's own default list, replaced straight after, cost a parse of
        ~40 µs per hello) and, without a client certificate, on a shared SSL_CTX (_shared_client). A unit test holds
        the hellos alike."""
        legacy = protocol not in (Protocol.TLSv1_2, Protocol.TLSv1_3) if attempt.legacy is None else attempt.legacy
        client_class = LegacySslClient if legacy else SslClient
        version = OpenSslVersionEnum(_SSLYZE_VERSION[protocol].value)
        network = handshake.network
        mine = network.tls_client_auth_credentials
        client: BaseSslClient
        if mine is None:
            client = _shared_client(client_class, version, ignore_client_auth)
        else:
            client = client_class(
                ssl_version=version,
                ssl_verify=OpenSslVerifyEnum.NONE,
                client_certificate_chain=mine.certificate_chain_path,
                client_key=mine.key_path,
                client_key_type=mine.key_type,
                client_key_password=mine.key_password,
                ignore_client_authentication_requests=False,
            )
        if protocol is Protocol.TLSv1_3:
            assert isinstance(client, SslClient)
            client.set_ciphersuites(attempt.cipher_list)
        else:
            client.set_cipher_list(attempt.cipher_list)
        if attempt.groups and isinstance(client, SslClient):
            client.set_groups([_GROUPS[group] for group in attempt.groups])
        if handshake.sni and attempt.sni and protocol is not Protocol.SSLv2:
            client.set_tlsext_host_name(network.tls_server_name_indication)
        connection = cls.__new__(cls)
        connection._server_location = handshake.location
        connection._network_configuration = network
        connection.ssl_client = client
        return connection

    def _do_pre_handshake(self) -> None:
        if self.feed is not None:
            if isinstance(self.feed, OSError):
                raise self.feed  # the loop could not connect: sslyze's own words for why
            if self.ssl_client.get_underlying_socket() is None:
                self.ssl_client.set_underlying_socket(self.feed)  # type: ignore[arg-type]  # duck-typed socket
            return
        proxy = self._server_location.http_proxy_settings
        if proxy is None:
            super()._do_pre_handshake()
            return
        timeout = self._network_configuration.network_timeout
        sock = socket.create_connection((proxy.hostname, proxy.port), timeout=timeout)
        try:
            location = self._server_location
            where = join_host_port(location.hostname, location.port)
            request = f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n"
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


class Peer:
    """One address of a target as sslyze sees it; makes a Handshake per attempt."""

    def __init__(self, target: TargetConfig, address: str, credentials: ClientAuthenticationCredentials | None) -> None:
        proxy = None if target.https_proxy is None else HttpProxySettings.from_url(target.https_proxy)
        self.location = ServerNetworkLocation(
            hostname=target.host, port=target.port, ip_address=address or None, http_proxy_settings=proxy
        )
        self.target = target
        self.address = address
        self.credentials = credentials
        port = "" if target.port == 443 else f":{target.port}"
        self.http_host = bracket(target.host) + port

    def handshake(self, timeout: float) -> Handshake:
        """A handshake whose every network step gives up after `timeout` seconds."""
        target = self.target
        network = ServerNetworkConfiguration(
            tls_server_name_indication=target.sni or target.host,
            tls_opportunistic_encryption=STARTTLS[target.starttls] if target.starttls else None,
            tls_client_auth_credentials=self.credentials,
            network_timeout=timeout,  # type: ignore[arg-type]  # sockets take float seconds
            network_max_retries=1,
        )
        return Handshake(self.location, network, sni=target.sni is not None)


class Handshake:
    """One blocking handshake attempt, abortable from another thread when its deadline passes."""

    def __init__(self, location: ServerNetworkLocation, network: ServerNetworkConfiguration, sni: bool) -> None:
        self.location = location
        self.network = network
        self.sni = sni
        self.aborted = False
        self._lock = threading.Lock()
        self._connection: SslConnection | None = None

    def _new_connection(self, protocol: Protocol, attempt: Attempt, ignore_client_auth: bool = False) -> _Connection:
        # Be told when a client certificate is asked for (unless ignore_client_auth): carrying on without one may end
        # in an alert that would read as a rejection.
        return _Connection.made(self, protocol, attempt, ignore_client_auth)

    def run(
        self,
        protocol: Protocol,
        attempt: Attempt,
        http: HttpCheck | None,
        http_host: str,
        ignore_client_auth: bool = False,
    ) -> ProtocolResult:
        connection = self._new_connection(protocol, attempt, ignore_client_auth)
        with self._lock:
            if self.aborted:
                return TIMED_OUT
            self._connection = connection
        try:
            connection.connect(should_retry_connection=False)
            cipher = connection.ssl_client.get_current_cipher_name()
            answer = _NO_HTTP if http is None else _http_request(connection, http, http_host)
            return ProtocolResult(ProtocolState.ACCEPTED, detail=cipher, connections=1, **answer._asdict())
        except ClientCertificateRequested:
            # The server got as far as asking who we are: it accepts this version.
            if http is None or ignore_client_auth:
                return ProtocolResult(ProtocolState.ACCEPTED, detail="client certificate requested", connections=1)
        except Exception as exc:  # every failure becomes data, in classify()
            if self.aborted:
                return TIMED_OUT
            return classify(exc)
        finally:
            self._close(connection)
            with self._lock:
                self._connection = None
            # nassl's legacy client points at itself (do_handshake = do_ssl2_iis_handshake), so only a full garbage
            # collection would free its OpenSSL context; break the cycle to give the memory back at once.
            vars(connection.ssl_client).pop("do_handshake", None)
        # To see what an HTTP client without a certificate gets (nginx: 400), go on without one.
        second = self.run(protocol, attempt, http, http_host, ignore_client_auth=True)
        return replace(
            second,
            state=ProtocolState.ACCEPTED,
            detail="client certificate requested",
            http_error=second.http_error
            or (None if second.http_status else f"no HTTP answer without a client certificate: {second.detail}"),
            connections=1 + second.connections,
        )

    async def run_on_loop(
        self, protocol: Protocol, attempt: Attempt, http: HttpCheck | None, http_host: str
    ) -> ProtocolResult | None:
        """`run` on the event loop, no thread: the same hello and sslyze's own reading of the answer, on a non-blocking
        socket the loop watches. None when this hello needs a thread: SSL 2.0 (nassl's IIS workaround reads mid-way),
        STARTTLS or a proxy (sslyze's blocking preamble), an HTTP request over it (sslyze's blocking parser)."""
        location = self.location
        address = location.ip_address
        if (
            protocol is Protocol.SSLv2
            or http is not None
            or self.network.tls_opportunistic_encryption is not None
            or location.http_proxy_settings is not None
            or not address
        ):
            return None
        loop = asyncio.get_running_loop()
        connection = self._new_connection(protocol, attempt)
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        hello = _Hello(connection, _Socket(sock, loop))
        try:
            async with asyncio.timeout(float(self.network.network_timeout)):
                try:
                    await loop.sock_connect(sock, (address, location.port))
                except OSError as exc:
                    # A reset here came after the connect (a thread's blocking connect returns first and meets it in
                    # its first read): the same, a reset hello; any other error is the connect's own.
                    if isinstance(exc, ConnectionResetError | ConnectionAbortedError):
                        hello.socket.error = exc
                    else:
                        connection.feed = exc
                return await hello.run()
        except TimeoutError:
            return TIMED_OUT
        finally:
            hello.end()  # timed out or cancelled: nothing more to say to this peer
            vars(connection.ssl_client).pop("do_handshake", None)  # as in run(): no reference cycle

    def abort(self) -> None:
        """Tear down the socket so a thread stuck in recv() returns now."""
        with self._lock:
            self.aborted = True
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


class _WouldBlock(Exception):
    """Nothing received yet: the hello goes on when the socket is readable (deliberately not an OSError, which
    sslyze would map to a verdict)."""


class _Socket:
    """The socket nassl reads and writes on a loop-driven hello: the real one, non-blocking, so that nothing to read
    yet is _WouldBlock, and bytes the kernel cannot take yet are kept and sent when it can (nassl ignores short
    sends). Everything else, end of stream and errors included, reaches sslyze exactly as from a blocking socket."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        self.error: OSError | None = None  # met before the hello began: what the first read gives
        self.unsent = bytearray()

    def recv(self, size: int) -> bytes:
        if self.error is not None:
            raise self.error
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            raise _WouldBlock from None

    def send(self, data: bytes) -> int:
        size = len(data)
        if self.error is not None:
            return size  # as if sent: the read that follows meets the error
        if not self.unsent:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            data = data[sent:]
            if data:
                self.loop.add_writer(self.fd, self._flush)
        self.unsent += data
        return size

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self.unsent)  # the peer is gone: the next read says so
        del self.unsent[:sent]
        if not self.unsent:
            self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()


class _Hello:
    """Drives one sslyze connection from the loop: each time the socket is readable, sslyze's connect() is entered
    again and resumes OpenSSL's handshake where it waited (nassl keeps its state in memory BIOs), mapping the outcome
    to sslyze's exceptions as on a thread, so both paths judge a server alike."""

    def __init__(self, connection: _Connection, sock: _Socket) -> None:
        self.connection = connection
        self.socket = sock
        self.answer: asyncio.Future[ProtocolResult] = sock.loop.create_future()

    async def run(self) -> ProtocolResult:
        if self.connection.feed is None:
            self.connection.feed = self.socket
            self.socket.loop.add_reader(self.socket.fd, self.step)
        self.step()
        return await self.answer

    def step(self) -> None:
        if self.answer.done():
            return
        connection = self.connection
        try:
            connection.connect(should_retry_connection=False)
            result = ProtocolResult(
                ProtocolState.ACCEPTED, detail=connection.ssl_client.get_current_cipher_name(), connections=1
            )
        except _WouldBlock:
            return
        except ClientCertificateRequested:  # the server got as far as asking who we are: it accepts this version
            result = ProtocolResult(ProtocolState.ACCEPTED, detail="client certificate requested", connections=1)
        except Exception as exc:  # every failure becomes data, in classify()
            result = classify(exc)
        self.end()
        self.answer.set_result(result)

    def end(self) -> None:
        """Close the connection (sslyze closes the socket, which stops the loop watching it), or just the socket when
        sslyze never had it or failed to close it."""
        if self.connection.feed is self.socket and self.socket.sock.fileno() != -1:
            Handshake._close(self.connection)
        self.socket.close()


class _HttpAnswer(NamedTuple):
    """What the HTTP request over an accepted handshake got, as ProtocolResult fields."""

    http_status: int | None = None
    http_error: str | None = None
    http_reason: str | None = None
    http_match: bool | None = None  # set when the check has a `match`
    http_excerpt: str | None = None  # set when the check has a `match`


_NO_HTTP = _HttpAnswer()
HTTP_MATCH_BYTES = 4096  # of the body searched by `match`
_EXCERPT_CHARS = 200


def _http_request(connection: SslConnection, http: HttpCheck, host: str) -> _HttpAnswer:
    """Send the target's HTTP request over the established TLS connection; read the status (and body for `match`)."""
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
        return _HttpAnswer(http_error=f"HTTP request failed: {type(exc).__name__}: {exc}".strip())
    if http.match is None:
        return _HttpAnswer(response.status, http_reason=response.reason)
    body = response.fp.read() if response.fp is not None else b""  # what came with the head
    while len(body) < HTTP_MATCH_BYTES:
        try:
            chunk = connection.ssl_client.read(HTTP_MATCH_BYTES - len(body))
        except Exception:  # the server closed (Connection: close) or the read timed out: search what came
            break
        if not chunk:
            break
        body += chunk
    text = body[:HTTP_MATCH_BYTES].decode("utf-8", "replace")
    found = re.search(http.match, f"HTTP/1.1 {response.status} {response.reason}\n{text}") is not None
    excerpt = " ".join(text.split())[:_EXCERPT_CHARS]
    return _HttpAnswer(response.status, None, response.reason, found, excerpt)


def credentials(target: TargetConfig) -> ClientAuthenticationCredentials | None:
    if target.client_cert is None:
        return None
    return ClientAuthenticationCredentials(
        certificate_chain_path=Path(target.client_cert.cert), key_path=Path(target.client_cert.key)
    )


class Sslyze:
    """The sweep engine's TLS library (scanner.engine.attempts.TlsLibrary): sslyze's connection, nassl's OpenSSLs."""

    @staticmethod
    def peers(target: TargetConfig) -> Callable[[str], Peer]:
        """What makes the target's Peer for an address; raises when the target's client certificate is unusable."""
        return functools.partial(Peer, target, credentials=credentials(target))

    profile_attempt = staticmethod(profile_attempt)


STARTTLS = {
    StartTls.SMTP: ProtocolWithOpportunisticTlsEnum.SMTP,
    StartTls.IMAP: ProtocolWithOpportunisticTlsEnum.IMAP,
    StartTls.POP3: ProtocolWithOpportunisticTlsEnum.POP3,
    StartTls.FTP: ProtocolWithOpportunisticTlsEnum.FTP,
    StartTls.XMPP: ProtocolWithOpportunisticTlsEnum.XMPP,
    StartTls.LDAP: ProtocolWithOpportunisticTlsEnum.LDAP,
    StartTls.POSTGRES: ProtocolWithOpportunisticTlsEnum.POSTGRES,
    StartTls.RDP: ProtocolWithOpportunisticTlsEnum.RDP,
}
