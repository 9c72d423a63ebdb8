"""Test lab: real TLS servers, hostile peers and nginx on loopback, always stopped when done."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, NoReturn, Self
from typing import Protocol as TypingProtocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scanner.protocols import Protocol

__all__ = [
    "CertAuthority",
    "CertPaths",
    "Endpoint",
    "LabCerts",
    "LabStack",
    "Managed",
    "NginxError",
    "NginxLab",
    "NginxLabFactory",
    "NginxServer",
    "TLSServer",
    "client_context",
    "closed_port",
    "closing_server",
    "free_ports",
    "garbage_server",
    "handshake",
    "https_status",
    "make_cert",
    "make_lab_certs",
    "missing",
    "nginx_available",
    "nginx_protocols",
    "openssl_s_client",
    "plain_http_server",
    "python_tls_server",
    "require_nginx",
    "rst_server",
    "tarpit",
    "wait_for",
]

NGINX_MISSING_REASON = "nginx not installed (the README test command installs it)"
# OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures, small keys) unless the security level is lowered.
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"

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
_NGINX_NAMES: dict[Protocol, str] = {
    Protocol.SSLv2: "SSLv2",
    Protocol.SSLv3: "SSLv3",
    Protocol.TLSv1_0: "TLSv1",
    Protocol.TLSv1_1: "TLSv1.1",
    Protocol.TLSv1_2: "TLSv1.2",
    Protocol.TLSv1_3: "TLSv1.3",
}
_IO_TIMEOUT = 5.0


class Endpoint(NamedTuple):
    """A loopback (host, port) a lab server listens on."""

    host: str
    port: int


def _check_loopback(host: str) -> str:
    """Refuse any host that is not a loopback IP literal, so the lab never touches the network."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"lab servers bind to loopback only, not {host!r}")
    return host


def _family(host: str) -> socket.AddressFamily:
    """Return the address family of an IP literal."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, *, interval: float = 0.02, what: str = "") -> None:
    """Poll predicate until it is true, or raise TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def _raise_nofile_limit(wanted: int) -> None:
    """Raise this process's soft open-files limit towards wanted (children such as nginx inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Return n distinct ports that were free on host a moment ago (bound to port 0, then closed)."""
    _check_loopback(host)
    _raise_nofile_limit(n + 1024)
    ports: list[int] = []
    seen: set[int] = set()
    while len(ports) < n:
        batch: list[socket.socket] = []
        try:
            for _ in range(min(512, n - len(ports))):
                sock = socket.socket(_family(host), socket.SOCK_STREAM)
                batch.append(sock)
                sock.bind((host, 0))
            for sock in batch:
                port = sock.getsockname()[1]
                if port not in seen:
                    seen.add(port)
                    ports.append(port)
        finally:
            for sock in batch:
                sock.close()
    return ports


# --- certificates -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CertPaths:
    """PEM files of a certificate and its private key."""

    cert: Path
    key: Path


def _new_key() -> rsa.RSAPrivateKey:
    """Return a fresh RSA 2048 key (RSA so static-RSA suites such as AES256-SHA can be served)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    """Return a subject/issuer name with just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pair(directory: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> CertPaths:
    """Write cert and key as PEM files named after stem."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths.key.chmod(0o600)
    return paths


def _validity(expired: bool) -> tuple[datetime.datetime, datetime.datetime]:
    """Return (not_before, not_after): a year around now, or a window that ended yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        return now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=365)


def _san(common_name: str) -> x509.SubjectAlternativeName:
    """Return a SAN for common_name; localhost also covers the loopback addresses."""
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(common_name)))
    except ValueError:
        names.append(x509.DNSName(common_name))
    if common_name == "localhost":
        names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    return x509.SubjectAlternativeName(names)


class CertAuthority:
    """A throwaway CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, common_name: str = "tls-scanner test CA") -> None:
        """Create the CA key and self-signed CA certificate in directory."""
        self.directory = Path(directory)
        self.common_name = common_name
        self.private_key = _new_key()
        not_before, not_after = _validity(expired=False)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.private_key, hashes.SHA256())
        )
        self.paths = _write_pair(self.directory, "ca", self.certificate, self.private_key)

    @property
    def cert(self) -> Path:
        """Path of the CA certificate (what a server or client trusts)."""
        return self.paths.cert

    def issue(
        self, common_name: str, *, client: bool = False, expired: bool = False, stem: str | None = None
    ) -> CertPaths:
        """Issue a server (or, with client=True, client) certificate for common_name."""
        key = _new_key()
        not_before, not_after = _validity(expired)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if not client:
            builder = builder.add_extension(_san(common_name), critical=False)
        cert = builder.sign(self.private_key, hashes.SHA256())
        return _write_pair(self.directory, stem or _stem(common_name, expired, "client" if client else "ca"), cert, key)


def _stem(common_name: str, expired: bool, kind: str) -> str:
    """Return a file stem that keeps differently made certificates apart."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in common_name)
    return f"{safe}-{kind}" + ("-expired" if expired else "")


