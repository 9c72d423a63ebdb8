"""Refusal windows: their bounds from sweeps and bursts, the pattern rule, the state file, the metrics and bursts."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from scanner.config import TargetConfig
from scanner.daemon.burst import MAX_BURSTS, Bursts
from scanner.daemon.scheduler import Scheduler
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult
from scanner.results.sweep import AddressResult, ErrorReason, Evidence, ProtocolResult, ProtocolState, SweepResult
from scanner.state.store import ResultStore
from scanner.state.windows import Pattern, Window, WindowKind, pattern, worst
from scanner.tiers.series import Labels
from scanner.tiers.windows import PATTERN, WINDOW_END, WINDOW_OPEN, WINDOW_START, WINDOWS, WINDOWS_TIER
from tests.unit.factories import A, E, R, sweep, target
from tests.unit.fakes import run

T10, T12 = Protocol.TLSv1_0, Protocol.TLSv1_2
H, HTTP = WindowKind.HANDSHAKE, WindowKind.HTTP
DAY = 86400.0


def ended(first: float, end: float, address: str = "a") -> Window:
    return Window(address, T10, H, first - 1, first, end - 1, end)


def opened(first: float, confirmed: bool = True) -> Window:
    return Window("a", T10, H, first - 1, first, first, None, confirmed)


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        ([], 1000.0, Pattern.NONE),
        ([ended(100, 200)], 1000.0, Pattern.NONE),  # one window is a flip, not a pattern
        ([ended(100, 200), ended(300, 400)], 1000.0, Pattern.PERIODIC),
        ([ended(100, 200), ended(300, 400), opened(500)], 1000.0, Pattern.PERIODIC),
        # the older of the two ended before pattern_window (7 days): no longer periodic
        ([ended(100, 200), ended(300, 400)], 200 + 7 * DAY + 1, Pattern.NONE),
        ([ended(100, 200), ended(300, 400)], 200 + 7 * DAY, Pattern.PERIODIC),
        ([opened(1000)], 1000 + DAY, Pattern.NONE),  # refused for exactly permanent_after: not longer
        ([opened(1000)], 1000 + DAY + 1, Pattern.PERMANENT),
        ([opened(1000, confirmed=False)], 1000 + 2 * DAY, Pattern.NONE),  # an unconfirmed refusal is no window
        # a brownout schedule that ends in a cut-over: permanent wins over periodic
        ([ended(100, 200), ended(300, 400), opened(500)], 500 + DAY + 1, Pattern.PERMANENT),
    ],
)
def test_the_pattern_rule(windows: list[Window], now: float, expected: Pattern) -> None:
    assert pattern(windows, now, pattern_window=7 * DAY, permanent_after=DAY) is expected


def test_the_most_severe_address_decides() -> None:
    assert worst([Pattern.NONE, Pattern.PERMANENT, Pattern.PERIODIC]) is Pattern.PERMANENT
    assert worst([]) is Pattern.NONE


def history(store: ResultStore, name: str = "t") -> list[tuple[float | None, float, float, float | None]]:
    found = store.status(name).windows
    return [(w.accepted_before, w.first_refused, w.last_refused, w.first_accepted) for w in (*found.ended, *found.open)]


def test_a_window_has_the_four_bounds_of_its_observations() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    for at, state in [(100, A), (200, R), (300, E), (400, R), (500, A), (600, A)]:
        store.record(sweep(t, {T10: state, T12: A}, at=at))
    assert history(store) == [(100.5, 200.5, 400.5, 500.5)]  # the error in between is no observation
    windows = store.status("t").windows
    assert windows.total(T10, H) == 1 and windows.total(T12, H) == 0
    assert windows.series() == [(T10, H)]


def test_a_version_never_accepted_has_no_window() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    for at in (100, 200, 300):
        store.record(sweep(t, {T10: R, T12: A}, at=at))
    store.record(sweep(t, {T10: A, T12: A}, at=400))
    assert history(store) == []


def test_an_open_window_is_shown_until_it_ends() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    store.record(sweep(t, {T10: A}, at=100))
    store.record(sweep(t, {T10: R}, at=200))
    (window,) = store.status("t").windows.open
    assert (window.first_refused, window.open) == (200.5, True)


def test_an_http_status_window_over_an_accepting_handshake() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    for at, status in [(100, 200), (200, 403), (300, 403), (400, 200), (500, 301), (600, 503), (700, 200)]:
        store.record(sweep(t, {T10: A}, at=at, http={T10: status}))
    windows = store.status("t").windows
    assert [(w.first_refused, w.first_accepted) for w in windows.ended] == [(200.5, 400.5), (600.5, 700.5)]
    assert windows.total(T10, HTTP) == 2 and windows.total(T10, H) == 0


def unproven(t: TargetConfig, at: float, state: ProtocolState) -> SweepResult:
    evidence = Evidence.RESET if state is R else None
    result = ProtocolResult(state, evidence=evidence, connections=1)
    return SweepResult(t, at, 0.5, (AddressResult("127.0.0.1", {T10: result}),))


def test_a_refusal_awaiting_confirmation_starts_the_window_once_confirmed() -> None:
    store = ResultStore(None)
    t = target()  # confirm_sweeps 2
    store.set_targets([t])
    store.record(unproven(t, 100, A))
    store.record(unproven(t, 200, R))  # one reset: not yet a flip
    store.record(unproven(t, 300, A))
    assert history(store) == []
    store.record(unproven(t, 400, R))
    assert store.status("t").windows.open == ()
    store.record(unproven(t, 500, R))  # held: a flip, and the window started at the first refusal
    store.record(unproven(t, 600, A))
    assert history(store) == [(300.5, 400.5, 500.5, 600.5)]


def test_a_restart_in_the_middle_of_a_window_keeps_it(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    t = target()
    store = ResultStore(path)
    store.set_targets([t])
    for at, state in [(100, A), (200, R), (300, A), (400, A), (500, R), (600, R)]:
        store.record(sweep(t, {T10: state}, at=at))
    store.close()
    store = ResultStore(path)
    store.set_targets([t])
    (window,) = store.status("t").windows.open
    assert (window.accepted_before, window.first_refused, window.last_refused) == (400.5, 500.5, 600.5)
    store.record(sweep(t, {T10: R}, at=700))
    store.record(sweep(t, {T10: A}, at=800))
    assert history(store) == [(100.5, 200.5, 200.5, 300.5), (400.5, 500.5, 700.5, 800.5)]
    store.close()
    store = ResultStore(path)
    store.set_targets([t])
    assert store.status("t").windows.total(T10, H) == 2
    assert store.status("t").windows.open == ()


def test_a_format_3_file_gains_the_window_tables(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    t = target()
    store = ResultStore(path)
    store.set_targets([t])
    store.record(sweep(t, {T10: A}, at=100))
    store.close()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE refusal_series; DROP TABLE refusal_window; PRAGMA user_version = 3;")
    db.close()
    store = ResultStore(path)
    store.set_targets([t])
    store.record(sweep(t, {T10: R}, at=200))
    store.record(sweep(t, {T10: A}, at=300))
    assert store.status("t").addresses["127.0.0.1"][T10].changes == 2  # the history came along
    assert history(store) == [(None, 200.5, 200.5, 300.5)]  # the last accepted answer before the restart: unknown


def lines(store: ResultStore, name: str = "t") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def add(family: object, labels: str, value: float) -> None:
        pairs = tuple(tuple(p.split("=", 1)) for p in labels.split(",") if p)
        found[(getattr(family, "name"), tuple((k, v.strip('"')) for k, v in pairs))] = value  # noqa: B009

    WINDOWS_TIER.lines(store.status(name), Labels({"target": name}), add)
    return found


def test_metrics_per_protocol_and_kind_only_once_a_window_opened() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    base = time.time() - 1000  # the pattern is judged at the time of rendering
    store.record(sweep(t, {T10: A, T12: A}, at=base + 100))
    assert lines(store) == {}
    store.record(sweep(t, {T10: R, T12: A}, at=base + 200))
    at = (("kind", "handshake"), ("protocol", "TLSv1.0"), ("target", "t"))
    found = lines(store)
    assert found[(WINDOWS.name, at)] == 0 and found[(WINDOW_OPEN.name, at)] == 1
    assert (WINDOW_START.name, at) not in found
    for offset, state in [(300, A), (400, R), (500, A)]:
        store.record(sweep(t, {T10: state, T12: A}, at=base + offset))
    found = lines(store)
    assert found[(WINDOWS.name, at)] == 2 and found[(WINDOW_OPEN.name, at)] == 0
    assert (found[(WINDOW_START.name, at)], found[(WINDOW_END.name, at)]) == (base + 400.5, base + 500.5)
    verdict = {dict(labels)["pattern"]: value for (name, labels), value in found.items() if name == PATTERN.name}
    assert verdict == {"none": 0, "periodic": 1, "permanent": 0}  # two ended within 7 days


def test_the_addresses_of_a_version_add_up() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    for at, (first, second) in enumerate([(A, A), (R, R), (A, R), (A, A)]):
        store.record(sweep(t, {T10: first}, at=100 * (at + 1), more={"127.0.0.2": {T10: second}}))
    at = (("kind", "handshake"), ("protocol", "TLSv1.0"), ("target", "t"))
    found = lines(store)
    assert found[(WINDOWS.name, at)] == 2
    assert (found[(WINDOW_START.name, at)], found[(WINDOW_END.name, at)]) == (200.5, 400.5)  # the one ended last


# --- bursts, on a virtual clock ----------------------------------------------------------------------------------


@dataclass
class Scripted:
    """A sweeper whose TLS 1.0 answer on 127.0.0.1 is refused during `refused` spans of loop time; notes each call."""

    refused: list[tuple[float, float]] = field(default_factory=list)
    errors: list[tuple[float, float]] = field(default_factory=list)
    http: bool = False  # answer the refusal as HTTP 403 over an accepting handshake instead
    calls: list[tuple[float, tuple[Protocol, ...], tuple[str, ...] | None]] = field(default_factory=list)
    probes: list[tuple[float, str]] = field(default_factory=list)  # each probe's (time, route)
    resolver: None = None

    async def sweep(self, t: TargetConfig, addresses: list[str] | None = None) -> SweepResult:
        now = asyncio.get_running_loop().time()
        self.calls.append((now, t.protocols, None if addresses is None else tuple(addresses)))
        await asyncio.sleep(0.05)
        results = {p: self._answer(p, now) for p in t.protocols}
        wanted = addresses or ["127.0.0.1", "127.0.0.2"]
        return SweepResult(t, now, 0.05, tuple(AddressResult(a, results) for a in wanted))

    async def probe(self, t: TargetConfig, protocol: Protocol, address: str, route: str = "") -> SweepResult:
        now = asyncio.get_running_loop().time()
        self.calls.append((now, (protocol,), (address,)))
        self.probes.append((now, route))
        await asyncio.sleep(0.05)
        return SweepResult(t, now, 0.05, (AddressResult(address, {protocol: self._answer(protocol, now)}),))

    def _answer(self, p: Protocol, now: float) -> ProtocolResult:
        refused = any(a <= now < b for a, b in self.refused)
        if p is T10 and any(a <= now < b for a, b in self.errors):
            return ProtocolResult(E, reason=ErrorReason.TIMEOUT)
        if p is T10 and refused and not self.http:
            return ProtocolResult(R, evidence=Evidence.ALERT)
        status = (403 if p is T10 and refused else 200) if self.http else None
        return ProtocolResult(A, http_status=status)

    async def deep(self, t: TargetConfig, addresses: list[str]) -> DeepResult:
        raise AssertionError("no deep scans here")

    def stop(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def bursting(engine: Scripted, until: float, **settings: float) -> tuple[Scheduler, ResultStore]:
    t = replace(target(), interval=15.0, deep_interval=0.0, protocols=(T10, T12), **settings)
    store = ResultStore(None)

    async def main() -> Scheduler:
        scheduler = Scheduler(engine, store, random.Random(1))  # type: ignore[arg-type]
        store.set_targets([t])
        scheduler.apply([t])
        await asyncio.sleep(until)
        await scheduler.stop()
        return scheduler

    return run(main()), store


def bursts(engine: Scripted) -> list[tuple[float, tuple[Protocol, ...], tuple[str, ...] | None]]:
    return [call for call in engine.calls if call[2] is not None]


def test_a_flip_is_followed_every_burst_interval_on_its_address_and_version_until_it_flips_back() -> None:
    engine = Scripted(refused=[(20.0, 52.0)])
    scheduler, store = bursting(engine, until=100)
    calls = bursts(engine)
    assert calls and all(c[1:] == ((T10,), ("127.0.0.1",)) for c in calls[::2])
    assert {c[2] for c in calls} == {("127.0.0.1",), ("127.0.0.2",)}  # each flipped address its own burst
    assert max(c[0] for c in calls) < 56  # ended at the flip back
    gaps = [b[0] - a[0] for a, b in zip(calls[::2], calls[2::2], strict=False)]
    assert gaps and max(gaps) <= 2.1
    (window,) = [w for w in store.status("t").windows.ended if w.address == "127.0.0.1"]
    assert 52 <= window.first_accepted <= 54.5  # seen within a burst interval
    assert scheduler.bursts.started == 2 and len(scheduler.bursts) == 0
    assert len(engine.probes) == len(calls)  # every burst call a probe, no sweep
    # Both bursts go where the target's sweeps go: by the lowest address of its last sweep.
    assert {route for _, route in engine.probes} == {"127.0.0.1"}


def test_bursts_probe_together_on_the_ticks_of_a_shared_clock() -> None:
    """One wake-up for all the bursts of an interval, not one per burst at its own phase."""
    engine = Scripted(refused=[(20.0, 60.0)])
    bursting(engine, until=100)
    times = [c[0] for c in bursts(engine)]
    assert len(times) >= 20
    assert all(abs(t / 2.0 - round(t / 2.0)) < 1e-6 for t in times)  # on a multiple of burst_interval
    per_tick = Counter(round(t / 2.0) for t in times)
    assert set(per_tick.values()) == {2}  # both flipped addresses on every tick


def test_until_tick() -> None:
    from scanner.daemon.burst import until_tick

    assert until_tick(10.5, 2.0) == 1.5
    assert until_tick(12.0, 2.0) == 2.0  # a tick due now has passed: never 0, never a busy loop
    assert 0 < until_tick(1e9 + 0.25, 0.5) <= 0.5


def test_a_burst_ends_after_burst_for() -> None:
    engine = Scripted(refused=[(20.0, 1000.0)])
    bursting(engine, until=200, burst_for=30.0)
    calls = bursts(engine)
    first = min(c[0] for c in calls)
    assert max(c[0] for c in calls) <= first + 30


def test_bursts_are_off_with_burst_interval_0() -> None:
    engine = Scripted(refused=[(20.0, 52.0)])
    _, store = bursting(engine, until=100, burst_interval=0.0)
    assert bursts(engine) == []
    assert store.status("t").windows.total(T10, H) == 2  # the sweeps still see the window, on both addresses


def test_a_burst_probe_that_errors_is_no_refusal() -> None:
    engine = Scripted(refused=[(20.0, 40.0)], errors=[(40.0, 60.0)])
    _, store = bursting(engine, until=100)
    windows = [w for w in store.status("t").windows.ended if w.address == "127.0.0.1"]
    assert len(windows) == 1 and windows[0].first_accepted is not None
    assert windows[0].first_accepted >= 60  # the errors neither ended nor extended it
    assert windows[0].last_refused < 40.1


def test_an_http_status_flip_is_followed_too() -> None:
    engine = Scripted(refused=[(20.0, 52.0)], http=True)
    _, store = bursting(engine, until=100)
    assert bursts(engine)
    assert store.status("t").windows.total(T10, HTTP) == 2
    (window, _) = store.status("t").windows.ended
    assert 52 <= window.end(0) <= 54.5


def test_bursts_are_capped() -> None:
    async def main() -> int:
        engine = Scripted()
        store = ResultStore(None)
        found = Bursts(engine, store, lambda name: None, ())  # type: ignore[arg-type]
        t = target()
        from scanner.state.status import Transition

        found.flipped(t, [Transition("t", f"10.0.{i // 256}.{i % 256}", T10, 0, A, R) for i in range(MAX_BURSTS + 5)])
        running = len(found)
        await found.stop()
        return running

    assert run(main()) == MAX_BURSTS


# --- the timeline and the JSON ----------------------------------------------------------------------------------


def test_the_timeline_draws_a_lane_per_version_and_each_recent_window_with_its_exact_times() -> None:
    import xml.etree.ElementTree as ET

    from scanner.state.windows import RefusalHistory
    from scanner.web.timeline import timeline_svg

    now = 1_764_892_800.0  # 2025-12-05 00:00:00 UTC
    history = RefusalHistory(
        open=(Window("127.10.0.1", T10, H, now - 100, now - 60, now - 2),),
        ended=(
            Window("127.10.0.1", T10, H, now - 2 * DAY, now - 2 * DAY + 1, now - 2 * DAY + 30, now - 2 * DAY + 32),
            Window("127.10.0.1", T10, H, now - 3601, now - 3600, now - 3570, now - 3568),
            Window("127.10.0.1", T12, HTTP, None, now - 7200, now - 7000, now - 6000),
        ),
        counts={("127.10.0.1", T10, H): 2, ("127.10.0.1", T12, HTTP): 1},
    )
    svg = timeline_svg("pypi <files>", (T10, T12, Protocol.TLSv1_3), history, now)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("viewBox", "").startswith("0 0 800 ")
    assert [t.text for t in root.iter(f"{ns}text") if t.text and t.text.startswith("TLS")] == [
        "TLSv1.0", "TLSv1.2", "TLSv1.3"
    ]  # fmt: skip
    windows = [r for r in root.iter(f"{ns}rect") if "window" in (r.get("class") or "")]
    assert [(r.get("data-protocol"), r.get("class")) for r in windows] == [
        ("TLSv1.0", "window handshake ended"),
        ("TLSv1.0", "window handshake open"),
        ("TLSv1.2", "window http ended"),
    ]  # the window of two days ago is not drawn
    titles = [r.find(f"{ns}title").text or "" for r in windows]  # type: ignore[union-attr]
    assert "from 2025-12-04 23:00:00 UTC to 2025-12-04 23:00:32 UTC (32 s)" in titles[0]
    assert "last accepted before: 2025-12-04 22:59:59 UTC" in titles[0]
    assert "still open" in titles[1] and "on 127.10.0.1" in titles[1]
    assert "HTTP 4xx/5xx" in titles[2] and "last accepted before: unknown" in titles[2]
    assert all(float(r.get("width", 0)) >= 3 for r in windows)  # a 32 s window still shows
    assert "<script" not in svg and "pypi &lt;files&gt;" in svg


def test_the_windows_json() -> None:
    from scanner.tiers.windows import windows_json

    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    for at, state in [(100, A), (200, R), (300, A), (400, R)]:
        store.record(sweep(t, {T10: state}, at=at))
    found = windows_json(store.status("t"), now=1000.0)
    assert found["protocols"] == [
        {"protocol": "TLSv1.0", "kind": "handshake", "windows_total": 1, "open": True, "pattern": "none"}
    ]
    assert [(w["first_refused"], w["first_accepted_after"], w["open"]) for w in found["windows"]] == [
        (200.5, 300.5, False),
        (400.5, None, True),
    ]
    assert found["windows"][1]["duration_seconds"] == 599.5
    assert (found["burst_interval_seconds"], found["pattern_window_seconds"]) == (2.0, 7 * DAY)


def test_an_open_window_is_written_at_most_once_a_minute_and_on_close(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    t = target()
    store = ResultStore(path)
    store.set_targets([t])
    for at, state in [(100, A), (200, R), (210, R), (220, R)]:
        store.record(sweep(t, {T10: state}, at=at))
    db = sqlite3.connect(path)
    assert db.execute("SELECT first_refused, last_refused FROM refusal_series").fetchall() == [(200.5, 200.5)]
    store.record(sweep(t, {T10: R}, at=270))  # a minute after the last write
    assert db.execute("SELECT last_refused FROM refusal_series").fetchall() == [(270.5,)]
    store.record(sweep(t, {T10: R}, at=280))
    store.close()
    assert db.execute("SELECT last_refused FROM refusal_series").fetchall() == [(280.5,)]
    db.close()


def test_once_and_probe_output_carry_no_window_families() -> None:
    from scanner.output.metrics import render_probe, render_sweeps

    one = sweep(target(), {T10: R, T12: A})
    assert "refusal" not in render_sweeps([one]).replace("because a refusal came", "")
    assert "tls_scanner_refusal_" not in render_probe(one)


def test_what_ends_a_burst() -> None:
    from scanner.daemon.burst import flips_back
    from scanner.state.status import Transition, TransitionKind

    def flip(old: str, new: str, kind: TransitionKind = TransitionKind.HANDSHAKE) -> Transition:
        return Transition("t", "a", T10, 0, old, new, kind)

    http = TransitionKind.HTTP
    assert flips_back(flip(A, R), flip(R, A))
    assert not flips_back(flip(A, R), flip("200", "403", http))
    assert flips_back(flip("200", "403", http), flip("403", "301", http))
    assert not flips_back(flip("200", "403", http), flip("403", "503", http))
    assert not flips_back(flip("200", "403", http), flip(R, A))
