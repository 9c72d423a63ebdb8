"""Tests for scanner.web (config, guard, tls): the --web.config.file (TLS, basic auth, extra headers), no sslyze."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from scanner.errors import ConfigError
from scanner.web.config import WebConfig, load_web_config
from scanner.web.guard import WebGuard, parse_basic_auth
from scanner.web.tls import CIPHER_SUITES, TlsSettings, server_ssl_context

PASSWORD = b"secret"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()  # cost 4 keeps the tests fast
TLS_KEYS = (
    "cert_file, key_file, client_ca_file, client_auth_type, min_version, max_version, cipher_suites, "
    "curve_preferences, prefer_server_cipher_suites"
)


@dataclass(frozen=True)
class Certs:
    """PEM files for the tests."""

    dir: Path
    ca: Path
    cert: Path  # server certificate for localhost and 127.0.0.1, signed by ca
    key: Path
    cert2: Path  # another server certificate, for rotation
    key2: Path
    client_cert: Path  # signed by ca
    client_key: Path
    other_ca: Path
    encrypted_key: Path
    garbage: Path


def _certs_with_cryptography(d: Path) -> None:
    """Write the test PEM files with the cryptography package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(
        cn: str, key: ec.EllipticCurvePrivateKey, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca[0].subject if ca else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
        )
        if ca is not None:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca[1] if ca else key, hashes.SHA256())

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        plain = serialization.NoEncryption()
        (d / f"{name}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, plain)
        )

    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "other-ca", "server", "server2", "client")}
    ca = issue("test CA", keys["ca"], None)
    write("ca", ca, keys["ca"])
    write("other-ca", issue("other CA", keys["other-ca"], None), keys["other-ca"])
    for leaf in ("server", "server2", "client"):
        write(leaf, issue(leaf, keys[leaf], (ca, keys["ca"])), keys[leaf])
    encryption = serialization.BestAvailableEncryption(b"pw")
    encrypted = keys["server"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    (d / "encrypted.key").write_bytes(encrypted)


def _certs_with_openssl(d: Path) -> None:
    """Write the test PEM files with the openssl command."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    for ca in ("ca", "other-ca"):
        openssl(
            "req", "-x509", *new_key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1", "-subj", f"/CN={ca}"
        )
    (d / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for serial, leaf in enumerate(("server", "server2", "client"), start=2):
        openssl("req", "-new", *new_key, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}")
        openssl(
            "x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", str(serial),
            "-days", "1", "-extfile", "leaf.ext", "-out", f"{leaf}.pem",
        )  # fmt: skip
    openssl("pkcs8", "-topk8", "-in", "server.key", "-out", "encrypted.key", "-passout", "pass:pw")


def make_certs(d: Path, *, use_openssl: bool = False) -> Certs:
    """CA, server, client and broken PEM files in `d`, made with cryptography if it is there, else openssl."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        use_openssl = True
    (_certs_with_openssl if use_openssl else _certs_with_cryptography)(d)
    (d / "garbage.pem").write_text("not a PEM file\n")
    return Certs(
        dir=d,
        ca=d / "ca.pem",
        cert=d / "server.pem",
        key=d / "server.key",
        cert2=d / "server2.pem",
        key2=d / "server2.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
        encrypted_key=d / "encrypted.key",
        garbage=d / "garbage.pem",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("webcerts"))


class Write(Protocol):
    """The `write` fixture."""

    def __call__(self, text: str, name: str = "web.yml") -> str: ...


def _fill(text: str, certs: Certs) -> str:
    for name in ("ca", "cert", "key", "cert2", "key2", "other_ca", "encrypted_key", "garbage"):
        text = text.replace(f"@{name.upper()}@", str(getattr(certs, name)))
    return text.replace("@HASH@", HASH)


@pytest.fixture
def write(tmp_path: Path, certs: Certs) -> Write:
    """Write a web config (with @CERT@-style placeholders filled in) and return its path."""

    def write(text: str, name: str = "web.yml") -> str:
        path = tmp_path / name
        path.write_text(_fill(text, certs))
        return str(path)

    return write


TLS = "tls_server_config:\n  cert_file: @CERT@\n  key_file: @KEY@\n"

BAD = [
    (
        "foo: 1\n",
        '1: unknown key "foo" at top level (allowed: tls_server_config, http_server_config, basic_auth_users)',
    ),
    ("rate_limit:\n  burst: 1\n", "1: rate_limit is not supported by tls-scanner; remove it"),
    (
        "- a\n",
        "1: top level: expected a mapping with tls_server_config, http_server_config, basic_auth_users, got list",
    ),
    (
        "basic_auth_users: {}\nbasic_auth_users: {}\n",
        '2: duplicate key "basic_auth_users" at top level (first on line 1)',
    ),
    ("tls_server_config: [\n", "2: invalid YAML: expected the node content, but found '<stream end>'"),
    ("a: 1\n---\nb: 2\n", "2: invalid YAML: expected a single document in the stream, but found another document"),
    ("tls_server_config:\n  cert_file: @CERT@\n", '1: tls_server_config: missing required key "key_file"'),
    ("tls_server_config: []\n", f"1: tls_server_config: expected a mapping with {TLS_KEYS}, got list"),
    (TLS + "  cert: abc\n", "4: inline cert is not supported, use cert_file"),
    (TLS + "  client_allowed_sans: [a]\n", "4: client_allowed_sans is not supported by tls-scanner; remove it"),
    (TLS + "  ciphers: []\n", f'4: unknown key "ciphers" in tls_server_config (allowed: {TLS_KEYS})'),
    (TLS + "  key_file: @KEY@\n", '4: duplicate key "key_file" in tls_server_config (first on line 3)'),
    ("tls_server_config:\n  cert_file: ''\n  key_file: @KEY@\n", "2: cert_file: must not be empty"),
    ("tls_server_config:\n  cert_file: 12\n  key_file: @KEY@\n", "2: cert_file: expected a string, got 12 (quote it)"),
    ("tls_server_config:\n  cert_file:\n  key_file: @KEY@\n", "2: cert_file: expected a string, got null"),
    (
        "tls_server_config:\n  cert_file: nope.pem\n  key_file: @KEY@\n",
        "2: cannot read cert_file @DIR@/nope.pem: No such file or directory",
    ),
    ("tls_server_config:\n  cert_file: @KEY@\n  key_file: @KEY@\n", "2: no PEM certificate in cert_file @KEY@"),
    ("tls_server_config:\n  cert_file: @CERT@\n  key_file: @KEY2@\n", "3: key_file @KEY2@ does not match cert_file"),
    (
        "tls_server_config:\n  cert_file: @CERT@\n  key_file: @GARBAGE@\n",
        "3: no usable PEM private key in key_file @GARBAGE@",
    ),
    (
        "tls_server_config:\n  cert_file: @CERT@\n  key_file: @ENCRYPTED_KEY@\n",
        "3: key_file @ENCRYPTED_KEY@ is encrypted; give an unencrypted key",
    ),
    (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: @GARBAGE@\n",
        "5: no PEM certificate in client_ca_file @GARBAGE@",
    ),
    (
        TLS + "  client_auth_type: Always\n",
        '4: unknown client_auth_type "Always" (known: NoClientCert, RequestClientCert, RequireAnyClientCert, '
        "VerifyClientCertIfGiven, RequireAndVerifyClientCert)",
    ),
    (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        "4: client_auth_type RequireAndVerifyClientCert needs client_ca_file",
    ),
    (
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n",
        "4: client_auth_type VerifyClientCertIfGiven needs client_ca_file",
    ),
    (
        TLS + "  client_auth_type: RequireAnyClientCert\n",
        "4: client_auth_type RequireAnyClientCert needs client_ca_file "
        "(Python's ssl cannot require a certificate without verifying it)",
    ),
    (TLS + "  client_ca_file: @CA@\n", "4: client_ca_file is set but client_auth_type is NoClientCert"),
    (TLS + "  min_version: TLS14\n", '4: unknown min_version "TLS14" (known: TLS10, TLS11, TLS12, TLS13)'),
    (TLS + "  min_version: 1.2\n", "4: min_version: expected a string, got 1.2 (quote it)"),
    (TLS + "  min_version: TLS13\n  max_version: TLS12\n", "5: min_version TLS13 is above max_version TLS12"),
    (TLS + "  max_version: TLS11\n", "4: min_version TLS12 is above max_version TLS11"),
    (
        TLS + "  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n    - TLS_RSA_WITH_RC4_128_SHA\n",
        '6: unknown cipher suite "TLS_RSA_WITH_RC4_128_SHA" (known: ' + ", ".join(CIPHER_SUITES) + ")",
    ),
    (
        TLS + "  cipher_suites: TLS_AES_128_GCM_SHA256\n",
        '4: cipher_suites: expected a list, got "TLS_AES_128_GCM_SHA256"',
    ),
    (
        TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        "4: cipher_suites lists only TLS 1.3 suites, which cannot be configured; add TLS 1.2 suites",
    ),
    (
        TLS + "  curve_preferences: [CurveP256, P-384]\n",
        '4: unknown curve "P-384" (known: CurveP256, CurveP384, CurveP521, X25519)',
    ),
    (
        TLS + "  curve_preferences:\n    - X25519\n    - CurveP256\n",
        "6: curve_preferences: Python's ssl can use only one curve; list one (or none for OpenSSL's defaults)",
    ),
    (
        TLS + "  prefer_server_cipher_suites: maybe\n",
        '4: prefer_server_cipher_suites: expected true or false, got "maybe"',
    ),
    ("http_server_config:\n  http2: 1\n", "2: http2: expected true or false, got 1"),
    ("http_server_config:\n  h2: true\n", '2: unknown key "h2" in http_server_config (allowed: headers, http2)'),
    (
        "http_server_config:\n  headers:\n    Content-Type: text/plain\n",
        '3: header "Content-Type" cannot be set (allowed: Strict-Transport-Security, X-Content-Type-Options, '
        "X-Frame-Options, X-XSS-Protection, Content-Security-Policy)",
    ),
    ("http_server_config:\n  headers:\n    X Frame: deny\n", '3: header name "X Frame" is not a valid HTTP token'),
    (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        '3: header X-Frame-Options: expected one of deny, sameorigin, got "allow"',
    ),
    (
        'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
        "3: header Content-Security-Policy value contains CR, LF or NUL",
    ),
    (
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    x-frame-options: deny\n",
        '4: header "X-Frame-Options" given twice (first on line 3)',
    ),
    ("http_server_config:\n  headers: [a]\n", "2: headers: expected a mapping, got list"),
    (
        "basic_auth_users:\n  alice: secret\n",
        '2: password of "alice" is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31)',
    ),
    (
        "basic_auth_users:\n  alice: $2b$10$tooshort\n",
        '2: password of "alice" is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31)',
    ),
    ("basic_auth_users:\n  alice: 12\n", '2: password hash of "alice": expected a string, got 12 (quote it)'),
    ("basic_auth_users:\n  'a:b': @HASH@\n", '2: user name "a:b" contains ":", which basic auth cannot carry'),
    (
        "basic_auth_users:\n  alice: @HASH@\n  alice: @HASH@\n",
        '3: duplicate key "alice" in basic_auth_users (first on line 2)',
    ),
    ("basic_auth_users:\n  - alice\n", "2: basic_auth_users: expected a mapping, got list"),
]


@pytest.mark.parametrize(
    ("text", "expected"), BAD, ids=[f"{i}:{e.split(': ', 1)[1][:40]}" for i, (_, e) in enumerate(BAD)]
)
def test_bad_config(write: Write, certs: Certs, tmp_path: Path, text: str, expected: str) -> None:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert str(info.value) == f"{path}:" + _fill(expected, certs).replace("@DIR@", str(tmp_path))


def test_unreadable_binary_and_non_utf8_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match=r"missing\.yml:1: cannot read web config: No such file or directory$"):
        load_web_config(missing)
    with pytest.raises(ConfigError, match=r":1: cannot read web config: Is a directory$"):
        load_web_config(str(tmp_path))
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"a: 1\n\x00\x01\x02")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(binary))
    assert str(info.value) == f"{binary}:2: not a text file (NUL byte; binary?)"
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(b"# ok\nbasic_auth_users:\n  j\xe9r\xf4me: x\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(latin1))
    assert str(info.value) == f"{latin1}:3: not UTF-8 (byte 0xe9)"


def test_yaml_is_read_as_in_the_endpoints_file(write: Write) -> None:
    """The same node helpers: merge keys work, and a user name may be written as a number."""
    config = load_web_config(write("basic_auth_users:\n  <<: {alice: @HASH@}\n  1234: @HASH@\n"))
    assert sorted(config.users) == ["1234", "alice"]


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "~\n", "tls_server_config:\nbasic_auth_users:\n"])
def test_empty_config_means_no_tls_no_auth(write: Write, text: str) -> None:
    path = write(text)
    assert load_web_config(path) == WebConfig(path)
    guard = WebGuard(load_web_config(path))
    assert guard.ssl_context() is None
    assert _passes(guard, None)


