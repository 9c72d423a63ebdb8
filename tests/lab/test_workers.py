"""Worker processes (`workers:`): the same answers as one process (sweeps and burst probes), a worker's death is an
error and never a verdict, and no worker outlives the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from bench.servers import alive, child_pids, wait_for
from scanner.config import Politeness, TargetConfig
from scanner.daemon.pool import WorkerPool
from scanner.engine.sweep import SweepEngine
from scanner.protocols import Protocol as P
from scanner.results.sweep import ProtocolState, SweepResult
from tests.lab.daemon import Daemons, established_connections, lab_config, run_once, write_config
from tests.lab.servers import LabStack, tarpit


def test_workers_give_the_same_matrix_as_one_process(lab: LabStack, tmp_path: Path) -> None:
    """`--once` over servers with different version sets: `workers: 2` answers exactly as `workers: 0`."""
    sets = [{P.TLSv1_2, P.TLSv1_3}, {P.TLSv1_0, P.TLSv1_1, P.TLSv1_2}, {P.TLSv1_3}, {P.TLSv1_2}]
    servers = [lab.tls_server(versions) for versions in sets]
    targets = [{"name": f"s{i}", "host": "127.0.0.1", "port": s.port} for i, s in enumerate(servers)]
    answers = {}
    for workers in (0, 2):
        run = run_once(
            write_config(tmp_path / f"w{workers}.yaml", {"workers": workers, **lab_config(targets)}), "--format", "json"
        )
        assert run.returncode == 0, run.stderr
        answers[workers] = {t["name"]: t["protocols"] for t in json.loads(run.stdout)["targets"]}
    assert answers[2] == answers[0]
    for i, versions in enumerate(sets):
        assert {p for p, state in answers[2][f"s{i}"].items() if state == "accepted"} == {p.value for p in versions}


def test_a_killed_worker_is_an_error_not_a_rejection_and_is_replaced(
    lab: LabStack, start_daemon: Daemons, tmp_path: Path
) -> None:
    """SIGKILL every worker while a tarpit holds a sweep: that sweep is an error, the TLS server's versions never
    flip, new workers are started and sweeping goes on."""
    pit = lab.peer(tarpit)
    good = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    targets = [
        {"name": "pit", "host": "127.0.0.1", "port": pit.port},
        {"name": "good", "host": "127.0.0.1", "port": good.port},
    ]
    d = start_daemon(write_config(tmp_path / "c.yaml", {"workers": 2, **lab_config(targets, timeout="5s")}), debug=True)
    d.wait_sweep("good")
    wait_for(lambda: established_connections(d.pid, pit.port) > 0, 10, what="a worker to hang on the tarpit")
    before = child_pids(d.pid)
    assert len(before) == 2
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    scrape = d.wait_sweep("pit", after=killed_at - 5, timeout=15)
    assert scrape.value("tls_scanner_scan_success", target="pit") == 0.0
    assert scrape.value("tls_scanner_protocol_accepted", target="pit", protocol="TLSv1.2", address="127.0.0.1") is None
    wait_for(lambda: len([p for p in child_pids(d.pid) if p not in before]) == 2, 10, what="two new workers")
    scrape = d.wait_sweep("good", after=time.time(), timeout=15)
    for protocol in ("TLSv1.2", "TLSv1.3"):
        labels = {"target": "good", "protocol": protocol, "address": "127.0.0.1"}
        assert scrape.value("tls_scanner_protocol_accepted", **labels) == 1.0
        assert scrape.value("tls_scanner_protocol_changes_total", **labels) == 0.0
    for protocol in ("TLSv1.0", "SSLv3"):
        labels = {"target": "good", "protocol": protocol, "address": "127.0.0.1"}
        assert scrape.value("tls_scanner_protocol_changes_total", **labels) == 0.0
    log = d.log_text()
    assert "exited with code -9; starting it again" in log
    assert "Traceback" not in log


def test_no_worker_outlives_the_daemon(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """SIGTERM: exit 0 with every worker gone; SIGKILL of the daemon: its workers see their stdin close and exit."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    config = write_config(
        tmp_path / "c.yaml", {"workers": 2, **lab_config([{"name": "t", "host": "127.0.0.1", "port": server.port}])}
    )
    first = start_daemon(config, debug=True)
    first.wait_sweep("t")
    workers = child_pids(first.pid)
    assert len(workers) == 2
    first.send(signal.SIGTERM)
    assert first.wait(10) == 0, first.log_text()[-2000:]
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, what="the workers to exit after SIGTERM")

    second = start_daemon(config, debug=True)
    second.wait_sweep("t")
    workers = child_pids(second.pid)
    assert len(workers) == 2
    second.send(signal.SIGKILL)
    second.wait(5)
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, what="the workers to exit after the daemon's SIGKILL")


