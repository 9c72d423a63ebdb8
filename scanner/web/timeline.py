"""A target's refusal windows of the last 24 hours as an SVG timeline, server-rendered: no JavaScript, no fonts or
files fetched. One lane per configured version; handshake refusals shaded red over the whole lane, HTTP-status
windows orange over its lower half; each window's <title> (the browser's tooltip) gives its exact UTC bounds."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

from scanner.protocols import Protocol
from scanner.state.windows import RefusalHistory, Window, WindowKind

SPAN_SECONDS = 86400.0
WIDTH = 800  # the viewBox: it scales down with the page, and is readable at 800 px
LEFT, RIGHT, TOP = 72, 12, 18  # margins: lane names on the left, hour labels on top
LANE, GAP = 22, 6
MIN_WIDTH = 3.0  # a 30 s window is 0.25 px wide in 24 h: drawn this wide so it shows
TICK_HOURS = 3
COLOURS = {WindowKind.HANDSHAKE: "#d32f2f", WindowKind.HTTP: "#ef6c00"}


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _seconds(span: float) -> str:
    span = round(span)
    if span < 120:
        return f"{span} s"
    if span < 7200:
        return f"{span // 60} min {span % 60} s"
    return f"{span // 3600} h {span % 3600 // 60} min"


def describe(window: Window, now: float) -> str:
    """The tooltip of one window: what was refused where, and its four bounds in UTC."""
    what = "handshake refused" if window.kind is WindowKind.HANDSHAKE else "HTTP 4xx/5xx answered"
    where = f" on {window.address}" if window.address else ""
    if window.first_accepted is None:
        span = f"since {_utc(window.first_refused)}, still open ({_seconds(now - window.first_refused)} so far)"
    else:
        span = (
            f"from {_utc(window.first_refused)} to {_utc(window.first_accepted)} "
            f"({_seconds(window.first_accepted - window.first_refused)})"
        )
    before = "unknown" if window.accepted_before is None else _utc(window.accepted_before)
    return (
        f"{window.protocol.value}{where}: {what} {span}; last accepted before: {before}; "
        f"last refused: {_utc(window.last_refused)}"
    )


def timeline_svg(name: str, protocols: Sequence[Protocol], history: RefusalHistory, now: float) -> str:
    """The SVG of one target's last 24 hours."""
    start = now - SPAN_SECONDS
    plot = WIDTH - LEFT - RIGHT
    height = TOP + len(protocols) * (LANE + GAP) + 2

    def x(ts: float) -> float:
        return LEFT + (min(max(ts, start), now) - start) / SPAN_SECONDS * plot

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="refusal windows of {html.escape(name)}, '
        f'last 24 hours" data-target="{html.escape(name)}" font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{html.escape(name)}: refusal windows from {_utc(start)} to {_utc(now)}</title>",
    ]
    first_tick = (int(start) // (TICK_HOURS * 3600) + 1) * TICK_HOURS * 3600
    for tick in range(first_tick, int(now) + 1, TICK_HOURS * 3600):
        at = x(tick)
        parts.append(
            f'<line x1="{at:.1f}" y1="{TOP - 3}" x2="{at:.1f}" y2="{height - 2}" stroke="#cfd8dc"/>'
            f'<text x="{at:.1f}" y="{TOP - 6}" text-anchor="middle" fill="#546e7a">'
            f"{time.strftime('%H:%M', time.gmtime(tick))}</text>"
        )
    shown = _recent((*history.ended, *history.open), start)
    for lane, protocol in enumerate(protocols):
        y = TOP + lane * (LANE + GAP)
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + LANE - 6}" text-anchor="end" fill="#222">{protocol.value}</text>'
            f'<rect x="{LEFT}" y="{y}" width="{plot}" height="{LANE}" fill="#e8f5e9" stroke="#b0bec5" '
            f'stroke-width="0.5"><title>{protocol.value}</title></rect>'
        )
        for window in (w for w in shown if w.protocol is protocol):
            left, right = x(window.first_refused), x(window.end(now))
            width = max(right - left, MIN_WIDTH)
            top, tall = (y, LANE) if window.kind is WindowKind.HANDSHAKE else (y + LANE / 2, LANE / 2)
            state = "open" if window.open else "ended"
            parts.append(
                f'<rect class="window {window.kind.value} {state}" data-protocol="{protocol.value}" '
                f'x="{min(left, WIDTH - RIGHT - width):.1f}" y="{top:.1f}" width="{width:.1f}" height="{tall:.1f}" '
                f'fill="{COLOURS[window.kind]}" fill-opacity="{0.6 if window.open else 0.9}">'
                f"<title>{html.escape(describe(window, now))}</title></rect>"
            )
    parts.append(
        f'<line x1="{LEFT + plot}" y1="{TOP - 3}" x2="{LEFT + plot}" y2="{height - 2}" stroke="#37474f">'
        f"<title>now: {_utc(now)}</title></line></svg>"
    )
    return "".join(parts)


def _recent(windows: Iterable[Window], start: float) -> list[Window]:
    """The windows that overlap the span (open ones always do)."""
    return [w for w in windows if w.first_accepted is None or w.first_accepted >= start]


def busy(history: RefusalHistory, now: float) -> bool:
    """Whether the target had a refusal window in the last 24 hours (its timeline is shown first)."""
    return bool(_recent((*history.ended, *history.open), now - SPAN_SECONDS))
