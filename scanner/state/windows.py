"""Refusal windows: from the first refused observation of a version to the first accepted one, and what they add up to.

A window opens when a version that was accepted is refused (a handshake flip, or an HTTP answer turning from 2xx/3xx
to 4xx/5xx over an accepting handshake) and ends at the first accepted observation after it; errors are no
observation at all. A version never seen accepted has no window: refusing TLS 1.0 from the start is not news.

Pure values and functions; the store keeps the book (WindowBook) of each target's windows, the state file persists it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from scanner.protocols import Protocol
from scanner.results.sweep import ProtocolState, SweepResult

if TYPE_CHECKING:  # status.py imports this module (TargetStatus.windows)
    from scanner.state.status import AddressStatuses

KEPT_WINDOWS = 100  # ended windows kept in memory per target (the counts are kept whole)
BURST_SEEN_LIMIT = 4096  # series whose last burst observation is remembered
# An open window's row is written as it opens and ends, and in between when its last refusal moved this far: a
# version refused for good costs no write per sweep (nor per burst), and a crash loses at most this much of it.
WRITE_EVERY_SECONDS = 60.0


class WindowKind(enum.StrEnum):
    """What was refused: the handshake, or an HTTP answer of 2xx/3xx over an accepting handshake."""

    HANDSHAKE = "handshake"
    HTTP = "http"


class Pattern(enum.StrEnum):
    """The verdict on a series' windows (tls_scanner_refusal_pattern)."""

    NONE = "none"
    PERIODIC = "periodic"
    PERMANENT = "permanent"


Series = tuple[str, Protocol, WindowKind]  # (address, protocol, kind) within one target


@dataclass(frozen=True, slots=True)
class Window:
    """One refusal window of one (address, protocol, kind), by its four observed bounds (unix times)."""

    address: str
    protocol: Protocol
    kind: WindowKind
    accepted_before: float | None  # the last accepted observation before it; None when not known (a restart, errors)
    first_refused: float  # the window's start
    last_refused: float
    first_accepted: float | None = None  # the window's end; None while it is open
    confirmed: bool = True  # False while a refusal seen only as a close or reset awaits confirm_sweeps

    @property
    def series(self) -> Series:
        return (self.address, self.protocol, self.kind)

    @property
    def open(self) -> bool:
        return self.first_accepted is None

    def end(self, now: float) -> float:
        """When it ended, or `now` while it is open."""
        return now if self.first_accepted is None else self.first_accepted


def pattern(windows: Iterable[Window], now: float, pattern_window: float, permanent_after: float) -> Pattern:
    """The verdict on one series' windows at `now`.

    Permanent: a window open (refused on every observation since its start) for longer than `permanent_after`.
    Periodic: at least two windows ended within the last `pattern_window`: the version keeps coming back.
    Permanent wins over periodic: the end of a brownout schedule is a cut-over.
    """
    ended = 0
    for window in windows:
        if window.first_accepted is None:
            if window.confirmed and now - window.first_refused > permanent_after:
                return Pattern.PERMANENT
        elif window.first_accepted >= now - pattern_window:
            ended += 1
    return Pattern.PERIODIC if ended >= 2 else Pattern.NONE


SEVERITY = (Pattern.NONE, Pattern.PERIODIC, Pattern.PERMANENT)


def worst(patterns: Iterable[Pattern]) -> Pattern:
    """The most severe of several series' verdicts (the addresses of one target's version)."""
    return max(patterns, key=SEVERITY.index, default=Pattern.NONE)


@dataclass(frozen=True, slots=True)
class Observation:
    """One determined answer of one series, as the window book takes it in."""

    series: Series
    at: float
    refused: bool
    was_accepted: bool  # the series' determined state before this answer was accepted (2xx/3xx for HTTP)
    confirmed: bool  # the determined state after it is refused (a close or reset may await confirm_sweeps)
    accepted_before: float | None  # when the previous observation was made, if it was accepted


def _http_ok(status: int | None) -> bool:
    return status is not None and status < 400


