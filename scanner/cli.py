"""The `tls-scanner` command: flags in, stages wired together, an exit code out."""

from __future__ import annotations

import argparse
import asyncio
import enum
import sys
from collections.abc import Sequence
from typing import TextIO

from scanner import __version__
from scanner.config import Config, TargetConfig, load_config
from scanner.errors import ConfigError
from scanner.logs import setup_logging
from scanner.policy import verdict
from scanner.probe import Prober
from scanner.report import render_json, render_table
from scanner.results import SweepResult
from scanner.targets import ALL, Shard, expand

DEFAULT_CONFIG = "config/endpoints.yaml"
DEFAULT_LISTEN_ADDRESS = ":9913"
DEFAULT_STATE_FILE = "tls-scanner.db"


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
        "--config", default=DEFAULT_CONFIG, metavar="PATH", help=f"YAML config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit (0 valid, 2 invalid)")
    parser.add_argument("--once", action="store_true", help="sweep every target once, print a report, exit")
    parser.add_argument(
        "--format", choices=["table", "json", "prometheus"], default="table", help="--once output (default table)"
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN_ADDRESS,
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
        "--state-file",
        default=DEFAULT_STATE_FILE,
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tls-scanner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    web_config = None
    if args.web_config_file is not None:
        from scanner.webconfig import load_web_config  # bcrypt and aiohttp: only the daemon needs them

        try:
            web_config = load_web_config(args.web_config_file)
        except ConfigError as exc:
            print(f"tls-scanner: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    shard = args.shard or ALL
    if args.check_config:
        count = len(expand(config, shard))
        print(f"{args.config}: OK, {count} targets{' on this shard' if args.shard else ''}", file=sys.stderr)
        return ExitCode.OK
    if args.once:
        return run_once(config, args.format, sys.stdout, sys.stderr, shard)
    # Imported here: aiohttp costs a one-shot --once run a fifth of its start-up.
    from scanner.service import serve

    try:
        serve(config, args.listen_address, args.state_file, args.shard, web_config)
    except (ValueError, OSError) as exc:
        print(f"tls-scanner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


def run_once(config: Config, output_format: str, out: TextIO, progress: TextIO, shard: Shard = ALL) -> int:
    """Sweep every target once, print the report, and return the exit code."""
    targets = expand(config, shard)
    sweeps = asyncio.run(sweep_all(config, targets, progress if progress.isatty() else None))
    if output_format == "json":
        out.write(render_json(sweeps))
    elif output_format == "prometheus":
        from scanner.metrics import render_sweeps  # only this format needs prometheus_client: keep start-up short

        out.write(render_sweeps(sweeps, shard=None if shard is ALL else shard))
    else:
        out.write(render_table(sweeps))
    if any(not verdict(s).met for s in sweeps if not s.closed):
        return ExitCode.VIOLATED
    if any(not s.complete for s in sweeps if not s.closed):
        return ExitCode.INCOMPLETE
    return ExitCode.OK


async def sweep_all(config: Config, targets: Sequence[TargetConfig], progress: TextIO | None) -> list[SweepResult]:
    """One round over every target, at most `concurrency` handshakes in flight, results in config order."""
    prober = Prober(config.concurrency, config.politeness, config.resolver)
    done = 0

    async def one(target: TargetConfig) -> SweepResult:
        nonlocal done
        result = await prober.sweep(target)
        done += 1
        if progress is not None:
            progress.write(f"\rscanned {done}/{len(targets)} targets")
            progress.flush()
        return result

    try:
        return list(await asyncio.gather(*(one(t) for t in targets)))
    finally:
        prober.close()
        if progress is not None:
            progress.write("\n")
