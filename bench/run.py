"""Benchmarks of tls-scanner against one loopback nginx: `python bench/run.py once|daemon|all`.

once:   `--once` on N endpoints vs the sslyze CLI on the same endpoints; wall time, connections, peak RSS, matrix.
daemon: the daemon on N targets; time until every target has a result, RSS, /metrics latency and size.
web:    slowloris connections and a storm of concurrent scrapes; /-/healthy latency meanwhile (bench/web.py).
wan:    --once on N endpoints behind a loopback delay proxy (bench/wan.py); sslyze CLI and sslscan on a subset.
bursts: two daemons on N targets, with and without burst re-probing, as TLS 1.0 flips on 100 (bench/bursts.py).
ranges: network ranges: --check-config on a /8, --once over a /14, a daemon over a /16 (bench/ranges.py).

Loopback only; every process started here is stopped by its pid; benchmarks run one after the other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import ranges, wan, web  # noqa: E402
from bench.servers import NginxError, NginxLab, NginxServer, child_pids, free_ports, stop_process, wait_for  # noqa: E402
from scanner.protocols import ALL_PROTOCOLS, Protocol  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
# Where `python -m scanner` runs from (--scanner-root): the work tree, or e.g. a `git archive` export of a commit.
SCANNER_ROOT = REPO
HOST = "127.0.0.1"

# What the issue asks for (tls-scanner's performance targets).
TARGET_SPEEDUP = 20.0
TARGET_CONNECTIONS_PER_ENDPOINT = 12
TARGET_ONCE_RSS_MB = 150.0
TARGET_FIRST_ROUND_S = 60.0  # issue #12: within one 60 s interval
TARGET_DAEMON_RSS_MB = 300.0  # the daemon and its worker processes, summed
TARGET_METRICS_S = 0.5
TARGET_HEALTHY_S = 0.1

# nginx ssl_protocols mixes, cycled over the server blocks (SSLv2/SSLv3 are never served by OpenSSL 3).
PROFILES: dict[str, tuple[Protocol, ...]] = {
    "all": (Protocol.TLSv1_0, Protocol.TLSv1_1, Protocol.TLSv1_2, Protocol.TLSv1_3),
    "modern": (Protocol.TLSv1_2, Protocol.TLSv1_3),
    "tls13": (Protocol.TLSv1_3,),
    "gap": (Protocol.TLSv1_0, Protocol.TLSv1_2),
    "legacy": (Protocol.TLSv1_0, Protocol.TLSv1_1),
}

_SSLYZE_FLAGS = ("--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3")
_SSLYZE_RESULT_KEYS = {
    Protocol.SSLv2: "ssl_2_0_cipher_suites",
    Protocol.SSLv3: "ssl_3_0_cipher_suites",
    Protocol.TLSv1_0: "tls_1_0_cipher_suites",
    Protocol.TLSv1_1: "tls_1_1_cipher_suites",
    Protocol.TLSv1_2: "tls_1_2_cipher_suites",
    Protocol.TLSv1_3: "tls_1_3_cipher_suites",
}
_SYN_LINE = re.compile(r"IP 127\.[\d.]+\.(\d+) > (127\.\d+\.\d+\.\d+)\.(\d+): Flags \[S\], seq (\d+)")


# --- helpers ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """The servers of one benchmark and what each should accept."""

    servers: list[NginxServer]
    profile: dict[int, str]  # port -> profile name (one address, distinct ports)
    spare_port: int  # free when drawn, and distinct from the servers' ports: for the daemon's web server

    def expected(self, port: int) -> dict[str, str]:
        return _expected(self.profile[port])

    def expected_for(self, name: str) -> dict[str, str]:
        """What the server block called `name` (`s<i>-<profile>`) accepts."""
        return _expected(name.split("-", 1)[1])


def _expected(profile: str) -> dict[str, str]:
    accepted = PROFILES[profile]
    return {p.value: "accepted" if p in accepted else "rejected" for p in ALL_PROTOCOLS}


def make_lab(n: int, address_base: str | None = None) -> Lab:
    """N server blocks on free loopback ports, profiles cycled in order; with address_base, each on its own loopback
    address from there instead, port 443 (as on the Internet: per-address politeness caps apply per target)."""
    names = list(PROFILES)
    servers, profile = [], {}
    *ports, spare = free_ports(n + 1)  # one draw: ports drawn in separate calls may repeat
    addresses = wan.endpoint_addresses(n, address_base) if address_base else None
    for i, port in enumerate(ports):
        name = names[i % len(names)]
        protocols = [p.value for p in PROFILES[name]]
        if addresses:
            server = NginxServer(name=f"s{i}-{name}", port=443, ssl_protocols=protocols, listen=addresses[i])
        else:
            server = NginxServer(name=f"s{i}-{name}", port=port, ssl_protocols=protocols)
        servers.append(server)
        profile[server.port] = name
    return Lab(servers, profile, spare)


def write_config(
    path: Path,
    lab: Lab,
    *,
    timeout: str = "5s",
    interval: str = "60s",
    deep_interval: str | None = None,
    workers: str | None = None,
) -> None:
    """A scanner config with one target per server block (all protocols, no expectations)."""
    lines = [f"workers: {workers}"] if workers is not None else []
    lines += ["defaults:", f"  timeout: {timeout}", f"  interval: {interval}"]
    lines += [f"  deep_interval: {deep_interval}"] if deep_interval is not None else []
    lines.append("targets:")
    for server in lab.servers:
        lines += [f"  - name: {server.name}", f"    host: {server.listen}", f"    port: {server.port}"]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Measured:
    """One child process run to completion (or killed at its timeout)."""

    wall_s: float
    returncode: int | None
    maxrss_mb: float
    cpu_s: float  # user + system
    timed_out: bool


def run_measured(cmd: Sequence[str], timeout: float, stdout: Path, stderr: Path, cwd: Path | None = None) -> Measured:
    """Run cmd (in cwd, default the scanner root), wait with wait4() so its own peak RSS and CPU time are known;
    SIGKILL it (by pid) at timeout."""
    timed_out = threading.Event()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd or SCANNER_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(wall, proc.returncode, usage.ru_maxrss / 1024, cpu, timed_out.is_set())


class SynCounter:
    """Counts TCP connection attempts (SYN without ACK) to 127.0.0.0/8 with tcpdump on lo, per destination port."""

    def __init__(self, workdir: Path) -> None:
        self.available = shutil.which("tcpdump") is not None
        self._out = workdir / "syn.txt"
        self._err = workdir / "syn.err"
        self._proc: subprocess.Popen[bytes] | None = None
        self.dropped: int | None = None

    def __enter__(self) -> SynCounter:
        if not self.available:
            return self
        cmd = ["tcpdump", "-i", "lo", "-nn", "-l", "-B", "32768"]
        cmd.append("tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and dst net 127.0.0.0/8")
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            wait_for(lambda: "listening on" in self._err.read_text(errors="replace"), 10, what="tcpdump")
        except TimeoutError:
            self._stop()
            self.available = False
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # let the last SYNs reach tcpdump
        self._stop()

    def _stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGINT)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)
        self._proc = None
        match = re.search(r"(\d+) packets? dropped by kernel", self._err.read_text(errors="replace"))
        self.dropped = int(match.group(1)) if match else None

    def per_port(self) -> Counter[int]:
        """Distinct connection attempts per destination port (a retransmitted SYN counts once)."""
        if not self.available or not self._out.exists():
            return Counter()
        seen = set()
        for line in self._out.read_text(errors="replace").splitlines():
            match = _SYN_LINE.search(line)
            if match:
                sport, daddr, dport, seq = match.groups()
                seen.add((int(sport), daddr, int(dport), int(seq)))
        return Counter(dport for _, _, dport, _ in seen)


def stats(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _start_nginx(lab: Lab, workers: int) -> NginxLab:
    taken = {s.port for s in lab.servers} | {lab.spare_port}
    while True:
        server = NginxLab(lab.servers, workers=workers)
        # NginxLab draws its control port on its own, so it can collide with a server port (nginx -t then fails).
        if server.control.port not in taken:
            break
        server.stop()  # only removes its temporary directory
    try:
        return server.start(timeout=120)
    except BaseException:
        server.stop()
        raise


@contextlib.contextmanager
def nginx_lab(n: int, workers: int, address_base: str | None = None) -> Iterator[tuple[Lab, NginxLab]]:
    """N server blocks in one nginx; new ports are drawn when one was taken between drawing and binding."""
    started = time.monotonic()
    for attempt in range(1, 4):
        lab = make_lab(n, address_base)
        try:
            server = _start_nginx(lab, workers)
        except NginxError as exc:
            if "Address already in use" not in str(exc) or attempt == 3:
                raise
            print("  (a drawn port was taken by another process before nginx bound it: drawing new ports)")
            continue
        break
    print(f"  nginx: {n} server blocks, {workers} worker(s), up in {time.monotonic() - started:.1f}s")
    try:
        yield lab, server
    finally:
        server.stop()


@contextlib.contextmanager
def nginx_servers(servers: Sequence[NginxServer], workers: int) -> Iterator[NginxLab]:
    """One nginx serving exactly these server blocks; stopped on exit."""
    server = NginxLab(servers, workers=workers)
    try:
        yield server.start(timeout=120)
    finally:
        server.stop()


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


# --- A. --once vs the sslyze CLI -------------------------------------------------------------------------------------


def sslyze_matrix(path: Path) -> dict[int, dict[str, str]]:
    """port -> protocol -> accepted/rejected/error, from sslyze's --json_out."""
    data = json.loads(path.read_text())
    matrix: dict[int, dict[str, str]] = {}
    for server in data.get("server_scan_results", []):
        port = int(server["server_location"]["port"])
        row = {}
        scan = server.get("scan_result") or {}
        for protocol, key in _SSLYZE_RESULT_KEYS.items():
            attempt = scan.get(key) or {}
            result = attempt.get("result")
            if attempt.get("status") != "COMPLETED" or result is None:
                row[protocol.value] = "error"
            else:
                row[protocol.value] = "accepted" if result.get("accepted_cipher_suites") else "rejected"
        matrix[port] = row
    return matrix


