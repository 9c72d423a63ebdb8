"""nginx and process helpers on loopback for the benchmarks and the test lab: free ports, polling, stopping by pid.

Nothing here imports the tests (tests/lab builds on this module, never the other way round).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from bench.certs import CertPaths, make_cert
from scanner.protocols import Protocol

__all__ = [
    "LEGACY_CIPHERS",
    "Endpoint",
    "Managed",
    "NginxError",
    "NginxLab",
    "NginxServer",
    "address_family",
    "alive",
    "check_loopback",
    "child_pids",
    "free_ports",
    "nginx_protocols",
    "read_all",
    "stop_process",
    "wait_for",
]

# OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures, small keys) unless the security level is lowered.
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"

T = TypeVar("T")

_NGINX_NAMES: dict[Protocol, str] = {
    Protocol.SSLv2: "SSLv2",
    Protocol.SSLv3: "SSLv3",
    Protocol.TLSv1_0: "TLSv1",
    Protocol.TLSv1_1: "TLSv1.1",
    Protocol.TLSv1_2: "TLSv1.2",
    Protocol.TLSv1_3: "TLSv1.3",
}


class Endpoint(NamedTuple):
    """A loopback (host, port) a lab server listens on."""

    host: str
    port: int


def check_loopback(host: str) -> str:
    """Refuse any host that is not a loopback IP literal, so the lab never touches the network."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"lab servers bind to loopback only, not {host!r}")
    return host


def address_family(host: str) -> socket.AddressFamily:
    """Return the address family of an IP literal."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def wait_for(probe: Callable[[], T | None], timeout: float = 10.0, *, interval: float = 0.02, what: str = "") -> T:
    """Call probe until it returns something truthy and return that; TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what or probe!r}")
        time.sleep(interval)


def _raise_nofile_limit(wanted: int) -> None:
    """Raise this process's soft open-files limit towards wanted (children such as nginx inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Return n distinct ports that were free on host a moment ago (bound to port 0, then closed)."""
    check_loopback(host)
    _raise_nofile_limit(n + 1024)
    ports: list[int] = []
    seen: set[int] = set()
    while len(ports) < n:
        batch: list[socket.socket] = []
        try:
            for _ in range(min(512, n - len(ports))):
                sock = socket.socket(address_family(host), socket.SOCK_STREAM)
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


# --- nginx ------------------------------------------------------------------------------------------------------


class NginxError(RuntimeError):
    """nginx refused a config or did not come up."""


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


def stop_process(process: subprocess.Popen[Any], grace: float) -> None:
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
            "# Written by bench/servers.py; nginx runs in the foreground under its caller's control.",
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
        check_loopback(server.listen)
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
                body = read_all(sock).partition(b"\r\n\r\n")[2]
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


def read_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read until EOF or limit."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class TcpListeners:
    """Plain TCP listeners that accept and close at once, all served by one selector thread; added and removed
    while it runs (a range's responders, appearing and going)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.listen(256)
        sock.setblocking(False)
        self._sockets[(host, port)] = sock
        self._selector.register(sock, selectors.EVENT_READ)

    def remove(self, host: str, port: int) -> None:
        sock = self._sockets.pop((host, port))
        self._selector.unregister(sock)
        sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sockets):
            self.remove(*key)
        self._selector.close()

    @classmethod
    def on_one_port(cls, hosts: Sequence[str]) -> tuple[TcpListeners, int]:
        """Listeners on these hosts, all on one port that was free on each (tried a few times)."""
        for _ in range(20):
            port = random.randint(20000, 60000)
            listeners = cls()
            try:
                for host in hosts:
                    listeners.add(host, port)
            except OSError:
                listeners.close()
                continue
            return listeners, port
        raise RuntimeError("no port free on every host")

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                with contextlib.suppress(OSError):
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    conn.close()
