"""The endpoint under attack (`python bench/run.py web`): slowloris connections and a storm of scrapes.

For each scanner tree (this one, and `--peer-root` side by side when given): start the daemon on N lab targets,
wait for its first round, open `--slowloris` connections that never finish their request head, fire `--scrapes`
concurrent `/metrics` requests, and meanwhile time `/-/healthy` every 5 ms. Prints /-/healthy latency, how the
scrapes were answered, and how long the slow connections were kept open.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.queues
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.servers import stop_process

HOST = "127.0.0.1"
SLOW_WATCH_S = 20.0  # how long slow connections are watched for being closed


def _get(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()
        return int(response.status)


async def _scrape(port: int, results: list[str]) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readline(), 60)
        await asyncio.wait_for(reader.read(), 60)
        writer.close()
        results.append(head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "no answer")
    except (OSError, TimeoutError, IndexError):
        results.append("failed")


def _storm(port: int, scrapes: int, answers: multiprocessing.queues.Queue[list[str]]) -> None:
    """In its own process, so that its work does not slow down the /-/healthy timing."""
    results: list[str] = []

    async def run() -> None:
        await asyncio.gather(*(_scrape(port, results) for _ in range(scrapes)))

    asyncio.run(run())
    answers.put(results)


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=SLOW_WATCH_S)
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # the head never ends
        sockets.append(sock)
    return sockets


def _closed_after(sockets: list[socket.socket], opened: float) -> list[float]:
    """Seconds until the daemon closed each slow connection (SLOW_WATCH_S or more: still open)."""
    closed = []
    for sock in sockets:
        try:
            sock.settimeout(max(0.01, opened + SLOW_WATCH_S - time.monotonic()))
            sock.recv(1)
        except TimeoutError:
            pass
        except OSError:
            pass
        closed.append(time.monotonic() - opened)
        sock.close()
    return closed


def run_web(root: Path, config: Path, port: int, targets: int, slowloris: int, scrapes: int) -> dict[str, Any]:
    """One daemon from `root` under the attack; its figures."""
    result: dict[str, Any] = {"root": str(root)}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-bench-web-")))
        log = (work / "daemon.log").open("wb")
        stack.callback(log.close)
        cmd = [sys.executable, "-m", "scanner", "--config", str(config), "--state-file", str(work / "s.db")]
        cmd += ["--web.listen-address", f"{HOST}:{port}", "--log-level", "warning"]
        proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        stack.callback(stop_process, proc, 20)
        base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 120
        body = b""
        while time.monotonic() < deadline and body.count(b"tls_scanner_last_scan_timestamp_seconds{") < targets:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                body = urllib.request.urlopen(base + "/metrics", timeout=10).read()
        result["metrics_bytes"] = len(body)
        opened = time.monotonic()
        slow = _slow_clients(port, slowloris)
        answers: multiprocessing.queues.Queue[list[str]] = multiprocessing.Queue()
        storm = multiprocessing.Process(target=_storm, args=(port, scrapes, answers))
        started = time.monotonic()
        storm.start()
        latencies: list[float] = []
        failures = 0
        while storm.is_alive() or not latencies:
            t = time.monotonic()
            try:
                _get(base + "/-/healthy", 10)
                latencies.append(time.monotonic() - t)
            except OSError:
                failures += 1
            time.sleep(0.005)
        statuses = answers.get(timeout=60)
        storm.join()
        result["storm_s"] = time.monotonic() - started
        closed = _closed_after(slow, opened)
        latencies.sort()
        result["healthy_ms"] = {
            "n": len(latencies),
            "median": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "max": latencies[-1] * 1000,
            "failed": failures,
        }
        result["scrapes"] = {status: statuses.count(status) for status in sorted(set(statuses))}
        result["slow_closed_s"] = {
            "closed": sum(1 for c in closed if c < SLOW_WATCH_S),
            "of": len(closed),
            "max": max(closed) if closed else 0.0,
        }
    return result


def print_web(result: dict[str, Any], label: str) -> None:
    h = result["healthy_ms"]
    slow = result["slow_closed_s"]
    print(f"  [{label}] {result['root']}")
    print(
        f"    /-/healthy during the storm  median {h['median']:.1f} ms, p99 {h['p99']:.1f} ms, max {h['max']:.1f} ms "
        f"({h['n']} checks, {h['failed']} failed) (target max <= 100 ms)"
    )
    print(f"    scrapes answered             {result['scrapes']} in {result['storm_s']:.1f}s")
    kept = "still open" if slow["closed"] < slow["of"] else "all closed"
    print(f"    slow connections             {slow['closed']}/{slow['of']} closed, {kept} after {slow['max']:.1f}s")
