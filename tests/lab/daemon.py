"""Run `python -m scanner` as a real daemon subprocess on loopback, scrape it, and always stop it by pid."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.servers import Managed, child_pids, free_ports, stop_process
from tests.lab.servers import missing

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call probe every 50 ms until it returns something truthy, and return it; TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.05)


def require_binary(name: str, package: str) -> str:
    """Return the path of a tool; skip the test without it, or fail when CI is set."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing(name, f"{name} not installed (Debian package {package}; tests/run.sh installs it)")


@contextlib.contextmanager
def prometheus_server(directory: Path, config: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real Prometheus with `config` (prometheus.yml text) on a free loopback port: (process, port); stopped at
    the end, by pid."""
    binary = require_binary("prometheus", "prometheus")
    (port,) = free_ports(1)
    (directory / "prometheus.yml").write_text(config)
    args = [
        binary,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(args, cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield process, port
    finally:
        stop_process(process, 10)


def prometheus_query(port: int, query: str) -> dict[str, Any] | None:
    """The answer of Prometheus' instant query API, or None when it does not answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", f"/api/v1/query?query={quote(query)}")
        response = conn.getresponse()
        if response.status != 200:
            return None
        result: dict[str, Any] = json.loads(response.read())
        return result
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def write_config(path: Path, targets: Sequence[dict[str, Any]], **defaults: Any) -> Path:
    """Write a scanner config with `defaults` (interval 1s, timeout 2s, deep_interval 0 unless given) and targets."""
    document = {
        "defaults": {"interval": "1s", "timeout": "2s", "deep_interval": 0, **defaults},
        "targets": list(targets),
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def find(self, name: str, **labels: str) -> list[Sample]:
        """Samples called name whose labels include these."""
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample matching, None if there is none."""
        found = self.find(name, **labels)
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples of {name} match {labels}")
        return found[0].value if found else None

    def by_protocol(self, name: str, target: str) -> dict[str, float]:
        """protocol -> value of a per-protocol family for one target."""
        return {s.labels["protocol"]: s.value for s in self.find(name, target=target)}

    def targets(self) -> set[str]:
        """Every target named by any sample."""
        return {s.labels["target"] for s in self.samples if "target" in s.labels}


class Daemon(Managed):
    """`python -m scanner` serving on 127.0.0.1; output goes to a log file."""

    def __init__(self, config: Path, state_file: Path, log: Path, *extra: str) -> None:
        self.config = config
        self.state_file = state_file
        self.log = log
        self.extra = extra
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.tls: ssl.SSLContext | None = None  # set for a daemon serving HTTPS (--web.config.file)
        self.authorization: str | None = None  # an Authorization header sent with every request

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("daemon not running")
        return self.process.pid

    def start(self, timeout: float = 20.0) -> Self:
        """Start the daemon and wait until /-/healthy answers (a taken port is retried with another one)."""
        for _ in range(3):
            self.port = free_ports(1)[0]
            args = [
                sys.executable,
                "-m",
                "scanner",
                "--config",
                str(self.config),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                "--state-file",
                str(self.state_file),
                *self.extra,
            ]
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            process = self.process
            until(partial(self._up_or_exited, process), timeout, "the daemon to answer /-/healthy")
            if process.poll() is None:
                return self
            self.process = None
            if "address already in use" not in self.log_text().lower():
                break
        raise RuntimeError(f"daemon exited with {process.returncode}:\n{self.log_text()[-3000:]}")

    def _up_or_exited(self, process: subprocess.Popen[bytes]) -> bool:
        return process.poll() is not None or self._healthy()

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/-/healthy")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, timeout: float = 3.0) -> tuple[int, str, dict[str, str]]:
        """(status, body, headers) of one request to the daemon."""
        conn: http.client.HTTPConnection
        if self.tls is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.tls)
        try:
            headers = {} if self.authorization is None else {"Authorization": self.authorization}
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode(), dict(response.getheaders())
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, str]:
        status, body, _ = self.request("GET", path)
        return status, body

    def metrics(self) -> Scrape:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body}\n--- daemon log\n{self.log_text()[-3000:]}"
        return Scrape(body)

    def wait_metrics(self, predicate: Callable[[Scrape], bool], timeout: float, what: str) -> Scrape:
        """Scrape until predicate holds; return that scrape."""

        last: list[Scrape] = []

        def probe() -> Scrape | None:
            scrape = self.metrics()
            last[:] = [scrape]
            return scrape if predicate(scrape) else None

        try:
            return until(probe, timeout, what)
        except TimeoutError as exc:
            ours = [line for line in last[0].text.splitlines() if line.startswith("tls_scanner")] if last else []
            raise TimeoutError(
                f"{exc}\n--- last scrape\n" + "\n".join(ours) + f"\n--- daemon log\n{self.log_text()[-3000:]}"
            ) from None

    def wait_sweep(self, target: str, after: float = 0.0, timeout: float = 10.0) -> Scrape:
        """Wait until the target's last sweep ended after `after` (unix time)."""
        return self.wait_metrics(
            lambda s: (s.value("tls_scanner_last_scan_timestamp_seconds", target=target) or 0.0) > after,
            timeout,
            f"a sweep of {target} ending after {after}",
        )

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        if self.process is None:
            raise RuntimeError("daemon not running")
        return self.process.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL by pid and reap."""
        self.send(signal.SIGKILL)
        self.wait(10)
        self.process = None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by pid, SIGKILL if it does not exit within timeout; return the exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(5)
        return process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def run_once(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m scanner --config CONFIG --once ARGS`."""
    return run_scanner("--config", str(config), "--once", *args, timeout=timeout)


def run_scanner(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m scanner ARGS` from the repository, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "scanner", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def established_connections(pid: int, port: int) -> int:
    """TCP connections of process pid and its workers, ESTABLISHED to remote port `port` on 127.0.0.1 or ::1."""
    inodes: set[str] = set()
    for owner in (pid, *child_pids(pid)):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{owner}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def promtool_check(text: str) -> None:
    """`promtool check metrics` must be silent; without promtool this check is skipped (fails when CI is set)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "promtool is missing in CI (Debian package prometheus)"
        return
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
