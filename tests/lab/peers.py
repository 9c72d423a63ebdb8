"""Helper servers for the network-wide tests, loopback only: an HTTP CONNECT proxy, a TLS server that records how
many connections it holds at once and when each started, and an SMTP server with or without STARTTLS."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, Self

from bench.certs import CertPaths
from bench.servers import LEGACY_CIPHERS, Endpoint, Managed, free_ports
from scanner.protocols import Protocol
from tests.lab.servers import TLSServer

_IO_TIMEOUT = 5.0


class _Acceptor(Managed):
    """A TCP listener on 127.0.0.1 whose acceptor thread hands each connection to `_accepted`."""

    def __init__(self, name: str, backlog: int) -> None:
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(backlog)
        self._listener.settimeout(0.05)
        self.endpoint = Endpoint("127.0.0.1", self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, name=name, daemon=True)

    def start(self) -> Self:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        self._close_connections()

    def _close_connections(self) -> None:
        """End what the accepted connections started (called by stop, after the listener is closed)."""

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted(conn)


class ConnectProxy(_Acceptor):
    """A threaded HTTP CONNECT proxy on 127.0.0.1 that only ever tunnels to 127.0.0.1.

    `requests` lists the authority of every CONNECT (as sent, e.g. "127.0.0.1:8443" or "localhost:8443");
    anything whose host is not the literal 127.0.0.1 (or everything, with refuse_all) gets 403.
    """

    def __init__(self, *, refuse_all: bool = False) -> None:
        super().__init__("connect-proxy", backlog=128)
        self.refuse_all = refuse_all
        self.requests: list[str] = []
        self.tunnels = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.url = f"http://127.0.0.1:{self.endpoint.port}"

    def _close_connections(self) -> None:
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accepted(self, conn: socket.socket) -> None:
        conn.settimeout(_IO_TIMEOUT)
        self._track(conn)
        self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            authority = rest.split(" ", 1)[0]
            with self._lock:
                self.requests.append(authority)
            host, _, port = authority.rpartition(":")
            if self.refuse_all or method != "CONNECT" or host != "127.0.0.1" or not port.isdigit():
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", int(port)), timeout=_IO_TIMEOUT)
            except OSError:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self._track(upstream)
            with self._lock:
                self.tunnels += 1
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            pump = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
            pump.start()
            _pump(conn, upstream)
            pump.join(timeout=_IO_TIMEOUT)
        except OSError:
            pass
        finally:
            for sock in (conn, upstream):
                if sock is not None:
                    sock.close()
                    with self._lock:
                        self._sockets.discard(sock)
            with self._lock:
                self._threads.discard(threading.current_thread())


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy source to sink until EOF or an error, then pass the EOF on."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class CountingTLSServer(TLSServer):
    """The lab's TLS server, holding each connection `hold` seconds before its handshake.

    The holding part is counted: `max_open` is the most connections held at once and `starts` the monotonic time
    each was picked up. The count ends before the handshake starts, i.e. while the client still waits for its
    ServerHello, so it can only under-count the client's open connections, never over-count them.
    """

    def __init__(self, versions: set[Protocol], cert: CertPaths, *, hold: float = 0.0, host: str = "127.0.0.1") -> None:
        super().__init__(versions, cert, host=host)
        self.hold = hold
        self.starts: list[float] = []
        self.open_now = 0
        self.max_open = 0
        self._count_lock = threading.Lock()

    def handle(self, conn: socket.socket) -> None:
        with self._count_lock:
            self.starts.append(time.monotonic())
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        try:
            if self.hold:
                time.sleep(self.hold)
        finally:
            with self._count_lock:
                self.open_now -= 1
        super().handle(conn)


def smtp_tls_context(cert: CertPaths, low: ssl.TLSVersion, high: ssl.TLSVersion) -> ssl.SSLContext:
    """A server context for STARTTLS offering low..high (SECLEVEL=0, so TLS 1.0/1.1 work under OpenSSL 3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = low, high
    context.set_ciphers(LEGACY_CIPHERS)
    return context


class _Sink:
    """An aiosmtpd handler that accepts and drops every message."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@contextlib.contextmanager
def smtp_server(tls_context: ssl.SSLContext | None) -> Iterator[Endpoint]:
    """A real aiosmtpd SMTP server on 127.0.0.1 advertising STARTTLS when tls_context is given."""
    from aiosmtpd.controller import Controller

    # A failed STARTTLS handshake is the point of these tests; aiosmtpd would log each with a traceback.
    mail_log = logging.getLogger("mail.log")
    level = mail_log.level
    mail_log.setLevel(logging.CRITICAL)
    controller = None
    try:
        for attempt in range(3):
            port = free_ports(1)[0]
            controller = Controller(
                _Sink(),
                hostname="127.0.0.1",
                port=port,
                server_hostname="smtp.lab.test",  # not socket.getfqdn(): no lookups
                tls_context=tls_context,
                require_starttls=False,
            )
            try:
                controller.start()
                break
            except Exception:
                controller = None
                if attempt == 2:
                    raise
        assert controller is not None
        try:
            yield Endpoint("127.0.0.1", port)
        finally:
            controller.stop()
    finally:
        mail_log.setLevel(level)


class FlakyForwarder(_Acceptor):
    """A TCP forwarder on 127.0.0.1 to `target` that resets a fraction of connections right after accept (a flaky
    load balancer); `resets` counts them. Seeded, so a run is repeatable."""

    def __init__(self, target: Endpoint, reset_fraction: float, seed: int = 1) -> None:
        super().__init__("flaky-forwarder", backlog=256)
        self.target = target
        self.reset_fraction = reset_fraction
        self.resets = 0
        self.forwarded = 0
        self._random = random.Random(seed)
        self._threads: list[threading.Thread] = []

    def _close_connections(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)

    def _accepted(self, conn: socket.socket) -> None:
        if self._random.random() < self.reset_fraction:
            self.resets += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST at once
            return
        self.forwarded += 1
        thread = threading.Thread(target=self._forward, args=(conn,), daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.target.host, self.target.port), timeout=_IO_TIMEOUT)
        except OSError:
            client.close()
            return
        pumps = [
            threading.Thread(target=_pump, args=(client, upstream), daemon=True),
            threading.Thread(target=_pump, args=(upstream, client), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        client.close()
        upstream.close()
