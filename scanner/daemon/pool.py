"""Sweeps in worker processes: each runs its own event loop, handshake threads and sslyze; this process keeps the
schedule, the store and HTTP.

One interpreter holds the GIL for every handshake's Python work; past ~1,000 handshakes a second that is the wall,
and a /metrics render or a health check waits behind it. The workers are `python -m scanner.daemon.worker` children
speaking length-prefixed pickles over their stdin and stdout (our own processes, nothing else writes there).
Names are resolved here, and a sweep goes to the worker its lowest address hashes to, so the per-address
politeness caps hold for targets that share addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import pickle
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol as Interface

from scanner.config import Politeness, Resolver, TargetConfig
from scanner.engine.locate import Located, locate
from scanner.errors import WorkerError
from scanner.logs import JsonFormatter
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult
from scanner.results.ranges import Discovered
from scanner.results.sweep import (
    AddressResult,
    ErrorReason,
    ProtocolResult,
    ProtocolState,
    SweepResult,
    ended_sweep,
    probed,
)
from scanner.targets import RangeBlock

log = logging.getLogger(__name__)

AUTO_MAX_WORKERS = 8  # `workers: auto` never starts more, whatever the CPU count
# `workers: auto` starts one worker per this many targets (one sustains ~13,000 targets a minute), none below it: a
# few hundred targets cost one process little CPU, and each worker costs 40-100 MB.
AUTO_TARGETS_PER_WORKER = 1000
_HEADER = struct.Struct(">I")
STOP_WAIT_SECONDS = 5.0  # for a worker to exit once its stdin is closed, before it is killed
RESTART_DELAY_SECONDS = 1.0  # before a worker that died is started again
# Targets whose pickle a pool keeps for its probes: more bursts than run at once (scanner.daemon.burst.MAX_BURSTS).
MAX_PICKLED_TARGETS = 1024
# A worker ignores these: the parent stops it by closing its stdin (see scanner.daemon.worker).
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class Sweeper(Interface):
    """What runs sweeps and deep scans: the in-process SweepEngine or the WorkerPool."""

    resolver: Resolver | None

    async def sweep(self, target: TargetConfig, addresses: list[str] | None = None) -> SweepResult: ...

    async def probe(self, target: TargetConfig, protocol: Protocol, address: str, route: str = "") -> SweepResult:
        """A burst's re-probe: `protocol` alone on one address of the target (SweepEngine.probe_address), in the
        worker process `route` (the lowest address of the target's last sweep) goes to, as its sweeps do."""

    async def deep(self, target: TargetConfig, addresses: Sequence[str]) -> DeepResult: ...

    def stop(self) -> None:
        """Shutting down: handshakes not yet started end as errors instead."""

    async def shutdown(self) -> None:
        """Release the threads and processes; sweeps still running end as errors."""


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return cpus


def worker_count(configured: int | None, targets: int) -> int:
    """`workers:` as configured, or for `auto` (None): one per AUTO_TARGETS_PER_WORKER targets, at most one per
    usable CPU and AUTO_MAX_WORKERS; none (sweeps in this process) below that many targets or on a single CPU."""
    if configured is not None:
        return configured
    cpus = available_cpus()
    if cpus < 2 or targets < AUTO_TARGETS_PER_WORKER:
        return 0
    return min(cpus, AUTO_MAX_WORKERS, math.ceil(targets / AUTO_TARGETS_PER_WORKER))


def make_sweeper(workers: int, concurrency: int, politeness: Politeness, resolver: Resolver | None) -> Sweeper:
    """A WorkerPool of `workers` processes, or with 0 the SweepEngine in this process (only then is sslyze loaded)."""
    if workers == 0:
        from scanner.engine.sweep import SweepEngine

        return SweepEngine(concurrency, politeness, resolver)
    return WorkerPool(workers, concurrency, politeness, resolver)


# --- the messages, pickled both ways -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The first message a worker reads."""

    concurrency: int
    politeness: Politeness
    log_level: int
    json_logs: bool


@dataclass(frozen=True)
class SweepRequest:
    id: int
    target: TargetConfig
    located: Located


@dataclass(frozen=True)
class ProbeRequest:
    """A burst's re-probe (SweepEngine.probe_address): sent every tick, so kept small. The target goes pickled once
    per target object (the pool keeps the bytes; the worker unpickles them once and keeps the TargetConfig by them)."""

    id: int
    target: bytes
    protocol: Protocol
    address: str


@dataclass(frozen=True)
class DeepRequest:
    id: int
    target: TargetConfig
    addresses: tuple[str, ...]
    started_at: float  # unix time


@dataclass(frozen=True)
class DiscoverRequest:
    """Connect to the block's endpoints (scanner.daemon.ranges): one block at a time per worker."""

    id: int
    block: RangeBlock


@dataclass(frozen=True)
class Cancel:
    id: int


@dataclass(frozen=True)
class Stop:
    """Shutting down: handshakes not yet started end as errors."""


Request = SweepRequest | ProbeRequest | DeepRequest | DiscoverRequest
Answer = SweepResult | AddressResult | DeepResult | Discovered


@dataclass(frozen=True)
class Reply:
    id: int
    result: Answer | None
    error: str | None = None  # the sweep raised (a bug, logged by the worker): result is None


def frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class Outbox:
    """Messages framed as they are sent, written together once per turn of the event loop: the probes of a burst tick
    (and their replies as they come in) cost one write to the pipe, not one each."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self.write = write
        self._frames: list[bytes] = []

    def send(self, message: object) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(frame(message))

    def flush(self) -> None:
        if self._frames:
            data = b"".join(self._frames)
            self._frames.clear()
            self.write(data)


async def read_frame(reader: asyncio.StreamReader) -> object | None:
    """The next message, or None at the end of the stream."""
    try:
        size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
        message: object = pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
    return message


# --- the pool ----------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    future: asyncio.Future[Answer]
    request: Request


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    pending: dict[int, _Pending] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self._write)

    def writable(self) -> bool:
        process = self.process
        return process is not None and process.stdin is not None and not process.stdin.is_closing()

    def _write(self, data: bytes) -> None:
        if self.writable():
            assert self.process is not None and self.process.stdin is not None
            self.process.stdin.write(data)


class WorkerPool:
    """Sweeps and deep scans in `count` worker processes, `concurrency` handshakes in flight across them."""

    def __init__(self, count: int, concurrency: int, politeness: Politeness, resolver: Resolver | None) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.resolver = resolver
        self.settings = Settings(
            concurrency=max(1, math.ceil(concurrency / count)),
            politeness=politeness,
            log_level=logging.getLogger().getEffectiveLevel(),
            json_logs=any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers),
        )
        self._workers = [_Worker(i) for i in range(count)]
        self._ids = itertools.count()
        self._dealt = itertools.count()  # discovery blocks handed out
        self._stopping = False
        self._spawning = 0  # worker starts in progress, with the stop signals blocked here
        self._closing = False
        self._starting: asyncio.Task[None] | None = None
        self._pickled_targets: dict[int, tuple[TargetConfig, bytes]] = {}  # id -> (the target, pickled)

    def stop(self) -> None:
        self._stopping = True
        for worker in self._workers:
            self._send(worker, Stop())

    async def sweep(self, target: TargetConfig, addresses: list[str] | None = None) -> SweepResult:
        located = await locate(target, addresses, self.resolver)
        if located.error is not None:
            error, reason = located.error, ErrorReason.DNS
            return ended_sweep(target, located.started_at, located.clock, error=error, error_reason=reason)
        request = SweepRequest(next(self._ids), target, located)
        result = await self._ask(located.route or target.host, request)
        assert isinstance(result, SweepResult)
        # The configured target, not the worker's copy of it: one TargetConfig per target stays in memory.
        return replace(result, target=target)

    async def probe(self, target: TargetConfig, protocol: Protocol, address: str, route: str = "") -> SweepResult:
        started_at, clock = time.time(), time.monotonic()
        request = ProbeRequest(next(self._ids), self._pickled(target), protocol, address)
        found = await self._ask(route or address or target.host, request)
        assert isinstance(found, AddressResult)
        return probed(target, started_at, clock, found)

    def _pickled(self, target: TargetConfig) -> bytes:
        """The target pickled, once per TargetConfig object (a reload makes new ones; the old ones' bytes go)."""
        kept = self._pickled_targets.get(id(target))
        if kept is None or kept[0] is not target:
            if len(self._pickled_targets) >= MAX_PICKLED_TARGETS:
                self._pickled_targets.clear()
            kept = self._pickled_targets[id(target)] = (target, pickle.dumps(target, protocol=pickle.HIGHEST_PROTOCOL))
        return kept[1]

    async def deep(self, target: TargetConfig, addresses: Sequence[str]) -> DeepResult:
        request = DeepRequest(next(self._ids), target, tuple(addresses), time.time())
        # Always the first worker: the deep tier runs one scan at a time, and only that worker loads all of sslyze.
        result = await self._ask(None, request)
        assert isinstance(result, DeepResult)
        return replace(result, target=target)

    async def discover(self, block: RangeBlock) -> Discovered:
        """Discovery of one block in a worker process, blocks dealt to the workers in turn."""
        request = DiscoverRequest(next(self._ids), block)
        result = await self._ask(None, request, index=next(self._dealt) % len(self._workers))
        assert isinstance(result, Discovered)
        return result

    async def _ask(self, route: str | None, request: Request, index: int | None = None) -> Answer:
        """Send the request to worker `index`, else the one `route` hashes to (None: the first); wait for its reply."""
        if self._starting is None:
            self._starting = asyncio.create_task(self._start_all())
        if index is None:
            index = 0 if route is None else zlib.crc32(route.encode()) % len(self._workers)
        worker = self._workers[index]
        await worker.started.wait()
        if self._closing:
            return _failed(request, "the worker processes are stopping")
        if worker.process is None:
            return _failed(request, f"worker process {index} could not be started")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        worker.pending[request.id] = _Pending(future, request)
        self._send(worker, request)
        try:
            return await future
        except asyncio.CancelledError:
            if worker.pending.pop(request.id, None) is not None:
                self._send(worker, Cancel(request.id))
            raise

    async def _start_all(self) -> None:
        await asyncio.gather(*(self._start(worker) for worker in self._workers))

    async def _start(self, worker: _Worker) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # glibc would give the handshake threads up to 8 malloc arenas per core, each keeping its freed OpenSSL
        # buffers resident; two are enough for threads that mostly wait on the network.
        env.setdefault("MALLOC_ARENA_MAX", "2")
        # Born with the stop signals blocked (the mask survives exec): a Ctrl-C to the process group while the
        # worker is still importing would otherwise end it with a KeyboardInterrupt traceback. The worker unblocks
        # them once it ignores them; here they stay pending until the last concurrent start is through.
        self._spawning += 1
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "scanner.daemon.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            log.error("cannot start worker process %d: %s", worker.index, exc)
            worker.process = None
        finally:
            self._spawning -= 1
            if self._spawning == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if worker.process is not None:
            self._send(worker, self.settings)
            if self._stopping:
                self._send(worker, Stop())
            worker.reader = asyncio.create_task(self._read(worker), name=f"worker {worker.index} replies")
        worker.started.set()

    def _send(self, worker: _Worker, message: object) -> None:
        if worker.writable():
            worker.outbox.send(message)

    async def _read(self, worker: _Worker) -> None:
        process = worker.process
        assert process is not None and process.stdout is not None
        while True:
            try:
                reply = await read_frame(process.stdout)
            except Exception:  # a garbled stream: this worker cannot be trusted any more
                log.exception("worker process %d sent a reply that cannot be read; stopping it", worker.index)
                process.kill()
                break
            if not isinstance(reply, Reply):
                break
            pending = worker.pending.pop(reply.id, None)
            if pending is None or pending.future.done():
                continue  # cancelled meanwhile
            if reply.result is not None:
                pending.future.set_result(reply.result)
            else:
                pending.future.set_exception(WorkerError(reply.error or "unknown error"))
        code = await process.wait()
        for pending in worker.pending.values():
            if not pending.future.done():
                try:
                    pending.future.set_result(_failed(pending.request, f"worker process exited with code {code}"))
                except WorkerError as exc:
                    pending.future.set_exception(exc)
        worker.pending.clear()
        if self._closing:
            return
        log.error("worker process %d exited with code %s; starting it again", worker.index, code)
        worker.started.clear()
        worker.process = None
        await asyncio.sleep(RESTART_DELAY_SECONDS)
        if not self._closing:
            await self._start(worker)

    async def shutdown(self) -> None:
        """Close each worker's stdin (it finishes and exits), kill any still there after STOP_WAIT_SECONDS."""
        self._closing = True
        if self._starting is not None:
            await self._starting
        for worker in self._workers:
            if worker.process is not None and worker.process.stdin is not None:
                worker.outbox.flush()
                worker.process.stdin.close()
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT_SECONDS)
            except TimeoutError:
                log.warning("worker process %d did not exit; killing it", worker.index)
                process.kill()
                await process.wait()
            if worker.reader is not None:
                await worker.reader


def _failed(request: Request, why: str) -> Answer:
    """The error result of a request its worker could not answer: never a verdict on the target."""
    if isinstance(request, DiscoverRequest):  # no partial answer: the range is discovered again next time
        raise WorkerError(f"discovery of {request.block.network}: {why}")
    if isinstance(request, SweepRequest):
        located = request.located
        return ended_sweep(
            request.target,
            located.started_at,
            located.clock,
            error=why,
            error_reason=ErrorReason.OTHER,
            dns_error=located.dns_error,
        )
    if isinstance(request, ProbeRequest):
        error = ProtocolResult(ProtocolState.ERROR, detail=why, reason=ErrorReason.OTHER)
        return AddressResult(request.address, {request.protocol: error}, why, ErrorReason.OTHER)
    return DeepResult(request.target, request.started_at, time.time() - request.started_at, error=why)
