"""The recipes the README gives work as written: the node_exporter textfile cron line, and `bash deploy/run.sh`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import free_ports, wait_for
from scanner.protocols import Protocol
from tests.lab.daemon import answers_ok
from tests.lab.servers import LabCerts, LabStack, closed_port
from tests.lab.test_readme import blocks, section

REPO = Path(__file__).resolve().parents[2]
TEXTFILE_DIR = "/var/lib/node_exporter"
SCANNER = "/opt/tls-scanner/bin/tls-scanner"
CONFIG = "/etc/tls-scanner/endpoints.yaml"


def scanner_wrapper(directory: Path) -> Path:
    """An executable `tls-scanner` running this checkout with the test's interpreter, wherever it is called from."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "tls-scanner"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m scanner "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


# --- the textfile collector's cron line ------------------------------------------------------------------------------


def cron_line() -> str:
    """The crontab line of the README's One-shot use section."""
    (line,) = [
        line for block in blocks(section("One-shot use"), "sh") for line in block.splitlines() if line.startswith("*/")
    ]
    return line


def cron_command(line: str) -> tuple[str, str]:
    """(command, standard input) as cron runs a crontab line: after the five time fields, an unescaped % ends the
    command (the rest, % as newlines, is its input), and \\% is a plain %."""
    command = re.split(r"\s+", line, maxsplit=5)[5]
    parts = re.split(r"(?<!\\)%", command)
    return parts[0].replace("\\%", "%"), "\n".join(parts[1:]).replace("\\%", "%")


def test_cron_line_splits_like_cron() -> None:
    assert cron_command("*/5 * * * * a \\%s b%c%d") == ("a %s b", "c\nd")