def test_good_config_round_trip(write: Write, certs: Certs) -> None:
    (certs.dir / "sub").mkdir(exist_ok=True)
    rel_cert = Path("..") / certs.cert.name  # relative paths are from the web config's directory
    path = write(
        f"""\
tls_server_config:
  cert_file: {certs.dir / "sub" / rel_cert}
  key_file: @KEY@
  client_ca_file: @CA@
  client_auth_type: RequireClientCert
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    - TLS_AES_128_GCM_SHA256
  curve_preferences: [X25519]
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
  headers:
    x-frame-options: deny
    X-XSS-Protection: 0
    Content-Security-Policy: ""
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  alice: @HASH@
  "1234": @HASH@
"""
    )
    config = load_web_config(path)
    assert config == WebConfig(
        path=path,
        tls=TlsSettings(
            cert_file=str(certs.dir / "sub" / rel_cert),
            key_file=str(certs.key),
            client_ca_file=str(certs.ca),
            client_auth_type="RequireAnyClientCert",
            min_version=ssl.TLSVersion.TLSv1_2,
            max_version=ssl.TLSVersion.TLSv1_3,
            cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
            curve="X25519",
            prefer_server_cipher_suites=False,
        ),
        users={"alice": HASH.encode(), "1234": HASH.encode()},
        headers=(
            ("X-Frame-Options", "deny"),
            ("X-XSS-Protection", "0"),
            ("Strict-Transport-Security", "max-age=31536000"),
        ),
    )
    assert config.tls is not None and config.tls.line == 1
    with pytest.raises(TypeError):
        config.users["bob"] = b"x"  # type: ignore[index]

    relative = write("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n", "rel.yml")
    (Path(relative).parent / "server.pem").write_bytes(certs.cert.read_bytes())
    (Path(relative).parent / "server.key").write_bytes(certs.key.read_bytes())
    tls = load_web_config(relative).tls
    assert tls is not None and tls.cert_file == str(Path(relative).parent / "server.pem")


