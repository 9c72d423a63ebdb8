"""The test lab itself, checked with independent clients (Python ssl and openssl s_client)."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.certs import make_cert
from bench.servers import Endpoint, NginxError, NginxLab, NginxServer, free_ports, nginx_protocols
from scanner.protocols import Protocol
from tests.lab.servers import (
    LabCerts,
    LabStack,
    NginxLabFactory,
    closed_port,
    closing_server,
    garbage_server,
    handshake,
    https_status,
    openssl_s_client,
    plain_http_server,
    python_tls_server,
    require_nginx,
    rst_server,
    tarpit,
)

TLS10, TLS11, TLS12, TLS13 = Protocol.TLSv1_0, Protocol.TLSv1_1, Protocol.TLSv1_2, Protocol.TLSv1_3
ALL_TLS = [TLS10, TLS11, TLS12, TLS13]
# A stripped TLS 1.2 ClientHello record header and body are not needed: any bytes make the peers answer.
HELLO_BYTES = b"\x16\x03\x01\x00\x05hello"


def accepts(endpoint: Endpoint, protocol: Protocol, **kwargs: object) -> bool:
    """Tell whether a Python ssl client offering only protocol completes a handshake."""
    try:
        handshake(endpoint, protocol, **kwargs)  # type: ignore[arg-type]
    except (ssl.SSLError, ConnectionResetError):
        return False
    return True


def accepted_versions(endpoint: Endpoint) -> list[Protocol]:
    """Return the TLS versions a Python client can handshake with, one probe per version."""
    return [p for p in ALL_TLS if accepts(endpoint, p)]


def load_cert(path: Path) -> x509.Certificate:
    """Load a PEM certificate."""
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- certificates -----------------------------------------------------------------------------------------------


def test_certs_have_the_promised_properties(tmp_certs: LabCerts) -> None:
    """Self-signed, expired, wrong-host and client certs are what their names say."""
    now = datetime.datetime.now(datetime.UTC)
    ca = load_cert(tmp_certs.ca.cert)
    server = load_cert(tmp_certs.server.cert)
    server.verify_directly_issued_by(ca)
    load_cert(tmp_certs.client.cert).verify_directly_issued_by(ca)
    self_signed = load_cert(tmp_certs.self_signed.cert)
    self_signed.verify_directly_issued_by(self_signed)
    assert load_cert(tmp_certs.expired.cert).not_valid_after_utc < now < server.not_valid_after_utc
    wrong = load_cert(tmp_certs.wrong_host.cert)
    assert wrong.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["wrong.host.invalid"]
    public_key = server.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048


def test_certs_verify_with_python_ssl(tmp_certs: LabCerts) -> None:
    """A verifying client trusts the CA-issued cert and rejects the expired and wrong-host ones."""
    ctx = ssl.create_default_context(cafile=str(tmp_certs.ca.cert))
    with (
        python_tls_server({TLS12, TLS13}, cert=tmp_certs.server) as ep,
        socket.create_connection(ep, timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
    for cert, reason in [(tmp_certs.expired, "expired"), (tmp_certs.wrong_host, "mismatch")]:
        ctx = ssl.create_default_context(cafile=str(cert.cert))
        with (
            python_tls_server({TLS13}, cert=cert) as ep,
            socket.create_connection(ep, timeout=5) as sock,
            pytest.raises(ssl.SSLCertVerificationError, match=reason),
        ):
            ctx.wrap_socket(sock, server_hostname="localhost")


def test_make_cert_keeps_variants_apart(tmp_path: Path) -> None:
    """Different kinds of certificate for the same name do not overwrite each other."""
    paths = {make_cert(tmp_path).cert, make_cert(tmp_path, expired=True).cert, make_cert(tmp_path, "other").cert}
    assert len(paths) == 3


# --- Python ssl servers -----------------------------------------------------------------------------------------


def test_tls12_only_server_refuses_tls10(lab: LabStack) -> None:
    """A TLSv1.2-only server answers 1.2 and refuses 1.0, for Python and for openssl s_client."""
    ep = lab.tls_server({TLS12})
    assert accepted_versions(ep) == [TLS12]
    assert openssl_s_client(ep, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0").returncode != 0
    result = openssl_s_client(ep, "-tls1_2")
    assert result.returncode == 0, result.stderr
    assert "Protocol version: TLSv1.2" in result.stderr


def test_python_gap_server(lab: LabStack) -> None:
    """TLS 1.0 + 1.2 without 1.1 in between is served as such."""
    ep = lab.tls_server({TLS10, TLS12})
    assert accepted_versions(ep) == [TLS10, TLS12]
    assert handshake(ep, TLS10)[0] == "TLSv1"


def test_python_server_rejects_ssl_versions() -> None:
    """SSLv2/SSLv3 cannot be offered by an OpenSSL 3 server, so the lab refuses to pretend."""
    with pytest.raises(ValueError, match="SSLv3"), python_tls_server({Protocol.SSLv3, TLS12}):
        pass


def test_python_server_cipher_restriction(lab: LabStack) -> None:
    """A server limited to AES256-SHA negotiates it and refuses clients without it."""
    ep = lab.tls_server({TLS12}, ciphers="AES256-SHA")
    assert handshake(ep, TLS12, ciphers="AES256-SHA:@SECLEVEL=0") == ("TLSv1.2", "AES256-SHA")
    assert not accepts(ep, TLS12, ciphers="ECDHE-RSA-AES128-GCM-SHA256")


def test_python_server_http_status(lab: LabStack) -> None:
    """With http_status set, each connection gets one HTTP response of that status."""
    ep = lab.tls_server({TLS10, TLS13}, http_status=403)
    assert https_status(ep, TLS10)[0] == 403
    assert https_status(ep, TLS13)[0] == 403


def test_python_server_requires_client_cert(lab: LabStack, tmp_certs: LabCerts) -> None:
    """Without a client cert TLS 1.2 fails in the handshake, TLS 1.3 on the first read; with one both work."""
    ep = lab.tls_server({TLS12, TLS13}, require_client_cert=True, http_status=200)
    assert not accepts(ep, TLS12)
    # TLS 1.3 clients finish their side before the server checks the certificate; the alert arrives afterwards.
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        https_status(ep, TLS13)
    assert https_status(ep, TLS12, client_cert=tmp_certs.client)[0] == 200
    assert https_status(ep, TLS13, client_cert=tmp_certs.client)[0] == 200


def test_python_server_needs_client_ca_for_client_certs() -> None:
    """Asking for client certs without a CA to check them against is an error, not a server that refuses all."""
    with pytest.raises(ValueError, match="client_ca"), python_tls_server({TLS12}, require_client_cert=True):
        pass


def test_python_server_serves_concurrently(lab: LabStack) -> None:
    """Many clients at once all complete while another connection stalls its handshake."""
    ep = lab.tls_server({TLS12, TLS13})
    with socket.create_connection(ep, timeout=5), ThreadPoolExecutor(32) as pool:
        versions = list(pool.map(lambda _: handshake(ep, TLS13)[0], range(100)))
    assert versions == ["TLSv1.3"] * 100


def test_python_server_stops_promptly_with_stalled_clients() -> None:
    """Leaving the context does not wait for clients that never finish their handshake."""
    with python_tls_server({TLS13}) as ep:
        stalled = [socket.create_connection(ep, timeout=5) for _ in range(5)]
        time.sleep(0.1)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    for sock in stalled:
        assert sock.recv(1) == b""
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(ep, timeout=2)


def test_python_server_on_ipv6_loopback() -> None:
    """Servers bind ::1 when asked."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = python_tls_server({TLS13}, host="::1")
        ep = server.__enter__()
    except OSError as exc:
        pytest.skip(f"::1 not usable here: {exc}")
    try:
        assert handshake(ep, TLS13)[0] == "TLSv1.3"
    finally:
        server.__exit__(None, None, None)


