"""Test lab: Python TLS servers, hostile peers and clients on loopback, always stopped when done.

nginx, free ports and process helpers live in bench/servers.py, certificates in bench/certs.py (the benchmarks use them
too, and never import the tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import NoReturn, Self
from typing import Protocol as TypingProtocol

import pytest

from bench.certs import CertAuthority, CertPaths, make_cert
from bench.servers import (
    LEGACY_CIPHERS,
    Endpoint,
    Managed,
    NginxLab,
    NginxServer,
    address_family,
    check_loopback,
    free_ports,
    read_all,
)
from scanner.protocols import Protocol

__all__ = [
    "LabCerts",
    "LabStack",
    "NginxLabFactory",
    "TLSServer",
    "client_context",
    "closed_port",
    "closing_server",
    "garbage_server",
    "handshake",
    "https_status",
    "make_lab_certs",
    "missing",
    "nginx_available",
    "openssl_s_client",
    "plain_http_server",
    "python_tls_server",
    "require_nginx",
    "rst_server",
    "tarpit",
]

NGINX_MISSING_REASON = "nginx not installed (the README test command installs it)"

_TLS_VERSIONS: dict[Protocol, ssl.TLSVersion] = {
    Protocol.TLSv1_0: ssl.TLSVersion.TLSv1,
    Protocol.TLSv1_1: ssl.TLSVersion.TLSv1_1,
    Protocol.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    Protocol.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}
_NO_VERSION_OPTIONS: dict[Protocol, ssl.Options] = {
    Protocol.TLSv1_0: ssl.OP_NO_TLSv1,
    Protocol.TLSv1_1: ssl.OP_NO_TLSv1_1,
    Protocol.TLSv1_2: ssl.OP_NO_TLSv1_2,
    Protocol.TLSv1_3: ssl.OP_NO_TLSv1_3,
}
_IO_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class LabCerts:
    """The certificates most tests need, all in one directory."""

    directory: Path
    ca: CertAuthority
    server: CertPaths
    self_signed: CertPaths
    expired: CertPaths
    wrong_host: CertPaths
    client: CertPaths


def make_lab_certs(directory: Path) -> LabCerts:
    """Make a CA, a CA-issued localhost server cert, self-signed, expired and wrong-host certs, and a client cert."""
    directory = Path(directory)
    ca = CertAuthority(directory)
    return LabCerts(
        directory=directory,
        ca=ca,
        server=ca.issue("localhost"),
        self_signed=make_cert(directory),
        expired=make_cert(directory, expired=True),
        wrong_host=make_cert(directory, "wrong.host.invalid"),
        client=ca.issue("lab-client", client=True),
    )


@contextlib.contextmanager
def _default_cert(cert: CertPaths | None) -> Iterator[CertPaths]:
    """Yield cert, or a self-signed localhost cert in a temporary directory removed afterwards."""
    if cert is not None:
        yield cert
        return
    with tempfile.TemporaryDirectory(prefix="tls-lab-cert-") as tmp:
        yield make_cert(Path(tmp))


# --- threaded servers -------------------------------------------------------------------------------------------


def _drain_and_close(sock: socket.socket, timeout: float = 1.0) -> None:
    """Send FIN, read until the peer closes (so unread bytes cannot turn our close into a RST), then close."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)
        sock.settimeout(timeout)
        while socket.socket.recv(sock, 65536):
            pass
    sock.close()