def test_ssl_context_settings(certs: Certs) -> None:
    tls = TlsSettings(str(certs.cert), str(certs.key))
    ctx = server_ssl_context(tls)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE

    tls = TlsSettings(
        str(certs.cert),
        str(certs.key),
        client_ca_file=str(certs.ca),
        client_auth_type="RequireAndVerifyClientCert",
        min_version=ssl.TLSVersion.TLSv1_3,
        cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",),
        prefer_server_cipher_suites=False,
    )
    ctx = server_ssl_context(tls)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"] == ["ECDHE-ECDSA-AES256-GCM-SHA384"]
    assert ctx.cert_store_stats()["x509_ca"] == 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Python deprecates TLS 1.0, the format allows it: no warning escapes
        ctx = server_ssl_context(TlsSettings(str(certs.cert), str(certs.key), min_version=ssl.TLSVersion.TLSv1))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1

    modes = {"VerifyClientCertIfGiven": ssl.CERT_OPTIONAL, "RequestClientCert": ssl.CERT_NONE}
    for auth, mode in modes.items():
        ctx = server_ssl_context(TlsSettings(str(certs.cert), str(certs.key), str(certs.ca), auth))
        assert ctx.verify_mode == mode


def test_every_cipher_suite_maps_to_an_openssl_cipher(certs: Certs) -> None:
    for go_name, openssl_name in CIPHER_SUITES.items():
        if openssl_name is None:
            continue
        ctx = server_ssl_context(TlsSettings(str(certs.cert), str(certs.key), cipher_suites=(go_name,)))
        assert openssl_name in {c["name"] for c in ctx.get_ciphers()}, go_name


