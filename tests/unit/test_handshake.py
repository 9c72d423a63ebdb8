"""The sslyze adapter builds its connections itself (scanner.engine.handshake._Connection.made), skipping the default
cipher list sslyze's own constructor parses and we replaced at once: the hello it sends must be the hello sslyze's
connection sent with our suites set on it, for every kind of attempt."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.certs import make_cert
from scanner.config import ClientCertificate, TargetConfig
from scanner.engine.attempts import Attempt, first_attempt, next_attempt
from scanner.engine.handshake import _GROUPS, _SSLYZE_VERSION, Peer, SslClient, SslConnection, _Connection, credentials
from scanner.protocols import ALL_PROTOCOLS, Protocol
from scanner.results.sweep import Evidence, ProtocolResult, ProtocolState

SSL = (Protocol.SSLv2, Protocol.SSLv3)
CLOSED = ProtocolResult(ProtocolState.REJECTED, evidence=Evidence.CLOSED)
ALERT = ProtocolResult(ProtocolState.REJECTED, detail="TLS alert: handshake failure", evidence=Evidence.ALERT)


def attempts() -> list[tuple[Protocol, Attempt]]:
    """Each version's first hello and the retries next_attempt makes of it, and a client profile's kind of hello."""
    found = []
    for protocol in ALL_PROTOCOLS:
        first = first_attempt(protocol)
        found.append((protocol, first))
        for answer in (CLOSED, ALERT):
            retry = next_attempt(protocol, [first], answer)
            if retry is not None:
                found.append((protocol, retry))
    found.append(
        (Protocol.TLSv1_2, Attempt("ECDHE-RSA-AES128-GCM-SHA256", legacy=False, sni=False, groups=("X25519",)))
    )
    found.append((Protocol.TLSv1_3, Attempt("TLS_AES_128_GCM_SHA256", legacy=False, groups=("secp256r1",))))
    return found


def sslyzes(peer: Peer, protocol: Protocol, attempt: Attempt, ignore_client_auth: bool) -> SslConnection:
    """The connection as sslyze's constructor makes it, then given the attempt's suites (what the adapter did)."""
    handshake = peer.handshake(1.0)
    connection = SslConnection(
        server_location=handshake.location,
        network_configuration=handshake.network,
        tls_version=_SSLYZE_VERSION[protocol],
        should_ignore_client_auth=ignore_client_auth,
        should_use_legacy_openssl=attempt.legacy,
        should_enable_server_name_indication=handshake.sni and attempt.sni,
    )
    if protocol is Protocol.TLSv1_3:
        assert isinstance(connection.ssl_client, SslClient)
        connection.ssl_client.set_ciphersuites(attempt.cipher_list)
    else:
        connection.ssl_client.set_cipher_list(attempt.cipher_list)
    if attempt.groups and isinstance(connection.ssl_client, SslClient):
        connection.ssl_client.set_groups([_GROUPS[g] for g in attempt.groups])
    return connection


def hello(connection: SslConnection) -> bytes:
    """The first flight the connection's client sends."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.05)
        connection.ssl_client.set_underlying_socket(ours)
        with pytest.raises((OSError, socket.timeout)):
            connection.ssl_client.do_handshake()  # sends the hello, then times out waiting for an answer
        return theirs.recv(65536)


@pytest.mark.parametrize("with_certificate", [False, True], ids=["no client certificate", "client certificate"])
@pytest.mark.parametrize("sni", [None, "example.test"], ids=["no SNI", "SNI"])
def test_our_connections_send_the_hello_sslyzes_sent(tmp_path: Path, sni: str | None, with_certificate: bool) -> None:
    client_cert = None
    if with_certificate:
        paths = make_cert(tmp_path, "client")
        client_cert = ClientCertificate(cert=str(paths.cert), key=str(paths.key))
    config = TargetConfig(name="t", host="example.test", sni=sni, client_cert=client_cert)
    peer = Peer(config, "192.0.2.1", credentials(config))
    checked = 0
    for protocol, attempt in attempts():
        for ignore in (False, True):
            if ignore and with_certificate:
                continue  # sslyze refuses the combination; the adapter never asks for it
            theirs = sslyzes(peer, protocol, attempt, ignore)
            handshake = peer.handshake(1.0)
            ours = _Connection.made(handshake, protocol, attempt, ignore)
            assert type(ours.ssl_client) is type(theirs.ssl_client), (protocol, attempt)
            if isinstance(ours.ssl_client, SslClient):
                assert ours.ssl_client.get_cipher_list() == theirs.ssl_client.get_cipher_list()
            mine, sslyze = hello(ours), hello(theirs)
            # The same length: the same suites and extensions (only the random parts differ).
            assert len(mine) == len(sslyze) > 40, (protocol, attempt)
            named = b"example.test" in sslyze
            assert (b"example.test" in mine) == named
            # No SSL hello carries extensions; every TLS one with a name and SNI on names it.
            assert named == (sni is not None and attempt.sni and protocol not in SSL), (protocol, attempt)
            checked += 1
    assert checked >= 14


def test_clients_share_a_context_only_with_the_same_settings() -> None:
    """A context takes the client-auth choice: a hello told to ignore a certificate request must not share one with
    hellos that are to hear of it (nor the two OpenSSLs, nor two versions)."""
    from nassl.legacy_ssl_client import LegacySslClient
    from nassl.ssl_client import OpenSslVersionEnum as V

    from scanner.engine.handshake import _shared_client

    def context(kind: type[SslClient] | type[LegacySslClient], version: V, ignore: bool) -> object:
        return _shared_client(kind, version, ignore)._ssl_ctx

    same = context(SslClient, V.TLSV1_2, False)
    assert context(SslClient, V.TLSV1_2, False) is same
    others = [
        context(SslClient, V.TLSV1_2, True),
        context(LegacySslClient, V.TLSV1_2, False),
        context(SslClient, V.TLSV1_3, False),
    ]
    assert all(other is not same for other in others) and len({id(o) for o in others}) == 3
