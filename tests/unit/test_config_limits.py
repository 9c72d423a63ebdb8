"""Tests for the config's bounds: only regular files or standard input, at most 16 MiB, aliases that cannot fan out,
merge chains deeper than Python's recursion limit. Each refusal is one `PATH:LINE: message`, and comes at once: the
slow cases run under a guard that fails the test instead of hanging the suite."""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from scanner.config import MAX_CONFIG_BYTES, STDIN, Config, SafeConfig, load_config, parse_config
from scanner.errors import ConfigError

TOO_LARGE = "config is larger than 16 MiB"
ALIASES = "YAML aliases expand the config past 1000000 nodes here (each alias repeats its anchor)"
VALID = "targets:\n  - python.org\n"


def _outcome(load: Callable[[], Config], seconds: float = 30.0) -> Config | ConfigError:
    """Run `load` in a thread: its Config or its ConfigError; fail (not hang) if it is still running after `seconds`."""
    outcome: list[Config | BaseException] = []

    def run() -> None:
        try:
            outcome.append(load())
        except BaseException as exc:  # handed to the test thread below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still loading after {seconds} s: it should have answered at once"
    (result,) = outcome
    if isinstance(result, BaseException) and not isinstance(result, ConfigError):
        raise result
    return result


def _error(load: Callable[[], Config]) -> ConfigError:
    result = _outcome(load)
    assert isinstance(result, ConfigError), f"accepted: {result}"
    return result


# --- What is read -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_refused_before_reading(device: str) -> None:
    message = "cannot read config: a character device, not a regular file (for standard input use -)"
    assert str(_error(lambda: load_config(device))) == f"{device}:1: {message}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    message = "cannot read config: a FIFO, not a regular file (for standard input use -)"
    assert str(_error(lambda: load_config(fifo))) == f"{fifo}:1: {message}"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_socket_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    if len(str(path)) > 100:
        pytest.skip("temporary directory too deep for a Unix socket path")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        message = "cannot read config: a socket, not a regular file (for standard input use -)"
        assert str(_error(lambda: load_config(path))) == f"{path}:1: {message}"


def test_nul_in_path(tmp_path: Path) -> None:
    path = f"{tmp_path}/a\0b.yaml"
    assert _error(lambda: load_config(path)).message == "cannot read config: embedded null byte"


@pytest.mark.parametrize("size", [MAX_CONFIG_BYTES + 1, 50 * 1000 * 1000], ids=["16MiB+1", "50MB"])
def test_file_larger_than_16_mib(tmp_path: Path, size: int) -> None:
    path = tmp_path / "config.yaml"
    with path.open("wb") as file:  # sparse: costs no disk
        file.write(VALID.encode())
        file.truncate(size)
    assert str(_error(lambda: load_config(path))) == f"{path}:1: {TOO_LARGE}"


def test_file_of_16_mib_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\0" * MAX_CONFIG_BYTES)  # read whole, then refused for what it holds
    assert str(_error(lambda: load_config(path))) == f"{path}:1: not a text file (binary or not UTF-8)"


def test_text_larger_than_16_mib(tmp_path: Path) -> None:
    text = VALID + "#" + "é" * (MAX_CONFIG_BYTES // 2)  # fewer characters than 16 Mi, more bytes
    assert str(_error(lambda: parse_config(text, "big.yaml"))) == f"big.yaml:1: {TOO_LARGE}"


# --- Standard input and parse_config -------------------------------------------------------------------------------


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_config_from_stdin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _stdin(monkeypatch, VALID.encode())
    config = load_config("-")
    assert config.path == STDIN == "<stdin>"
    path = tmp_path / "config.yaml"
    path.write_text(VALID)
    assert config.targets == load_config(path).targets


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        (b"targets:\n  - port: 443\n", 2, 'target: missing required key "host"'),
        (b"", 1, 'config is empty: expected a mapping with a "targets" list'),
        (b"\xff\xfe", 1, "not a text file (binary or not UTF-8)"),
        (VALID.encode() + b"#" * MAX_CONFIG_BYTES, 1, TOO_LARGE),
    ],
    ids=["invalid", "empty", "binary", "too-large"],
)
def test_stdin_errors_name_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes, line: int, message: str) -> None:
    _stdin(monkeypatch, data)
    assert str(_error(lambda: load_config("-"))) == f"<stdin>:{line}: {message}"