def _passes(guard: WebGuard, authorization: str | None) -> bool:
    """Whether a request with this Authorization header gets past the guard's middleware to the handler."""
    headers = {} if authorization is None else {"Authorization": authorization}

    async def status() -> int:
        return (await guard.middleware(make_mocked_request("GET", "/", headers=headers), _hello)).status

    return asyncio.run(status()) == 200


def _basic(user: str | bytes, password: bytes) -> str:
    raw = (user.encode() if isinstance(user, str) else user) + b":" + password
    return "Basic " + base64.b64encode(raw).decode()


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Count bcrypt.checkpw calls (the hashes they were given)."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


@pytest.fixture
def guard(write: Write) -> Iterator[WebGuard]:
    guard = WebGuard(load_web_config(write("basic_auth_users:\n  alice: @HASH@\n  bob: @HASH@\n")))
    yield guard
    guard.close()


def test_parse_basic_auth() -> None:
    assert parse_basic_auth(_basic("alice", b"pa:ss")) == ("alice", b"pa:ss")
    assert parse_basic_auth("basic " + base64.b64encode(b"a:").decode()) == ("a", b"")
    for bad in [None, "", "Basic", "Bearer abc", "Basic !!!!", "Basic " + base64.b64encode(b"nocolon").decode()]:
        assert parse_basic_auth(bad) is None, bad
    assert parse_basic_auth(_basic(b"\xff", b"x")) is None


