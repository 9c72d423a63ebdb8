"""Render one round of sweeps for `--once`: a terminal table, a JSON document, or the Prometheus text format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from scanner.policy import evaluate
from scanner.probe import ProtocolState, SweepResult
from scanner.protocols import ALL_PROTOCOLS

_CELL = {ProtocolState.ACCEPTED: "yes", ProtocolState.REJECTED: "no", ProtocolState.ERROR: "ERROR"}


def sweep_to_dict(sweep: SweepResult) -> dict[str, Any]:
    """One target's result as plain JSON-able data (shared with the web API)."""
    target = sweep.target
    verdict = evaluate(target.expect, sweep.protocols)
    return {
        "name": target.name,
        "host": target.host,
        "port": target.port,
        "address": sweep.address,
        "sni": target.sni,
        "labels": dict(target.labels),
        "protocols": {p.value: r.state.value for p, r in sweep.protocols.items()},
        "details": {p.value: r.detail for p, r in sweep.protocols.items()},
        "http": {p.value: r.http_status for p, r in sweep.protocols.items() if r.http_status is not None},
        "http_errors": {p.value: r.http_error for p, r in sweep.protocols.items() if r.http_error is not None},
        "error": sweep.error,
        "error_reason": None if sweep.error_reason is None else sweep.error_reason.value,
        "complete": sweep.complete,
        "started_at": sweep.started_at,
        "duration_seconds": round(sweep.duration_seconds, 6),
        "connections": sweep.connections,
        "expect": {"met": verdict.met, "violations": list(verdict.violations)},
    }


def render_json(sweeps: Sequence[SweepResult]) -> str:
    return json.dumps({"targets": [sweep_to_dict(s) for s in sweeps]}, indent=2) + "\n"


def render_table(sweeps: Sequence[SweepResult]) -> str:
    """One row per target, one column per protocol, then the errors and policy violations below."""
    headers = ["TARGET", "ADDRESS", *(p.value for p in ALL_PROTOCOLS), "HTTP", "POLICY"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for sweep in sweeps:
        verdict = evaluate(sweep.target.expect, sweep.protocols)
        cells = []
        for protocol in ALL_PROTOCOLS:
            result = sweep.protocols.get(protocol)
            cells.append("-" if result is None else _CELL[result.state])
        http = " ".join(f"{p.value}={r.http_status}" for p, r in sweep.protocols.items() if r.http_status is not None)
        policy = "-" if sweep.target.expect.empty else ("ok" if verdict.met else "VIOLATED")
        rows.append([sweep.target.name, sweep.address or "-", *cells, http or "-", policy])
        if sweep.error:
            notes.append(f"{sweep.target.name}: error: {sweep.error}")
        else:
            for protocol, result in sweep.protocols.items():
                if result.state is ProtocolState.ERROR:
                    notes.append(f"{sweep.target.name}: {protocol.value}: error: {result.detail}")
        notes.extend(f"{sweep.target.name}: policy: {v}" for v in verdict.violations)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"
