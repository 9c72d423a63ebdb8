"""Render one round of sweeps for `--once`: a terminal table, a JSON document, or the Prometheus text format."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from scanner.protocols import ALL_PROTOCOLS
from scanner.results.deep import DeepResult, strictest_profile
from scanner.results.ranges import RangePass
from scanner.results.sweep import AddressResult, ProtocolState, SweepResult
from scanner.state.policy import deadlines, has_policy, verdict
from scanner.tiers.clients import result_json as client_json
from scanner.tiers.clients import verdicts as client_verdicts
from scanner.tiers.deep import expiry
from scanner.tiers.deep import notes as deep_notes
from scanner.tiers.deep import with_json as deep_json

_CELL = {ProtocolState.ACCEPTED: "yes", ProtocolState.REJECTED: "no", ProtocolState.ERROR: "ERROR"}


def _address_to_dict(result: AddressResult) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "address": result.address,
        "protocols": {p.value: r.state.value for p, r in result.protocols.items()},
        "details": {p.value: r.detail for p, r in result.protocols.items()},
        "http": {p.value: r.http_status for p, r in result.protocols.items() if r.http_status is not None},
        "http_errors": {p.value: r.http_error for p, r in result.protocols.items() if r.http_error is not None},
        "error": result.error,
        "error_reason": None if result.error_reason is None else result.error_reason.value,
        "connections": sum(r.connections for r in result.protocols.values()),
    }
    # Present only where there is something to say: a `match`, client profiles.
    optional = {
        "http_reasons": {p.value: r.http_reason for p, r in result.protocols.items() if r.http_reason is not None},
        "http_match": {p.value: r.http_match for p, r in result.protocols.items() if r.http_match is not None},
        "http_excerpts": {p.value: r.http_excerpt for p, r in result.protocols.items() if r.http_excerpt is not None},
        "clients": {name: client_json(r) for name, r in result.clients.items()},
    }
    return entry | {key: value for key, value in optional.items() if value}


def _expect_to_dict(sweep: SweepResult) -> dict[str, Any]:
    """The verdict, and with dated policies each one's date, whether it is in force, and whether it is met."""
    judged = verdict(sweep)
    found: dict[str, Any] = {"met": judged.met, "violations": list(judged.violations)}
    if sweep.target.deadlines:
        found["deadlines"] = [
            {
                "policy": dated.name,
                "from": dated.start,
                "enforced": dated.start <= sweep.started_at,
                "met": would.met,
                "violations": list(would.violations),
            }
            for dated, would in deadlines(sweep)
        ]
    return found


def sweep_to_dict(sweep: SweepResult) -> dict[str, Any]:
    """One target's result as plain JSON-able data (shared with the web API).

    The top-level `protocols`, `details` and `http` speak for the target as a whole (accepted if any address
    accepted); `addresses` has each address's own answers.
    """
    target = sweep.target
    first = _address_to_dict(AddressResult("", sweep.protocols))
    return {
        "name": target.name,
        "host": target.host,
        "port": target.port,
        "address": sweep.address,
        "sni": target.sni,
        "labels": dict(target.labels),
        "protocols": first["protocols"],
        "details": first["details"],
        "http": first["http"],
        "http_errors": first["http_errors"],
        "accepted_addresses": {p.value: sweep.accepted_addresses(p) for p in target.protocols},
        "addresses": [_address_to_dict(a) for a in sweep.addresses],
        "error": sweep.error,
        "error_reason": None if sweep.error_reason is None else sweep.error_reason.value,
        "dns_error": sweep.dns_error,
        "complete": sweep.complete,
        "started_at": sweep.started_at,
        "duration_seconds": round(sweep.duration_seconds, 6),
        "connections": sweep.connections,
        "expect": _expect_to_dict(sweep),
    } | ({"clients": client_verdicts(sweep)} if target.clients else {})


def render_json(
    sweeps: Sequence[SweepResult],
    deep: Mapping[str, DeepResult] | None = None,
    ranges: Mapping[str, RangePass] | None = None,
) -> str:
    """Every scanned target (with `deep`, its deep scan); range endpoints that did not accept TCP are only counted:
    `ranges` by state, `ranges_closed_endpoints` all that did not accept (closed or silent)."""
    closed = _not_open(sweeps, ranges)
    deep = deep or {}
    document: dict[str, Any] = {
        "targets": [deep_json(sweep_to_dict(s), deep.get(s.target.name)) for s in sweeps if not s.closed]
    }
    if ranges:
        document["ranges"] = {network: each.tally.counts() for network, each in ranges.items()}
    if closed:
        document["ranges_closed_endpoints"] = closed
    return json.dumps(document, indent=2) + "\n"