def test_basic_auth_accept_reject(guard: WebGuard, checkpw_calls: list[bytes]) -> None:
    assert _passes(guard, _basic("alice", PASSWORD))
    assert _passes(guard, _basic("bob", PASSWORD))
    assert not _passes(guard, _basic("alice", b"wrong"))
    assert not _passes(guard, _basic("Alice", PASSWORD))
    for malformed in [None, "", "Basic", "Basic %%%", "Basic " + base64.b64encode(b"alice").decode(), "Digest x"]:
        assert not _passes(guard, malformed)
    assert len(checkpw_calls) == 4  # malformed headers cost no bcrypt


def test_unknown_user_still_costs_one_bcrypt(guard: WebGuard, checkpw_calls: list[bytes]) -> None:
    assert not _passes(guard, _basic("mallory", PASSWORD))  # the right password of another user does not help
    assert not _passes(guard, _basic("mallory", PASSWORD))  # and is never cached
    assert checkpw_calls == [HASH.encode(), HASH.encode()]


def test_cache_saves_bcrypt_but_not_failures(guard: WebGuard, checkpw_calls: list[bytes]) -> None:
    assert _passes(guard, _basic("alice", PASSWORD))
    assert _passes(guard, _basic("alice", PASSWORD))
    assert len(checkpw_calls) == 1
    assert not _passes(guard, _basic("alice", b"wrong"))
    assert not _passes(guard, _basic("alice", b"wrong"))
    assert len(checkpw_calls) == 3
    guard.update(guard.config)  # a reload starts with an empty cache
    assert _passes(guard, _basic("alice", PASSWORD))
    assert len(checkpw_calls) == 4


def test_cache_is_bounded(write: Write, checkpw_calls: list[bytes]) -> None:
    guard = WebGuard(load_web_config(write("basic_auth_users:\n  a: @HASH@\n  b: @HASH@\n  c: @HASH@\n")), cache_size=2)
    for user in "abc":
        assert _passes(guard, _basic(user, PASSWORD))
    assert _passes(guard, _basic("c", PASSWORD)) and _passes(guard, _basic("b", PASSWORD))
    assert len(checkpw_calls) == 3
    assert _passes(guard, _basic("a", PASSWORD))  # evicted, least recently used
    assert len(checkpw_calls) == 4
    guard.close()