def test_lab_refuses_non_loopback_hosts() -> None:
    """The lab never binds outside loopback."""
    with pytest.raises(ValueError, match="loopback"), python_tls_server({TLS13}, host="0.0.0.0"):
        pass
    with pytest.raises(ValueError, match="loopback"):
        free_ports(1, host="192.0.2.1")


def test_free_ports_are_distinct_and_bindable() -> None:
    """free_ports returns distinct ports that can be bound right away."""
    ports = free_ports(300)
    assert len(set(ports)) == 300
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))


# --- hostile peers ----------------------------------------------------------------------------------------------


def test_tarpit_never_answers() -> None:
    """The tarpit accepts, reads, never sends and never closes; stopping it does not hang."""
    with tarpit() as ep, socket.create_connection(ep, timeout=0.5) as sock:
        sock.sendall(HELLO_BYTES)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        started = time.monotonic()
    assert time.monotonic() - started < 2


def test_tarpit_stalls_a_tls_handshake() -> None:
    """A TLS client waiting on the tarpit times out."""
    with tarpit() as ep, pytest.raises(TimeoutError):
        handshake(ep, TLS13, timeout=0.5)


def test_garbage_server_sends_non_tls_bytes() -> None:
    """The garbage server answers bytes that are not a TLS record, then closes; a TLS client fails."""
    with garbage_server() as ep:
        with socket.create_connection(ep, timeout=5) as sock:
            sock.sendall(HELLO_BYTES)
            data = sock.recv(65536)
            assert data
            assert data[0] not in range(20, 25)
        with pytest.raises(ssl.SSLError):
            handshake(ep, TLS12)


