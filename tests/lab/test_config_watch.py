"""--config.watch: a daemon on a ConfigMap-style symlinked config reloads itself on an edit or a `..data` swap."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from cryptography import x509

from bench.certs import CertPaths
from bench.servers import wait_for
from scanner.protocols import Protocol as P
from tests.lab.daemon import ConfigMapVolume, Daemon, Daemons, basic, lab_config
from tests.lab.servers import LabCerts, LabStack

RELOAD_OK = "tls_scanner_config_last_reload_successful"
LAST_SCAN = "tls_scanner_last_scan_timestamp_seconds"
PICKUP_SECONDS = 5.0  # the issue's bound: a change is in force this soon, with no signal


def config_text(targets: dict[str, int], **extra: Any) -> str:
    """A lab config of these targets on 127.0.0.1 (extra: more top-level keys), as YAML text."""
    config = lab_config([{"name": name, "host": "127.0.0.1", "port": port} for name, port in targets.items()])
    return yaml.safe_dump(config | extra, sort_keys=False)


def api_targets(d: Daemon) -> list[str]:
    status, body = d.get("/api/v1/targets")
    assert status == 200, body
    return [t["name"] for t in json.loads(body)["targets"]]


def wait_targets(d: Daemon, want: list[str], what: str) -> float:
    """Wait (at most PICKUP_SECONDS) until the daemon's targets are `want`; returns how long it took."""
    began = time.monotonic()
    wait_for(lambda: api_targets(d) == want, PICKUP_SECONDS, what=f"{what}: targets {want}")
    return time.monotonic() - began


def test_configmap_edit_and_data_swap_reload_without_a_signal(
    lab: LabStack, start_daemon: Daemons, tmp_path: Path
) -> None:
    """An in-place edit and an atomic `..data` swap each apply within 5 s; a broken one keeps the old targets."""
    ports = {name: lab.tls_server({P.TLSv1_2, P.TLSv1_3}).port for name in ("first", "second", "third")}
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish({"endpoints.yaml": config_text({"first": ports["first"]})})
    config = volume.path("endpoints.yaml")
    d = start_daemon(config, debug=True)
    d.wait_sweep("first", timeout=10)

    # In place, through the symlinks (what `kubectl cp` or an editor on the node would do).
    (tmp_path / "config" / "..data" / "endpoints.yaml").write_text(
        config_text({"first": ports["first"], "second": ports["second"]})
    )
    took_edit = wait_targets(d, ["first", "second"], "the in-place edit")
    d.wait_sweep("second", timeout=10)

    # The kubelet's way: a new directory, `..data` swapped to it; the file watched is never written.
    volume.publish({"endpoints.yaml": config_text({"first": ports["first"], "third": ports["third"]})})
    took_swap = wait_targets(d, ["first", "third"], "the ..data swap")
    d.wait_sweep("third", timeout=10)
    assert d.metrics().value(RELOAD_OK) == 1

    # A broken update: the old targets stay in force and keep being swept, the error is logged once with PATH:LINE.
    volume.publish({"endpoints.yaml": config_text({"first": ports["first"]}, colour="blue")})
    d.wait_metrics(lambda s: s.value(RELOAD_OK) == 0, PICKUP_SECONDS, "the broken update to show")
    broken_at = time.time()
    d.wait_sweep("first", after=broken_at, timeout=5)
    d.wait_sweep("third", after=broken_at, timeout=5)
    assert api_targets(d) == ["first", "third"]
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if text.startswith("colour:"))
    failure = f"config reload failed, keeping the old config: {config}:{line}: unknown key"
    assert d.log_text().count(failure) == 1, d.log_text()[-3000:]

    volume.publish({"endpoints.yaml": config_text({"second": ports["second"]})})
    wait_targets(d, ["second"], "the fixed update")
    assert d.metrics().value(RELOAD_OK) == 1
    assert d.log_text().count(failure) == 1  # the broken file was not reported again at each check
    print(f"picked up: in-place edit {took_edit:.2f}s, ..data swap {took_swap:.2f}s")