def bench_once(args: argparse.Namespace) -> dict[str, Any]:
    n = args.endpoints
    print(f"\n=== A. once: {n} endpoints, --once vs sslyze CLI ===")
    result: dict[str, Any] = {"endpoints": n}
    with tempfile.TemporaryDirectory(prefix="tls-bench-once-") as tmp, nginx_lab(n, args.nginx_workers) as (lab, _):
        work = Path(tmp)
        result["profiles"] = {s.name: lab.profile[s.port] for s in lab.servers}
        config = work / "endpoints.yaml"
        write_config(config, lab, timeout="5s")
        ports = {s.port for s in lab.servers}
        scanner_cmd = [sys.executable, "-m", "scanner", "--once", "--config", str(config), "--format", "json"]

        # Interpreter start, every import and exit, no sweep: the floor under any --once run.
        version_cmd = [sys.executable, "-m", "scanner", "--version"]
        startup = statistics.median(
            run_measured(version_cmd, 60, work / "v.out", work / "v.err").wall_s for _ in range(3)
        )
        result["scanner_startup_s"] = startup
        runs: list[Measured] = []
        syn_counts: list[Counter[int]] = []
        report: dict[str, Any] = {}
        for i in range(args.repeat):
            counter = SynCounter(work)
            with counter:
                run = run_measured(scanner_cmd, 120, work / f"scan{i}.json", work / f"scan{i}.err")
            runs.append(run)
            syn_counts.append(Counter({p: c for p, c in counter.per_port().items() if p in ports}))
            if i == 0:
                report = json.loads((work / "scan0.json").read_text() or "{}")
            print(
                f"  scanner run {i + 1}/{args.repeat}: {run.wall_s:.2f}s, CPU {run.cpu_s:.2f}s, exit {run.returncode}, "
                f"peak RSS {run.maxrss_mb:.0f} MB" + (" (TIMED OUT)" if run.timed_out else "")
            )
        tcpdump = counter.available

        sslyze_json = work / "sslyze.json"
        sslyze_cmd = [sys.executable, "-m", "sslyze", *_SSLYZE_FLAGS, "--json_out", str(sslyze_json)]
        sslyze_cmd += [f"{HOST}:{s.port}" for s in lab.servers]
        sslyze_counter = SynCounter(work)
        with sslyze_counter:
            sslyze = run_measured(sslyze_cmd, args.sslyze_timeout, work / "sslyze.out", work / "sslyze.err")
        sslyze_syn = Counter({p: c for p, c in sslyze_counter.per_port().items() if p in ports})
        print(
            f"  sslyze CLI: {sslyze.wall_s:.1f}s, CPU {sslyze.cpu_s:.1f}s, exit {sslyze.returncode}, "
            f"peak RSS {sslyze.maxrss_mb:.0f} MB"
            + (f" (KILLED at the {args.sslyze_timeout:.0f}s cap)" if sslyze.timed_out else "")
        )
        sslyze_rows = sslyze_matrix(sslyze_json) if sslyze_json.exists() and not sslyze.timed_out else {}

    targets = report.get("targets", [])
    json_conns = {t["port"]: t["connections"] for t in targets}
    syn0 = syn_counts[0] if syn_counts else Counter()
    measured_conns = syn0 if tcpdump and syn0 else Counter(json_conns)
    mismatches, disagree = [], []
    for t in targets:
        expected = lab.expected(t["port"])
        for protocol, want in expected.items():
            got = t["protocols"].get(protocol)
            if got != want:
                mismatches.append(f"{t['name']} {protocol}: scanner {got}, nginx configured {want}")
                mismatches[-1] += f" ({t['details'].get(protocol, '')})"
            other = sslyze_rows.get(t["port"], {}).get(protocol)
            if other is not None and other != got:
                disagree.append(f"{t['name']} {protocol}: scanner {got}, sslyze {other}")
    json_vs_syn = [
        f"port {p}: JSON {json_conns.get(p)}, tcpdump {syn0.get(p, 0)}"
        for p in sorted(ports)
        if tcpdump and json_conns.get(p) != syn0.get(p, 0)
    ]
    walls = [r.wall_s for r in runs]
    best = statistics.median(walls)
    per_endpoint = [measured_conns.get(p, 0) for p in sorted(ports)]
    by_profile: dict[str, list[int]] = {}
    for port in sorted(ports):
        by_profile.setdefault(lab.profile[port], []).append(measured_conns.get(port, 0))
    durations = [t["duration_seconds"] for t in targets]
    errors = [f"{t['name']}: {t['error'] or ''} {t['details']}" for t in targets if not t["complete"]]

    result.update(
        scanner_wall_s=walls,
        scanner_wall_median_s=best,
        scanner_peak_rss_mb=max(r.maxrss_mb for r in runs),
        scanner_exit=[r.returncode for r in runs],
        scanner_cpu_s=[r.cpu_s for r in runs],
        sslyze_cpu_s=sslyze.cpu_s,
        sweep_duration_s=stats(durations),
        sslyze_wall_s=sslyze.wall_s,
        sslyze_timed_out=sslyze.timed_out,
        sslyze_exit=sslyze.returncode,
        sslyze_peak_rss_mb=sslyze.maxrss_mb,
        speedup=sslyze.wall_s / best if best else None,
        speedup_vs_fastest_run=sslyze.wall_s / min(walls) if walls else None,
        cpu_ratio=sslyze.cpu_s / statistics.median(r.cpu_s for r in runs) if runs else None,
        connections_source="tcpdump SYNs on lo" if measured_conns is syn0 else "scanner JSON `connections`",
        connections_per_endpoint=stats(per_endpoint),
        connections_by_profile={k: stats(v) for k, v in by_profile.items()},
        connections_json_total=sum(json_conns.values()),
        connections_tcpdump_total=sum(syn0.values()) if tcpdump else None,
        connections_json_vs_tcpdump=json_vs_syn,
        sslyze_connections_per_endpoint=stats([sslyze_syn.get(p, 0) for p in sorted(ports)]) if tcpdump else None,
        tcpdump_dropped=[counter.dropped, sslyze_counter.dropped],
        matrix_mismatches=mismatches,
        scanner_vs_sslyze=disagree,
        incomplete_targets=errors,
    )

    cpe = result["connections_per_endpoint"]
    speedup = result["speedup"] or 0.0
    capped = " (sslyze hit its cap: the real ratio is higher)" if sslyze.timed_out else ""
    print(f"\n  scanner --once wall   {best:.2f}s median of {len(walls)} ({', '.join(f'{w:.2f}' for w in walls)})")
    print(f"    of which startup    {startup:.2f}s (`python -m scanner --version`: interpreter, imports, exit)")
    print(f"    sweep durations     median {stats(durations).get('median', 0):.2f}s, max {max(durations or [0]):.2f}s")
    print(f"  sslyze CLI wall       {sslyze.wall_s:.1f}s{capped}")
    print(
        f"  speedup               {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x) {verdict(speedup >= TARGET_SPEEDUP)}"
        f"; {result['speedup_vs_fastest_run']:.1f}x against the fastest run; CPU-time ratio {result['cpu_ratio']:.1f}x"
    )
    print(
        f"  connections/endpoint  mean {cpe['mean']:.1f}, max {cpe['max']:.0f}  [{result['connections_source']}]"
        f"  (target <= {TARGET_CONNECTIONS_PER_ENDPOINT})  {verdict(cpe['max'] <= TARGET_CONNECTIONS_PER_ENDPOINT)}"
    )
    for name, s in result["connections_by_profile"].items():
        print(f"    {name:<8} {s['mean']:.1f} per endpoint (max {s['max']:.0f})")
    if tcpdump:
        print(f"    JSON total {result['connections_json_total']}, tcpdump total {result['connections_tcpdump_total']}")
        for line in json_vs_syn[:5]:
            print(f"    JSON != tcpdump: {line}")
        s = result["sslyze_connections_per_endpoint"]
        print(f"    sslyze CLI: mean {s['mean']:.0f} connections per endpoint (max {s['max']:.0f})")
    else:
        print("    tcpdump not installed: counts come from the scanner's own JSON, not an independent count")
    rss = result["scanner_peak_rss_mb"]
    print(
        f"  peak RSS              {rss:.0f} MB (target < {TARGET_ONCE_RSS_MB:.0f})  {verdict(rss < TARGET_ONCE_RSS_MB)}"
    )
    print(f"  matrix vs nginx conf  {len(mismatches)} mismatches of {len(targets) * len(ALL_PROTOCOLS)} cells")
    for line in mismatches[:10]:
        print(f"    {line}")
    if sslyze_rows:
        print(f"  matrix vs sslyze CLI  {len(disagree)} disagreements")
        for line in disagree[:10]:
            print(f"    {line}")
    for line in errors[:5]:
        print(f"  incomplete: {line}")
    return result