class _ThreadedServer(Managed):
    """A loopback TCP server: one accept thread, one thread per connection, stop() never blocks for long."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Bind a listening socket on host, port 0."""
        self._host = check_loopback(host)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.socket(address_family(host), socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(512)
        self._listener.setblocking(False)
        self.endpoint = Endpoint(host, self._listener.getsockname()[1])
        self.accepted = 0
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"lab-accept-{self.endpoint.port}", daemon=True
        )

    def start(self) -> Self:
        """Start accepting."""
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection and wait briefly for the threads."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                # The base-class shutdown wakes threads blocked in recv, also on SSL sockets.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        """Accept connections and hand each to its own thread until stopped."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(timeout=0.05):
                    continue
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                conn.setblocking(True)
                conn.settimeout(_IO_TIMEOUT)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                with self._lock:
                    self.accepted += 1
                    self._conns.add(conn)
                    self._threads.add(thread)
                thread.start()

    def _serve(self, conn: socket.socket) -> None:
        """Run handle() on one connection and forget it afterwards."""
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    @contextlib.contextmanager
    def _tracked(self, conn: socket.socket) -> Iterator[None]:
        """Let stop() cut conn (e.g. an SSL wrapper of the accepted socket) while the block runs."""
        with self._lock:
            self._conns.add(conn)
        try:
            yield
        finally:
            with self._lock:
                self._conns.discard(conn)

    def handle(self, conn: socket.socket) -> None:
        """Serve one accepted connection."""
        raise NotImplementedError


def _read_http_request(conn: socket.socket, limit: int = 65536) -> bytes:
    """Read until the end of the request head, EOF or limit."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _http_response(status: int, body: bytes | None = None) -> bytes:
    """Return a complete HTTP/1.1 response with Connection: close."""
    reason = HTTPStatus(status).phrase
    payload = body if body is not None else f"{status} {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


def _server_context(
    versions: set[Protocol], cert: CertPaths, ciphers: str | None, client_ca: Path | None
) -> ssl.SSLContext:
    """Build a server context offering exactly versions."""
    unsupported = versions - set(_TLS_VERSIONS)
    if unsupported or not versions:
        raise ValueError(
            f"cannot serve {sorted(unsupported) or 'no versions'}: OpenSSL 3 servers cannot offer SSLv2/SSLv3"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    ordered = sorted(versions, key=list(_TLS_VERSIONS).index)
    low, high = _TLS_VERSIONS[ordered[0]], _TLS_VERSIONS[ordered[-1]]
    # Python flags TLS 1.0/1.1 and the OP_NO_* options as deprecated; offering them is the point of the lab.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = low, high
        for protocol, version in _TLS_VERSIONS.items():
            if low < version < high and protocol not in versions:
                ctx.options |= _NO_VERSION_OPTIONS[protocol]
    cipher_string = ciphers or LEGACY_CIPHERS
    if "@SECLEVEL" not in cipher_string:
        cipher_string += ":@SECLEVEL=0"
    ctx.set_ciphers(cipher_string)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


class TLSServer(_ThreadedServer):
    """Python ssl server: handshake, then answer one HTTP request if http_status is set, then close."""

    def __init__(
        self,
        versions: set[Protocol],
        cert: CertPaths,
        *,
        ciphers: str | None = None,
        client_ca: Path | None = None,
        http_status: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """Prepare the context and bind; call start() or use as a context manager."""
        self.context = _server_context(versions, cert, ciphers, client_ca)
        self.http_status = http_status
        self.negotiated: list[str] = []
        self.errors: list[str] = []
        super().__init__(host)

    def handle(self, conn: socket.socket) -> None:
        """Handshake, optionally answer HTTP, close gracefully."""
        tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self._tracked(tls):
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                # Closing with the client's unread bytes queued would send a RST that can overtake OpenSSL's alert.
                _drain_and_close(tls)
                return
            with self._lock:
                self.negotiated.append(tls.version() or "")
            if self.http_status is not None:
                _read_http_request(tls)
                tls.sendall(_http_response(self.http_status))
            plain: socket.socket = tls
            with contextlib.suppress(OSError, ValueError):
                tls.settimeout(1.0)
                plain = tls.unwrap()  # sends close_notify
            _drain_and_close(plain)


@contextlib.contextmanager
def python_tls_server(
    versions: set[Protocol],
    *,
    cert: CertPaths | None = None,
    ciphers: str | None = None,
    require_client_cert: bool = False,
    client_ca: Path | None = None,
    http_status: int | None = None,
    host: str = "127.0.0.1",
) -> Iterator[Endpoint]:
    """Run a threaded Python ssl server offering exactly versions; yields its endpoint."""
    if require_client_cert and client_ca is None:
        raise ValueError("require_client_cert needs client_ca (the CA that issued the client certificate)")
    with _default_cert(cert) as paths:
        ca = client_ca if require_client_cert else None
        with TLSServer(versions, paths, ciphers=ciphers, client_ca=ca, http_status=http_status, host=host) as server:
            yield server.endpoint


# --- hostile peers ----------------------------------------------------------------------------------------------


class _Tarpit(_ThreadedServer):
    """Accepts and never sends; holds the connection until the peer leaves or the lab stops."""

    def handle(self, conn: socket.socket) -> None:
        """Read and discard until EOF or stop."""
        conn.settimeout(None)
        while not self._stopping.is_set() and conn.recv(65536):
            pass


class _Garbage(_ThreadedServer):
    """Answers with random bytes that are not a TLS record, then closes."""

    def handle(self, conn: socket.socket) -> None:
        """Wait for the first bytes, answer garbage, close."""
        with contextlib.suppress(TimeoutError):
            conn.recv(65536)
        # The first byte is forced outside TLS content types 20-24 so no client can mistake it for a record.
        noise = bytes([0x47]) + random.randbytes(511)
        conn.sendall(noise)
        _drain_and_close(conn)


class _PlainHTTP(_ThreadedServer):
    """Speaks plain HTTP: answers 400 Bad Request to anything, like a web server hit with a ClientHello."""

    def handle(self, conn: socket.socket) -> None:
        """Read what comes, answer 400, close."""
        with contextlib.suppress(TimeoutError):
            conn.settimeout(1.0)
            conn.recv(65536)
        conn.sendall(_http_response(400, b"Bad Request\n"))
        _drain_and_close(conn)


class _Closing(_ThreadedServer):
    """Accepts, then closes at once with a FIN and no bytes."""

    def handle(self, conn: socket.socket) -> None:
        """Close without sending anything."""
        _drain_and_close(conn)


class _Reset(_ThreadedServer):
    """Accepts, then resets the connection."""

    def handle(self, conn: socket.socket) -> None:
        """Close with SO_LINGER 0, which sends a RST."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


