"""WAN lab: a loopback delay proxy in front of nginx, so every connection pays real round trips.

`python bench/run.py wan [--rtt-ms 100] [--endpoints 500]` (see bench/README.md). The proxy runs in its own process
(`python bench/wan.py proxy ...`), listening on one loopback address per endpoint (127.2.x.y:443 by default, so the
scanner's per-address politeness caps behave as on the Internet) and forwarding to the nginx server block of the
endpoint's profile. Every chunk is held `rtt / 2` each way; the client's first chunk is held one round trip longer,
for the TCP handshake the kernel completes at once on loopback (so a connection costs what it costs on a WAN:
TCP 1 RTT, then the TLS round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# What the issue asks for at 100 ms RTT.
TARGET_WAN_S = 5.0
TARGET_CPU_MS_PER_HANDSHAKE = 1.0
TARGET_WAN_SPEEDUP = 25.0


# --- the delay proxy (its own process) --------------------------------------------------------------------------------


class _Delayed:
    """One direction of a proxied connection: chunks written to `transport` in order, each `delay` after arrival."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None  # None until the far side is connected
        self.queue: deque[tuple[float, bytes | None]] = deque()  # (due, data); None: close
        self.timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes | None, extra: float = 0.0) -> None:
        self.queue.append((self.loop.time() + self.delay + extra, data))
        if self.timer is None:
            self.arm()

    def arm(self) -> None:
        if self.queue and self.transport is not None and self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        transport = self.transport
        assert transport is not None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now + 0.0005:
            _, data = self.queue.popleft()
            if transport.is_closing():
                self.queue.clear()
                return
            if data is None:
                transport.close()
                self.queue.clear()
                return
            transport.write(data)
        self.arm()


