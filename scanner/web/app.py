"""The daemon's HTTP side: /metrics, the status page, the targets and http_sd APIs, health, readiness and reload."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from scanner.config import Expectation, TargetConfig
from scanner.output.metrics import RENDER_SLICE_SECONDS
from scanner.output.report import sweep_to_dict
from scanner.protocols import ALL_PROTOCOLS, Protocol
from scanner.results.deep import deep_to_dict, strictest_profile
from scanner.results.sweep import ProtocolResult, ProtocolState
from scanner.state.policy import deadlines, evaluate, has_policy, verdict, wanted
from scanner.state.status import ProtocolStatus, TargetStatus, Transition, TransitionKind
from scanner.state.store import ResultStore
from scanner.tiers.clients import states_json
from scanner.tiers.deep import scan_json
from scanner.tiers.windows import windows_json
from scanner.web.guard import WebGuard
from scanner.web.sd import sd_handler
from scanner.web.timeline import busy, timeline_svg

_T = TypeVar("_T")

RECENT_TRANSITIONS = 20
TIMELINES = 100  # refusal-window timelines on the status page: the targets with windows first, then quiet ones
MAX_QUEUED_SCRAPES = 64  # /metrics requests waiting for a render; more at once get 503
# A connection must complete its request head within this long (and an idle keep-alive one is closed after it):
# slow clients cannot hold connections open.
HEADER_TIMEOUT_SECONDS = 5.0
MAX_HEADER_BYTES = 8190  # per request line and per header field; aiohttp answers 400 beyond

log = logging.getLogger(__name__)


@dataclass
class WebState:
    """What the handlers read; owned by the service."""

    store: ResultStore
    metrics: Callable[[bool], Awaitable[Sequence[bytes]]]  # (gzip?) -> the whole /metrics exposition, in parts
    reload: Callable[[], str | None]  # returns the error, or None when the new config applied
    ready: Callable[[], bool]
    probe: Callable[[str, float | None], Awaitable[tuple[int, str]]]  # (target, scrape timeout) -> (status, body)
    # every explicit target (all shards) and the range endpoints this replica found open: /api/v1/sd
    configured: Callable[[], Sequence[TargetConfig]] = tuple


class ScrapeQueue:
    """One /metrics render at a time: scrapes queue for their turn (yielding to /-/healthy); past `limit`, 503."""

    def __init__(self, render: Callable[[bool], Awaitable[Sequence[bytes]]], limit: int = MAX_QUEUED_SCRAPES) -> None:
        self._render = render
        self._limit = limit
        self._turn = asyncio.Semaphore(1)
        self._queued = 0

    async def body(self, gzip: bool = False) -> Sequence[bytes] | None:
        """The exposition in parts (gzip-compressed with `gzip`), or None when too many scrapes are already waiting."""
        if self._queued >= self._limit:
            return None
        self._queued += 1
        try:
            async with self._turn:
                await asyncio.sleep(0)  # requests that arrived first (health checks) go before this render
                return await self._render(gzip)
        finally:
            self._queued -= 1


STATE = web.AppKey("state", WebState)
SCRAPES = web.AppKey("scrapes", ScrapeQueue)
GUARD = web.AppKey("guard", WebGuard)


def make_runner(app: web.Application) -> web.AppRunner:
    """The server side of the app: bounded header time and size, and bad requests kept out of the error log."""
    logging.getLogger("aiohttp.server").addFilter(_bad_request_filter)
    return web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=HEADER_TIMEOUT_SECONDS,
        max_line_size=MAX_HEADER_BYTES,
        max_field_size=MAX_HEADER_BYTES,
    )


def _bad_request_filter(record: logging.LogRecord) -> bool:
    """A malformed or oversized request is the client's fault: one debug line, not an ERROR with a traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        log.debug("bad HTTP request answered %s: %s", exc.code, exc.message)
        return False
    return True


