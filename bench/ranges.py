"""`python bench/run.py ranges`: network ranges on loopback, every tree given side by side, run by run.

check-config: `--check-config` on a /16 and on a /8 with `max_range_endpoints: 16777216`; wall time, peak RSS (a
              run is killed at --check-timeout s or 1 GB of address space, and reported so).
once:         `--once` over a /14 (262,144 endpoints) with N listeners (the first a TLS server, the rest plain TCP);
              endpoints/s, summed peak RSS of the process and its workers, and the responders reported.
daemon:       a daemon over a /16 with 50 listeners: time to the first round (every listener found and swept), then
              rounds of re-discovery (`range_interval: 2s`) with 5 listeners moved each round; summed RSS per round.
              Trees without `range_interval` (before #23) get the first round only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.servers import TcpListeners

ADDRESS_SPACE_CAP = 1 << 30  # a --check-config run gets this much address space (the old /8 wanted 4 GB and more)


def _free_port(hosts: list[str]) -> int:
    """A port nothing listens on at any of these hosts (bound on each, then released)."""
    for _ in range(50):
        port = random.randint(20000, 60000)
        socks = []
        try:
            for host in hosts:
                sock = socket.socket()
                socks.append(sock)
                sock.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port")


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found + [g for c in found for g in _children(c)]


def _rss_mb(pid: int) -> float:
    """VmRSS of pid and its descendants, summed, in MB."""
    total = 0.0
    for each in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


class _PeakRss:
    """Samples the summed RSS of a process tree every 50 ms while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2)
        return self.peak


def _run(
    root: Path, args: list[str], timeout: float, cap_memory: bool = False
) -> tuple[float, int | None, float, str, str]:
    """`python -m scanner ARGS` in root: (wall s, exit code or None when killed, summed peak RSS MB, stdout, stderr)."""

    def limit() -> None:
        if cap_memory:
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner", *args],
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,  # only setrlimit between fork and exec
    )
    peak = _PeakRss(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    wall = time.monotonic() - started
    return wall, code, peak.stop(), out, err


def bench_check_config(roots: dict[str, Path], timeout: float, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, network, limit in (("/16", "127.0.0.0/16", 65536), ("/8", "127.0.0.0/8", 16777216)):
        config = work / f"check-{label[1:]}.yaml"
        config.write_text(f"max_range_endpoints: {limit}\ntargets:\n  - network: {network}\n    ports: [443]\n")
        for name, root in roots.items():
            wall, code, rss, _, err = _run(root, ["--check-config", "--config", str(config)], timeout, True)
            outcome = "killed" if code is None else err.strip().rpartition(": ")[2] if code == 0 else f"exit {code}"
            if code not in (0, None) and "MemoryError" in err:
                outcome = "MemoryError at the 1 GB cap"
            results[f"{name} {label}"] = {"wall_s": wall, "rss_mb": rss, "code": code, "outcome": outcome}
            print(f"  check-config {label:4} {name:10} {wall:7.2f} s  {rss:7.0f} MB  {outcome}")
    return results


@contextlib.contextmanager
def _tls_listener(host: str) -> Iterator[int]:
    """A TLS 1.2/1.3 server (the lab's Python one) on host; yields its port."""
    from scanner.protocols import Protocol
    from tests.lab.servers import python_tls_server

    with python_tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3}, host=host) as endpoint:
        yield endpoint.port


def bench_once(roots: dict[str, Path], listeners: int, repeat: int, timeout: float, work: Path) -> dict[str, Any]:
    endpoints = 1 << 18
    results: dict[str, Any] = {name: [] for name in roots}
    with _tls_listener("127.0.0.1") as port:
        plain = TcpListeners()
        try:
            hosts = [f"127.{1 + i // 250}.{i % 250}.{7 + i % 200}" for i in range(listeners - 1)]
            for host in hosts:
                plain.add(host, port)
            config = work / "once-14.yaml"
            config.write_text(
                "max_range_endpoints: 262144\ndefaults: {timeout: 2s}\n"
                f"targets:\n  - network: 127.0.0.0/14\n    ports: [{port}]\n"
            )
            for run in range(repeat):
                for name, root in roots.items():
                    args = ["--once", "--format", "json", "--config", str(config)]
                    wall, code, rss, out, err = _run(root, args, timeout)
                    found = -1
                    with contextlib.suppress(ValueError, KeyError):
                        found = len(json.loads(out)["targets"])
                    results[name].append({"wall_s": wall, "rss_mb": rss, "code": code, "responders": found})
                    print(
                        f"  once /14 run {run + 1} {name:10} {wall:7.2f} s = {endpoints / wall:8.0f} endpoints/s"
                        f"  {rss:6.0f} MB summed peak  responders {found}/{listeners}  exit {code}"
                        + (f"  {err.strip()[-200:]}" if code not in (0, 3) else "")
                    )
        finally:
            plain.close()
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        summary[name] = {
            "runs": runs,
            "median_wall_s": wall,
            "endpoints_per_s": endpoints / wall,
            "max_rss_mb": max(r["rss_mb"] for r in runs),
        }
    return summary


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _open_and_swept(text: str, network: str) -> tuple[float, set[str]]:
    """tls_scanner_range_endpoints{state="open"} of the range, and the targets with a tls_scanner_scan_success."""
    match = re.search(rf'tls_scanner_range_endpoints\{{range="{re.escape(network)}",state="open"\}} (\S+)', text)
    swept = set(re.findall(r'^tls_scanner_scan_success\{target="([^"]+)"', text, re.M))
    return (float(match.group(1)) if match else -1.0), swept