@pytest.fixture
def textfile(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """(textfile directory, scanner config path, the README's cron command with its paths pointed at these)."""
    command, stdin = cron_command(cron_line())
    assert stdin == "", "the cron line has an unescaped %: cron would cut the command there"
    for path in (TEXTFILE_DIR, SCANNER, CONFIG):
        assert path in command, f"the recipe no longer names {path}; update this test"
    directory = tmp_path / "node_exporter"
    directory.mkdir()
    config = tmp_path / "endpoints.yaml"
    wrapper = scanner_wrapper(tmp_path / "bin")
    command = command.replace(TEXTFILE_DIR, str(directory)).replace(SCANNER, str(wrapper)).replace(CONFIG, str(config))
    yield directory, config, command


def run_cron(command: str, home: Path) -> None:
    """Run the command as cron does: `sh -c`, from the home directory, with cron's minimal PATH."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "SHELL": "/bin/sh"}
    subprocess.run(["/bin/sh", "-c", command], cwd=home, env=env, timeout=120, check=False, capture_output=True)


def exit_code(config: Path, tmp_path: Path) -> int:
    """What the scanner itself exits with on this config (to know which case the recipe just met)."""
    wrapper = scanner_wrapper(tmp_path / "bin")
    args = [str(wrapper), "--once", "--format", "prometheus", "--config", str(config)]
    return subprocess.run(args, capture_output=True, timeout=120, check=False).returncode


def publish_old_file(directory: Path) -> Path:
    published = directory / "tls.prom"
    published.write_text("# the previous report\n")
    an_hour_ago = time.time() - 3600
    os.utime(published, (an_hour_ago, an_hour_ago))
    return published


def test_cron_recipe_publishes_the_report_when_a_target_cannot_be_scanned(
    textfile: tuple[Path, Path, str], tmp_path: Path
) -> None:
    directory, config, command = textfile
    published = publish_old_file(directory)
    with closed_port() as closed:
        config.write_text(f"targets:\n  - 127.0.0.1:{closed.port}\n")
        assert exit_code(config, tmp_path) == 3
        started = time.time()
        run_cron(command, tmp_path)
    assert [p.name for p in directory.iterdir()] == ["tls.prom"], "a temporary file was left behind"
    text = published.read_text()
    assert f'tls_scanner_scan_success{{target="127.0.0.1:{closed.port}"}} 0.0' in text, text
    assert published.stat().st_mtime >= started - 1


def test_cron_recipe_publishes_the_report_when_a_policy_is_violated(
    textfile: tuple[Path, Path, str], lab: LabStack, tmp_path: Path
) -> None:
    directory, config, command = textfile
    published = publish_old_file(directory)
    server = lab.tls_server({Protocol.TLSv1_2})
    config.write_text(
        f"targets:\n  - {{host: 127.0.0.1, port: {server.port}, name: web, expect: {{accept: [TLSv1.3]}}}}\n"
    )
    assert exit_code(config, tmp_path) == 1
    run_cron(command, tmp_path)
    assert [p.name for p in directory.iterdir()] == ["tls.prom"]
    text = published.read_text()
    assert 'tls_scanner_expectation_met{target="web"} 0.0' in text, text
    assert 'tls_scanner_protocol_accepted{address="127.0.0.1",protocol="TLSv1.2",target="web"} 1.0' in text


def test_cron_recipe_keeps_the_previous_report_when_nothing_was_scanned(
    textfile: tuple[Path, Path, str], tmp_path: Path
) -> None:
    directory, config, command = textfile
    published = publish_old_file(directory)
    before = published.stat().st_mtime
    config.write_text("targets:\n  - {host: 127.0.0.1, bogus: 1}\n")
    assert exit_code(config, tmp_path) == 2
    run_cron(command, tmp_path)
    assert [p.name for p in directory.iterdir()] == ["tls.prom"], "a temporary file was left behind"
    assert published.read_text() == "# the previous report\n" and published.stat().st_mtime == before


def test_cron_recipe_creates_the_report_the_first_time(
    textfile: tuple[Path, Path, str], lab: LabStack, tmp_path: Path
) -> None:
    directory, config, command = textfile
    server = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    config.write_text(f"targets:\n  - {{host: 127.0.0.1, port: {server.port}, name: web}}\n")
    assert exit_code(config, tmp_path) == 0
    run_cron(command, tmp_path)
    assert [p.name for p in directory.iterdir()] == ["tls.prom"]
    assert 'tls_scanner_scan_success{target="web"} 1.0' in (directory / "tls.prom").read_text()


# --- deploy/run.sh ---------------------------------------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with deploy/run.sh and the files it hashes, and a .venv whose pip only records that it ran (the
    real install needs the network) and whose tls-scanner is this checkout's."""
    if subprocess.run(["python3", "-c", "import venv, ensurepip"], capture_output=True, check=False).returncode:
        pytest.skip("python3 has no venv/ensurepip here: run.sh would apt-get install python3-venv")
    root = tmp_path / "checkout"
    (root / "deploy").mkdir(parents=True)
    for name in ("deploy/run.sh", "deploy/constraints.txt", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    bin_dir = root / ".venv" / "bin"
    scanner_wrapper(bin_dir)
    (bin_dir / "python").symlink_to(sys.executable)
    pip = bin_dir / "pip"
    pip.write_text(f'#!/bin/sh\necho "pip $*" >>"{root}/pip.log"\n')
    pip.chmod(0o755)
    return root


def start_run_sh(root: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`bash deploy/run.sh ARGS` from elsewhere; it execs the daemon, so the pid is the daemon's."""
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", str(root / "deploy" / "run.sh"), *args],
            cwd=root.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def healthy(url: str) -> bool:
    match = re.fullmatch(r"(https?)://([^/]+):(\d+)/", url)
    assert match, url
    scheme, host, port = match.groups()
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return answers_ok(int(port), "/-/healthy", host=host, tls=context)
    return answers_ok(int(port), "/-/healthy", host=host)


def serve_once(root: Path, log: Path, port: int, *extra: str) -> str:
    """Start run.sh on a lab config and port, wait until the URL it printed answers, stop it by pid; its output."""
    config = root / "lab.yaml"
    with closed_port() as closed:  # a loopback port nothing listens on: the daemon's one target
        config.write_text(f"defaults: {{interval: 1h, timeout: 1s}}\ntargets:\n  - 127.0.0.1:{closed.port}\n")
    process = start_run_sh(root, log, "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}", *extra)
    try:

        def up() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"run.sh exited with {process.returncode}:\n{log.read_text()}")
            found = re.search(r"serves (\S+/)", log.read_text())
            return found.group(1) if found and healthy(found.group(1)) else None

        url = wait_for(up, 30, what="run.sh to print its URL and the daemon to answer on it")
        assert url.endswith(f"127.0.0.1:{port}/")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
    assert process.returncode == 0, log.read_text()
    return log.read_text()


def pip_runs(root: Path) -> list[str]:
    log = root / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_run_sh_installs_once_and_prints_the_url_it_serves(checkout: Path, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    first = serve_once(checkout, tmp_path / "first.log", port)
    assert "installing" in first and f"http://127.0.0.1:{port}/" in first, first
    assert pip_runs(checkout) == ["pip install -q --disable-pip-version-check -c deploy/constraints.txt -e ."]
    second = serve_once(checkout, tmp_path / "second.log", port)
    assert "installing" not in second and f"http://127.0.0.1:{port}/" in second, second
    assert len(pip_runs(checkout)) == 1, "the second start ran pip install"
    # A change to the pinned dependencies installs again, once.
    with (checkout / "deploy" / "constraints.txt").open("a") as constraints:
        constraints.write("# changed\n")
    assert "installing" in serve_once(checkout, tmp_path / "third.log", port)
    assert "installing" not in serve_once(checkout, tmp_path / "fourth.log", port)
    assert len(pip_runs(checkout)) == 2


def test_run_sh_prints_https_when_the_web_config_has_tls(checkout: Path, tmp_certs: LabCerts, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {tmp_certs.server.cert}\n  key_file: {tmp_certs.server.key}\n")
    (port,) = free_ports(1)
    output = serve_once(checkout, tmp_path / "tls.log", port, f"--web.config.file={web}")
    assert f"https://127.0.0.1:{port}/" in output, output


def test_run_sh_says_nothing_of_a_url_for_one_shot_runs(checkout: Path, tmp_path: Path) -> None:
    with closed_port() as closed:
        result = subprocess.run(
            ["bash", str(checkout / "deploy" / "run.sh"), "--once", f"127.0.0.1:{closed.port}", "--format", "json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("{") and "serves" not in result.stdout + result.stderr