def test_too_long_password_is_refused(guard: WebGuard) -> None:
    assert not _passes(guard, _basic("alice", b"x" * 100))


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello\n")


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


def _app(guard: WebGuard) -> web.Application:
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", _hello)
    app.router.add_get("/boom", _boom)
    return app


HEADERS = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=60\n"


async def test_middleware_auth_and_headers(write: Write) -> None:
    guard = WebGuard(load_web_config(write(HEADERS + "basic_auth_users:\n  alice: @HASH@\n")))
    async with TestClient(TestServer(_app(guard), host="127.0.0.1")) as client:
        for auth in [None, _basic("alice", b"wrong"), _basic("eve", PASSWORD), "Basic ???"]:
            response = await client.get("/", headers={"Authorization": auth} if auth else {})
            assert response.status == 401, auth
            assert response.headers["WWW-Authenticate"] == 'Basic realm="tls-scanner"'
            assert response.headers["X-Frame-Options"] == "deny"
            assert response.headers["Strict-Transport-Security"] == "max-age=60"
            assert "alice" not in await response.text()
        good = {"Authorization": _basic("alice", PASSWORD)}
        response = await client.get("/", headers=good)
        assert response.status == 200
        assert await response.text() == "hello\n"
        assert response.headers["X-Frame-Options"] == "deny"
        assert "WWW-Authenticate" not in response.headers
        response = await client.get("/nowhere", headers=good)
        assert (response.status, response.headers["X-Frame-Options"]) == (404, "deny")
        response = await client.get("/boom", headers=good)
        assert (response.status, response.headers["X-Frame-Options"]) == (500, "deny")

        # A reload applies to the next request.
        guard.update(load_web_config(write("basic_auth_users:\n  bob: @HASH@\n", "new.yml")))
        response = await client.get("/", headers=good)
        assert response.status == 401
        assert "X-Frame-Options" not in response.headers
        response = await client.get("/", headers={"Authorization": _basic("bob", PASSWORD)})
        assert response.status == 200
    guard.close()


async def test_middleware_without_users_lets_everyone_in(write: Write) -> None:
    guard = WebGuard(load_web_config(write(HEADERS)))
    async with TestClient(TestServer(_app(guard), host="127.0.0.1")) as client:
        response = await client.get("/")
        assert response.status == 200
        assert response.headers["Strict-Transport-Security"] == "max-age=60"
    guard.close()