def test_plain_http_server_answers_400() -> None:
    """The plain HTTP server answers 400 to anything; a TLS client fails on it."""
    with plain_http_server() as ep:
        with socket.create_connection(ep, timeout=5) as sock:
            sock.sendall(HELLO_BYTES)
            assert sock.recv(65536).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        with pytest.raises(ssl.SSLError):
            handshake(ep, TLS12)


def test_closing_server_sends_eof() -> None:
    """The closing server closes cleanly (EOF, no reset) without a byte."""
    with closing_server() as ep:
        with socket.create_connection(ep, timeout=5) as sock:
            sock.sendall(HELLO_BYTES)
            assert sock.recv(1) == b""
        with pytest.raises(ssl.SSLEOFError):
            handshake(ep, TLS12)


def test_rst_server_resets() -> None:
    """The RST server resets: reads raise ConnectionResetError."""
    with rst_server() as ep:
        with socket.create_connection(ep, timeout=5) as sock, pytest.raises(ConnectionResetError):
            sock.recv(1)
        with pytest.raises(ConnectionResetError):
            handshake(ep, TLS12)


def test_closed_port_refuses() -> None:
    """Nothing listens on a closed port."""
    with closed_port() as ep, pytest.raises(ConnectionRefusedError):
        socket.create_connection(ep, timeout=2)


def test_lab_stack_stops_everything(tmp_certs: LabCerts) -> None:
    """Closing the stack stops every server it started."""
    stack = LabStack(tmp_certs)
    endpoints = [stack.tls_server({TLS13}), stack.peer(tarpit), stack.peer(plain_http_server)]
    stack.close()
    for ep in endpoints:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(ep, timeout=2)


# --- nginx ------------------------------------------------------------------------------------------------------


def test_require_nginx_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nginx a local run skips with the README hint, a CI run fails."""
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="README"):
        require_nginx()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_nginx()


def test_nginx_protocol_names() -> None:
    """Project protocol names map onto nginx's spelling."""
    assert nginx_protocols([TLS10, "TLSv1.1", Protocol.TLSv1_3, "TLSv1"]) == ["TLSv1", "TLSv1.1", "TLSv1.3", "TLSv1"]