def make_app(state: WebState, guard: WebGuard) -> web.Application:
    """Every endpoint, each behind the web config's basic auth and extra headers."""
    app = web.Application(middlewares=[guard.middleware])
    app[STATE] = state
    app[SCRAPES] = ScrapeQueue(state.metrics)
    app[GUARD] = guard
    app.router.add_get("/", status_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/targets", targets_api)
    app.router.add_get("/api/v1/targets/{name}/windows", windows_api)
    app.router.add_get("/api/v1/sd", sd_handler(state.configured))
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_route("*", "/-/reload", reload)
    return app


async def metrics(request: web.Request) -> web.StreamResponse:
    gzip = accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    body = await request.app[SCRAPES].body(gzip)
    if body is None:
        return web.Response(status=503, text="too many scrapes at once\n", headers={"Retry-After": "1"})
    headers = {"Vary": "Accept-Encoding", **({"Content-Encoding": "gzip"} if gzip else {})}
    length = sum(map(len, body))
    return await _send(request, CONTENT_TYPE_LATEST, _batched(body), length=length, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (listed, or `*`, and not with q=0)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower().removeprefix("q=")
            try:
                return not params.strip() or float(q) > 0
            except ValueError:
                return False
    return False


WRITE_BYTES = 256 * 1024  # the exposition holds each target's lines apart: they go out joined in writes of this size


async def _batched(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    batch: list[bytes] = []
    size = 0
    for part in parts:
        batch.append(part)
        size += len(part)
        if size >= WRITE_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


async def probe(request: web.Request) -> web.Response:
    """Sweep one target now and answer with that sweep's metrics (the multi-target exporter pattern)."""
    spec = request.query.get("target", "").strip()
    if not spec:
        return web.Response(status=400, text="missing ?target=NAME or HOST:PORT\n")
    scrape_timeout: float | None = None
    header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    if header:
        try:
            scrape_timeout = float(header)
        except ValueError:
            return web.Response(status=400, text="bad X-Prometheus-Scrape-Timeout-Seconds\n")
    status, body = await request.app[STATE].probe(spec, scrape_timeout)
    if status != 200:
        return web.Response(status=status, text=body)
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[STATE].ready():
        return web.Response(text="Ready.\n")
    return web.Response(status=503, text="Not ready.\n")


async def reload(request: web.Request) -> web.Response:
    if request.method != "POST":
        return web.Response(status=405, text="Only POST reloads the config.\n", headers={"Allow": "POST"})
    error = request.app[STATE].reload()
    if error is not None:
        return web.Response(status=500, text=f"failed to reload config: {error}\n")
    return web.Response(text="Config reloaded.\n")


def target_to_dict(status: TargetStatus) -> dict[str, Any]:
    """The API view of one target: determined states per address, the latest sweep, and recent transitions."""
    return {
        "name": status.target.name,
        "host": status.target.host,
        "port": status.target.port,
        "labels": dict(status.target.labels),
        "addresses": {
            address: {
                "state": {p.value: s.state.value for p, s in statuses.items()},
                "last_change": {p.value: s.last_change for p, s in statuses.items()},
                "changes": {p.value: s.changes for p, s in statuses.items()},
                "http_status": {p.value: s.http_status for p, s in statuses.items() if s.http_status is not None},
                "http_changes": {p.value: s.http_changes for p, s in statuses.items() if s.http_status is not None},
            }
            for address, statuses in status.addresses.items()
        },
        "clients": states_json(status),
        "last_success_at": status.last_success_at,
        "errors_total": {r.value: n for r, n in status.errors.items()},
        "last_sweep": None if status.last_sweep is None else sweep_to_dict(status.last_sweep),
        "deep_scan": None
        if status.deep is None
        else {
            **scan_json(status.deep),
            "addresses": {a.address: deep_to_dict(a) for a in status.deep.addresses},
        },
        "transitions": [
            {
                "address": t.address,
                "protocol": t.protocol.value,
                "at": t.at,
                "kind": t.kind.value,
                "client": t.client or None,
                "from": t.old,
                "to": t.new,
            }
            for t in status.transitions
        ],
    }


async def targets_api(request: web.Request) -> web.StreamResponse:
    return await _send(request, "application/json; charset=utf-8", _targets_json(request.app[STATE].store))


async def windows_api(request: web.Request) -> web.Response:
    """One target's refusal windows and their verdicts; 404 for a name that is not configured."""
    store = request.app[STATE].store
    name = request.match_info["name"]
    if name not in store:
        return web.json_response({"error": f"no target named {name!r}"}, status=404)
    return web.json_response(windows_json(store.status(name), time.time()))


async def _targets_json(store: ResultStore) -> AsyncIterator[bytes]:
    """`{"targets": [...]}` as json.dumps writes it, written out a slice of targets at a time (21 MB at 10,000)."""
    yield b'{"targets": ['
    separator = ""
    # Each target is turned into JSON inside the timed slices: serializing costs more than gathering the statuses.
    async for batch in _sliced(json.dumps(target_to_dict(status)) for status in store.statuses(RECENT_TRANSITIONS)):
        yield (separator + ", ".join(batch)).encode()
        separator = ", "
    yield b"]}"


async def _send(
    request: web.Request,
    content_type: str,
    parts: AsyncIterable[bytes],
    length: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Stream `parts` as the response body (chunked unless `length` is known), waiting while the client's socket is
    full: a large answer is neither joined into one copy nor queued whole in the transport's buffer."""
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type, **(headers or {})})
    if length is not None:
        response.content_length = length
    # Extra headers go in before the head is sent: the middleware sees a streamed response only once it is written.
    request.app[GUARD].headers(response)
    await response.prepare(request)
    async for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def _sliced(items: Iterable[_T]) -> AsyncIterator[list[_T]]:
    """`items` in batches, each what RENDER_SLICE_SECONDS of iterating produced, handing the event loop back between
    them: health checks and scrapes are answered while a page of 10,000 targets is built."""
    batch: list[_T] = []
    pause = time.monotonic() + RENDER_SLICE_SECONDS
    for item in items:
        batch.append(item)
        if time.monotonic() > pause:
            yield batch
            batch = []
            await asyncio.sleep(0)
            pause = time.monotonic() + RENDER_SLICE_SECONDS
    if batch:
        yield batch


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tls-scanner</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; color: #222; }}
nav a {{ margin-right: 1rem; }}
.scroll {{ overflow-x: auto; margin-bottom: 1.5rem; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .45rem; text-align: left; font-size: .85rem; }}
td[data-protocol] {{ white-space: nowrap; }}
td.ok {{ background: #c8e6c9; }} td.violating {{ background: #ffcdd2; }}
td.neutral.accepted {{ background: #e3f2fd; }} td.neutral.rejected {{ background: #f5f5f5; color: #555; }}
td.error {{ background: #fff3c4; }} td.unknown {{ background: #eee; color: #777; }}
td.changed {{ outline: 3px solid #d32f2f; outline-offset: -3px; font-weight: bold; }}
.err, td.http-bad {{ color: #b71c1c; font-weight: bold; }}
.labels {{ color: #666; font-size: .75rem; }}
figure.timeline {{ margin: 0 0 .8rem 0; max-width: 800px; }}
figure.timeline svg {{ width: 100%; height: auto; display: block; }}
figcaption {{ font-size: .85rem; font-weight: bold; }}
</style></head><body>
<h1>tls-scanner</h1>
<nav><a href="/metrics">/metrics</a><a href="/api/v1/targets">/api/v1/targets</a></nav>
<p>{count} targets. Cells show the latest determined state: green where it is what the target's <code>expect:</code>
policy wants, red where it violates it, pale where there is no policy; yellow means the last sweep hit an error and
the state shown is the one before it. Outlined cells changed within the last hour.</p>
<div class="scroll"><table id="matrix"><thead><tr><th>Target</th><th>Address</th>{proto_headers}<th>HTTP</th>
<th>Policy</th><th>Clients</th><th>Last sweep</th><th>Last change</th><th>Error</th></tr></thead><tbody>
{rows}
</tbody></table></div>
<h2>Policy violations</h2>
<ul id="violations">
{violations}
</ul>
{deep}
<h2>Refusal windows, last 24 hours</h2>
<p>One lane per version, times in UTC; red: the handshake was refused, orange (lower half): HTTP answered 4xx/5xx
over an accepted handshake; paler while still open. Hover a window for its exact bounds.</p>
<div id="timelines">
{timelines}
</div>
<h2>Recent transitions</h2>
<div class="scroll"><table id="transitions"><thead><tr><th>When</th><th>Target</th><th>Address</th><th>Protocol</th>
<th>From</th><th>To</th></tr></thead>
<tbody>
{transitions}
</tbody></table></div>
</body></html>
"""


def _rows(status: TargetStatus, now: float) -> list[str]:
    """One table row per address of a target (one row before its first sweep)."""
    sweep = status.last_sweep
    latest = {} if sweep is None else {a.address: a for a in sweep.addresses}
    addresses = list(status.addresses) or [""]
    expect = status.target.expect
    judged = None if sweep is None or not has_policy(status.target, sweep.started_at) else verdict(sweep)
    policy = "-" if judged is None else ("met" if judged.met else "VIOLATED")
    policy_css = ' class="violating"' if judged is not None and not judged.met else ""
    labels = " ".join(f"{k}={v}" for k, v in status.target.labels)
    rows = []
    for address in addresses:
        statuses = status.addresses.get(address, {})
        result = latest.get(address)
        cells = []
        for protocol in ALL_PROTOCOLS:
            if protocol not in status.target.protocols:
                cells.append('<td class="unknown">-</td>')
                continue
            determined = statuses.get(protocol)
            css = (
                "unknown" if determined is None else f"{determined.state.value} {_judged(expect, protocol, determined)}"
            )
            outcome = None if result is None else result.protocols.get(protocol)
            if outcome is not None and outcome.state is ProtocolState.ERROR:
                css = "error"
            if determined is not None and determined.changes and now - determined.last_change < 3600:
                css += " changed"
            text = "?" if determined is None else determined.state.value
            cells.append(f'<td class="{css}" data-protocol="{protocol.value}">{html.escape(text)}</td>')
        codes = {} if result is None else {p: r.http_status for p, r in result.protocols.items() if r.http_status}
        http = " ".join(f"{p.value}={code}" for p, code in codes.items())
        http_css = ' class="http-bad"' if any(code >= 400 for code in codes.values()) else ""
        last_change = max((s.last_change for s in statuses.values() if s.changes), default=None)
        error = ""
        if sweep is not None:
            error = (result.error if result else None) or sweep.error or sweep.dns_error or ""
            if result is not None and not error:
                error = "; ".join(f"{p.value}: {r.detail}" for p, r in result.protocols.items() if r.reason)
        name = html.escape(status.target.name)
        label_div = f'<div class="labels">{html.escape(labels)}</div>' if labels else ""
        rows.append(
            f'<tr data-target="{name}" data-address="{html.escape(address)}"><td>{name}{label_div}</td>'
            f"<td>{html.escape(address or '-')}</td>{''.join(cells)}"
            f"<td{http_css}>{html.escape(http or '-')}</td><td{policy_css}>{policy}</td>"
            f"{_clients_cell(status, address)}"
            f"<td>{_when(sweep.started_at if sweep else None)}</td>"
            f'<td>{_when(last_change)}</td><td class="err">{html.escape(error)}</td></tr>'
        )
    return rows


def _clients_cell(status: TargetStatus, address: str) -> str:
    """Which of the target's client profiles cannot connect to the address (red), or "all N" that can."""
    by_client = status.clients.get(address, {})
    if not by_client:
        return "<td>-</td>"
    cannot = [name for name, s in by_client.items() if s.state is not ProtocolState.ACCEPTED]
    if not cannot:
        return f'<td class="clients-ok">all {len(by_client)}</td>'
    return f'<td class="violating clients">cannot: {html.escape(", ".join(cannot))}</td>'


def _judged(expect: Expectation, protocol: Protocol, determined: ProtocolStatus) -> str:
    """A cell's colour class: ok or violating by the target's policy, neutral where it has none for the protocol."""
    want = wanted(expect, protocol)
    if want is None:
        return "neutral"
    shown = ProtocolResult(determined.state, http_status=determined.http_status)
    return "violating" if evaluate(expect, {protocol: shown}).violations else "ok"


def _transition_cells(t: Transition) -> str:
    """From and To: a handshake flip coloured by state, an HTTP status change by the statuses (red from 400)."""
    if t.kind is TransitionKind.HTTP:
        cells = [(f"HTTP {code}", "http-bad" if int(code) >= 400 else "http-ok") for code in (t.old, t.new)]
    elif t.kind in (TransitionKind.CIPHER, TransitionKind.CERTIFICATE):  # a suite ("" when absent), a fingerprint
        cells = [(t.old or "-", "neutral"), (t.new or "-", "neutral")]
    else:
        cells = [(t.old, t.old), (t.new, t.new)]
    return "".join(f'<td class="{css}" data-kind="{t.kind.value}">{html.escape(text)}</td>' for text, css in cells)


def _deep_section(snapshot: list[TargetStatus], now: float) -> str:
    """The deep tier's table (targets with a deep scan): certificate expiry and validity, Mozilla, suites."""
    rows = []
    for status in snapshot:
        deep = status.deep
        for each in [] if deep is None else deep.addresses:
            cert = each.certificate
            days = None if cert is None else (cert.chain_not_after - now) / 86400
            expiry = "-" if cert is None else f"{_when(cert.chain_not_after)} ({days:.0f} d)"
            valid = "-" if cert is None else ("yes" if cert.valid else f"no: {cert.error}")
            suites = " ".join(f"{p.value}:{len(s)}" for p, s in each.cipher_suites.items() if s) or "-"
            rows.append(
                f"<tr><td>{html.escape(status.target.name)}</td><td>{html.escape(each.address or '-')}</td>"
                f"<td>{html.escape(expiry)}</td>"
                f'<td class="{"err" if cert is not None and not cert.valid else ""}">{html.escape(valid)}</td>'
                f"<td>{html.escape(strictest_profile([each]))}</td>"
                f"<td>{html.escape(suites)}</td><td>{html.escape(each.error or '')}</td></tr>"
            )
    if not rows:
        return ""
    return (
        '<h2>Certificates and cipher suites</h2>\n<div class="scroll"><table id="deep"><thead><tr><th>Target</th>'
        "<th>Address</th><th>Chain expires</th><th>Valid</th><th>Mozilla</th><th>Suites per version</th>"
        "<th>Error</th></tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )


def _timelines(snapshot: list[TargetStatus], now: float) -> str:
    """A timeline per target: those with a refusal window in the last 24 hours first, up to TIMELINES in all."""
    ordered = sorted(snapshot, key=lambda s: not busy(s.windows, now))
    shown = [
        f'<figure class="timeline"><figcaption>{html.escape(s.target.name)}</figcaption>'
        f"{timeline_svg(s.target.name, s.target.protocols, s.windows, now)}</figure>"
        for s in ordered[:TIMELINES]
    ]
    if len(ordered) > TIMELINES:
        quiet = len(ordered) - TIMELINES
        shown.append(f"<p>{quiet} more targets not drawn; their windows: /api/v1/targets/NAME/windows.</p>")
    return "\n".join(shown) or "<p>No targets yet.</p>"


async def status_page(request: web.Request) -> web.Response:
    now = time.time()
    snapshot: list[TargetStatus] = []
    rows: list[str] = []
    statuses = request.app[STATE].store.statuses(RECENT_TRANSITIONS)
    shown = (s for s in statuses if not (s.last_sweep is not None and s.last_sweep.closed))
    async for batch in _sliced((status, _rows(status, now)) for status in shown):
        snapshot += [status for status, _ in batch]
        rows += [row for _, status_rows in batch for row in status_rows]
    transitions = sorted((t for s in snapshot for t in s.transitions), key=lambda t: t.at, reverse=True)
    violations = [
        f"<li><b>{html.escape(s.target.name)}</b>: {html.escape(v)}</li>"
        for s in snapshot
        if s.last_sweep is not None and has_policy(s.target, s.last_sweep.started_at)
        for v in verdict(s.last_sweep).violations
    ] + [
        f"<li><b>{html.escape(s.target.name)}</b>: deadline {html.escape(dated.name)} "
        f"({_when(dated.start)}) would be violated: {html.escape('; '.join(would.violations))}</li>"
        for s in snapshot
        if s.last_sweep is not None
        for dated, would in deadlines(s.last_sweep)
        if dated.start > s.last_sweep.started_at and not would.met
    ]
    body = _PAGE.format(
        count=len(snapshot),
        proto_headers="".join(f"<th>{p.value}</th>" for p in ALL_PROTOCOLS),
        rows="\n".join(rows) or '<tr><td colspan="14">No targets yet.</td></tr>',
        violations="\n".join(violations) or "<li>None.</li>",
        deep=_deep_section(snapshot, now),
        timelines=_timelines(snapshot, now),
        transitions="\n".join(
            f"<tr><td>{_when(t.at)}</td><td>{html.escape(t.target)}</td><td>{html.escape(t.address or '-')}</td>"
            f"<td>{t.protocol.value}</td>{_transition_cells(t)}</tr>"
            for t in transitions[:RECENT_TRANSITIONS]
        )
        or '<tr><td colspan="6">No transitions seen.</td></tr>',
    )
    return web.Response(text=body, content_type="text/html")