def make_cert(
    directory: Path, common_name: str = "localhost", *, expired: bool = False, ca: CertAuthority | None = None
) -> CertPaths:
    """Write a server certificate for common_name: self-signed, or issued by ca when given."""
    if ca is not None:
        return ca.issue(common_name, expired=expired)
    key = _new_key()
    not_before, not_after = _validity(expired)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(common_name), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(Path(directory), _stem(common_name, expired, "self"), cert, key)


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


class Managed:
    """`with X(...) as x:` starts x and always stops it; subclasses define start() and stop()."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _ThreadedServer(Managed):
    """A loopback TCP server: one accept thread, one thread per connection, stop() never blocks for long."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Bind a listening socket on host, port 0."""
        self._host = _check_loopback(host)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
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


# --- nginx ------------------------------------------------------------------------------------------------------


class NginxError(RuntimeError):
    """nginx refused a config or did not come up."""


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


def nginx_protocols(protocols: Iterable[Protocol | str]) -> list[str]:
    """Translate protocol names to nginx's ssl_protocols spelling (TLSv1.0 is TLSv1)."""
    names = {protocol.value: name for protocol, name in _NGINX_NAMES.items()}
    return [names.get(str(p), str(p)) for p in protocols]


@dataclasses.dataclass(frozen=True)
class NginxServer:
    """One nginx server block listening with TLS on its own port."""

    name: str
    port: int
    ssl_protocols: Sequence[str]
    ciphers: str = LEGACY_CIPHERS
    verify_client: bool = False
    client_ca: Path | None = None
    legacy_403: bool = False
    legacy_403_body: str | None = None  # with legacy_403: the 403's body (nginx's own page when None)
    listen: str = "127.0.0.1"
    cert: CertPaths | None = None
    directives: Sequence[str] = ()  # more ssl_* lines for the block, e.g. "ssl_ecdh_curve X25519:prime256v1"

    @property
    def endpoint(self) -> Endpoint:
        """Where this server listens."""
        return Endpoint(self.listen, self.port)


