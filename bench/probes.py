"""`python bench/probes.py [--addresses 100] [--window 15]`: what one burst probe costs, three ways side by side in
the same run. nginx refuses TLS 1.0 on N loopback addresses (127.3.0.x); each address gets a one-version sweep
(SweepEngine.sweep, what a burst sends a worker) every 2 s, for a window, and the CPU of this process is divided by
the probes made:

- spread: each address at its own phase over the 2 s, hellos in handshake threads (bursts before #21's work);
- ticks: all addresses on the same tick, hellos in handshake threads;
- ticks + loop: all on the same tick, hellos on the event loop (on_loop=True: bursts now).

Then what carrying one probe to a worker process and back adds: its request and reply pickled and unpickled.

The ratios are what matter: the absolute figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import NginxLab, NginxServer
from scanner.config import TargetConfig
from scanner.daemon.pool import Reply, SweepRequest
from scanner.engine.locate import locate
from scanner.engine.sweep import SweepEngine
from scanner.protocols import Protocol

INTERVAL = 2.0
WAYS = {"spread": (False, False), "ticks": (True, False), "ticks + loop": (True, True)}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(targets: list[TargetConfig], aligned: bool, on_loop: bool, window: float) -> tuple[float, int]:
    """CPU seconds per probe over `window`, and the probes made."""
    engine = SweepEngine(128)
    loop = asyncio.get_running_loop()
    made = 0

    async def probe(target: TargetConfig, phase: float) -> None:
        nonlocal made
        start = loop.time()
        await asyncio.sleep(phase)
        while True:
            await engine.sweep(target, [target.host], on_loop=on_loop)
            made += 1
            if aligned:
                await asyncio.sleep(INTERVAL - (loop.time() - start) % INTERVAL)
            else:
                await asyncio.sleep(INTERVAL)

    phases = [0.0 if aligned else INTERVAL * i / len(targets) for i in range(len(targets))]
    tasks = [asyncio.create_task(probe(t, phase)) for t, phase in zip(targets, phases, strict=True)]
    try:
        await asyncio.sleep(2 * INTERVAL)  # warm up: every probe started, threads made
        cpu, before = _cpu(), made
        await asyncio.sleep(window)
        return (_cpu() - cpu) / max(1, made - before), made - before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine.close()


async def _messages(target: TargetConfig) -> dict[str, object]:
    """A burst probe's request to a worker and the worker's reply, as the pool sends them."""
    engine = SweepEngine(4)
    try:
        located = await locate(target, [target.host], None)
        result = await engine.sweep_located(target, located, on_loop=True)
    finally:
        engine.close()
    return {"request": SweepRequest(1, target, located, on_loop=True), "reply": Reply(1, result)}


def _pickle_costs(messages: dict[str, object], n: int = 2000) -> None:
    for name, message in messages.items():
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        cpu = _cpu()
        for _ in range(n):
            pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        dumped = (_cpu() - cpu) / n
        cpu = _cpu()
        for _ in range(n):
            pickle.loads(data)
        loaded = (_cpu() - cpu) / n
        print(f"  {name}: {len(data)} bytes, pickled in {dumped * 1e6:.0f} µs, unpickled in {loaded * 1e6:.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addresses", type=int, default=100)
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured per way")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three ways, interleaved")
    args = parser.parse_args()
    servers = [
        NginxServer(f"s{i}", 443, ["TLSv1.2", "TLSv1.3"], listen=f"127.3.{i // 250}.{i % 250 + 1}")
        for i in range(args.addresses)
    ]
    targets = [
        TargetConfig(name=s.name, host=s.listen, port=443, protocols=(Protocol.TLSv1_0,), timeout=5.0) for s in servers
    ]
    print(f"probes: a refused TLS 1.0 hello on each of {args.addresses} addresses every {INTERVAL:g}s")
    costs: dict[str, list[float]] = {way: [] for way in WAYS}
    with NginxLab(servers):
        for _ in range(args.repeat):
            for way, (aligned, on_loop) in WAYS.items():
                cost, made = asyncio.run(_measure(targets, aligned, on_loop, args.window))
                costs[way].append(cost)
                print(f"  {way:<13} {cost * 1000:.3f} ms CPU per probe ({made} probes)")
                time.sleep(1)
        messages = asyncio.run(_messages(targets[0]))
    best = {way: min(values) for way, values in costs.items()}
    base = best["spread"]
    print("best of each: " + ", ".join(f"{way} {v * 1000:.3f} ms ({v / base:.2f}x)" for way, v in best.items()))
    print("one probe's messages to and from a worker process:")
    _pickle_costs(messages)


if __name__ == "__main__":
    main()
