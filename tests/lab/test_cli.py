"""`tls-scanner --once` and `--check-config`: formats, exit codes, and bad input refused cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scanner.protocols import Protocol
from tests.lab.daemon import REPO, finish, run_scanner, start_scanner, write_config
from tests.lab.servers import LabStack, closed_port


def test_once_json_all_met_exits_0(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    config = write_config(
        tmp_path / "endpoints.yaml",
        f"defaults: {{timeout: 2s, expect: {{accept: [TLSv1.2], reject: [TLSv1.0]}}}}\n"
        f"targets:\n  - {{host: 127.0.0.1, port: {e.port}, name: modern, labels: {{team: web}}}}\n",
    )
    proc = run_scanner("--once", "--config", config, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (target,) = doc["targets"]
    assert target["name"] == "modern" and target["port"] == e.port and target["address"] == "127.0.0.1"
    assert target["protocols"] == {
        "SSLv2": "rejected", "SSLv3": "rejected", "TLSv1.0": "rejected",
        "TLSv1.1": "rejected", "TLSv1.2": "accepted", "TLSv1.3": "accepted",
    }  # fmt: skip
    assert target["error"] is None
    assert target["expect"] == {"met": True, "violations": []}
    assert target["labels"] == {"team": "web"}
    assert 0 < target["duration_seconds"] < 10
    assert proc.stderr == ""  # no progress noise when stderr is not a terminal


def test_once_violation_exits_1_and_table_says_why(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server({Protocol.TLSv1_0, Protocol.TLSv1_2})
    config = write_config(
        tmp_path / "endpoints.yaml",
        f"targets:\n  - host: 127.0.0.1\n    port: {e.port}\n    expect: {{reject: [TLSv1.0]}}\n",
    )
    proc = run_scanner("--once", "--config", config)
    assert proc.returncode == 1
    header, row = proc.stdout.splitlines()[:2]
    assert header.split()[:8] == ["TARGET", "ADDRESS", "SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
    assert row.split()[:8] == [f"127.0.0.1:{e.port}", "127.0.0.1", "no", "no", "yes", "no", "yes", "no"]
    assert "TLSv1.0 expected rejected, is accepted" in proc.stdout


def test_once_unreachable_exits_3_and_violation_wins_over_errors(lab: LabStack, tmp_path: Path) -> None:
    with closed_port() as closed:
        config = write_config(tmp_path / "endpoints.yaml", f"targets:\n  - 127.0.0.1:{closed.port}\n")
        proc = run_scanner("--once", "--config", config, "--format", "json")
        assert proc.returncode == 3
        assert json.loads(proc.stdout)["targets"][0]["error"] == "connection refused"
        e = lab.tls_server({Protocol.TLSv1_2})
        config = write_config(
            tmp_path / "endpoints.yaml",
            f"targets:\n  - 127.0.0.1:{closed.port}\n"
            f"  - {{host: 127.0.0.1, port: {e.port}, expect: {{accept: [TLSv1.3]}}}}\n",
        )
        assert run_scanner("--once", "--config", config).returncode == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (tests/run.sh installs it)")
def test_once_prometheus_format_passes_promtool(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    config = write_config(
        tmp_path / "endpoints.yaml",
        f"targets:\n  - {{host: 127.0.0.1, port: {e.port}, name: web, labels: {{env: lab}}}}\n",
    )
    proc = run_scanner("--once", "--config", config, "--format", "prometheus")
    assert proc.returncode == 0, proc.stderr
    assert (
        'tls_scanner_protocol_accepted{address="127.0.0.1",env="lab",protocol="TLSv1.2",target="web"} 1.0'
        in proc.stdout
    )
    assert (
        'tls_scanner_protocol_accepted{address="127.0.0.1",env="lab",protocol="TLSv1.0",target="web"} 0.0'
        in proc.stdout
    )
    check = subprocess.run(["promtool", "check", "metrics"], input=proc.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_check_config(tmp_path: Path) -> None:
    good = run_scanner("--check-config", "--config", str(REPO / "config" / "endpoints.yaml"))
    assert good.returncode == 0, good.stderr
    bad = write_config(tmp_path / "endpoints.yaml", "targets:\n  - host: example.org\n    port: 70000\n")
    proc = run_scanner("--check-config", "--config", bad)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"tls-scanner: {bad}:3: ")
    assert "Traceback" not in proc.stderr


def test_bad_config_scans_nothing(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server({Protocol.TLSv1_2})
    bad = write_config(tmp_path / "endpoints.yaml", f"targets:\n  - 127.0.0.1:{e.port}\n  - {{host: x, bogus: 1}}\n")
    for mode in (["--once"], []):
        proc = run_scanner(*mode, "--config", bad)
        assert proc.returncode == 2
        assert f"{bad}:3:" in proc.stderr and "bogus" in proc.stderr
        assert proc.stdout == ""


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = run_scanner("--once", "--format", "xml")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    with closed_port() as closed:  # loopback only, should the daemon ever start
        config = write_config(tmp_path / "endpoints.yaml", f"targets:\n  - 127.0.0.1:{closed.port}\n")
        proc = run_scanner("--config", config, "--web.listen-address", "nowhere")
    assert proc.returncode == 2
    assert "--web.listen-address" in proc.stderr


def test_progress_goes_to_a_terminal(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server({Protocol.TLSv1_2})
    config = write_config(
        tmp_path / "endpoints.yaml",
        "targets:\n" + "".join(f"  - {{name: t{i}, host: 127.0.0.1, port: {e.port}}}\n" for i in range(3)),
    )
    controller, terminal = os.openpty()
    try:
        proc = finish(start_scanner("--once", "--config", config, "--format", "json", stderr=terminal))
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert b"scanned 3/3 targets" in seen
    assert len(json.loads(proc.stdout)["targets"]) == 3  # progress never leaks into the report