def test_stdin_config_is_kept_on_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, VALID.encode())
    safe = SafeConfig(load_config("-"))
    before = safe.config
    _stdin(monkeypatch, b"targets: [other.example]\n")  # standard input cannot be read a second time
    assert safe.reload() is before and safe.reload_successful


def test_parse_config_is_load_config_without_the_file(tmp_path: Path) -> None:
    text = "defaults:\n  timeout: 2s\ntargets:\n  - python.org\n  - host: pypi.org\n    confirm_sweeps: 3\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert parse_config(text, str(path)) == load_config(path)
    assert parse_config(text, "<command line>").path == "<command line>"
    assert str(_error(lambda: parse_config("targets: [a..b]\n", "<command line>"))) == (
        '<command line>:1: host "a..b" is not a valid host name'
    )


# --- Aliases and merges -------------------------------------------------------------------------------------------


def test_nested_merges_fanning_out_to_ten_million_targets() -> None:
    lines = ["targets:", "  - &t0 {host: a.example, labels: {x: '1'}}"]
    for level in range(1, 8):  # t7 stands for 10**7 copies of t0
        lines.append(f"  - &t{level} {{<<: [{', '.join([f'*t{level - 1}'] * 10)}], name: n{level}}}")
    error = _error(lambda: parse_config("\n".join(lines) + "\n", "fan.yaml"))
    assert str(error) == f"fan.yaml:8: {ALIASES}"


def test_billion_laughs_in_a_list() -> None:
    lines = ["defaults:", "  labels:", "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines.append("targets: [python.org]")
    assert str(_error(lambda: parse_config("\n".join(lines) + "\n", "lol.yaml"))) == f"lol.yaml:8: {ALIASES}"


def _label_chain(depth: int) -> str:
    """Each target's labels merge the previous target's: a merge chain `depth` deep."""
    lines = ["defaults:", "  labels: &l0 {team: infra}", "targets:"]
    lines += [f"  - {{host: a{i}.example, labels: &l{i} {{<<: *l{i - 1}}}}}" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def _with_recursion_limit(limit: int, load: Callable[[], Config]) -> Callable[[], Config]:
    def run() -> Config:
        before = sys.getrecursionlimit()
        sys.setrecursionlimit(limit)
        try:
            return load()
        finally:
            sys.setrecursionlimit(before)

    return run


def test_merge_chain_deeper_than_the_recursion_limit() -> None:
    # 600 merges deep under a limit of 300 calls: following merges by recursion would raise RecursionError.
    result = _outcome(_with_recursion_limit(300, lambda: parse_config(_label_chain(600), "chain.yaml")))
    assert isinstance(result, Config)
    assert len(result.targets) == 600 and result.targets[-1].labels == (("team", "infra"),)


def test_merge_chain_of_1500_refused() -> None:
    assert str(_error(lambda: parse_config(_label_chain(1500), "chain.yaml"))) == f"chain.yaml:1003: {ALIASES}"


def test_shared_defaults_by_alias_are_fine() -> None:
    lines = ["targets:", "  - &common {host: a0.example, timeout: 2s, labels: {team: infra, env: prod}}"]
    lines += [f"  - {{<<: *common, host: a{i}.example}}" for i in range(1, 2000)]
    config = _outcome(lambda: parse_config("\n".join(lines) + "\n", "shared.yaml"))
    assert isinstance(config, Config) and len(config.targets) == 2000
    assert {t.labels for t in config.targets} == {(("env", "prod"), ("team", "infra"))}