@contextlib.contextmanager
def _run(server: _ThreadedServer) -> Iterator[Endpoint]:
    """Run server for the duration of the block and yield its endpoint."""
    with server:
        yield server.endpoint


def tarpit(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[Endpoint]:
    """Run a peer that accepts TCP and never sends a byte."""
    return _run(_Tarpit(host))


def garbage_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[Endpoint]:
    """Run a peer that answers random non-TLS bytes, then closes."""
    return _run(_Garbage(host))


def plain_http_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[Endpoint]:
    """Run a plain-HTTP peer answering 400 Bad Request to anything."""
    return _run(_PlainHTTP(host))


def closing_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[Endpoint]:
    """Run a peer that accepts, then closes cleanly without a byte."""
    return _run(_Closing(host))


def rst_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[Endpoint]:
    """Run a peer that accepts, then resets the connection."""
    return _run(_Reset(host))


@contextlib.contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[Endpoint]:
    """Yield a port with nothing listening (connections are refused)."""
    yield Endpoint(host, free_ports(1, host)[0])


def nginx_available() -> bool:
    """Tell whether an nginx binary is on PATH."""
    return shutil.which("nginx") is not None


def missing(tool: str, reason: str) -> NoReturn:
    """A tool the test needs is absent: skip locally, fail in CI (env CI set), where tests/run.sh installs it."""
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is missing in CI: {reason}")
    pytest.skip(reason)


def require_nginx() -> None:
    """Skip the calling test without nginx; in CI (env CI set) a missing nginx fails instead."""
    if not nginx_available():
        missing("nginx", NGINX_MISSING_REASON)


# --- one stack for everything -----------------------------------------------------------------------------------


class LabStack:
    """Starts lab servers on demand and stops them all on close (backs the `lab` pytest fixture)."""

    def __init__(self, certs: LabCerts | None = None) -> None:
        """Create an empty stack; servers use certs.server when certs are given."""
        self.certs = certs
        self._stack = contextlib.ExitStack()

    def tls_server(
        self,
        versions: set[Protocol],
        *,
        cert: CertPaths | None = None,
        ciphers: str | None = None,
        require_client_cert: bool = False,
        http_status: int | None = None,
        host: str = "127.0.0.1",
    ) -> Endpoint:
        """Start a python_tls_server until close; client certs are checked against certs.ca."""
        if cert is None and self.certs is not None:
            cert = self.certs.server
        client_ca = self.certs.ca.cert if self.certs is not None else None
        return self._stack.enter_context(
            python_tls_server(
                versions,
                cert=cert,
                ciphers=ciphers,
                require_client_cert=require_client_cert,
                client_ca=client_ca,
                http_status=http_status,
                host=host,
            )
        )

    def peer(self, factory: Callable[[], contextlib.AbstractContextManager[Endpoint]]) -> Endpoint:
        """Start a hostile peer such as tarpit or rst_server until close."""
        return self._stack.enter_context(factory())

    def nginx(self, servers: Sequence[NginxServer], *, workers: int = 1, cert: CertPaths | None = None) -> NginxLab:
        """Start an NginxLab until close."""
        if cert is None and self.certs is not None:
            cert = self.certs.server
        return self._stack.enter_context(NginxLab(servers, cert=cert, workers=workers))

    def close(self) -> None:
        """Stop everything started, newest first."""
        self._stack.close()


class NginxLabFactory(TypingProtocol):
    """Starts an NginxLab that is stopped when the test ends (the `nginx_lab` fixture)."""

    def __call__(self, servers: Sequence[NginxServer], *, workers: int = 1, cert: CertPaths | None = None) -> NginxLab:
        """Start nginx with servers."""


# --- independent clients ----------------------------------------------------------------------------------------


def client_context(
    protocol: Protocol, *, ciphers: str | None = None, client_cert: CertPaths | None = None
) -> ssl.SSLContext:
    """Return a non-verifying Python ssl client context offering exactly protocol."""
    if protocol not in _TLS_VERSIONS:
        raise ValueError(f"Python's OpenSSL 3 cannot offer {protocol}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = _TLS_VERSIONS[protocol]
    ctx.set_ciphers(ciphers or LEGACY_CIPHERS)
    if client_cert is not None:
        ctx.load_cert_chain(client_cert.cert, client_cert.key)
    return ctx


def handshake(
    endpoint: Endpoint,
    protocol: Protocol,
    *,
    ciphers: str | None = None,
    client_cert: CertPaths | None = None,
    timeout: float = 5.0,
) -> tuple[str, str]:
    """Handshake with exactly protocol; return (version, cipher) or raise ssl.SSLError/OSError."""
    ctx = client_context(protocol, ciphers=ciphers, client_cert=client_cert)
    with socket.create_connection(endpoint, timeout=timeout) as sock, ctx.wrap_socket(sock) as tls:
        cipher = tls.cipher()
        return tls.version() or "", cipher[0] if cipher else ""


def https_status(
    endpoint: Endpoint,
    protocol: Protocol,
    *,
    path: str = "/",
    client_cert: CertPaths | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """GET path over exactly protocol; return (status, body)."""
    ctx = client_context(protocol, client_cert=client_cert)
    with socket.create_connection(endpoint, timeout=timeout) as sock, ctx.wrap_socket(sock) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = read_all(tls)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def openssl_s_client(endpoint: Endpoint, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run `openssl s_client -brief` against endpoint with extra args such as -tls1; exit code 0 means connected."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    command = ["openssl", "s_client", "-connect", f"{host}:{endpoint.port}", "-brief", *args]
    return subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
