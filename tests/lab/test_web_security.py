"""The endpoint in production: --web.config.file (TLS, basic auth, headers), slow and oversized clients."""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import bcrypt
import pytest

from bench.certs import CertPaths
from bench.servers import free_ports, wait_for
from scanner.protocols import Protocol
from tests.lab.daemon import (
    REPO,
    Daemon,
    Daemons,
    lab_config,
    prometheus_query,
    prometheus_server,
    run_scanner,
    write_config,
)
from tests.lab.servers import LabCerts, LabStack

PASSWORD = "s3cret"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
ENDPOINTS = ["/", "/metrics", "/api/v1/targets", "/probe?target=web", "/-/healthy", "/-/ready", "/-/reload"]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write_web_config(path: Path, cert: CertPaths | None, users: bool = True) -> Path:
    lines = []
    if cert is not None:
        lines += ["tls_server_config:", f"  cert_file: {cert.cert}", f"  key_file: {cert.key}"]
    if users:
        lines += ["basic_auth_users:", f"  prometheus: '{HASH}'"]
    lines += ["http_server_config:", "  headers:", "    X-Frame-Options: deny"]
    path.write_text("\n".join(lines) + "\n")
    return path


def client_tls(ca: Path, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.fixture
def secured(lab: LabStack, tmp_certs: LabCerts, start_daemon: Daemons, tmp_path: Path) -> Daemon:
    """A daemon on HTTPS with basic auth, scanning one lab server named `web`."""
    server = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    config = write_config(tmp_path / "c.yaml", lab_config([{"name": "web", "host": "127.0.0.1", "port": server.port}]))
    web_config = write_web_config(tmp_path / "web.yml", tmp_certs.server)
    tls, authorization = client_tls(tmp_certs.ca.paths.cert), basic("prometheus", PASSWORD)
    return start_daemon(config, "--web.config.file", str(web_config), tls=tls, authorization=authorization)


def test_every_endpoint_needs_the_password(secured: Daemon) -> None:
    for path in ENDPOINTS:
        method = "POST" if path == "/-/reload" else "GET"
        for authorization in (None, basic("prometheus", "wrong"), basic("nobody", PASSWORD), "Basic !!!"):
            secured.authorization = authorization
            status, body, headers = secured.request(method, path)
            assert status == 401, (path, authorization, status)
            assert headers["WWW-Authenticate"] == 'Basic realm="tls-scanner"'
            assert headers["X-Frame-Options"] == "deny"
            assert "tls_scanner" not in body
        secured.authorization = basic("prometheus", PASSWORD)
        status, _, headers = secured.request(method, path, timeout=15)
        assert status == 200, (path, status)
        assert headers["X-Frame-Options"] == "deny"


def test_old_tls_and_plain_http_get_nothing(secured: Daemon, tmp_certs: LabCerts) -> None:
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as sock:
            client_tls(tmp_certs.ca.paths.cert, ssl.TLSVersion.TLSv1_1).wrap_socket(sock, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"tls_scanner" not in answer and not answer.startswith(b"HTTP/1.1 200")


def test_certificate_rotation_on_sighup(secured: Daemon, tmp_certs: LabCerts, tmp_path: Path) -> None:
    def served_serial() -> int:
        with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as sock:
            assert secured.tls is not None
            with secured.tls.wrap_socket(sock, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        from cryptography import x509

        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    before = served_serial()
    renewed = tmp_certs.ca.issue("localhost", stem="renewed")  # same name, new serial: what a renewal looks like
    web_config = tmp_path / "web.yml"
    write_web_config(web_config, renewed)
    secured.send(signal.SIGHUP)
    after = wait_for(lambda: (s := served_serial()) != before and s, 10, what="the renewed certificate to be served")
    assert after != before
    assert secured.get("/-/healthy")[0] == 200
    # A broken web config on reload keeps the one in force, and /-/reload says why.
    web_config.write_text("basic_auth_users:\n  prometheus: not-a-hash\n")
    status, body, _ = secured.request("POST", "/-/reload")
    assert status == 500 and f"{web_config}:2:" in body
    assert served_serial() == after and secured.get("/metrics")[0] == 200
    assert "web config reload failed, keeping the old web config" in secured.log_text()


def test_bad_web_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", lab_config([{"host": "127.0.0.1", "port": 9}]))
    web_config = tmp_path / "web.yml"
    web_config.write_text("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n")
    for args in (["--check-config"], ["--web.listen-address", f"127.0.0.1:{free_ports(1)[0]}"]):
        proc = run_scanner("--config", config, "--web.config.file", web_config, *args, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"tls-scanner: {web_config}:2: "), proc.stderr


def test_real_prometheus_scrapes_over_https_with_basic_auth(
    secured: Daemon, tmp_certs: LabCerts, tmp_path: Path
) -> None:
    scrape = {
        "job_name": "tls-scanner",
        "scheme": "https",
        "basic_auth": {"username": "prometheus", "password": PASSWORD},
        "tls_config": {"ca_file": str(tmp_certs.ca.paths.cert), "server_name": "localhost"},
        "static_configs": [{"targets": [f"127.0.0.1:{secured.port}"]}],
    }
    config = json.dumps({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [scrape]})
    with prometheus_server(tmp_path, config) as (process, port):

        def up_and_scanned() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            answer = prometheus_query(port, 'up == 1 and on() count(tls_scanner_protocol_accepted{target="web"}) > 0')
            return answer is not None and answer.get("status") == "success" and bool(answer["data"]["result"])

        wait_for(up_and_scanned, 30, what="Prometheus to scrape the daemon over HTTPS with basic auth (up == 1)")


@pytest.fixture
def plain(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> Daemon:
    server = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    config = write_config(tmp_path / "c.yaml", lab_config([{"name": "web", "host": "127.0.0.1", "port": server.port}]))
    return start_daemon(config, debug=True)


def test_slow_clients_are_dropped(plain: Daemon) -> None:
    slow = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", plain.port), timeout=15)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        slow.append(sock)
    try:
        assert plain.get("/-/healthy")[0] == 200
        closed = 0
        for sock in slow:
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == len(slow)  # each was closed by the daemon, within the socket's 15 s at most
    finally:
        for sock in slow:
            sock.close()


def test_oversized_header_is_refused_without_a_traceback(plain: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.split(b" ")[1].startswith(b"4"), answer[:80]
    assert plain.get("/-/healthy")[0] == 200
    log = plain.log_text()
    assert "Traceback" not in log and "ERROR" not in log


def test_healthy_answers_while_scrapes_pile_up(plain: Daemon) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def scrape() -> None:
        try:
            status = plain.get("/metrics")[0]
        except OSError:
            status = 0
        with lock:
            results.append(status)

    threads = [threading.Thread(target=scrape) for _ in range(300)]
    for thread in threads:
        thread.start()
    healthy = plain.get("/-/healthy")[0]
    for thread in threads:
        thread.join(30)
    assert healthy == 200
    assert len(results) == 300 and set(results) <= {200, 503}
    assert 200 in results


def test_state_file_is_private_under_umask_000(lab: LabStack, tmp_path: Path) -> None:
    server = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    config = write_config(tmp_path / "c.yaml", lab_config([{"name": "web", "host": "127.0.0.1", "port": server.port}]))
    state = tmp_path / "state" / "tls.db"
    state.parent.mkdir()
    (port,) = free_ports(1)
    args = [
        sys.executable,
        "-c",
        "import os, runpy, sys; os.umask(0); sys.argv = sys.argv[1:]; runpy.run_module('scanner', run_name='__main__')",
    ]
    args += [
        "tls-scanner",
        "--config",
        str(config),
        "--state-file",
        str(state),
        "--web.listen-address",
        f"127.0.0.1:{port}",
    ]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(state.parent.iterdir())) == 3 or None, 15, what="the state file and its WAL")
        modes = {p.name: p.stat().st_mode & 0o777 for p in state.parent.iterdir()}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert modes == {"tls.db": 0o600, "tls.db-wal": 0o600, "tls.db-shm": 0o600}


def test_without_a_web_config_nothing_asks_for_a_password(plain: Daemon) -> None:
    status, body, headers = plain.request("GET", "/metrics")
    assert status == 200 and "WWW-Authenticate" not in headers and "X-Frame-Options" not in headers
    assert "tls_scanner_targets 1" in body