# --- B. the daemon ----------------------------------------------------------------------------------------------------


def _get(url: str, timeout: float = 30.0, gzip: bool = False, unpack: bool = True) -> tuple[float, bytes]:
    """(seconds until the whole answer is read, the answer); with `gzip`, asked for and unpacked as Prometheus does
    (the time includes unpacking unless `unpack` is false: the answer is then left compressed)."""
    start = time.monotonic()
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        packed = response.headers.get("Content-Encoding") == "gzip"
    if packed and unpack:
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    return time.monotonic() - start, body


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time used so far by these processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _main_thread_cpu(pid: int) -> float:
    """User + system CPU time of pid's main thread (the event loop; the handshake threads are the rest)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


_POLLER = """
import sys, time, urllib.request
url, every, out = sys.argv[1], float(sys.argv[2]), open(sys.argv[3], "w", buffering=1)
while True:
    sent = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
        out.write(f"{sent} {time.monotonic() - sent}\\n")
    except OSError:
        pass
    time.sleep(max(0.0, every - (time.monotonic() - sent)))
"""


class HealthPoller:
    """GET /-/healthy every `every` seconds on a fresh connection (as a kubelet does), from a process of its own (so
    the bench's own work cannot delay it), recording each latency: the longest shows how long a scrape or a burst of
    sweeps held the daemon's event loop."""

    def __init__(self, base: str, workdir: Path, every: float = 0.02) -> None:
        self._out = workdir / "healthy.txt"
        self._cmd = [sys.executable, "-c", _POLLER, base + "/-/healthy", str(every), str(self._out)]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HealthPoller:
        self._proc = subprocess.Popen(self._cmd, stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGTERM)
            self._proc.wait(5)

    def since(self, start: float, end: float = float("inf")) -> list[float]:
        found = []
        for line in self._out.read_text().splitlines() if self._out.exists() else []:
            with contextlib.suppress(ValueError):
                sent, latency = map(float, line.split())
                if start <= sent < end:
                    found.append(latency)
        return found


def _keep_log(path: Path, name: str) -> None:
    """Keep the daemon's log beside the results (its temporary directory is about to go)."""
    if path.exists():
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{name}.log")


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of pid, and Pss (shared pages split among the processes sharing them), in MB."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Pss", "Anonymous"):
                found[key] = int(value.split()[0]) / 1024
    return found