def _client_ctx(
    certs: Certs, *, max_version: ssl.TLSVersion | None = None, client_cert: bool = False
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if max_version is not None:
        ctx.maximum_version = max_version
    if client_cert:
        ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx


async def _peer_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    """The DER certificate the server shows on a fresh connection to 127.0.0.1 (no SNI, as for a scrape by IP)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()
        await writer.wait_closed()


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


async def test_tls_rotation_on_update_without_new_listener(write: Write, certs: Certs) -> None:
    guard = WebGuard(load_web_config(write(TLS + "basic_auth_users:\n  alice: @HASH@\n")))
    listener_ctx = guard.ssl_context()
    assert listener_ctx is not None and guard.ssl_context() is listener_ctx
    server = TestServer(_app(guard), host="127.0.0.1")
    await server.start_server(ssl=listener_ctx)
    async with TestClient(server) as client:
        response = await client.get("/", ssl=_client_ctx(certs), headers={"Authorization": _basic("alice", PASSWORD)})
        assert response.status == 200
        assert await _peer_cert(server.port or 0, _client_ctx(certs)) == _der(certs.cert)
        assert await _peer_cert(server.port or 0, _client_ctx(certs, max_version=ssl.TLSVersion.TLSv1_2))

        rotated = "tls_server_config:\n  cert_file: @CERT2@\n  key_file: @KEY2@\n  min_version: TLS13\n"
        guard.update(load_web_config(write(rotated, "rotated.yml")))
        assert guard.ssl_context() is listener_ctx
        assert await _peer_cert(server.port or 0, _client_ctx(certs)) == _der(certs.cert2)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # TLS 1.2 only: refused since the update
            await _peer_cert(server.port or 0, _client_ctx(certs, max_version=ssl.TLSVersion.TLSv1_2))
        response = await client.get("/", ssl=_client_ctx(certs))
        assert response.status == 200  # the rotated config has no users
    guard.close()


async def test_client_certificates_and_ca_rotation(write: Write, certs: Certs) -> None:
    mtls = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: @CA@\n"
    guard = WebGuard(load_web_config(write(mtls)))
    server = TestServer(_app(guard), host="127.0.0.1")
    await server.start_server(ssl=guard.ssl_context())
    async with TestClient(server) as client:
        response = await client.get("/", ssl=_client_ctx(certs, client_cert=True))
        assert response.status == 200
        with pytest.raises(aiohttp.ClientError):
            await client.get("/", ssl=_client_ctx(certs))
        # Trusting another CA on reload: the same client certificate is now refused.
        guard.update(load_web_config(write(mtls.replace("@CA@", "@OTHER_CA@"), "other.yml")))
        with pytest.raises(aiohttp.ClientError):
            await client.get("/", ssl=_client_ctx(certs, client_cert=True))
    guard.close()


def test_update_between_tls_and_plain_needs_restart(write: Write, certs: Certs) -> None:
    tls_path = write(TLS)
    plain_path = write("basic_auth_users:\n  alice: @HASH@\n", "plain.yml")
    guard = WebGuard(load_web_config(tls_path))
    before = guard.config
    with pytest.raises(ConfigError) as info:
        guard.update(load_web_config(plain_path))
    assert (
        str(info.value)
        == f"{plain_path}:1: switching the listener to plain HTTP needs a restart; kept the old web config"
    )
    assert guard.config is before

    guard = WebGuard(load_web_config(plain_path))
    with pytest.raises(ConfigError) as info:
        guard.update(load_web_config(tls_path))
    assert str(info.value) == f"{tls_path}:1: switching the listener to TLS needs a restart; kept the old web config"


def test_update_cannot_unset_the_curve(write: Write) -> None:
    guard = WebGuard(load_web_config(write(TLS + "  curve_preferences: [CurveP384]\n")))
    assert guard.ssl_context() is not None
    guard.update(load_web_config(write(TLS + "  curve_preferences: [CurveP256]\n", "p256.yml")))
    no_curve = write(TLS, "none.yml")
    with pytest.raises(ConfigError, match="removing curve_preferences needs a restart"):
        guard.update(load_web_config(no_curve))


def test_cert_file_gone_before_update(write: Write, certs: Certs, tmp_path: Path) -> None:
    guard = WebGuard(load_web_config(write(TLS)))
    assert guard.ssl_context() is not None
    (tmp_path / "c.pem").write_bytes(certs.cert.read_bytes())
    config = load_web_config(write("tls_server_config:\n  cert_file: c.pem\n  key_file: @KEY@\n", "gone.yml"))
    (tmp_path / "c.pem").unlink()
    with pytest.raises(ConfigError, match=r"gone\.yml:1: cannot read cert_file .*c\.pem: No such file or directory"):
        guard.update(config)
    assert guard.config.path.endswith("web.yml")


def test_cache_keys_do_not_hold_passwords(guard: WebGuard) -> None:
    assert _passes(guard, _basic("alice", PASSWORD))
    keys = list(guard._cache)
    assert len(keys) == 1 and len(keys[0]) == hashlib.sha256().digest_size
    assert PASSWORD not in keys[0]


def test_openssl_made_certs_load_too(tmp_path: Path, write: Write) -> None:
    """The fallback for machines without the cryptography package makes files load_web_config takes."""
    made = make_certs(tmp_path, use_openssl=True)
    mtls = f"tls_server_config:\n  cert_file: {made.cert}\n  key_file: {made.key}\n"
    mtls += f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {made.ca}\n"
    tls = load_web_config(write(mtls)).tls
    assert tls is not None and server_ssl_context(tls).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="is encrypted"):
        load_web_config(write(mtls.replace(str(made.key), str(made.encrypted_key))))
