"""STARTTLS: the matrix of a real SMTP server (aiosmtpd) upgraded with STARTTLS, and the starttls config key."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from scanner.config import StartTls, load_config
from scanner.errors import ConfigError
from tests.lab.daemon import run_once, run_scanner, write_config
from tests.lab.peers import smtp_server, smtp_tls_context
from tests.lab.servers import LabCerts

PROTOCOLS = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
STARTTLS_VALUES = ["smtp", "imap", "pop3", "ftp", "xmpp", "ldap", "postgres", "rdp"]


def matrix(accepted: set[str]) -> dict[str, str]:
    return {p: "accepted" if p in accepted else "rejected" for p in PROTOCOLS}


@pytest.mark.parametrize(
    ("low", "high", "accepted"),
    [
        (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, {"TLSv1.2", "TLSv1.3"}),
        (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, {"TLSv1.0", "TLSv1.1"}),
    ],
    ids=["tls12-13", "tls10-11"],
)
def test_smtp_starttls_matrix_follows_the_servers_versions(
    tmp_certs: LabCerts, tmp_path: Path, low: ssl.TLSVersion, high: ssl.TLSVersion, accepted: set[str]
) -> None:
    rejected = sorted(set(PROTOCOLS) - accepted - {"SSLv2", "SSLv3"})
    with smtp_server(smtp_tls_context(tmp_certs.server, low, high)) as smtp:
        config = write_config(
            tmp_path / "smtp.yaml",
            "targets:\n"
            f"  - host: 127.0.0.1\n    port: {smtp.port}\n    name: mail\n    starttls: smtp\n    timeout: 3s\n"
            f"    expect: {{accept: [{', '.join(sorted(accepted))}], reject: [{', '.join(rejected)}]}}\n",
        )
        proc = run_once(config, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (target,) = json.loads(proc.stdout)["targets"]
    assert target["name"] == "mail" and target["address"] == "127.0.0.1"
    assert target["protocols"] == matrix(accepted)
    assert target["error"] is None and target["complete"] is True
    assert target["expect"] == {"met": True, "violations": []}
    # A cipher name for each accepted version: the handshake completed after the STARTTLS upgrade.
    for protocol in accepted:
        assert target["details"][protocol] and "STARTTLS" not in target["details"][protocol]


def test_smtp_without_starttls_gives_errors_never_rejections(tmp_certs: LabCerts, tmp_path: Path) -> None:
    """An SMTP server that does not offer STARTTLS, and a STARTTLS server probed as if it spoke TLS directly."""
    modern = smtp_tls_context(tmp_certs.server, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    with smtp_server(None) as plain, smtp_server(modern) as capable:
        config = write_config(
            tmp_path / "smtp.yaml",
            "defaults: {timeout: 1s}\n"  # SSLv2's hello reads the SMTP banner as a huge record and times out
            "targets:\n"
            f"  - {{name: no-starttls, host: 127.0.0.1, port: {plain.port}, starttls: smtp}}\n"
            f"  - {{name: forgot-starttls, host: 127.0.0.1, port: {capable.port}}}\n",
        )
        proc = run_once(config, "--format", "json")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # incomplete: nothing could be determined
    no_starttls, forgot = json.loads(proc.stdout)["targets"]
    assert no_starttls["protocols"] == dict.fromkeys(PROTOCOLS, "error")
    assert "STARTTLS" in no_starttls["error"] and no_starttls["error_reason"] == "other"
    # The SMTP banner is not a TLS record: the peer is not a TLS server, which proves nothing about versions.
    assert forgot["protocols"] == dict.fromkeys(PROTOCOLS, "error")
    assert forgot["error"].startswith("not a TLS server") and forgot["error_reason"] == "tls"


def test_every_starttls_value_is_accepted(tmp_path: Path) -> None:
    lines = [f"  - {{host: mail.lab.test, port: {1000 + i}, starttls: {v}}}" for i, v in enumerate(STARTTLS_VALUES)]
    config = load_config(write_config(tmp_path / "endpoints.yaml", "targets:\n" + "\n".join(lines) + "\n"))
    assert [t.starttls for t in config.targets] == [StartTls(v) for v in STARTTLS_VALUES]
    assert all(t.http is None for t in config.targets)
    inherited = load_config(
        write_config(tmp_path / "endpoints.yaml", "defaults: {starttls: imap}\ntargets: [mail.lab.test:143]\n")
    )
    assert inherited.targets[0].starttls is StartTls.IMAP


@pytest.mark.parametrize("value", ["smtps", "SMTP", "xmpp_server", "25", "true", "[smtp]"])
def test_unknown_starttls_value_is_refused_at_its_line(tmp_path: Path, value: str) -> None:
    path = write_config(
        tmp_path / "endpoints.yaml", f"targets:\n  - host: mail.lab.test\n    port: 25\n    starttls: {value}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 4
    assert str(caught.value).startswith(f"{path}:4: starttls: expected one of {', '.join(STARTTLS_VALUES)}, got ")


def test_check_config_refuses_smtps_with_file_and_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "endpoints.yaml",
        "targets:\n  - mail.lab.test:587\n  - {host: mail.lab.test, port: 465, starttls: smtps}\n",
    )
    proc = run_scanner("--config", str(path), "--check-config")
    assert proc.returncode == 2
    assert f'{path}:3: starttls: expected one of {", ".join(STARTTLS_VALUES)}, got "smtps"' in proc.stderr


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("targets:\n  - host: mail.lab.test\n    starttls: smtp\n    http: true\n", 3),
        ("targets:\n  - host: mail.lab.test\n    http: {path: /}\n    starttls: pop3\n", 4),
        ("defaults:\n  http: true\ntargets:\n  - host: mail.lab.test\n    starttls: ftp\n", 5),
        ("defaults:\n  starttls: smtp\ntargets:\n  - mail.lab.test:25\n  - host: www.lab.test\n    http: true\n", 6),
    ],
    ids=["target-both", "target-both-reversed", "defaults-http", "defaults-starttls"],
)
def test_starttls_with_an_http_check_is_refused(tmp_path: Path, text: str, line: int) -> None:
    path = write_config(tmp_path / "endpoints.yaml", text)
    with pytest.raises(ConfigError, match="endpoints do not speak HTTP") as caught:
        load_config(path)
    assert caught.value.line == line, str(caught.value)


def test_starttls_target_may_switch_off_the_default_http_check(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "endpoints.yaml",
        "defaults: {http: true}\ntargets:\n  - {host: mail.lab.test, starttls: smtp, http: false}\n",
    )
    (target,) = load_config(path).targets
    assert target.starttls is StartTls.SMTP and target.http is None