def observations(
    known: AddressStatuses,
    changed: Mapping[str, Mapping[Protocol, object]],
    sweep: SweepResult,
    previous: SweepResult | None,
) -> Iterator[Observation]:
    """The observations `sweep` made, given the statuses before it (`known`) and those it changed (`changed`).

    `previous` is the last sweep before it (the time of an accepted answer in it bounds a window from below).
    """
    at = sweep.started_at + sweep.duration_seconds
    before: dict[tuple[str, Protocol], tuple[bool, bool]] = {}  # (handshake accepted, http ok) in `previous`
    if previous is not None:
        for result in previous.addresses:
            for protocol, outcome in result.protocols.items():
                accepted = outcome.state is ProtocolState.ACCEPTED
                before[(result.address, protocol)] = (accepted, accepted and _http_ok(outcome.http_status))
    previous_at = None if previous is None else previous.started_at + previous.duration_seconds
    for result in sweep.addresses:
        statuses = known.get(result.address, {})
        for protocol, outcome in result.protocols.items():
            if outcome.state is ProtocolState.ERROR:
                continue  # an error is no observation: never a refusal
            status = statuses.get(protocol)
            after = changed.get(result.address, {}).get(protocol, status)
            seen = before.get((result.address, protocol), (False, False))
            yield Observation(
                (result.address, protocol, WindowKind.HANDSHAKE),
                at,
                refused=outcome.state is ProtocolState.REJECTED,
                was_accepted=status is not None and status.state is ProtocolState.ACCEPTED,
                confirmed=getattr(after, "state", None) is ProtocolState.REJECTED,
                accepted_before=previous_at if seen[0] else None,
            )
            if outcome.state is ProtocolState.ACCEPTED and outcome.http_status is not None:
                yield Observation(
                    (result.address, protocol, WindowKind.HTTP),
                    at,
                    refused=not _http_ok(outcome.http_status),
                    was_accepted=status is not None and _http_ok(status.http_status),
                    confirmed=True,
                    accepted_before=previous_at if seen[1] else None,
                )


def step(track: Window | None, seen: Observation) -> tuple[Window | None, Window | None]:
    """One observation taken in: the series' open (or unconfirmed) window after it, and the window it ended."""
    if not seen.refused:
        if track is not None and track.confirmed:
            return None, replace(track, first_accepted=seen.at)
        return None, None  # an unconfirmed refusal the accepted answer disproves
    if track is None:
        if not seen.was_accepted:
            return None, None  # never accepted (or already refused): no window opens
        address, protocol, kind = seen.series
        return Window(address, protocol, kind, seen.accepted_before, seen.at, seen.at, None, seen.confirmed), None
    confirmed = track.confirmed or seen.confirmed
    return replace(track, last_refused=max(track.last_refused, seen.at), confirmed=confirmed), None


@dataclass(frozen=True, slots=True)
class RefusalHistory:
    """One target's windows as the tiers and pages read them."""

    open: tuple[Window, ...] = ()  # confirmed open windows
    ended: tuple[Window, ...] = ()  # the most recent ended windows (at most KEPT_WINDOWS), oldest first
    counts: Mapping[Series, int] = field(default_factory=dict)  # ended windows per series, all time

    def series(self) -> list[tuple[Protocol, WindowKind]]:
        """The (protocol, kind) pairs that have had a window, open or ended, on any address."""
        found = {(w.protocol, w.kind) for w in self.open} | {(p, k) for (_, p, k) in self.counts}
        return sorted(found, key=lambda pk: (list(Protocol).index(pk[0]), pk[1].value))

    def windows(self, protocol: Protocol, kind: WindowKind) -> list[Window]:
        """Its windows of one protocol and kind, every address, ended ones first."""
        return [w for w in (*self.ended, *self.open) if w.protocol is protocol and w.kind is kind]

    def total(self, protocol: Protocol, kind: WindowKind) -> int:
        """Ended windows of one protocol and kind over every address, all time."""
        return sum(n for (_, p, k), n in self.counts.items() if p is protocol and k is kind)


SeriesRow = tuple[str, str, str, str, int, float | None, float | None, float | None]  # refusal_series
WindowRow = tuple[str, str, str, str, float | None, float, float, float]  # refusal_window


@dataclass
class _Target:
    tracks: dict[Series, Window] = field(default_factory=dict)  # open and unconfirmed windows
    ended: list[Window] = field(default_factory=list)  # oldest first, at most KEPT_WINDOWS
    counts: dict[Series, int] = field(default_factory=dict)


