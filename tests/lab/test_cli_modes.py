"""The command line's modes: HOST[:PORT] targets with --once (no config needed), --config - from standard input, flags
of another mode refused, and a daemon that cannot listen leaving the state file alone."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from scanner.cli import DEFAULT_CONFIG, DEFAULT_FORMAT, DEFAULT_LISTEN_ADDRESS, DEFAULT_STATE_FILE, build_parser
from scanner.protocols import Protocol
from tests.lab.daemon import run_scanner
from tests.lab.servers import LabStack, closed_port

MODERN = {Protocol.TLSv1_2, Protocol.TLSv1_3}


def names(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [t["name"] for t in json.loads(proc.stdout)["targets"]]


def test_once_scans_targets_from_the_command_line_without_a_config(lab: LabStack, tmp_path: Path) -> None:
    """Like the sslyze CLI: no config file anywhere (tmp_path has no config/endpoints.yaml), built-in defaults."""
    e = lab.tls_server(MODERN)
    proc = run_scanner("--once", f"127.0.0.1:{e.port}", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (target,) = json.loads(proc.stdout)["targets"]
    assert (target["name"], target["host"], target["port"]) == (f"127.0.0.1:{e.port}", "127.0.0.1", e.port)
    assert target["protocols"] == {
        "SSLv2": "rejected", "SSLv3": "rejected", "TLSv1.0": "rejected",
        "TLSv1.1": "rejected", "TLSv1.2": "accepted", "TLSv1.3": "accepted",
    }  # fmt: skip
    assert target["expect"] == {"met": True, "violations": []}
    # Options and targets may be interleaved; the default format is the table.
    table = run_scanner(f"127.0.0.1:{e.port}", "--once", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:2] == ["TARGET", "ADDRESS"]


def test_ipv6_target_in_brackets(lab: LabStack, tmp_path: Path) -> None:
    try:
        e = lab.tls_server(MODERN, host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    proc = run_scanner("--once", f"[::1]:{e.port}", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (target,) = json.loads(proc.stdout)["targets"]
    assert (target["name"], target["host"], target["address"]) == (f"[::1]:{e.port}", "::1", "::1")
    assert target["protocols"]["TLSv1.3"] == "accepted"


def test_command_line_targets_join_the_config_and_a_name_is_scanned_once(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server(MODERN)
    with closed_port() as closed:
        config = tmp_path / "c.yaml"
        config.write_text(f"defaults: {{timeout: 2s}}\ntargets:\n  - {{host: 127.0.0.1, port: {e.port}, name: web}}\n")
        proc = run_scanner(
            "--once", "--config", str(config), "--format", "json",
            f"127.0.0.1:{closed.port}", "web", f"127.0.0.1:{closed.port}",
            cwd=tmp_path,
        )  # fmt: skip
        # "web" names the config's target (scanned once, as configured); the closed port, given twice, once.
        assert proc.returncode == 3, proc.stderr
        assert names(proc) == ["web", f"127.0.0.1:{closed.port}"]
        # Named by host:port in the config: the command line's same target is not scanned twice.
        config.write_text(f"targets:\n  - 127.0.0.1:{e.port}\n")
        proc = run_scanner("--once", "--config", str(config), "--format", "json", f"127.0.0.1:{e.port}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert names(proc) == [f"127.0.0.1:{e.port}"]


def test_a_bad_command_line_target_exits_2_and_scans_nothing(tmp_path: Path) -> None:
    proc = run_scanner("--once", "127.0.0.1:1", "127.0.0.1:99999", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("tls-scanner: <command line>:1: ") and "99999" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_from_standard_input(lab: LabStack, tmp_path: Path) -> None:
    e = lab.tls_server(MODERN)
    text = f"targets:\n  - {{host: 127.0.0.1, port: {e.port}, name: piped}}\n"
    proc = run_scanner("--once", "--config", "-", "--format", "json", cwd=tmp_path, stdin=text)
    assert proc.returncode == 0, proc.stderr
    assert names(proc) == ["piped"]
    check = run_scanner("--check-config", "--config", "-", cwd=tmp_path, stdin=text)
    assert check.returncode == 0 and check.stderr.endswith(": OK, 1 targets\n"), check.stderr
    bad = run_scanner("--check-config", "--config", "-", cwd=tmp_path, stdin="targets:\n  - {host: x, bogus: 1}\n")
    assert bad.returncode == 2 and ":2: " in bad.stderr and "bogus" in bad.stderr, bad.stderr


MISUSED = [
    (["--format", "json"], "--format only applies with --once"),
    (["--check-config", "--format", "json"], "--format only applies with --once"),
    (["127.0.0.1:1"], "HOST[:PORT] targets on the command line only apply with --once"),
    (["--check-config", "127.0.0.1:1"], "HOST[:PORT] targets on the command line only apply with --once"),
    (["--once", "--state-file", "s.db"], "--state-file only applies to the daemon, not with --once"),
    (["--once", "--web.listen-address=:1"], "--web.listen-address only applies to the daemon, not with --once"),
    (["--once", "--web.config.file", "web.yml"], "--web.config.file only applies to the daemon, not with --once"),
    (["--check-config", "--state-file", "s.db"], "--state-file only applies to the daemon, not with --check-config"),
    (["--once", "--no-config.watch"], "--config.watch only applies to the daemon, not with --once"),
    (["--check-config", "--config.watch"], "--config.watch only applies to the daemon, not with --check-config"),
    (
        ["--check-config", "--web.listen-address=127.0.0.1:1"],
        "--web.listen-address only applies to the daemon, not with --check-config",
    ),
    (
        ["--config", "-", "--web.listen-address", "127.0.0.1:1"],
        "--config - only applies with --once or --check-config: the daemon re-reads its config file on reload",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), MISUSED, ids=[" ".join(args) for args, _ in MISUSED])
def test_a_flag_of_another_mode_is_refused_not_ignored(tmp_path: Path, args: list[str], message: str) -> None:
    """Exit 2 with the reason, before anything is read, scanned, bound or written (no daemon starts)."""
    config = tmp_path / "c.yaml"
    config.write_text("targets:\n  - 127.0.0.1:1\n")
    proc = run_scanner("--config", str(config), *args, cwd=tmp_path, stdin="targets: [127.0.0.1:1]\n", timeout=30)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, f"tls-scanner: {message}\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_once_and_check_config_exclude_each_other(tmp_path: Path) -> None:
    proc = run_scanner("--once", "--check-config", "127.0.0.1:1", cwd=tmp_path, timeout=30)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr, proc.stderr


def test_check_config_validates_the_web_config_too(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("targets:\n  - 127.0.0.1:1\n")
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    good = run_scanner("--check-config", "--config", str(config), "--web.config.file", str(web), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
    bad = run_scanner("--check-config", "--config", str(config), "--web.config.file", str(web), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith(f"tls-scanner: {web}:3: "), bad.stderr


def test_a_daemon_that_cannot_listen_exits_2_before_touching_the_state_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("targets:\n  - 127.0.0.1:1\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_scanner(
            "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}", "--state-file", "state.db",
            cwd=tmp_path, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"tls-scanner: cannot listen on 127.0.0.1:{port}: " in proc.stderr, proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"], "the state file was created"
        # An existing file that is not a state file would be renamed aside by a daemon that opened it: left alone.
        (tmp_path / "state.db").write_bytes(b"not sqlite")
        proc = run_scanner(
            "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}", "--state-file", "state.db",
            cwd=tmp_path, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "state.db"]
    assert (tmp_path / "state.db").read_bytes() == b"not sqlite"


def test_help_states_the_real_defaults() -> None:
    """The defaults are applied after parsing (None tells "given" from "defaulted"); the help still names them."""
    text = " ".join(build_parser().format_help().split())
    for default in (DEFAULT_CONFIG, DEFAULT_FORMAT, DEFAULT_LISTEN_ADDRESS, DEFAULT_STATE_FILE):
        assert f"default {default}" in text, default
    assert "HOST[:PORT]" in text