def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError):
            if predicate():
                return True
        time.sleep(0.1)
    return False


def _found(web: int, network: str, rediscover: bool, expected: set[str]) -> bool:
    """Every expected listener swept (and, with re-discovery, counted open), no other target."""
    opened, swept = _open_and_swept(_metrics(web), network)
    return (opened in (-1.0, len(expected)) or not rediscover) and swept == expected


def bench_daemon(roots: dict[str, Path], rounds: int, timeout: float, work: Path) -> dict[str, Any]:
    hosts = [f"127.0.{i}.{(i * 7) % 250 + 1}" for i in range(1, 51)]
    spare = [f"127.0.{200 + i}.{i + 3}" for i in range(5 * rounds)]
    port = _free_port(hosts + spare)
    return {name: _daemon(name, root, hosts, spare, port, rounds, timeout, work) for name, root in roots.items()}


def _daemon(
    name: str, root: Path, hosts: list[str], spare: list[str], port: int, rounds: int, timeout: float, work: Path
) -> dict[str, Any]:
    network = "127.0.0.0/16"
    rediscover = (root / "scanner" / "daemon" / "ranges.py").exists()
    listeners = TcpListeners()
    live = list(hosts)
    for host in live:
        listeners.add(host, port)
    config = work / f"daemon-{name}.yaml"
    defaults: dict[str, Any] = {"interval": "30s", "timeout": "1s", "deep_interval": 0}
    if rediscover:
        defaults["range_interval"] = "2s"
    config.write_text(json.dumps({"defaults": defaults, "targets": [{"network": network, "ports": [port]}]}))
    web = _free_port(["127.0.0.1"])
    log = (work / f"daemon-{name}.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner", "--config", str(config), "--web.listen-address", f"127.0.0.1:{web}",
         "--state-file", str(work / f"state-{name}.db")],
        cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    entry: dict[str, Any] = {"rounds": []}
    try:
        names = {f"{h}:{port}" for h in live}
        ok = _until(functools.partial(_found, web, network, rediscover, names), timeout)
        entry["first_round_s"] = time.monotonic() - started if ok else None
        entry["rss_after_first_round_mb"] = _rss_mb(proc.pid)
        print(
            f"  daemon /16 {name:10} first round "
            + (f"{entry['first_round_s']:.2f} s" if ok else f"not done in {timeout:.0f} s")
            + f"  {entry['rss_after_first_round_mb']:.0f} MB summed"
        )
        for number in range(rounds if rediscover and ok else 0):
            for host in live[:5]:
                listeners.remove(host, port)
            live = live[5:] + spare[number * 5 : number * 5 + 5]
            for host in live[-5:]:
                listeners.add(host, port)
            names = {f"{h}:{port}" for h in live}
            round_start = time.monotonic()
            ok = _until(functools.partial(_found, web, network, rediscover, names), 30)
            took = time.monotonic() - round_start
            rss = _rss_mb(proc.pid)
            entry["rounds"].append({"s": took if ok else None, "rss_mb": rss})
            seen = f"seen in {took:5.2f} s" if ok else "NOT seen"
            print(f"    round {number + 1:2}: 5 retired, 5 added, {seen}  {rss:6.0f} MB summed")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        listeners.close()
    return entry


def bench_ranges(
    roots: dict[str, Path], listeners: int, repeat: int, rounds: int, check_timeout: float, only: str | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ranges-") as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {}
        if only in (None, "check-config"):
            results["check_config"] = bench_check_config(roots, check_timeout, work)
        if only in (None, "once"):
            results["once"] = bench_once(roots, listeners, repeat, 240, work)
            for name, summary in results["once"].items():
                print(
                    f"  once /14 {name:10} median {summary['median_wall_s']:.2f} s = "
                    f"{summary['endpoints_per_s']:.0f} endpoints/s, peak {summary['max_rss_mb']:.0f} MB"
                )
        if only in (None, "daemon"):
            results["daemon"] = bench_daemon(roots, rounds, 90, work)
        return results