def test_ctrl_c_to_the_process_group_stops_cleanly(lab: LabStack, start_daemon: Daemons, tmp_path: Path) -> None:
    """SIGINT to the whole group (a terminal's Ctrl-C): the workers ignore it, the daemon stops them itself."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    d = start_daemon(
        write_config(
            tmp_path / "c.yaml", {"workers": 2, **lab_config([{"name": "t", "host": "127.0.0.1", "port": server.port}])}
        ),
        debug=True,
    )
    d.wait_sweep("t")
    workers = child_pids(d.pid)
    for pid in (*workers, d.pid):
        os.kill(pid, signal.SIGINT)
    assert d.wait(10) == 0, d.log_text()[-2000:]
    assert "Traceback" not in d.log_text()
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, what="the workers to exit")


def test_a_probe_in_a_worker_answers_as_in_one_process(lab: LabStack) -> None:
    """A burst's probe sent to a worker process (a few hundred bytes, the target pickled once per target object) gives
    the same answer as in this process; a reloaded target (a new object) is probed as it is now."""
    modern, every = lab.tls_server({P.TLSv1_2, P.TLSv1_3}), lab.tls_server({P.TLSv1_0, P.TLSv1_2})
    web = TargetConfig(name="web", host="127.0.0.1", port=modern.port, timeout=3.0)
    moved = replace(web, port=every.port)  # what a reload makes of it
    jobs = [(web, P.TLSv1_0), (web, P.TLSv1_2), (web, P.TLSv1_0), (moved, P.TLSv1_0)]

    def answers(sweep: SweepResult) -> dict[P, tuple[object, ...]]:
        return {p: (r.state, r.evidence, r.reason, r.connections) for p, r in sweep.protocols.items()}

    async def main() -> tuple[list[SweepResult], list[SweepResult]]:
        pool, engine = WorkerPool(1, 8, Politeness(), None), SweepEngine(8)
        try:
            in_worker = [await pool.probe(t, p, "127.0.0.1") for t, p in jobs]
            here = [await engine.probe(t, p, "127.0.0.1") for t, p in jobs]
        finally:
            await pool.shutdown()
            engine.close()
        return in_worker, here

    in_worker, here = asyncio.run(main())
    assert [answers(s) for s in in_worker] == [answers(s) for s in here]
    states = [s.protocols[p].state for s, (_, p) in zip(in_worker, jobs, strict=True)]
    assert states == [ProtocolState.REJECTED, ProtocolState.ACCEPTED, ProtocolState.REJECTED, ProtocolState.ACCEPTED]
    assert [s.target for s in in_worker] == [web, web, web, moved]


def test_a_probe_whose_worker_dies_is_an_error_not_a_rejection(lab: LabStack) -> None:
    pit = lab.peer(tarpit)
    held = TargetConfig(name="pit", host="127.0.0.1", port=pit.port, timeout=10.0)

    async def main() -> SweepResult:
        others = child_pids(os.getpid())  # the lab's own, if any
        pool = WorkerPool(1, 8, Politeness(), None)
        try:
            probe = asyncio.create_task(pool.probe(held, P.TLSv1_0, "127.0.0.1"))
            pids = await asyncio.to_thread(
                wait_for, lambda: (child_pids(os.getpid()) - others) or None, 10, what="the worker process"
            )
            await asyncio.to_thread(
                wait_for, lambda: established_connections(os.getpid(), pit.port) > 0 or None, 10, what="a hello"
            )
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return await asyncio.wait_for(probe, 5)
        finally:
            await pool.shutdown()

    result = asyncio.run(main())
    answer = result.protocols[P.TLSv1_0]
    assert answer.state is ProtocolState.ERROR and "worker process exited" in (answer.detail or "")
    assert result.error is not None and result.target is held
