"""`python -m scanner` in the lab: write its config (write_config, lab_config), run the CLI to its end (run_scanner,
run_once), run the daemon on loopback (Daemon, Daemons behind the start_daemon fixture), scrape it; every process is
stopped by pid."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import quote

import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.servers import Managed, child_pids, free_ports, stop_process, wait_for
from tests.lab.servers import missing

REPO = Path(__file__).resolve().parents[2]
Completed = subprocess.CompletedProcess[str]


def require_binary(name: str, package: str) -> str:
    """Return the path of a tool; skip the test without it, or fail when CI is set."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing(name, f"{name} not installed (Debian package {package}; tests/run.sh installs it)")


@contextlib.contextmanager
def prometheus_server(
    directory: Path, config: str, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real Prometheus with `config` (prometheus.yml text) on loopback (port, or a free one): (process, port);
    stopped at the end, by pid."""
    binary = require_binary("prometheus", "prometheus")
    if port is None:
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


def answers_ok(port: int, path: str, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> bool:
    """Tell whether GET path answers 200 (False while nothing accepts the connection)."""
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection(host, port, timeout=2)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=2, context=tls)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


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


def basic(user: str, password: str) -> str:
    """The Authorization header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def lab_config(targets: Sequence[Mapping[str, Any]], **defaults: Any) -> dict[str, Any]:
    """A config document: targets, with defaults that sweep fast (interval 1s, timeout 2s, deep_interval 0 unless
    given)."""
    return {
        "defaults": {"interval": "1s", "timeout": "2s", "deep_interval": 0, **defaults},
        "targets": list(targets),
    }


def write_config(path: Path, config: str | Mapping[str, Any]) -> Path:
    """Write a scanner config, YAML text as it is or a document dumped in its own key order; return path."""
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False), "utf-8")
    return path


class ConfigMapVolume:
    """A directory laid out as the kubelet mounts a ConfigMap: each key a symlink through `..data` -> `..TIMESTAMP`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        root.mkdir()

    def publish(self, files: dict[str, str]) -> None:
        """Write a new timestamped directory and swap `..data` to it atomically, as the kubelet's AtomicWriter does."""
        self.versions += 1
        data = self.root / f"..2026_12_04_10_00_{self.versions:02d}.{os.getpid()}"
        data.mkdir()
        for name, text in files.items():
            (data / name).write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, self.root / "..data")
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")

    def path(self, name: str) -> Path:
        return self.root / name


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

    def __init__(
        self,
        config: Path,
        state_file: Path,
        log: Path,
        *extra: str,
        tls: ssl.SSLContext | None = None,
        authorization: str | None = None,
    ) -> None:
        self.config = config
        self.state_file = state_file
        self.log = log
        self.extra = extra
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.tls = tls  # for a daemon serving HTTPS (--web.config.file)
        self.authorization = authorization  # an Authorization header sent with every request

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("daemon not running")
        return self.process.pid

    def start(self, timeout: float = 20.0) -> Self:
        """Start the daemon and wait until /-/healthy answers (a taken port is retried with another one)."""
        for _ in range(3):
            self.port = free_ports(1)[0]
            args = ("--config", self.config, "--web.listen-address", f"127.0.0.1:{self.port}")
            with self.log.open("ab") as log:
                self.process = start_scanner(
                    *args, "--state-file", self.state_file, *self.extra, stdout=log, stderr=log, new_session=True
                )
            process = self.process
            wait_for(
                partial(self._up_or_exited, process), timeout, interval=0.05, what="the daemon to answer /-/healthy"
            )
            if process.poll() is None:
                return self
            self.process = None
            if "address already in use" not in self.log_text().lower():
                break
        raise RuntimeError(f"daemon exited with {process.returncode}:\n{self.log_text()[-3000:]}")

    def _up_or_exited(self, process: subprocess.Popen[str]) -> bool:
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
            return wait_for(probe, timeout, interval=0.05, what=what)
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
            stop_process(process, timeout)
        return process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Daemons:
    """Starts daemons whose state file and logs live in one directory; close() stops every one still running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Daemon] = []

    def __call__(
        self,
        config: Path,
        *extra: str,
        state: str | Path = "state.db",
        debug: bool = False,
        tls: ssl.SSLContext | None = None,
        authorization: str | None = None,
    ) -> Daemon:
        """Start a daemon on config with extra flags (debug: --log-level debug); its log is daemon-N.log, its state
        file `state` (relative to the directory)."""
        log = self.directory / f"daemon-{len(self.started)}.log"
        flags = (*(("--log-level", "debug") if debug else ()), *extra)
        daemon = Daemon(config, self.directory / state, log, *flags, tls=tls, authorization=authorization)
        self.started.append(daemon)
        return daemon.start()

    def close(self) -> None:
        """Stop every daemon started here, by pid."""
        for daemon in self.started:
            daemon.stop()


def start_scanner(
    *args: str | Path,
    cwd: Path = REPO,
    stdin: int = subprocess.DEVNULL,
    stdout: int | IO[Any] = subprocess.PIPE,
    stderr: int | IO[Any] = subprocess.PIPE,
    new_session: bool = False,
) -> subprocess.Popen[str]:
    """Start `python -m scanner ARGS` in cwd; the repository's package is imported whatever cwd is."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "scanner", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
    )


def finish(process: subprocess.Popen[str], stdin: str | None = None, timeout: float = 60.0) -> Completed:
    """Wait for a scanner started by start_scanner (killed after timeout s, then TimeoutExpired); its rc and output."""
    try:
        out, err = process.communicate(stdin, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_scanner(*args: str | Path, cwd: Path = REPO, stdin: str | None = None, timeout: float = 60.0) -> Completed:
    """`python -m scanner ARGS` to its end (TimeoutExpired after timeout s): returncode, stdout and stderr as text."""
    process = start_scanner(*args, cwd=cwd, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE)
    return finish(process, stdin, timeout)


def run_scanners(*commands: Sequence[str | Path], timeout: float = 60.0) -> list[Completed]:
    """Several `python -m scanner ARGS` at once, each to its end; any still running on the way out is killed."""
    processes = [start_scanner(*args) for args in commands]
    try:
        return [finish(process, timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def run_once(config: Path, *args: str, timeout: float = 60.0) -> Completed:
    """`python -m scanner --config CONFIG --once ARGS`."""
    return run_scanner("--config", config, "--once", *args, timeout=timeout)


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
