"""The `tls-scanner` command: flags in, stages wired together, an exit code out."""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TextIO

from scanner import __version__
from scanner.config import Config, TargetConfig, load_config, parse_config
from scanner.daemon.pool import Sweeper, make_sweeper, worker_count
from scanner.daemon.ranges import Discovery, passes, workload
from scanner.errors import ConfigError, StateFileError, WorkerError
from scanner.logs import setup_logging
from scanner.output.report import render_json, render_table
from scanner.results.deep import DeepResult
from scanner.results.ranges import RangePass
from scanner.results.sweep import SweepResult
from scanner.state.policy import verdict
from scanner.targets import ALL, Shard, block_endpoints, count_endpoints, expand, range_blocks
from scanner.tiers.deep import once as deep_once
from scanner.web.config import load_web_config

DEFAULT_CONFIG = "config/endpoints.yaml"
MIN_TARGETS_IN_FLIGHT = 32  # --once: a rate-limited address must not hold up a short list's other targets
DEFAULT_FORMAT = "table"
DEFAULT_LISTEN_ADDRESS = ":9913"
DEFAULT_STATE_FILE = "tls-scanner.db"
CONFIG_FROM_STDIN = "-"  # --config - reads the config from standard input
COMMAND_LINE = "<command line>"  # the name errors give the HOST[:PORT] arguments

# Flags that mean something in one mode only, by argparse dest; given in another mode they are refused (exit 2)
# rather than ignored. Their argparse default is None, so that "given" can be told from "defaulted".
ONCE_ONLY = {"format": "--format", "deep": "--deep"}
DAEMON_ONLY = {
    "listen_address": "--web.listen-address",
    "web_config_file": "--web.config.file",  # also with --check-config, which validates it
    "state_file": "--state-file",
    "config_watch": "--config.watch",
}