class WindowBook:
    """Every target's refusal windows: open and unconfirmed ones, the recent ended ones and counts; and what is to be
    written to the state file (kept until the store manages to write it)."""

    def __init__(self) -> None:
        self._targets: dict[str, _Target] = {}
        self._burst_seen: dict[tuple[str, Series], float] = {}  # last accepted burst observation of a series
        self._written: dict[tuple[str, Series], float] = {}  # an open window's last refusal as last written
        self.unwritten_series: dict[tuple[str, Series], SeriesRow] = {}
        self.unwritten_windows: list[WindowRow] = []

    def restore(self, series: Iterable[SeriesRow], windows: Iterable[WindowRow]) -> None:
        """Take in what the state file kept: each series' count and open window, the recent ended windows."""
        for target, address, protocol, kind, ended, before, first, last in series:
            key = (address, Protocol(protocol), WindowKind(kind))
            book = self._targets.setdefault(target, _Target())
            if ended:
                book.counts[key] = ended
            if first is not None and last is not None:
                book.tracks[key] = Window(*key, before, first, last)
        for target, address, protocol, kind, before, first, last, end in windows:
            book = self._targets.setdefault(target, _Target())
            book.ended.append(Window(address, Protocol(protocol), WindowKind(kind), before, first, last, end))
        for book in self._targets.values():
            book.ended.sort(key=lambda w: w.end(0))
            del book.ended[:-KEPT_WINDOWS]

    def observe(self, target: str, seen: Iterable[Observation], burst: bool = False) -> list[Window]:
        """Take in a sweep's (or a burst's) observations of one target; the windows they opened or ended."""
        book = self._targets.get(target)
        news: list[Window] = []
        for each in seen:
            key = (target, each.series)
            if burst and not each.refused:
                if len(self._burst_seen) >= BURST_SEEN_LIMIT:
                    self._burst_seen.clear()
                self._burst_seen[key] = each.at
            if book is None or each.series not in book.tracks:
                if not (each.refused and each.was_accepted):
                    continue  # the common case, nothing to do: no dict made for a quiet target
                burst_at = self._burst_seen.get(key)
                if burst_at is not None and (each.accepted_before is None or burst_at > each.accepted_before):
                    each = replace(each, accepted_before=burst_at)
            if book is None:
                book = self._targets[target] = _Target()
            track, ended = step(book.tracks.get(each.series), each)
            was_open = each.series in book.tracks and book.tracks[each.series].confirmed
            if track is None:
                book.tracks.pop(each.series, None)
            else:
                book.tracks[each.series] = track
            if ended is not None:
                book.counts[each.series] = book.counts.get(each.series, 0) + 1
                book.ended.append(ended)
                del book.ended[:-KEPT_WINDOWS]
                self.unwritten_windows.append(_window_row(target, ended))
                news.append(ended)
            elif track is not None and track.confirmed and not was_open:
                news.append(track)
            if ended is not None or (was_open and track is None):
                self._written.pop(key, None)
                self.unwritten_series[key] = self._series_row(target, each.series, book)
            elif track is not None and track.confirmed:
                written = self._written.get(key)
                if written is None or track.last_refused - written >= WRITE_EVERY_SECONDS:
                    self._written[key] = track.last_refused
                    self.unwritten_series[key] = self._series_row(target, each.series, book)
        return news

    def forget(self, names: Iterable[str]) -> None:
        """Drop the windows of these targets (retired range endpoints), and any of their rows not yet written."""
        gone = set(names)
        for name in gone:
            self._targets.pop(name, None)
        for held in (self._burst_seen, self._written, self.unwritten_series):
            for key in [k for k in held if k[0] in gone]:
                del held[key]
        self.unwritten_windows[:] = [row for row in self.unwritten_windows if row[0] not in gone]

    def flush(self) -> None:
        """Queue every open window whose last refusal moved since it was written (on shutdown)."""
        for target, book in self._targets.items():
            for series, track in book.tracks.items():
                key = (target, series)
                if track.confirmed and self._written.get(key) != track.last_refused:
                    self._written[key] = track.last_refused
                    self.unwritten_series[key] = self._series_row(target, series, book)

    def _series_row(self, target: str, series: Series, book: _Target) -> SeriesRow:
        track = book.tracks.get(series)
        shown = track if track is not None and track.confirmed else None
        address, protocol, kind = series
        return (
            target, address, protocol.value, kind.value, book.counts.get(series, 0),
            None if shown is None else shown.accepted_before,
            None if shown is None else shown.first_refused,
            None if shown is None else shown.last_refused,
        )  # fmt: skip

    def history(self, target: str) -> RefusalHistory:
        """One target's windows; empty for a target that never had one."""
        book = self._targets.get(target)
        if book is None:
            return EMPTY
        return RefusalHistory(
            open=tuple(w for w in book.tracks.values() if w.confirmed),
            ended=tuple(book.ended),
            counts=dict(book.counts),
        )


EMPTY = RefusalHistory()


def _window_row(target: str, window: Window) -> WindowRow:
    assert window.first_accepted is not None
    return (
        target, window.address, window.protocol.value, window.kind.value,
        window.accepted_before, window.first_refused, window.last_refused, window.first_accepted,
    )  # fmt: skip