def _listen_address(host: str, port: int) -> str:
    """Format an nginx listen address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def alive(pid: int) -> bool:
    """Tell whether pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def child_pids(pid: int) -> set[int]:
    """Return the live child pids of pid (nginx workers of a master, the daemon's worker processes)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


class NginxLab(Managed):
    """An nginx master with many TLS server blocks, configured in a private prefix directory."""

    def __init__(
        self,
        servers: Sequence[NginxServer],
        *,
        directory: Path | None = None,
        cert: CertPaths | None = None,
        workers: int = 1,
        binary: str = "nginx",
    ) -> None:
        """Prepare (not start) nginx; without directory a temporary one is made and removed on stop()."""
        self._owns_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="tls-lab-nginx-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf = self.directory / "nginx.conf"
        self.pid_file = self.directory / "nginx.pid"
        self.error_log = self.directory / "error.log"
        self.stderr_log = self.directory / "stderr.log"
        self.cert = cert if cert is not None else make_cert(self.directory / "certs")
        self.workers = workers
        self.binary = binary
        self.servers: list[NginxServer] = list(servers)
        taken = {server.port for server in self.servers}
        control = free_ports(1)[0]
        while control in taken:  # free_ports() can hand out a port a server block was given earlier
            control = free_ports(1)[0]
        self.control = Endpoint("127.0.0.1", control)
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def master_pid(self) -> int:
        """Pid of the nginx master."""
        if self.process is None:
            raise NginxError("nginx is not running")
        return self.process.pid

    def endpoint(self, name: str) -> Endpoint:
        """Return the endpoint of the server called name."""
        for server in self.servers:
            if server.name == name:
                return server.endpoint
        raise KeyError(name)

    def _args(self, *extra: str) -> list[str]:
        """Return the nginx command line for this lab's prefix, config and error log."""
        return [self.binary, "-p", f"{self.directory}/", "-c", str(self.conf), "-e", str(self.error_log), *extra]

    def render(self, servers: Sequence[NginxServer]) -> str:
        """Return the nginx.conf text for servers."""
        d = self.directory
        connections = max(4096, 2 * len(servers) + 1024)
        lines = [
            "# Written by tests/lab/servers.py; nginx runs in the foreground under the test's control.",
            "user root;" if os.geteuid() == 0 else "",
            "daemon off;",
            "master_process on;",
            f"worker_processes {self.workers};",
            f"worker_rlimit_nofile {2 * connections + 1024};",
            "worker_shutdown_timeout 2s;",
            f"pid {d}/nginx.pid;",
            f"error_log {self.error_log} notice;",
            f"events {{ worker_connections {connections}; }}",
            "http {",
            "    access_log off;",
            "    default_type text/plain;",
            "    keepalive_timeout 5s;",
            f"    client_body_temp_path {d}/temp/body;",
            f"    proxy_temp_path {d}/temp/proxy;",
            f"    fastcgi_temp_path {d}/temp/fastcgi;",
            f"    uwsgi_temp_path {d}/temp/uwsgi;",
            f"    scgi_temp_path {d}/temp/scgi;",
            "    server_names_hash_bucket_size 128;",
            "    server {",
            f"        listen {_listen_address(*self.control)};",
            f'        location = /generation {{ return 200 "{self.generation}\\n"; }}',
            "    }",
        ]
        for server in servers:
            lines += self._render_server(server)
        lines.append("}")
        return "\n".join(line for line in lines if line) + "\n"

    def _render_server(self, server: NginxServer) -> list[str]:
        """Return the lines of one server block."""
        _check_loopback(server.listen)
        cert = server.cert or self.cert
        protocols = " ".join(nginx_protocols(server.ssl_protocols))
        lines = [
            "    server {",
            f"        listen {_listen_address(server.listen, server.port)} ssl;",
            f"        server_name {server.name};",
            f"        ssl_certificate {cert.cert};",
            f"        ssl_certificate_key {cert.key};",
            f"        ssl_protocols {protocols};",
            f'        ssl_ciphers "{server.ciphers}";',
            *(f"        {directive};" for directive in server.directives),
        ]
        if server.verify_client:
            if server.client_ca is None:
                raise ValueError(f"server {server.name}: verify_client needs client_ca")
            lines += ["        ssl_verify_client on;", f"        ssl_client_certificate {server.client_ca};"]
        if server.legacy_403:
            answer = "403" if server.legacy_403_body is None else f'403 "{server.legacy_403_body}\\n"'
            lines.append(f'        if ($ssl_protocol ~ "^TLSv1(\\.1)?$") {{ return {answer}; }}')
        lines += ['        location / { return 200 "ok\\n"; }', "    }"]
        return lines

    def _write(self, servers: Sequence[NginxServer]) -> None:
        """Write the config for servers under the next generation number and check it with nginx -t."""
        self.generation += 1
        (self.directory / "temp").mkdir(exist_ok=True)
        self.conf.write_text(self.render(servers))
        test = subprocess.run(self._args("-t", "-q"), capture_output=True, text=True, timeout=120, check=False)
        if test.returncode != 0:
            self.generation -= 1
            raise NginxError(f"nginx -t rejected {self.conf}:\n{test.stderr}{test.stdout}")

    def _generation_served(self) -> int | None:
        """Ask the control server which config generation answers new connections."""
        try:
            with socket.create_connection(self.control, timeout=1.0) as sock:
                sock.sendall(b"GET /generation HTTP/1.0\r\nHost: lab\r\n\r\n")
                body = _read_all(sock).partition(b"\r\n\r\n")[2]
            return int(body.strip())
        except (OSError, ValueError):
            return None

    def _fail(self, message: str) -> NginxError:
        """Return an NginxError carrying the tail of nginx's logs."""
        logs = ""
        for log in (self.stderr_log, self.error_log):
            if log.exists():
                logs += f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]) + "\n"
        return NginxError(f"{message}\n{logs}")

    def start(self, timeout: float = 60.0) -> Self:
        """Write the config, start the master and wait until a worker serves it."""
        if self.process is not None:
            raise NginxError("nginx already started")
        self._write(self.servers)
        _raise_nofile_limit(2 * len(self.servers) + 4096)
        with self.stderr_log.open("wb") as stderr:
            self.process = subprocess.Popen(
                self._args(), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True
            )
        process = self.process
        try:
            wait_for(
                lambda: process.poll() is not None or self._generation_served() == self.generation,
                timeout,
                what="nginx to start",
            )
        except TimeoutError:
            self.stop()
            raise self._fail(f"nginx did not come up within {timeout}s") from None
        if process.poll() is not None:
            self.process = None
            raise self._fail(f"nginx exited with status {process.returncode}")
        return self

    def reload(self, servers: Sequence[NginxServer] | None = None, timeout: float = 60.0) -> None:
        """Rewrite the config (for servers, or the current ones) and wait until only new workers accept."""
        pid = self.master_pid
        new = list(servers) if servers is not None else self.servers
        old_workers = child_pids(pid)
        self._write(new)
        # Same as `nginx -s reload`, without parsing the config a third time (nginx -t and the master already do).
        os.kill(pid, signal.SIGHUP)

        # The master starts new workers before telling the old ones to quit, so until every old worker is gone a new
        # connection may still land on the old config.
        def live() -> bool:
            return not any(map(alive, old_workers)) and self._generation_served() == self.generation

        try:
            wait_for(live, timeout, what="nginx reload")
        except TimeoutError:
            raise self._fail(f"nginx reload to generation {self.generation} did not take effect") from None
        self.servers = new

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the master (SIGTERM, then SIGKILL for the whole group) and remove a temporary directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            workers = child_pids(process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
            # Workers exit on their own once the master is gone; wait so their ports are free again.
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not any(map(alive, workers)), 5, what="nginx workers to exit")
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _read_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read until EOF or limit."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


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
            data = _read_all(tls)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def openssl_s_client(endpoint: Endpoint, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run `openssl s_client -brief` against endpoint with extra args such as -tls1; exit code 0 means connected."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    command = ["openssl", "s_client", "-connect", f"{host}:{endpoint.port}", "-brief", *args]
    return subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
