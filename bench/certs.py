"""Throwaway PKI for the lab and the benchmarks: a CA, server and client certificates as PEM files."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertAuthority", "CertPaths", "make_cert"]


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
