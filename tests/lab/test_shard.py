"""Sharding: rendezvous hashing splits the targets between replicas, `--shard` on the CLI and in the daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scanner.protocols import Protocol
from tests.lab.daemon import Daemons, lab_config, run_scanners, write_config
from tests.lab.servers import LabCerts, TLSServer
from tests.unit.factories import owner


def shards(*commands: list[str | Path]) -> list[tuple[int, str, str]]:
    """Run the scanners at once; (returncode, stdout, stderr) of each."""
    return [(done.returncode, done.stdout, done.stderr) for done in run_scanners(*commands)]


def test_check_config_splits_300_targets_between_3_shards(tmp_path: Path) -> None:
    names = [f"t{i:03d}" for i in range(300)]
    config = write_config(
        tmp_path / "endpoints.yaml",
        "targets:\n" + "".join(f"  - {{name: {n}, host: 127.0.0.1, port: 8443}}\n" for n in names),
    )
    results = shards(*(["--config", config, "--check-config", "--shard", f"{i}/3"] for i in range(3)))
    counts = []
    for index, (code, _, err) in enumerate(results):
        assert code == 0, err
        match = re.search(r": OK, (\d+) targets on this shard$", err.strip())
        assert match, err
        counts.append(int(match.group(1)))
        assert counts[-1] == sum(1 for n in names if owner(n, 3) == index)
    assert sum(counts) == 300
    assert all(60 <= c <= 140 for c in counts), counts


def test_once_on_three_shards_sweeps_every_target_exactly_once(tmp_certs: LabCerts, tmp_path: Path) -> None:
    names = [f"t{i:02d}" for i in range(12)]
    with TLSServer({Protocol.TLSv1_2}, tmp_certs.server) as server:
        config = write_config(
            tmp_path / "endpoints.yaml",
            lab_config(
                [{"name": n, "host": "127.0.0.1", "port": server.endpoint.port} for n in names], protocols=["TLSv1.2"]
            ),
        )
        results = shards(*(["--config", config, "--once", "--format", "json", "--shard", f"{i}/3"] for i in range(3)))
        assert server.accepted == len(names)  # nobody swept twice
    seen: list[str] = []
    for index, (code, out, err) in enumerate(results):
        assert code == 0, out + err
        targets = json.loads(out)["targets"]
        assert all(t["protocols"] == {"TLSv1.2": "accepted"} for t in targets)
        shard = [t["name"] for t in targets]
        assert shard == [n for n in names if owner(n, 3) == index]
        seen += shard
    assert sorted(seen) == names


def test_bad_shard_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "endpoints.yaml", "targets: [127.0.0.1:8443]\n")
    results = shards(*(["--config", config, "--check-config", "--shard", s] for s in ("3/3", "x")))
    for code, out, err in results:
        assert code == 2 and out == ""
        assert "invalid --shard" in err


def test_daemon_exports_its_shard_and_only_its_targets(
    tmp_certs: LabCerts, start_daemon: Daemons, tmp_path: Path
) -> None:
    names = [f"t{i:02d}" for i in range(12)]
    mine = {n for n in names if owner(n, 3) == 1}
    assert 0 < len(mine) < len(names)
    with TLSServer({Protocol.TLSv1_2}, tmp_certs.server) as server:
        config = write_config(
            tmp_path / "endpoints.yaml",
            lab_config(
                [{"name": n, "host": "127.0.0.1", "port": server.endpoint.port} for n in names],
                protocols=["TLSv1.2"],
                interval="30s",
            ),
        )
        daemon = start_daemon(config, "--shard", "1/3")
        scrape = daemon.wait_metrics(
            lambda s: all(s.value("tls_scanner_last_scan_timestamp_seconds", target=n) for n in mine),
            timeout=15,
            what="a sweep of every target of shard 1/3",
        )
    assert scrape.find("tls_scanner_shard_info") == scrape.find("tls_scanner_shard_info", index="1", count="3")
    assert scrape.value("tls_scanner_shard_info", index="1", count="3") == 1.0
    assert scrape.value("tls_scanner_targets") == len(mine)
    assert scrape.targets() == mine
    assert all(scrape.value("tls_scanner_protocol_accepted", target=n, protocol="TLSv1.2") == 1.0 for n in mine)