class ExitCode(enum.IntEnum):
    """What `tls-scanner` exits with."""

    OK = 0  # every target scanned, every expectation met (daemon: clean shutdown)
    VIOLATED = 1  # some expectation violated
    USAGE = 2  # invalid config or arguments; nothing scanned
    INCOMPLETE = 3  # some target could not be (fully) scanned, and nothing was violated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tls-scanner",
        description="Record which SSL/TLS versions each endpoint accepts; export them to Prometheus.",
    )
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="HOST[:PORT]",
        help="--once: scan these targets too ([v6]:port for IPv6), with the built-in defaults; no config needed",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help=f"YAML config, - for standard input (default {DEFAULT_CONFIG}; none when HOST[:PORT] targets are given)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check-config", action="store_true", help="validate the config and exit (0 valid, 2 invalid)")
    mode.add_argument("--once", action="store_true", help="sweep every target once, print a report, exit")
    parser.add_argument(
        "--format",
        choices=["table", "json", "prometheus"],
        default=None,
        help=f"--once output (default {DEFAULT_FORMAT})",
    )
    parser.add_argument(
        "--deep",
        action="store_true",
        default=None,
        help="--once: also run the deep tier (certificates, cipher suites, Mozilla profiles) on each target",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=None,
        metavar="[HOST]:PORT",
        help=f"daemon: address for /metrics and the status page (default {DEFAULT_LISTEN_ADDRESS})",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="daemon: exporter-toolkit web config (TLS, basic auth, headers) for every endpoint",
    )
    parser.add_argument(
        "--config.watch",
        dest="config_watch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="daemon: reload the config and web config files when their content changes, checked each second"
        " (default on; --no-config.watch: only on SIGHUP or POST /-/reload)",
    )
    parser.add_argument(
        "--state-file",
        default=None,
        metavar="PATH",
        help=f"daemon: SQLite state (default {DEFAULT_STATE_FILE})",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="INDEX/COUNT",
        help="scan only this replica's share of the targets (rendezvous hashing on target names), e.g. 0/3",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--version", action="version", version=f"tls-scanner {__version__}")
    return parser


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def misused(args: argparse.Namespace) -> str | None:
    """Why these flags do not go together (a flag of another mode, targets without --once), or None."""
    mode = "--check-config" if args.check_config else "--once" if args.once else None
    if args.targets and mode != "--once":
        return "HOST[:PORT] targets on the command line only apply with --once"
    if mode != "--once":
        for dest, flag in ONCE_ONLY.items():
            if getattr(args, dest) is not None:
                return f"{flag} only applies with --once"
    if mode is not None:
        for dest, flag in DAEMON_ONLY.items():
            if getattr(args, dest) is not None and not (mode == "--check-config" and dest == "web_config_file"):
                return f"{flag} only applies to the daemon, not with {mode}"
    elif args.config == CONFIG_FROM_STDIN:
        return "--config - only applies with --once or --check-config: the daemon re-reads its config file on reload"
    return None


def command_line_config(specs: Sequence[str], base: Config | None) -> Config:
    """`base` (the --config file) plus the HOST[:PORT] targets not already in it, which get the built-in defaults.

    Each spec goes through the config parser as a JSON-quoted short-form entry, so it is validated exactly as in a
    file. A target is scanned once: a spec that is the name of one of `base`'s targets stands for it, and a name
    given twice (`example.org`, `example.org:443`) or already in `base` is not added again.
    """
    taken = {t.name for t in base.targets} if base is not None else set()
    parsed: Config | None = None
    added: list[TargetConfig] = []
    for spec in dict.fromkeys(specs):
        if spec in taken:
            continue
        parsed = parse_config(f"targets: [{json.dumps(spec)}]\n", COMMAND_LINE)
        for target in parsed.targets:
            if target.name not in taken:
                taken.add(target.name)
                added.append(target)
    if base is not None:
        return replace(base, targets=base.targets + tuple(added))
    assert parsed is not None  # without a base, every spec was parsed
    return replace(parsed, targets=tuple(added))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    problem = misused(args)
    if problem is not None:
        print(f"tls-scanner: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    setup_logging(args.log_level, args.log_format)
    try:
        config = None
        if args.config is not None or not args.targets:  # targets alone: no config file
            config = load_config(DEFAULT_CONFIG if args.config is None else args.config)
        if args.targets:
            config = command_line_config(args.targets, config)
    except ConfigError as exc:
        print(f"tls-scanner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    assert config is not None
    web_config = None
    if args.web_config_file is not None:
        try:
            web_config = load_web_config(args.web_config_file)
        except ConfigError as exc:
            print(f"tls-scanner: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    shard = args.shard or ALL
    if args.check_config:
        print(f"{config.path}: OK, {checked_count(config, args.shard)}", file=sys.stderr)
        return ExitCode.OK
    if args.once:
        output_format = DEFAULT_FORMAT if args.format is None else args.format
        return run_once(config, output_format, sys.stdout, sys.stderr, shard, deep=bool(args.deep))
    # Imported here: aiohttp costs a one-shot --once run a fifth of its start-up.
    from scanner.daemon.service import serve

    listen_address = DEFAULT_LISTEN_ADDRESS if args.listen_address is None else args.listen_address
    state_file = DEFAULT_STATE_FILE if args.state_file is None else args.state_file
    try:
        serve(config, listen_address, state_file, args.shard, web_config, watch=args.config_watch is not False)
    except (ValueError, OSError, StateFileError) as exc:
        print(f"tls-scanner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


# --check-config --shard counts this shard's range endpoints one by one up to this many in all, else estimates them.
EXACT_SHARD_COUNT = 65536


def checked_count(config: Config, shard: Shard | None) -> str:
    """What --check-config says it found: the targets, range endpoints included, counted without listing them."""
    if shard is None:
        return f"{count_endpoints(config)} targets"
    mine = len(expand(config, shard))
    ranged = count_endpoints(config) - len(config.targets)
    if ranged and sum(entry.size for entry in config.ranges) > EXACT_SHARD_COUNT:
        return f"{mine} targets and about {ranged // shard.count} of {ranged} range endpoints on this shard"
    mine += sum(1 for block in range_blocks(config, shard) for _ in block_endpoints(block))
    return f"{mine} targets on this shard"


def run_once(
    config: Config, output_format: str, out: TextIO, progress: TextIO, shard: Shard = ALL, deep: bool = False
) -> int:
    """Sweep every target once (with `deep`, deep-scan it too), print the report, and return the exit code."""
    targets = expand(config, shard)
    tty = progress if progress.isatty() else None
    try:
        sweeps, deep_results, ranges = asyncio.run(scan_round(config, targets, tty, deep, shard))
    except (WorkerError, OSError) as exc:  # a range's discovery could not finish: no report rather than half of one
        print(f"tls-scanner: {exc}", file=progress)
        return ExitCode.INCOMPLETE
    if output_format == "json":
        out.write(render_json(sweeps, deep_results, ranges))
    elif output_format == "prometheus":
        from scanner.output.metrics import (
            render_sweeps,
        )  # only this format needs prometheus_client: keep start-up short

        out.write(render_sweeps(sweeps, shard=None if shard is ALL else shard, deep=deep_results, ranges=ranges))
    else:
        out.write(render_table(sweeps, deep_results, ranges))
    if any(not verdict(s).met for s in sweeps if not s.closed):
        return ExitCode.VIOLATED
    if any(not s.complete for s in sweeps if not s.closed):
        return ExitCode.INCOMPLETE
    if deep_results is not None and any(not d.success for d in deep_results.values()):
        return ExitCode.INCOMPLETE
    return ExitCode.OK


async def scan_round(
    config: Config, targets: Sequence[TargetConfig], progress: TextIO | None, deep: bool, shard: Shard = ALL
) -> tuple[list[SweepResult], dict[str, DeepResult] | None, dict[str, RangePass]]:
    """One round over every target, after a discovery pass over the ranges (whose endpoints that accept TCP are
    swept too); with `deep`, then a deep scan of each swept target (not deep_interval 0)."""
    workers = worker_count(config.workers, workload(config, shard) if config.ranges else len(targets))
    sweeper = make_sweeper(workers, config.concurrency, config.politeness, config.resolver)
    try:
        rounds = []
        if config.ranges:
            if progress is not None:
                progress.write(f"discovering {len(config.ranges)} range(s)\n")
            rounds = await Discovery(sweeper, config.concurrency, config.politeness).all(config, shard)
            names = {t.name for t in targets}
            found = [t for r in rounds for t in r.targets() if t.name not in names]
            targets = [*targets, *{t.name: t for t in found}.values()]
        sweeps = await sweep_all(sweeper, config, targets, progress)
        return sweeps, (await deep_once(sweeper, sweeps) if deep else None), passes(rounds)
    finally:
        await sweeper.shutdown()


async def sweep_all(
    sweeper: Sweeper, config: Config, targets: Sequence[TargetConfig], progress: TextIO | None
) -> list[SweepResult]:
    """One round over every target, at most `concurrency` handshakes in flight, results in config order."""
    # A sweep's deadline counts its wait for handshake slots: start only as many targets as the slots can serve
    # in a wave or two, so a long list finishes late rather than timing out at its tail.
    in_flight = asyncio.Semaphore(max(MIN_TARGETS_IN_FLIGHT, config.concurrency // 2))
    done = 0

    async def one(target: TargetConfig) -> SweepResult:
        nonlocal done
        async with in_flight:
            result = await sweeper.sweep(target)
        done += 1
        if progress is not None:
            progress.write(f"\rscanned {done}/{len(targets)} targets")
            progress.flush()
        return result

    try:
        return list(await asyncio.gather(*(one(t) for t in targets)))
    finally:
        if progress is not None:
            progress.write("\n")