def _tree_memory(pid: int) -> dict[str, float]:
    """Memory of the daemon and its worker processes: RSS each, and their sums (RSS and PSS)."""
    pids = [pid, *child_pids(pid)]
    each = {p: _proc_status(p) for p in pids}
    return {
        "main_rss": each[pid].get("VmRSS", 0.0),
        "workers_rss": sum(m.get("VmRSS", 0.0) for p, m in each.items() if p != pid),
        "rss": sum(m.get("VmRSS", 0.0) for m in each.values()),
        "pss": sum(m.get("Pss", 0.0) for m in each.values()),
        "workers_anonymous": sum(m.get("Anonymous", 0.0) for p, m in each.items() if p != pid),
        "processes": len(pids),
    }


def _determined(state_file: Path) -> int:
    """Targets with at least one determined protocol in the daemon's state file (read-only; never blocks it)."""
    if not state_file.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=0.2)
        try:
            return int(db.execute("SELECT COUNT(DISTINCT target) FROM protocol_state").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def _loop_lag(body: bytes) -> dict[str, float]:
    """The daemon's tls_scanner_event_loop_lag_seconds histogram: cumulative counts by bucket bound, and the count."""
    found: dict[str, float] = {}
    for line in body.decode().splitlines():
        match = re.match(r'tls_scanner_event_loop_lag_seconds_(bucket\{le="([^"]+)"\}|count) (\S+)', line)
        if match:
            found[match.group(2) or "count"] = float(match.group(3))
    return found


def _last_scans(body: bytes) -> dict[str, float]:
    found = {}
    for line in body.decode().splitlines():
        if line.startswith("tls_scanner_last_scan_timestamp_seconds{"):
            labels, _, value = line.rpartition(" ")
            match = re.search(r'target="([^"]*)"', labels)
            if match:
                found[match.group(1)] = float(value)
    return found


def bench_daemon(args: argparse.Namespace) -> dict[str, Any]:
    n = args.targets
    where = f"distinct addresses from {args.address_base}:443" if args.distinct_addresses else f"ports on {HOST}"
    print(f"\n=== B. daemon: {n} targets ({where}), interval 60s, default config ===")
    result: dict[str, Any] = {"targets": n}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-bench-daemon-")))
        base = args.address_base if args.distinct_addresses else None
        lab, server = stack.enter_context(nginx_lab(n, args.nginx_workers, base))
        result["distinct_addresses"] = lab.servers[0].listen != HOST
        nginx_workers = sorted(child_pids(server.master_pid))
        config = work / "endpoints.yaml"
        write_config(config, lab, timeout="5s", interval="60s", deep_interval=args.deep_interval, workers=args.workers)
        state_file = work / "state.db"
        port = lab.spare_port
        base = f"http://{HOST}:{port}"
        counter = stack.enter_context(SynCounter(work))
        log = (work / "daemon.log").open("wb")
        stack.callback(log.close)
        stack.callback(_keep_log, work / "daemon.log", "daemon")
        cmd = [sys.executable, "-m", "scanner", "--config", str(config)]
        cmd += ["--web.listen-address", f"{HOST}:{port}", "--state-file", str(state_file), "--log-level", "warning"]
        started_wall, started = time.time(), time.monotonic()
        proc = subprocess.Popen(cmd, cwd=SCANNER_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop_daemon, proc, result)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}: {(work / 'daemon.log').read_text()}")
            with contextlib.suppress(OSError):
                return _get(base + "/-/healthy", 1)[1].startswith(b"Healthy")
            return False

        wait_for(healthy, 60, interval=0.05, what="daemon /-/healthy")
        result["http_up_s"] = time.monotonic() - started
        result["rss_at_http_up_mb"] = _tree_memory(proc.pid)["rss"]
        health = stack.enter_context(HealthPoller(base, work))
        round_start = time.monotonic()

        def scanner_cpu() -> float:
            return _cpu_seconds([proc.pid, *child_pids(proc.pid)])

        cpu_start = scanner_cpu(), _cpu_seconds(nginx_workers)
        loop_start = _main_thread_cpu(proc.pid)

        # Detect the end of the first round from the state file (out of the daemon's process, so the daemon's
        # event loop is not loaded by a /metrics render every 0.5s), then read the exact times from /metrics.
        deadline = started + args.round_timeout
        memory: list[dict[str, float]] = []
        progress: list[tuple[float, int]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            count = _determined(state_file)
            progress.append((round(time.monotonic() - started, 2), count))
            memory.append(_tree_memory(proc.pid))
            if count >= n:
                break
            time.sleep(0.5)
        cpu_end = scanner_cpu(), _cpu_seconds(nginx_workers)
        round_end = time.monotonic()
        result["cpu_main_process_s"] = _main_thread_cpu(proc.pid) - loop_start
        syn_at_round_end = counter.per_port()  # before any second-round sweep (tcpdump writes line by line)
        result["cpu_during_round_s"] = {"scanner": cpu_end[0] - cpu_start[0], "nginx": cpu_end[1] - cpu_start[1]}
        result["cpu_window_s"] = round_end - round_start
        scans: dict[str, float] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            scans = _last_scans(_get(base + "/metrics")[1])
            if len(scans) >= n:
                break
            time.sleep(2.0)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {(work / 'daemon.log').read_text()[-2000:]}")
        result["targets_with_last_scan"] = len(scans)
        result["round_complete"] = len(scans) >= n
        result["first_round_s"] = max(scans.values()) - started_wall if scans else None
        result["progress"] = progress[:: max(1, len(progress) // 60)]
        api_latency, api_body = _get(base + "/api/v1/targets", 60)
        targets = json.loads(api_body)["targets"]

        # Steady state: the second round, scraped every `scrape_every` seconds as Prometheus would, health polled.
        steady_start = time.monotonic()
        cpu_steady = scanner_cpu(), _cpu_seconds(nginx_workers)
        latencies: list[float] = []
        latencies_gzip: list[float] = []
        unpacking: list[float] = []
        body = b""
        while time.monotonic() - steady_start < args.steady_seconds and proc.poll() is None:
            # Plain text and gzip (as Prometheus asks) in turn.
            gzip = len(latencies_gzip) < len(latencies)
            latency, body = _get(base + "/metrics", gzip=gzip, unpack=False)
            (latencies_gzip if gzip else latencies).append(latency)
            if gzip:
                unpack_start = time.monotonic()
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
                unpacking.append(time.monotonic() - unpack_start)
            memory.append(_tree_memory(proc.pid))
            time.sleep(max(0.0, args.scrape_every - latency))
        steady_window = time.monotonic() - steady_start
        result["steady_cpu_cores"] = {
            "scanner": (scanner_cpu() - cpu_steady[0]) / steady_window,
            "nginx": (_cpu_seconds(nginx_workers) - cpu_steady[1]) / steady_window,
        }
        series = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
        result["loop_lag"] = _loop_lag(body)
        health_round, health_steady = health.since(round_start, round_end), health.since(steady_start)
        mem_now = _tree_memory(proc.pid)
        result.update(
            steady_window_s=steady_window,
            metrics_latency_s=stats(latencies),
            metrics_gzip_latency_s=stats(latencies_gzip),
            metrics_gzip_unpack_s=stats(unpacking),
            metrics_plain_scrapes=len(latencies),
            metrics_scrapes=len(latencies) + len(latencies_gzip),
            metrics_body_bytes=len(body),
            metrics_series=len(series),
            metrics_all_present=len(_last_scans(body)) >= n,
            api_targets_latency_s=api_latency,
            api_targets_bytes=len(api_body),
            healthy_round_s=stats(health_round),
            healthy_steady_s=stats(health_steady),
            healthy_checks=len(health_round) + len(health_steady),
            memory_now_mb=mem_now,
            rss_max_sampled_mb=max(m["rss"] for m in memory),
            pss_max_sampled_mb=max(m["pss"] for m in memory),
            main_rss_max_sampled_mb=max(m["main_rss"] for m in memory),
            processes=mem_now["processes"],
        )
        sweeps = [t["last_sweep"] for t in targets if t["last_sweep"]]
        ports = {s.port for s in lab.servers}  # {443} with distinct addresses
        syn = Counter({p: c for p, c in syn_at_round_end.items() if p in ports})
        json_conns = [s["connections"] for s in sweeps]
        starts = [s["started_at"] for s in sweeps]
        ends = [s["started_at"] + s["duration_seconds"] for s in sweeps]
        mismatches = []
        for s in sweeps:
            want = lab.expected_for(s["name"])
            bad = {p: s["protocols"].get(p) for p, v in want.items() if s["protocols"].get(p) != v}
            if bad:
                mismatches.append(f"{s['name']}: {bad}")
        span = (max(ends) - min(starts)) if sweeps else 0.0
        result.update(
            first_sweep_start_s=(min(starts) - started_wall) if starts else None,
            sweep_span_s=span,
            sweep_duration_s=stats([s["duration_seconds"] for s in sweeps]),
            connections_per_target=stats(json_conns),
            connections_total=sum(json_conns),
            connections_tcpdump_total=sum(syn.values()) if counter.available else None,
            handshakes_per_s=sum(json_conns) / span if span else None,
            incomplete=sum(1 for s in sweeps if not s["complete"]),
            errors=Counter(
                f"{p}: {s['details'][p]}" for s in sweeps for p, st in s["protocols"].items() if st == "error"
            ).most_common(5),
            matrix_mismatches=len(mismatches),
            matrix_mismatch_examples=mismatches[:5],
        )
    _print_daemon(result, n)
    return result


def bench_web(args: argparse.Namespace) -> dict[str, Any]:
    n = args.web_targets
    print(f"\n=== C. web: {args.slowloris} slow connections, then {args.scrapes} concurrent scrapes; {n} targets ===")
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-bench-web-")))
        lab, _ = stack.enter_context(nginx_lab(n, args.nginx_workers))
        config = work / "endpoints.yaml"
        write_config(config, lab, timeout="5s", interval="60s")
        roots = {"this": SCANNER_ROOT} | ({"peer": args.peer_root.resolve()} if args.peer_root else {})
        for label, root in roots.items():
            result[label] = web.run_web(root, config, lab.spare_port, n, args.slowloris, args.scrapes)
            web.print_web(result[label], label)
        if "peer" in result:
            ours, peer = result["this"]["healthy_ms"]["max"], result["peer"]["healthy_ms"]["max"]
            print(f"  /-/healthy max latency: this {ours:.1f} ms vs peer {peer:.1f} ms ({peer / max(ours, 0.1):.1f}x)")
    return result


def _stop_daemon(proc: subprocess.Popen[bytes], result: dict[str, Any]) -> None:
    if proc.poll() is not None:
        return
    start = time.monotonic()
    stop_process(proc, 20)
    result["shutdown_s"] = time.monotonic() - start
    result["exit_code"] = proc.returncode


def _print_daemon(r: dict[str, Any], n: int) -> None:
    first = r["first_round_s"]
    lat = r["metrics_latency_s"]
    print(f"  /-/healthy answered    {r['http_up_s']:.2f}s after start (RSS then {r['rss_at_http_up_mb']:.0f} MB)")
    print(f"  first sweep started    {r['first_sweep_start_s']:.2f}s after start")
    if first is None or not r["round_complete"]:
        print(f"  first round            INCOMPLETE: {r['targets_with_last_scan']}/{n} targets within the cap  FAIL")
    else:
        ok = first <= TARGET_FIRST_ROUND_S
        print(f"  first full round       {first:.1f}s (target <= {TARGET_FIRST_ROUND_S:.0f}s)  {verdict(ok)}")
    print(
        f"  handshakes             {r['connections_total']} ({r['connections_per_target']['mean']:.1f}/target), "
        f"{r['handshakes_per_s']:.0f}/s over {r['sweep_span_s']:.1f}s; tcpdump counted {r['connections_tcpdump_total']}"
    )
    d = r["sweep_duration_s"]
    print(f"  sweep duration         median {d['median']:.2f}s, p95 {d['p95']:.2f}s, max {d['max']:.2f}s")
    print(f"  incomplete sweeps      {r['incomplete']}; top errors {r['errors']}")
    print(f"  matrix vs nginx conf   {r['matrix_mismatches']} targets mismatched {r['matrix_mismatch_examples'][:2]}")
    rss = r["rss_max_sampled_mb"]
    print(
        f"  memory (max sampled)   RSS {rss:.0f} MB over {r['processes']} processes "
        f"(main {r['main_rss_max_sampled_mb']:.0f} MB), PSS {r['pss_max_sampled_mb']:.0f} MB "
        f"(target <= {TARGET_DAEMON_RSS_MB:.0f})  "
        f"{verdict(rss <= TARGET_DAEMON_RSS_MB)}"
    )
    print(
        f"  /metrics (steady)      median {lat['median'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms of "
        f"{r['metrics_plain_scrapes']} plain-text scrapes over {r['steady_window_s']:.0f}s while sweeping "
        f"(target <= {TARGET_METRICS_S * 1000:.0f} ms)  {verdict(lat['max'] <= TARGET_METRICS_S)}; "
        f"{r['metrics_body_bytes'] / 1e6:.1f} MB, {r['metrics_series']} series, all present: {r['metrics_all_present']}"
    )
    gz, unpacked = r["metrics_gzip_latency_s"], r["metrics_gzip_unpack_s"]
    print(
        f"  /metrics with gzip     median {gz['median'] * 1000:.0f} ms, max {gz['max'] * 1000:.0f} ms to the last "
        f"compressed byte; unpacking it here: median {unpacked['median'] * 1000:.0f} ms more (every other scrape "
        "asks for gzip, as Prometheus does)"
    )
    hr, hs = r["healthy_round_s"], r["healthy_steady_s"]
    worst = max(hr["max"], hs["max"])
    print(
        f"  /-/healthy every 20ms  first round: p99 {hr['p99'] * 1000:.0f} ms, max {hr['max'] * 1000:.0f} ms; "
        f"steady with scrapes: p99 {hs['p99'] * 1000:.0f} ms, max {hs['max'] * 1000:.0f} ms "
        f"({r['healthy_checks']} checks; target <= {TARGET_HEALTHY_S * 1000:.0f} ms)  "
        f"{verdict(worst <= TARGET_HEALTHY_S)}"
    )
    lag = r["loop_lag"]
    if lag:
        late = lag["count"] - lag.get("0.1", 0.0)
        print(
            f"  daemon's event loop    {lag['count']:.0f} timers since start (one per 50 ms): "
            f"{lag['count'] - lag['0.05']:.0f} late by > 50 ms, {late:.0f} by > 100 ms, "
            f"{lag['count'] - lag['0.25']:.0f} by > 250 ms "
            f"(tls_scanner_event_loop_lag_seconds)  {verdict(late == 0)}"
        )
    print(f"  workers' anonymous     {r['memory_now_mb']['workers_anonymous']:.0f} MB of their RSS")
    print(f"  /api/v1/targets        {r['api_targets_latency_s'] * 1000:.0f} ms, {r['api_targets_bytes'] / 1e6:.1f} MB")
    cpu, window = r["cpu_during_round_s"], r["cpu_window_s"]
    print(
        f"  CPU in the round       scanner {cpu['scanner']:.1f}s (main process's loop thread "
        f"{r['cpu_main_process_s']:.1f}s), nginx {cpu['nginx']:.1f}s over {window:.1f}s wall "
        f"({(cpu['scanner'] + cpu['nginx']) / window:.2f} of {os.cpu_count()} cores busy)"
    )
    steady = r["steady_cpu_cores"]
    print(
        f"  CPU steady state       scanner {steady['scanner']:.2f} cores, nginx {steady['nginx']:.2f} cores "
        f"(second round, scraped every {r['steady_window_s'] / max(1, r['metrics_scrapes']):.0f}s)"
    )
    per_handshake = cpu["scanner"] / r["connections_total"] if r["connections_total"] else float("nan")
    print(
        f"  one core sustains      ~{1 / per_handshake:.0f} handshakes/s = "
        f"~{60 / per_handshake / r['connections_per_target']['mean']:.0f} targets/min at this matrix "
        f"({per_handshake * 1000:.2f} ms of scanner CPU per handshake, all processes)"
    )


# --- main -------------------------------------------------------------------------------------------------------------


def _git_state(root: Path) -> str:
    """` @ <commit>[ + uncommitted changes]`, or "" outside a git work tree."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "scanner"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" @ {commit}" + (" + uncommitted changes in scanner/" if dirty else "")


def _busy() -> dict[str, Any]:
    """Load average and other processes using CPU now: the machine may be shared, and the numbers are CPU-bound."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pcpu,pid,args", "--sort=-pcpu"], capture_output=True, text=True, check=False)
    busy = [line.strip()[:100] for line in ps.stdout.splitlines()[1:6] if float(line.split()[0]) >= 20]
    mine = str(os.getpid())
    busy = [line for line in busy if line.split()[1] != mine]
    if busy:
        print(f"  NOTE: load {' '.join(load)}; busy processes (numbers may be inflated): {busy}")
    return {"loadavg": load, "busy": busy}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["once", "daemon", "web", "wan", "bursts", "ranges", "all"])
    parser.add_argument(
        "--endpoints", type=int, default=None, help="once: nginx server blocks (default 40); wan: endpoints (500)"
    )
    parser.add_argument("--targets", type=int, default=2000, help="daemon: nginx server blocks (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="once: scanner runs, median reported (default 3)")
    parser.add_argument("--sslyze-timeout", type=float, default=300, help="once: cap on the sslyze CLI (s)")
    parser.add_argument("--round-timeout", type=float, default=150, help="daemon: cap on the first round (s)")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--steady-seconds", type=float, default=60, help="daemon: second-round window (s)")
    parser.add_argument("--scrape-every", type=float, default=5, help="daemon: /metrics period in that window (s)")
    parser.add_argument("--web-targets", type=int, default=100, help="web: nginx server blocks (default 100)")
    parser.add_argument("--slowloris", type=int, default=100, help="web: slow connections held open (default 100)")
    parser.add_argument("--scrapes", type=int, default=2000, help="web: concurrent /metrics requests (default 2000)")
    parser.add_argument(
        "--peer-root", type=Path, default=None, help="web, wan: another tree to measure side by side (e.g. HEAD)"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="wan, ranges: more trees, run by run alongside",
    )
    parser.add_argument("--listeners", type=int, default=1, help="ranges: listeners in the /14 (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="ranges: daemon re-discovery rounds (default 10)")
    parser.add_argument("--check-timeout", type=float, default=30, help="ranges: cap on a --check-config run (s)")
    parser.add_argument("--part", choices=["check-config", "once", "daemon"], default=None, help="ranges: only this")
    parser.add_argument("--rtt-ms", type=float, default=100.0, help="wan: round-trip time of the delay proxy")
    parser.add_argument("--subset", type=int, default=20, help="wan: endpoints for the sslyze/sslscan ratio")
    parser.add_argument("--concurrency", type=int, default=None, help="wan: `concurrency:` in the config")
    parser.add_argument("--address-base", default="127.2.0.1", help="wan, daemon: first endpoint address")
    parser.add_argument("--no-tcp-rtt", action="store_true", help="wan: do not charge the TCP handshake's RTT")
    parser.add_argument(
        "--distinct-addresses",
        action="store_true",
        help="daemon: each server block on its own loopback address from --address-base (port 443), not on ports",
    )
    parser.add_argument(
        "--deep-interval", default=None, help="daemon: `deep_interval:` in the config's defaults (0: no deep tier)"
    )
    parser.add_argument("--workers", default=None, help="daemon: `workers:` in the config (default: not set, auto)")
    parser.add_argument("--no-peers", action="store_true", help="wan: skip the sslyze CLI and sslscan")
    parser.add_argument("--burst-targets", type=int, default=100, help="bursts: targets TLS 1.0 is dropped on")
    parser.add_argument("--burst-window", type=float, default=60, help="bursts: each CPU window (s)")
    parser.add_argument("--burst-interval", type=float, default=2.0, help="bursts: the bursting daemon's interval (s)")
    parser.add_argument("--profile", type=Path, default=None, help="wan: py-spy the first full run into this file")
    parser.add_argument(
        "--scanner-root", type=Path, default=REPO, help="directory `python -m scanner` runs in (default: this repo)"
    )
    args = parser.parse_args(argv)
    if args.endpoints is None:
        args.endpoints = 500 if args.which == "wan" else 40
    global SCANNER_ROOT
    SCANNER_ROOT = args.scanner_root.resolve()
    if not (SCANNER_ROOT / "scanner" / "__main__.py").exists():
        parser.error(f"--scanner-root {SCANNER_ROOT}: no scanner/__main__.py there")
    if shutil.which("nginx") is None:
        print("nginx is not installed (bash tests/run.sh installs it)", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"tls-scanner benchmarks on {os.cpu_count()} CPUs, loopback nginx; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"scanner from {SCANNER_ROOT}{_git_state(SCANNER_ROOT)}")
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "scanner_root": str(SCANNER_ROOT),
        "git": _git_state(SCANNER_ROOT),
        "load_before": _busy(),
    }
    if args.which in ("once", "all"):
        results["once"] = bench_once(args)
    if args.which in ("daemon", "all"):
        results["daemon"] = bench_daemon(args)
    if args.which in ("web", "all"):
        results["web"] = bench_web(args)
    if args.which == "wan":
        roots = {"this": SCANNER_ROOT} | ({"peer": args.peer_root.resolve()} if args.peer_root else {})
        for spec in args.compare:
            label, _, root = spec.partition("=")
            roots[label] = Path(root).resolve()
        results["wan"] = wan.bench_wan(args, run_measured, dict(PROFILES), nginx_servers, roots)
    if args.which == "bursts":
        from bench import bursts

        results["bursts"] = bursts.bench_bursts(args)
    if args.which == "ranges":
        roots = {"this": SCANNER_ROOT}
        for spec in args.compare:
            label, _, root = spec.partition("=")
            roots[label] = Path(root).resolve()
        results["ranges"] = ranges.bench_ranges(
            roots, args.listeners, args.repeat, args.rounds, args.check_timeout, args.part
        )
    results["total_s"] = time.monotonic() - started
    results["load_after"] = _busy()
    path = save(args.which, results)
    print(f"\nresults: {path.relative_to(REPO)}  (total {results['total_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
