"""Refusal windows as metrics: per (target, protocol, kind) how many ended, when the last began and ended, whether one
is open, and the verdict on their pattern. Rides along with the sweeps and their bursts (scanner.daemon.burst): it
scans nothing of its own.

A (target, protocol, kind) has series only once it had a window (open or ended) on any of its addresses: a version
that never browned out costs no series. The windows themselves are kept per address (scanner.state.windows); here
the addresses of a version add up: their ended windows are summed, the last window is the one that ended last, a
window open on any address is open, and the most severe address's verdict is the version's.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from scanner.state.status import TargetStatus
from scanner.state.windows import Pattern, Window, pattern, worst
from scanner.tiers.base import Tier
from scanner.tiers.series import Add, Family, Labels

WINDOWS = Family(
    "tls_scanner_refusal_windows_total",
    "counter",
    "Refusal windows of the protocol that ended (refused, then accepted again), over all the target's addresses",
)
WINDOW_START = Family(
    "tls_scanner_last_refusal_window_start_timestamp_seconds",
    "gauge",
    "The first refused observation of the protocol's last ended refusal window",
)
WINDOW_END = Family(
    "tls_scanner_last_refusal_window_end_timestamp_seconds",
    "gauge",
    "The first accepted observation after the protocol's last ended refusal window",
)
WINDOW_OPEN = Family(
    "tls_scanner_refusal_window_open",
    "gauge",
    "1 while a refusal window of the protocol is open on any address (refused since a flip), else 0",
)
PATTERN = Family(
    "tls_scanner_refusal_pattern",
    "gauge",
    "1 for the verdict on the protocol's refusal windows: periodic (2 or more ended within pattern_window), "
    "permanent (refused continuously for longer than permanent_after), else none",
)


class WindowsTier(Tier):
    """The refusal windows' metric families; the windows themselves are kept by the store with every sweep."""

    name = "windows"
    families: ClassVar[tuple[Family, ...]] = (WINDOWS, WINDOW_START, WINDOW_END, WINDOW_OPEN, PATTERN)
    daemon_only = True  # one sweep has no windows: `--once` and /probe stay as they were

    def lines(self, status: TargetStatus, at: Labels, add: Add) -> None:
        history = status.windows
        if not history.counts and not history.open:
            return
        now = time.time()
        for protocol, kind in history.series():
            labels = at(("kind", kind.value), ("protocol", protocol.value))
            windows = history.windows(protocol, kind)
            add(WINDOWS, labels, history.total(protocol, kind))
            ended = [w for w in windows if w.first_accepted is not None]
            if ended:
                last = max(ended, key=lambda w: w.end(now))
                add(WINDOW_START, labels, last.first_refused)
                add(WINDOW_END, labels, last.end(now))
            add(WINDOW_OPEN, labels, float(any(w.open for w in windows)))
            judged = verdict(status, windows, now)
            for each in Pattern:
                add(PATTERN, at(("kind", kind.value), ("pattern", each.value), ("protocol", protocol.value)),
                    float(each is judged))  # fmt: skip


WINDOWS_TIER = WindowsTier()


def verdict(status: TargetStatus, windows: list[Window], now: float) -> Pattern:
    """The pattern of one version's windows (of one kind): the most severe of its addresses'."""
    target = status.target
    return worst(
        pattern([w for w in windows if w.address == a], now, target.pattern_window, target.permanent_after)
        for a in {w.address for w in windows}
    )


def window_json(window: Window, now: float) -> dict[str, Any]:
    return {
        "address": window.address,
        "protocol": window.protocol.value,
        "kind": window.kind.value,
        "last_accepted_before": window.accepted_before,
        "first_refused": window.first_refused,
        "last_refused": window.last_refused,
        "first_accepted_after": window.first_accepted,
        "open": window.open,
        "duration_seconds": window.end(now) - window.first_refused,
    }


def windows_json(status: TargetStatus, now: float) -> dict[str, Any]:
    """GET /api/v1/targets/{name}/windows: the verdict per version and kind, and the windows (ended oldest first,
    then the open ones)."""
    target, history = status.target, status.windows
    versions = []
    for protocol, kind in history.series():
        windows = history.windows(protocol, kind)
        versions.append(
            {
                "protocol": protocol.value,
                "kind": kind.value,
                "windows_total": history.total(protocol, kind),
                "open": any(w.open for w in windows),
                "pattern": verdict(status, windows, now).value,
            }
        )
    return {
        "name": target.name,
        "now": now,
        "burst_interval_seconds": target.burst_interval,
        "burst_for_seconds": target.burst_for,
        "pattern_window_seconds": target.pattern_window,
        "permanent_after_seconds": target.permanent_after,
        "protocols": versions,
        "windows": [window_json(w, now) for w in (*history.ended, *history.open)],
    }
