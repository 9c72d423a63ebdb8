"""The state file's disk fills up, and comes back: sweeping never stops, flips are seen, history is written later."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import NginxServer, free_ports
from tests.lab.daemon import Daemons, lab_config, run_scanner, write_config
from tests.lab.servers import NginxLabFactory

NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {result.stderr.decode()}")
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk with `dd` until it is full; the file to delete to free it."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)
    return filler


def test_a_full_disk_stops_no_sweep(
    nginx_lab: NginxLabFactory, small_disk: Path, start_daemon: Daemons, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, NGINX_ALL)])
    config = write_config(tmp_path / "c.yaml", lab_config([{"name": "web", "host": "127.0.0.1", "port": port}]))
    state = small_disk / "state.db"
    daemon = start_daemon(config, state=state)
    accepted = "tls_scanner_protocol_accepted"
    daemon.wait_metrics(lambda s: s.value(accepted, target="web", protocol="TLSv1.0") == 1, 15, "TLS 1.0 accepted")
    filler = fill(small_disk)
    nginx.reload([NginxServer("web", port, NGINX_MODERN)])
    scrape = daemon.wait_metrics(
        lambda s: s.value(accepted, target="web", protocol="TLSv1.0") == 0, 15, "the flip, with the disk full"
    )
    assert scrape.value("tls_scanner_protocol_changes_total", target="web", protocol="TLSv1.0") == 1
    scrape = daemon.wait_metrics(
        lambda s: s.value("tls_scanner_state_writable") == 0, 15, "the failed write to be exported"
    )
    errors = scrape.value("tls_scanner_state_write_errors_total") or 0
    assert errors >= 1
    last = scrape.value("tls_scanner_last_scan_timestamp_seconds", target="web") or 0
    daemon.wait_sweep("web", after=last, timeout=10)  # still sweeping
    assert daemon.log_text().count("cannot write the state file") == 1  # once, not once per sweep
    filler.unlink()
    daemon.wait_metrics(lambda s: s.value("tls_scanner_state_writable") == 1, 30, "the state file to be written")
    assert "writable again" in daemon.log_text()
    daemon.stop()
    with sqlite3.connect(state) as db:
        rows = db.execute(
            "SELECT protocol, old, new FROM transition WHERE target = 'web' AND kind = 'handshake' ORDER BY id"
        ).fetchall()
        changes = db.execute(
            "SELECT changes FROM protocol_state WHERE target = 'web' AND protocol = 'TLSv1.0'"
        ).fetchall()
    assert ("TLSv1.0", "accepted", "rejected") in rows and ("TLSv1.1", "accepted", "rejected") in rows
    assert changes == [(1,)]


@pytest.mark.parametrize("case", ["directory", "missing parent"])
def test_a_state_path_that_cannot_hold_the_file_exits_2_untouched(tmp_path: Path, case: str) -> None:
    config = write_config(
        tmp_path / "c.yaml", lab_config([{"name": "web", "host": "127.0.0.1", "port": free_ports(1)[0]}])
    )
    state = tmp_path / "state"
    if case == "directory":
        state.mkdir()
        (state / "keep").write_text("mine")
    else:
        state = tmp_path / "missing" / "state.db"
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    proc = run_scanner("--config", config, "--state-file", state, "--web.listen-address", listen, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tls-scanner: ") and "directory" in proc.stderr and "Traceback" not in proc.stderr
    if case == "directory":
        assert [p.name for p in state.iterdir()] == ["keep"]
    assert not list(tmp_path.glob("*.unusable-*"))
