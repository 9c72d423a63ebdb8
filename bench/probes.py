"""`python bench/probes.py [--addresses 100] [--window 15] [--repeat 2]`: what one burst probe costs, side by side in
the same run. nginx refuses TLS 1.0 on N loopback addresses (127.3.0.x); each address is asked about TLS 1.0 every 2 s
for a window, and the CPU spent is divided by the answers got.

In this process (the sweep engine alone):
- spread: a one-version sweep (SweepEngine.sweep) per address at its own phase, hellos in handshake threads (bursts
  before #21's work);
- ticks: the same sweeps, all addresses on one tick of a shared clock;
- ticks + probe: SweepEngine.probe on the shared tick, its hellos on the event loop (what a worker runs for a burst).

Through one worker process (`WorkerPool`: this process's CPU and the worker's, as in the daemon), the same shared ticks:
- sweep: what a burst cost before this change, a one-version sweep sent as a SweepRequest (its target and its result
  pickled whole each time);
- probe: WorkerPool.probe, a ProbeRequest and an AddressResult back (bursts now).

Then what pickling each of those requests and replies costs. The ratios are what matter: the absolute figures move with
the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import _cpu_seconds
from bench.servers import NginxLab, NginxServer, child_pids
from scanner.config import Politeness, TargetConfig
from scanner.daemon.pool import ProbeRequest, Reply, SweepRequest, WorkerPool
from scanner.engine.locate import locate
from scanner.engine.sweep import SweepEngine
from scanner.protocols import Protocol

INTERVAL = 2.0
T10 = Protocol.TLSv1_0
Ask = Callable[[TargetConfig], Awaitable[object]]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_LAB: set[int] = set()  # this process's children that are not worker processes (nginx's master)


def _workers_cpu() -> float:
    return _cpu_seconds(sorted(child_pids(os.getpid()) - _LAB))


async def _measure(targets: list[TargetConfig], ask: Ask, aligned: bool, window: float) -> tuple[float, int]:
    """CPU seconds per answer over `window` (this process and its worker processes), and the answers got."""
    loop = asyncio.get_running_loop()
    made = 0

    async def probe(target: TargetConfig, phase: float) -> None:
        nonlocal made
        start = loop.time()
        await asyncio.sleep(phase)
        while True:
            await ask(target)
            made += 1
            if aligned:
                await asyncio.sleep(INTERVAL - (loop.time() - start) % INTERVAL)
            else:
                await asyncio.sleep(INTERVAL)

    phases = [0.0 if aligned else INTERVAL * i / len(targets) for i in range(len(targets))]
    tasks = [asyncio.create_task(probe(t, phase)) for t, phase in zip(targets, phases, strict=True)]
    try:
        await asyncio.sleep(2 * INTERVAL)  # warm up: every probe started, threads and workers made
        cpu, before = _cpu() + _workers_cpu(), made
        await asyncio.sleep(window)
        return (_cpu() + _workers_cpu() - cpu) / max(1, made - before), made - before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _here(targets: list[TargetConfig], way: str, window: float) -> tuple[float, int]:
    engine = SweepEngine(128)
    narrowed = {t.name: replace(t, protocols=(T10,)) for t in targets}

    async def sweep(target: TargetConfig) -> object:
        return await engine.sweep(narrowed[target.name], [target.host])

    async def probe(target: TargetConfig) -> object:
        return await engine.probe(target, T10, target.host)

    try:
        return await _measure(targets, probe if way == "ticks + probe" else sweep, way != "spread", window)
    finally:
        engine.close()


async def _in_worker(targets: list[TargetConfig], way: str, window: float) -> tuple[float, int]:
    pool = WorkerPool(1, 128, Politeness(), None)
    narrowed = {t.name: replace(t, protocols=(T10,), clients=()) for t in targets}

    async def sweep(target: TargetConfig) -> object:
        return await pool.sweep(narrowed[target.name], [target.host])

    async def probe(target: TargetConfig) -> object:
        return await pool.probe(target, T10, target.host)

    try:
        return await _measure(targets, probe if way == "probe" else sweep, True, window)
    finally:
        await pool.shutdown()


async def _messages(target: TargetConfig) -> dict[str, object]:
    """A burst's request to a worker and the worker's reply, as a one-version sweep and as a probe."""
    engine = SweepEngine(4)
    narrowed = replace(target, protocols=(T10,))
    try:
        located = await locate(narrowed, [target.host], None)
        swept = await engine.sweep_located(narrowed, located)
        found = await engine.probe_address(target, T10, target.host)
    finally:
        engine.close()
    return {
        "sweep request": SweepRequest(1, narrowed, located),
        "sweep reply": Reply(1, swept),
        "probe request": ProbeRequest(1, pickle.dumps(target, protocol=pickle.HIGHEST_PROTOCOL), T10, target.host),
        "probe reply": Reply(1, found),
    }


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


def _best(title: str, costs: dict[str, list[float]], base: str) -> None:
    best = {way: min(values) for way, values in costs.items()}
    print(f"{title}: " + ", ".join(f"{way} {v * 1000:.3f} ms ({v / best[base]:.2f}x)" for way, v in best.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addresses", type=int, default=100)
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured per way")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the ways, interleaved")
    args = parser.parse_args()
    servers = [
        NginxServer(f"s{i}", 443, ["TLSv1.2", "TLSv1.3"], listen=f"127.3.{i // 250}.{i % 250 + 1}")
        for i in range(args.addresses)
    ]
    targets = [TargetConfig(name=s.name, host=s.listen, port=443, timeout=5.0) for s in servers]
    print(f"probes: a refused TLS 1.0 hello on each of {args.addresses} addresses every {INTERVAL:g}s")
    here: dict[str, list[float]] = {"spread": [], "ticks": [], "ticks + probe": []}
    worker: dict[str, list[float]] = {"sweep": [], "probe": []}
    with NginxLab(servers):
        _LAB.update(child_pids(os.getpid()))
        for _ in range(args.repeat):
            for way, costs in [*((w, here) for w in here), *((w, worker) for w in worker)]:
                run = _here if costs is here else _in_worker
                cost, made = asyncio.run(run(targets, way, args.window))
                costs[way].append(cost)
                where = "this process" if costs is here else "through a worker"
                print(f"  {where}, {way:<13} {cost * 1000:.3f} ms CPU per probe ({made} probes)")
                time.sleep(1)
        messages = asyncio.run(_messages(targets[0]))
    _best("best of each, in this process", here, "spread")
    _best("best of each, through a worker (both processes' CPU)", worker, "sweep")
    print("one burst's messages to and from a worker process:")
    _pickle_costs(messages)


if __name__ == "__main__":
    main()