def test_no_config_watch_waits_for_a_signal(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """With --no-config.watch an edit changes nothing until SIGHUP, as before."""
    ports = {name: lab.tls_server({P.TLSv1_3}).port for name in ("first", "second")}
    config = tmp_path / "c.yaml"
    config.write_text(config_text({"first": ports["first"]}))
    d = start_daemon(config, "--no-config.watch")
    config.write_text(config_text({"first": ports["first"], "second": ports["second"]}))
    time.sleep(2.5)  # more than two checks' worth
    assert api_targets(d) == ["first"]
    d.send(signal.SIGHUP)
    wait_targets(d, ["first", "second"], "the SIGHUP")


def test_web_config_change_applies_without_a_signal(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """A new password in the watched web config (a Secret, mounted the same way) is in force within 5 s."""
    volume = ConfigMapVolume(tmp_path / "web")

    def users(password: str) -> str:
        return yaml.safe_dump(
            {"basic_auth_users": {"alice": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}}
        )

    volume.publish({"web.yml": users("old secret")})
    config = tmp_path / "c.yaml"
    config.write_text(config_text({"first": lab.tls_server({P.TLSv1_3}).port}))
    web = str(volume.path("web.yml"))
    d = start_daemon(config, "--web.config.file", web, authorization=basic("alice", "old secret"))

    def answers(password: str) -> int:
        d.authorization = basic("alice", password)
        return d.get("/api/v1/targets")[0]

    assert (answers("old secret"), answers("new secret")) == (200, 401)
    volume.publish({"web.yml": users("new secret")})
    wait_for(lambda: answers("new secret") == 200, PICKUP_SECONDS, what="the new password")
    assert answers("old secret") == 401
    assert "web config reloaded from" in d.log_text()
    d.authorization = basic("alice", "new secret")
    assert d.metrics().value(RELOAD_OK) == 1

    # A broken web config keeps the new password in force and says so in the reload gauge, until it is fixed.
    volume.publish({"web.yml": "basic_auth_users: [alice]\n"})
    d.wait_metrics(lambda s: s.value(RELOAD_OK) == 0, PICKUP_SECONDS, "the broken web config to show")
    assert answers("new secret") == 200
    assert d.log_text().count("web config reload failed") == 1
    volume.publish({"web.yml": users("new secret")})
    d.wait_metrics(lambda s: s.value(RELOAD_OK) == 1, PICKUP_SECONDS, "the fixed web config to show")


def test_renewed_certificate_in_a_secret_is_served_without_a_signal(
    lab: LabStack, tmp_certs: LabCerts, start_daemon: Daemons, tmp_path: Path
) -> None:
    """The web config's cert_file and key_file are watched too: a Secret swapped to a renewed certificate (what
    cert-manager does) is served on new connections within 5 s, though the web config itself did not change."""
    volume = ConfigMapVolume(tmp_path / "tls")

    def publish(cert: CertPaths) -> None:
        volume.publish({"tls.crt": cert.cert.read_text(), "tls.key": cert.key.read_text()})

    publish(tmp_certs.server)
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {"tls_server_config": {"cert_file": str(volume.path("tls.crt")), "key_file": str(volume.path("tls.key"))}}
        )
    )
    config = tmp_path / "c.yaml"
    config.write_text(config_text({"first": lab.tls_server({P.TLSv1_3}).port}))
    client = ssl.create_default_context(cafile=str(tmp_certs.ca.paths.cert))
    d = start_daemon(config, "--web.config.file", str(web), tls=client)

    def served_serial() -> int:
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as sock:
            with client.wrap_socket(sock, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    before = served_serial()
    publish(tmp_certs.ca.issue("localhost", stem="renewed-in-secret"))
    wait_for(lambda: served_serial() != before, PICKUP_SECONDS, what="the renewed certificate to be served")
    assert d.get("/-/healthy")[0] == 200
    assert d.log_text().count("web config reloaded from") == 1  # the certificate and key changed together: one reload