def _not_open(sweeps: Sequence[SweepResult], ranges: Mapping[str, RangePass] | None) -> dict[str, int]:
    """Per range, its endpoints that did not accept TCP: at discovery, or gone by the time of their sweep."""
    found = {network: each.tally.closed + each.tally.silent for network, each in (ranges or {}).items()}
    for sweep in sweeps:
        if sweep.closed and sweep.target.range is not None:
            found[sweep.target.range] = found.get(sweep.target.range, 0) + 1
    return {network: count for network, count in found.items() if count}


def render_table(
    sweeps: Sequence[SweepResult],
    deep: Mapping[str, DeepResult] | None = None,
    ranges: Mapping[str, RangePass] | None = None,
) -> str:
    """One row per target, one column per protocol, then the errors and policy violations below.

    A cell reads `2/4` when only some of the target's addresses accept the protocol. With `deep`, two more columns:
    the leaf certificate's days to expiry (`!` when its chain is not valid) and the strictest Mozilla profile met.
    """
    headers = ["TARGET", "ADDRESS", *(p.value for p in ALL_PROTOCOLS), "HTTP", "POLICY"]
    if deep is not None:
        headers += ["EXPIRY", "MOZILLA"]
    now = time.time()
    rows: list[list[str]] = []
    notes: list[str] = []
    for sweep in sweeps:
        if sweep.closed:
            continue
        judged = verdict(sweep)
        protocols = sweep.protocols
        cells = []
        for protocol in ALL_PROTOCOLS:
            result = protocols.get(protocol)
            accepted = sweep.accepted_addresses(protocol)
            if result is None:
                cells.append("-")
            elif result.state is ProtocolState.ACCEPTED and accepted < len(sweep.addresses):
                cells.append(f"{accepted}/{len(sweep.addresses)}")
            else:
                cells.append(_CELL[result.state])
        http = " ".join(f"{p.value}={r.http_status}" for p, r in protocols.items() if r.http_status is not None)
        policy = "-" if not has_policy(sweep.target, sweep.started_at) else ("ok" if judged.met else "VIOLATED")
        address = sweep.address or "-"
        if len(sweep.addresses) > 1:
            address += f" (+{len(sweep.addresses) - 1})"
        rows.append([sweep.target.name, address, *cells, http or "-", policy])
        if deep is not None:
            scanned = deep.get(sweep.target.name)
            rows[-1] += [expiry(scanned, now), strictest_profile(scanned.addresses if scanned else ())]
            notes.extend(deep_notes(sweep.target.name, scanned))
        if sweep.dns_error:
            notes.append(f"{sweep.target.name}: dns error: {sweep.dns_error}")
        if sweep.error:
            notes.append(f"{sweep.target.name}: error: {sweep.error}")
        else:
            for each in sweep.addresses:
                where = f"{sweep.target.name} {each.address}" if len(sweep.addresses) > 1 else sweep.target.name
                if each.error:
                    notes.append(f"{where}: error: {each.error}")
                    continue
                for protocol, outcome in each.protocols.items():
                    if outcome.state is ProtocolState.ERROR:
                        notes.append(f"{where}: {protocol.value}: error: {outcome.detail}")
        notes.extend(f"{sweep.target.name}: policy: {v}" for v in judged.violations)
        cannot = [name for name, ok in client_verdicts(sweep).items() if ok is False]
        if cannot:
            notes.append(f"{sweep.target.name}: clients that cannot connect: {', '.join(cannot)}")
        for dated, would in deadlines(sweep):
            if dated.start > sweep.started_at and not would.met:
                day = time.strftime("%Y-%m-%d", time.gmtime(dated.start))
                notes.append(
                    f"{sweep.target.name}: deadline {dated.name} ({day}) would be violated: "
                    + "; ".join(would.violations)
                )
    for network, found in (ranges or {}).items():
        tally = found.tally
        notes.append(f"range {network}: {tally.open} open, {tally.closed} closed, {tally.silent} silent (TCP connect)")
    if closed := sum(_not_open([s for s in sweeps if s.closed], None).values()):
        notes.append(f"{closed} range endpoint(s) did not accept TCP at their sweep")
    if deep is not None:
        notes.append("EXPIRY: days left on the leaf certificate (! chain not valid); MOZILLA: strictest profile met")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"
