"""A worker process of the pool (scanner.daemon.pool): sweeps, burst probes and deep scans on its own loop and
handshake threads.

Started by the daemon or `--once` as `python -m scanner.daemon.worker`; reads requests on stdin and writes replies on
stdout (length-prefixed pickles), logs to stderr. It exits when its stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import signal
import sys
from typing import TYPE_CHECKING

from scanner.config import TargetConfig
from scanner.daemon.memory import trim_periodically
from scanner.daemon.pool import (
    MAX_PICKLED_TARGETS,
    STOP_SIGNALS,
    Cancel,
    DeepRequest,
    DiscoverRequest,
    Outbox,
    ProbeRequest,
    Reply,
    Request,
    Settings,
    Stop,
    SweepRequest,
    read_frame,
)
from scanner.daemon.ranges import discover_in_thread
from scanner.logs import setup_logging

if TYPE_CHECKING:
    from scanner.engine.sweep import SweepEngine

log = logging.getLogger(__name__)

# Each hello leaves a few hundred short-lived objects (sslyze's connection, nassl's client, asyncio's handles), nearly
# all freed by reference counting; at the default threshold (700) the youngest generation was collected every few
# hellos, ~10 % of a worker's CPU on burst re-probes.
YOUNG_COLLECTION_THRESHOLD = 10_000


def main() -> None:
    # The parent decides when this process stops (by closing stdin): a Ctrl-C or a SIGTERM sent to the whole
    # process group (systemd's default) must not cut sweeps short behind its back.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # the pool starts us with them blocked
    # Replies get a private copy of stdout; anything else printing to fd 1 (a library, a stray print) goes to stderr
    # instead of corrupting the stream.
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    asyncio.run(_serve(replies))


async def _serve(replies: object) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, replies)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    outbox = Outbox(writer.write)  # replies
    settings = await read_frame(reader)
    if not isinstance(settings, Settings):
        return  # the parent went away before it said anything
    setup_logging(logging.getLevelName(settings.log_level), "json" if settings.json_logs else "text")
    engines: list[SweepEngine] = []  # made on the first sweep: a worker that only discovers never loads sslyze
    tasks: dict[int, asyncio.Task[None]] = {}
    stopping = False
    one_block = asyncio.Lock()  # one discovery block at a time, within this worker's share of `concurrency`
    trimmer = asyncio.create_task(trim_periodically())
    probed: dict[bytes, TargetConfig] = {}  # the targets of probes, by their pickle (scanner.daemon.pool.ProbeRequest)

    def probed_target(pickled: bytes) -> TargetConfig:
        target = probed.get(pickled)
        if target is None:
            if len(probed) >= MAX_PICKLED_TARGETS:
                probed.clear()
            target = probed[pickled] = pickle.loads(pickled)
        return target

    def engine() -> SweepEngine:
        if not engines:
            from scanner.engine.sweep import SweepEngine

            engines.append(SweepEngine(settings.concurrency, settings.politeness))
            if stopping:
                engines[0].stop()
            # sslyze, nassl and the engine live as long as this process: out of every later collection's walk.
            gc.freeze()
        return engines[0]

    async def discover(request: DiscoverRequest) -> Reply:
        async with one_block:
            found = await discover_in_thread(request.block, settings.concurrency, settings.politeness, lambda: stopping)
        return Reply(request.id, found)

    async def answer(request: Request) -> None:
        try:
            if isinstance(request, ProbeRequest):
                target = probed_target(request.target)
                reply = Reply(request.id, await engine().probe_address(target, request.protocol, request.address))
            elif isinstance(request, SweepRequest):
                reply = Reply(request.id, await engine().sweep_located(request.target, request.located))
            elif isinstance(request, DeepRequest):
                reply = Reply(request.id, await engine().deep(request.target, request.addresses))
            else:
                reply = await discover(request)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a bug: logged here with its traceback, reported to the parent as an error
            log.exception("%s of %s failed", type(request).__name__.removesuffix("Request").lower(), _what(request))
            reply = Reply(request.id, None, f"{type(exc).__name__}: {exc}")
        finally:
            tasks.pop(request.id, None)
        outbox.send(reply)

    while (message := await read_frame(reader)) is not None:
        if isinstance(message, Request):
            tasks[message.id] = asyncio.create_task(answer(message))
        elif isinstance(message, Cancel):
            task = tasks.pop(message.id, None)
            if task is not None:
                task.cancel()
        elif isinstance(message, Stop):
            stopping = True
            for each in engines:
                each.stop()
    # stdin closed: the parent is stopping (or gone). What is still running ends now.
    trimmer.cancel()
    stopping = True
    for each in engines:
        each.stop()
    for task in list(tasks.values()):
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    for each in engines:
        each.close()
    outbox.flush()
    transport.close()


def _what(request: Request) -> str:
    """What a request is about, for the log."""
    if isinstance(request, DiscoverRequest):
        return request.block.network
    if isinstance(request, ProbeRequest):
        return f"{request.protocol.value} on {request.address or 'the proxy'}"
    return request.target.name


if __name__ == "__main__":
    main()