class _Upstream(asyncio.Protocol):
    """The proxy's connection to nginx: what nginx says goes back to the client, delayed."""

    def __init__(self, to_client: _Delayed) -> None:
        self.to_client = to_client

    def data_received(self, data: bytes) -> None:
        self.to_client.push(data)

    def eof_received(self) -> bool | None:
        self.to_client.push(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.to_client.push(None)


class _Downstream(asyncio.Protocol):
    """A client's connection to one endpoint address."""

    def __init__(self, upstream: tuple[str, int], delay: float, tcp_rtt: bool) -> None:
        self.upstream = upstream
        self.delay = delay
        self.first_extra = 2 * delay if tcp_rtt else 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        loop = asyncio.get_running_loop()
        self.to_client = _Delayed(loop, self.delay)
        self.to_client.transport = transport
        self.to_server = _Delayed(loop, self.delay)
        self.connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            transport, _ = await loop.create_connection(lambda: _Upstream(self.to_client), *self.upstream)
        except OSError:
            self.to_client.push(None)
            return
        self.to_server.transport = transport
        self.to_server.arm()

    def data_received(self, data: bytes) -> None:
        self.to_server.push(data, self.first_extra)
        self.first_extra = 0.0

    def eof_received(self) -> bool | None:
        self.to_server.push(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.to_server.push(None)


async def _serve(mapping: list[tuple[str, int, int]], delay: float, tcp_rtt: bool) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for host, port, upstream in mapping:
        target = ("127.0.0.1", upstream)

        def factory(target: tuple[str, int] = target) -> _Downstream:
            return _Downstream(target, delay, tcp_rtt)

        servers.append(await loop.create_server(factory, host, port, backlog=1024, reuse_address=True))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def proxy_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/wan.py proxy")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument("--map", type=Path, required=True, help="JSON [[listen host, listen port, nginx port], ...]")
    parser.add_argument("--no-tcp-rtt", action="store_true", help="do not charge the TCP handshake's round trip")
    args = parser.parse_args(argv)
    mapping = [(h, int(p), int(u)) for h, p, u in json.loads(args.map.read_text())]
    for host, _, _ in mapping:
        if not ipaddress.ip_address(host).is_loopback:
            parser.error(f"{host}: loopback only")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(mapping, args.delay_ms / 1000, not args.no_tcp_rtt))
    return 0


# --- the lab ----------------------------------------------------------------------------------------------------------


def endpoint_addresses(n: int, base: str) -> list[str]:
    """n distinct loopback addresses from base (e.g. 127.2.0.1, 127.2.0.2, ...), skipping .0 and .255."""
    start = int(ipaddress.ip_address(base))
    found: list[str] = []
    value = start
    while len(found) < n:
        address = ipaddress.ip_address(value)
        if not address.is_loopback:
            raise ValueError(f"{n} endpoints from {base} leave 127.0.0.0/8")
        if value & 0xFF not in (0, 255):
            found.append(str(address))
        value += 1
    return found


@contextlib.contextmanager
def delay_proxy(
    mapping: list[tuple[str, int, int]], rtt_ms: float, work: Path, tcp_rtt: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the delay proxy for mapping (listen host, listen port, nginx port); stop it by its pid."""
    from bench.servers import stop_process  # here: `python bench/wan.py proxy` runs without the bench package

    map_file = work / "proxy-map.json"
    map_file.write_text(json.dumps(mapping))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "proxy",
        "--delay-ms",
        str(rtt_ms / 2),
        "--map",
        str(map_file),
    ]
    if not tcp_rtt:
        cmd.append("--no-tcp-rtt")
    err = (work / "proxy.err").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"delay proxy did not start: {(work / 'proxy.err').read_text()[-2000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            stop_process(proc, 10)
        err.close()


def write_wan_config(path: Path, endpoints: Sequence[tuple[str, str]], concurrency: int | None) -> None:
    """A scanner config with one target per (name, address), port 443, all protocols."""
    lines = [f"concurrency: {concurrency}"] if concurrency else []
    lines += ["defaults:", "  timeout: 5s", "targets:"]
    for name, address in endpoints:
        lines += [f"  - name: {name}", f"    host: {address}", "    port: 443"]
    path.write_text("\n".join(lines) + "\n")


def _scan_summary(report: dict[str, Any], expected: Callable[[str], dict[str, str]]) -> dict[str, Any]:
    targets = report.get("targets", [])
    mismatches = []
    for t in targets:
        for protocol, want in expected(t["name"]).items():
            got = t["protocols"].get(protocol)
            if got != want:
                mismatches.append(f"{t['name']} {protocol}: {got}, configured {want} ({t['details'].get(protocol)})")
    errors = Counter(
        f"{p}: {t['details'].get(p)}" for t in targets for p, state in t["protocols"].items() if state == "error"
    )
    return {
        "targets": len(targets),
        "connections": sum(t["connections"] for t in targets),
        "incomplete": sum(1 for t in targets if not t["complete"]),
        "errors": errors.most_common(5),
        "mismatches": mismatches,
        "sweep_duration_s": statistics.median(t["duration_seconds"] for t in targets) if targets else None,
    }


def bench_wan(
    args: argparse.Namespace,
    run_measured: Callable[..., Any],
    profiles: dict[str, Sequence[Any]],
    start_nginx: Callable[..., Any],
    scanner_roots: dict[str, Path],
) -> dict[str, Any]:
    """--once on N endpoints behind the delay proxy; the sslyze CLI and sslscan on a 20-endpoint subset."""
    n, rtt, subset_n = args.endpoints, args.rtt_ms, min(args.subset, args.endpoints)
    print(f"\n=== W. wan: {n} endpoints at {rtt:.0f} ms RTT (delay proxy), --once; {subset_n} for the ratio ===")
    from bench.servers import NginxServer, free_ports

    all_protocols = ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
    names = list(profiles)
    result: dict[str, Any] = {"endpoints": n, "rtt_ms": rtt, "tcp_rtt": not args.no_tcp_rtt}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-bench-wan-")))
        ports = free_ports(len(names))
        servers = [
            NginxServer(name=f"p-{name}", port=port, ssl_protocols=[p.value for p in profiles[name]])
            for name, port in zip(names, ports, strict=True)
        ]
        stack.enter_context(start_nginx(servers, args.nginx_workers))
        upstream = dict(zip(names, ports, strict=True))
        addresses = endpoint_addresses(n, args.address_base)
        endpoints = [(f"w{i}-{names[i % len(names)]}", a) for i, a in enumerate(addresses)]
        profile_of = {name: name.split("-", 1)[1] for name, _ in endpoints}

        def expected(name: str) -> dict[str, str]:
            accepted = {p.value for p in profiles[profile_of[name]]}
            return {p: "accepted" if p in accepted else "rejected" for p in all_protocols}

        mapping = [(a, 443, upstream[profile_of[name]]) for name, a in endpoints]
        started = time.monotonic()
        stack.enter_context(delay_proxy(mapping, rtt, work, tcp_rtt=not args.no_tcp_rtt))
        print(
            f"  delay proxy: {n} addresses from {addresses[0]}, {rtt / 2:.0f} ms each way, up in "
            f"{time.monotonic() - started:.1f}s; nginx: {len(servers)} server blocks behind it"
        )
        full = work / "full.yaml"
        subset = work / "subset.yaml"
        write_wan_config(full, endpoints, args.concurrency)
        write_wan_config(subset, endpoints[:subset_n], args.concurrency)

        def scan(root: Path, config: Path, label: str) -> dict[str, Any]:
            out = work / f"{label}.json"
            cmd = [sys.executable, "-m", "scanner", "--once", "--config", str(config), "--format", "json"]
            if args.profile and label.endswith("-full-0"):
                # Sampled from outside (all threads, the one holding the GIL): the profile run's times are not clean.
                spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--native", "-r", "200"]
                cmd = [*spy, "-f", "raw", "-o", str(args.profile.resolve()), "--", *cmd]
            run = run_measured(cmd, 300, out, work / f"{label}.err", cwd=root)
            report = json.loads(out.read_text() or "{}")
            summary = _scan_summary(report, expected)
            conns = summary["connections"] or 1
            summary.update(
                wall_s=run.wall_s,
                cpu_s=run.cpu_s,
                maxrss_mb=run.maxrss_mb,
                exit=run.returncode,
                cpu_ms_per_handshake=1000 * run.cpu_s / conns,
            )
            return summary

        result["scanner"] = {}
        for label in scanner_roots:
            result["scanner"][label] = {"full": [], "subset": []}
        # Trees alternate run by run, so load on the machine falls on all of them alike.
        for i in range(args.repeat):
            for label, root in scanner_roots.items():
                for kind, config in (("full", full), ("subset", subset)):
                    s = scan(root, config, f"{label}-{kind}-{i}")
                    result["scanner"][label][kind].append(s)
                    print(
                        f"  [{label}] {kind:<6} run {i + 1}: {s['wall_s']:.2f}s wall, CPU {s['cpu_s']:.2f}s, "
                        f"{s['connections']} handshakes, {s['cpu_ms_per_handshake']:.2f} ms CPU/handshake, "
                        f"RSS {s['maxrss_mb']:.0f} MB, exit {s['exit']}, {s['incomplete']} incomplete, "
                        f"{len(s['mismatches'])} mismatches"
                    )

        subset_targets = [f"{a}:443" for _, a in endpoints[:subset_n]]
        if not args.no_peers:
            sslyze_json = work / "sslyze.json"
            cmd = [sys.executable, "-m", "sslyze", "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2"]
            cmd += ["--tlsv1_3", "--json_out", str(sslyze_json), *subset_targets]
            sslyze = run_measured(cmd, args.sslyze_timeout, work / "sslyze.out", work / "sslyze.err")
            result["sslyze"] = {"wall_s": sslyze.wall_s, "cpu_s": sslyze.cpu_s, "timed_out": sslyze.timed_out}
            print(
                f"  sslyze CLI, {subset_n} endpoints: {sslyze.wall_s:.1f}s wall, CPU {sslyze.cpu_s:.1f}s"
                + (" (KILLED at its cap)" if sslyze.timed_out else "")
            )
            if shutil.which("sslscan"):
                started = time.monotonic()
                cpu = 0.0
                for i, target in enumerate(subset_targets):
                    run = run_measured(
                        ["sslscan", "--no-ciphersuites", "--no-colour", target],
                        120,
                        work / f"sslscan{i}.out",
                        work / f"sslscan{i}.err",
                    )
                    cpu += run.cpu_s
                result["sslscan"] = {"wall_s": time.monotonic() - started, "cpu_s": cpu}
                print(
                    f"  sslscan --no-ciphersuites, one by one: {result['sslscan']['wall_s']:.1f}s wall, CPU {cpu:.1f}s"
                )
            else:
                result["sslscan"] = None
                print("  sslscan not installed (apt-get install sslscan): skipped")
    _print_wan(result)
    return result


def _print_wan(r: dict[str, Any]) -> None:
    print()
    for label, runs in r["scanner"].items():
        full, subset = runs["full"], runs["subset"]
        wall = statistics.median(s["wall_s"] for s in full)
        cpu_ms = statistics.median(s["cpu_ms_per_handshake"] for s in full)
        sub_wall = statistics.median(s["wall_s"] for s in subset)
        clean = all(not s["incomplete"] and not s["mismatches"] and s["exit"] == 0 for s in full + subset)
        r[f"{label}_summary"] = {"wall_s": wall, "cpu_ms_per_handshake": cpu_ms, "subset_wall_s": sub_wall}
        print(
            f"  [{label}] {r['endpoints']} endpoints at {r['rtt_ms']:.0f} ms RTT: {wall:.2f}s median of {len(full)} "
            f"({', '.join(format(s['wall_s'], '.2f') for s in full)}) (target <= {TARGET_WAN_S:.0f}s) "
            f"{'PASS' if wall <= TARGET_WAN_S and clean else 'FAIL'}"
        )
        print(
            f"  [{label}] CPU per handshake: {cpu_ms:.2f} ms median (user+sys of the process / handshakes in the "
            f"JSON) (target <= {TARGET_CPU_MS_PER_HANDSHAKE:.0f} ms) "
            f"{'PASS' if cpu_ms <= TARGET_CPU_MS_PER_HANDSHAKE else 'FAIL'}"
        )
        per_target = statistics.median(s["connections"] / max(1, s["targets"]) for s in full)
        rate = 1000 / cpu_ms if cpu_ms else 0.0
        r[f"{label}_summary"]["one_core_handshakes_per_s"] = rate
        print(
            f"  [{label}] one core sustains ~{rate:.0f} handshakes/s at this CPU cost (start-up included): "
            f"~{60 * rate / per_target:,.0f} targets a minute at {per_target:.1f} handshakes per target"
        )
        print(f"  [{label}] answers: {'all complete and as configured' if clean else 'ERRORS/MISMATCHES'}")
        for s in full + subset:
            for line in s["mismatches"][:3]:
                print(f"    mismatch: {line}")
            if s["errors"]:
                print(f"    errors: {s['errors'][:3]}")
        for peer in ("sslyze", "sslscan"):
            p = r.get(peer)
            if p:
                ratio = p["wall_s"] / sub_wall
                ok = "PASS" if ratio >= TARGET_WAN_SPEEDUP else "FAIL"
                note = f" (target >= {TARGET_WAN_SPEEDUP:.0f}x) {ok}" if peer == "sslyze" else ""
                r[f"{label}_summary"][f"speedup_vs_{peer}"] = ratio
                print(f"  [{label}] subset {sub_wall:.2f}s vs {peer} {p['wall_s']:.1f}s: {ratio:.1f}x{note}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        sys.exit(proxy_main(sys.argv[2:]))
    sys.exit("usage: python bench/run.py wan ... (this file's own entry point is `proxy`, used by the bench)")