def test_nginx_tls12_only_and_gap(nginx_lab: NginxLabFactory) -> None:
    """One nginx serves a TLSv1.2-only block and a TLSv1 + TLSv1.2 gap block on their own ports."""
    only12, gap = free_ports(2)
    nginx = nginx_lab([NginxServer("only12", only12, ["TLSv1.2"]), NginxServer("gap", gap, ["TLSv1", "TLSv1.2"])])
    assert accepted_versions(nginx.endpoint("only12")) == [TLS12]
    assert accepted_versions(nginx.endpoint("gap")) == [TLS10, TLS12]
    assert openssl_s_client(nginx.endpoint("only12"), "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0").returncode != 0
    result = openssl_s_client(nginx.endpoint("gap"), "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert result.returncode == 0, result.stderr
    assert "Protocol version: TLSv1\n" in result.stderr
    # A 1.1-only client is answered with 1.0 (highest enabled version below its offer) and gives up itself.
    result = openssl_s_client(nginx.endpoint("gap"), "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "unsupported protocol" in result.stderr


def test_nginx_aes256_sha_only(nginx_lab: NginxLabFactory) -> None:
    """A TLSv1.2 block limited to AES256-SHA accepts a client offering it and nothing else."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("aes", port, ["TLSv1.2"], ciphers="AES256-SHA:@SECLEVEL=0")])
    ep = nginx.endpoint("aes")
    assert handshake(ep, TLS12, ciphers="AES256-SHA:@SECLEVEL=0") == ("TLSv1.2", "AES256-SHA")
    assert not accepts(ep, TLS12, ciphers="ECDHE-RSA-AES256-GCM-SHA384")
    result = openssl_s_client(ep, "-tls1_2", "-cipher", "AES256-SHA:@SECLEVEL=0")
    assert result.returncode == 0, result.stderr
    assert "Ciphersuite: AES256-SHA" in result.stderr


def test_nginx_client_cert(nginx_lab: NginxLabFactory, tmp_certs: LabCerts) -> None:
    """Nginx with ssl_verify_client on completes the handshake without a cert and answers 400 over HTTP."""
    (port,) = free_ports(1)
    server = NginxServer("mtls", port, ["TLSv1.2", "TLSv1.3"], verify_client=True, client_ca=tmp_certs.ca.cert)
    ep = nginx_lab([server]).endpoint("mtls")
    assert accepted_versions(ep) == [TLS12, TLS13]
    for protocol in (TLS12, TLS13):
        status, body = https_status(ep, protocol)
        assert status == 400
        assert b"No required SSL certificate was sent" in body
        assert https_status(ep, protocol, client_cert=tmp_certs.client) == (200, b"ok\n")


def test_nginx_legacy_403(nginx_lab: NginxLabFactory) -> None:
    """legacy_403 answers 403 over TLS 1.0/1.1 and 200 over 1.2/1.3."""
    (port,) = free_ports(1)
    ep = nginx_lab([NginxServer("legacy", port, ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"], legacy_403=True)]).endpoint(
        "legacy"
    )
    assert [https_status(ep, p)[0] for p in ALL_TLS] == [403, 403, 200, 200]


def test_nginx_reload_changes_the_answer(nginx_lab: NginxLabFactory) -> None:
    """Reloading from TLSv1.0-1.3 to TLSv1.2-1.3 makes 1.0 fail right after reload() returns."""
    keep, added = free_ports(2)
    nginx = nginx_lab([NginxServer("web", keep, ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"])])
    ep = nginx.endpoint("web")
    assert accepted_versions(ep) == ALL_TLS
    master = nginx.master_pid
    nginx.reload([NginxServer("web", keep, ["TLSv1.2", "TLSv1.3"]), NginxServer("new", added, ["TLSv1.3"])])
    assert nginx.master_pid == master
    assert accepted_versions(ep) == [TLS12, TLS13]
    assert accepted_versions(nginx.endpoint("new")) == [TLS13]
    nginx.reload([NginxServer("web", keep, ["TLSv1"])])
    assert accepted_versions(ep) == [TLS10]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(Endpoint("127.0.0.1", added), timeout=2)


def test_nginx_reload_rejects_bad_config_and_keeps_serving(nginx_lab: NginxLabFactory) -> None:
    """A config nginx -t refuses raises NginxError and leaves the running config alone."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, ["TLSv1.3"])])
    with pytest.raises(NginxError, match="nginx -t"):
        nginx.reload([NginxServer("web", port, ["TLSv9"])])
    assert accepted_versions(nginx.endpoint("web")) == [TLS13]


def test_nginx_start_failure_is_reported(requires_nginx: None, tmp_certs: LabCerts) -> None:
    """A port already taken makes start() raise with nginx's own error."""
    with tarpit() as taken:
        nginx = NginxLab([NginxServer("clash", taken.port, ["TLSv1.3"])], cert=tmp_certs.server)
        with pytest.raises(NginxError, match="Address already in use"):
            nginx.start(timeout=20)


def test_nginx_keeps_its_files_in_its_directory(nginx_lab: NginxLabFactory) -> None:
    """Pid file, logs and temp paths live in the lab directory; stop() removes it and frees the ports."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, ["TLSv1.3"])])
    assert int(nginx.pid_file.read_text()) == nginx.master_pid
    assert nginx.error_log.exists()
    conf = nginx.conf.read_text()
    assert "/var/" not in conf
    assert conf.count(str(nginx.directory)) >= 6
    nginx.stop()
    assert not nginx.directory.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(Endpoint("127.0.0.1", port), timeout=2)


def test_nginx_many_servers_in_one_process(nginx_lab: NginxLabFactory) -> None:
    """Hundreds of server blocks on distinct ports share one nginx with two workers."""
    ports = free_ports(400)
    nginx_lab([NginxServer(f"s{i}", port, ["TLSv1.2", "TLSv1.3"]) for i, port in enumerate(ports)], workers=2)
    with ThreadPoolExecutor(32) as pool:
        versions = set(pool.map(lambda port: handshake(Endpoint("127.0.0.1", port), TLS13)[0], ports))
    assert versions == {"TLSv1.3"}
