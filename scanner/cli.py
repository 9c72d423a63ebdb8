"""The `tls-scanner` command: flags in, stages wired together, an exit code out."""

from __future__ import annotations

import argparse
import asyncio
import enum
import sys
from collections.abc import Sequence
from typing import TextIO

from scanner import __version__
from scanner.config import Config, ConfigError, load_config
from scanner.logs import setup_logging
from scanner.metrics import render
from scanner.policy import evaluate
from scanner.probe import Prober, SweepResult
from scanner.report import render_json, render_table
from scanner.service import serve
from scanner.store import ResultStore

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
        "--state-file",
        default=DEFAULT_STATE_FILE,
        metavar="PATH",
        help=f"daemon: SQLite state (default {DEFAULT_STATE_FILE})",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--version", action="version", version=f"tls-scanner {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tls-scanner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.check_config:
        print(f"{args.config}: OK, {len(config.targets)} targets", file=sys.stderr)
        return ExitCode.OK
    if args.once:
        return run_once(config, args.format, sys.stdout, sys.stderr)
    try:
        serve(config, listen_address=args.listen_address, state_file=args.state_file)
    except (ValueError, OSError) as exc:
        print(f"tls-scanner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


def run_once(config: Config, output_format: str, out: TextIO, progress: TextIO) -> int:
    """Sweep every target once, print the report, and return the exit code."""
    sweeps = asyncio.run(sweep_all(config, progress if progress.isatty() else None))
    if output_format == "json":
        out.write(render_json(sweeps))
    elif output_format == "prometheus":
        store = ResultStore(None)
        store.set_targets(config.targets)
        for sweep in sweeps:
            store.record(sweep)
        out.write(render(store).decode())
        store.close()
    else:
        out.write(render_table(sweeps))
    if any(not evaluate(s.target.expect, s.protocols).met for s in sweeps):
        return ExitCode.VIOLATED
    if any(not s.complete for s in sweeps):
        return ExitCode.INCOMPLETE
    return ExitCode.OK


async def sweep_all(config: Config, progress: TextIO | None) -> list[SweepResult]:
    """One round over every target, at most `concurrency` handshakes in flight, results in config order."""
    prober = Prober(config.concurrency)
    done = 0

    async def one(index: int) -> SweepResult:
        nonlocal done
        result = await prober.sweep(config.targets[index])
        done += 1
        if progress is not None:
            progress.write(f"\rscanned {done}/{len(config.targets)} targets")
            progress.flush()
        return result

    try:
        return list(await asyncio.gather(*(one(i) for i in range(len(config.targets)))))
    finally:
        prober.close()
        if progress is not None:
            progress.write("\n")
