"""Refusal windows against real nginx reloads: bursts bound each window within seconds, an HTTP 403 window counts the
same, a restart in the middle of a window keeps it; the timeline in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.servers import NginxServer, child_pids, free_ports
from tests.lab.daemon import Daemon, Daemons, Scrape, lab_config, write_config
from tests.lab.servers import NginxLabFactory
from tests.lab.test_browser import ARTIFACTS, png_pixels, run_chromium

REPO = Path(__file__).resolve().parents[2]
TIMELINE_SCREENSHOT = REPO / "deploy" / "refusal-windows.png"
WINDOWS = "tls_scanner_refusal_windows_total"
START = "tls_scanner_last_refusal_window_start_timestamp_seconds"
END = "tls_scanner_last_refusal_window_end_timestamp_seconds"
OPEN = "tls_scanner_refusal_window_open"
ACCEPTED = "tls_scanner_protocol_accepted"
NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]
JITTER = 0.1  # scanner.daemon.scheduler.JITTER: an interval is stretched by up to this much


def target(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": port, "protocols": ["TLSv1.0", "TLSv1.2"], **extra}


def value(scrape: Scrape, name: str, kind: str = "handshake") -> float | None:
    return scrape.value(name, target="web", protocol="TLSv1.0", kind=kind)


def timed_reload(reload: Callable[[], None]) -> tuple[float, float]:
    """(before, after) the reload: the new config took effect in between."""
    before = time.time()
    reload()
    return before, time.time()


def test_two_brownouts_of_32s_at_a_15s_interval_are_two_windows_bounded_within_seconds(
    nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path
) -> None:
    """TLS 1.0 disabled by an nginx reload for 32 s, twice, 12 s apart: two windows; the bursts after each flip see the
    re-enable within 3 s; the start is the first sweep after the disable (within one interval)."""
    interval = 15.0
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, NGINX_ALL)])
    d = start_daemon(write_config(tmp_path / "c.yaml", lab_config([target("web", port)], interval="15s")), debug=True)
    d.wait_metrics(lambda s: s.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1, 20, "TLSv1.0 accepted")

    def legacy(protocols: list[str]) -> Callable[[], None]:
        return lambda: nginx.reload([NginxServer("web", port, protocols)])

    off_1 = timed_reload(legacy(NGINX_MODERN))
    time.sleep(32 - (time.time() - off_1[1]))
    on_1 = timed_reload(legacy(NGINX_ALL))
    time.sleep(12 - (time.time() - on_1[1]))
    off_2 = timed_reload(legacy(NGINX_MODERN))
    time.sleep(32 - (time.time() - off_2[1]))
    on_2 = timed_reload(legacy(NGINX_ALL))
    scrape = d.wait_metrics(lambda s: value(s, WINDOWS) == 2, 5, "two refusal windows ended")
    end, start = value(scrape, END), value(scrape, START)
    assert end is not None and start is not None
    assert on_2[0] <= end <= on_2[1] + 3, (on_2, end)
    assert off_2[0] <= start <= off_2[1] + interval * (1 + JITTER) + 1, (off_2, start)
    assert scrape.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1
    assert scrape.value(ACCEPTED, target="web", protocol="TLSv1.2") == 1
    assert value(scrape, OPEN) == 0
    assert scrape.value(WINDOWS, target="web", protocol="TLSv1.2", kind="handshake") is None  # never refused

    status, body = d.get("/api/v1/targets/web/windows")
    assert status == 200
    windows = json.loads(body)["windows"]
    assert len(windows) == 2
    first, last = windows
    assert on_1[0] <= first["first_accepted_after"] <= on_1[1] + 3, (on_1, first)
    assert off_1[0] <= first["first_refused"] <= off_1[1] + interval * (1 + JITTER) + 1, (off_1, first)
    for window, (off, on) in zip(windows, [(off_1, on_1), (off_2, on_2)], strict=True):
        # the last accepted answer was before the disable, the last refused one before the re-enable
        assert window["last_accepted_before"] is not None and window["last_accepted_before"] <= off[1]
        assert window["first_refused"] <= window["last_refused"] <= on[1]
        assert on[1] - window["last_refused"] < 5  # bursts kept looking
    assert (last["first_refused"], last["first_accepted_after"]) == (start, end)


def test_an_http_403_window_behind_an_accepting_handshake(
    nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, NGINX_ALL)])
    config = lab_config([target("web", port, http={"path": "/"})], interval="5s")
    d = start_daemon(write_config(tmp_path / "c.yaml", config), debug=True)
    d.wait_metrics(
        lambda s: s.value("tls_scanner_http_status_code", target="web", protocol="TLSv1.0") == 200, 15, "200"
    )
    off = timed_reload(lambda: nginx.reload([NginxServer("web", port, NGINX_ALL, legacy_403=True)]))
    d.wait_metrics(lambda s: value(s, OPEN, "http") == 1, 10, "an HTTP window open")
    time.sleep(max(0.0, 12 - (time.time() - off[1])))
    on = timed_reload(lambda: nginx.reload([NginxServer("web", port, NGINX_ALL)]))
    scrape = d.wait_metrics(lambda s: value(s, WINDOWS, "http") == 1, 5, "the HTTP window ended")
    end, start = value(scrape, END, "http"), value(scrape, START, "http")
    assert end is not None and start is not None
    assert on[0] <= end <= on[1] + 3, (on, end)
    assert off[0] <= start <= off[1] + 5 * (1 + JITTER) + 1, (off, start)
    assert value(scrape, WINDOWS) is None  # the handshake was accepted throughout
    assert scrape.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1
    assert scrape.value("tls_scanner_refusal_pattern", target="web", protocol="TLSv1.0", kind="http", pattern="none")


def test_bursts_in_worker_processes_bound_a_handshake_and_an_http_window_within_seconds(
    nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path
) -> None:
    """`workers: 2`: the bursts' probes run in the worker processes (the HTTP one on a handshake thread there) and end
    both kinds of window within 3 s of the re-enable, at a 15 s interval."""
    web, api = free_ports(2)
    nginx = nginx_lab([NginxServer("web", web, NGINX_ALL), NginxServer("api", api, NGINX_ALL)])
    targets = [target("web", web), target("api", api, http={"path": "/"})]
    d = start_daemon(write_config(tmp_path / "c.yaml", {"workers": 2, **lab_config(targets, interval="15s")}))

    def up(s: Scrape) -> bool:
        return s.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1 and (
            s.value("tls_scanner_http_status_code", target="api", protocol="TLSv1.0") == 200
        )

    d.wait_metrics(up, 30, "TLS 1.0 accepted on web, a 200 over it on api")
    assert len(child_pids(d.pid)) == 2
    browned = [NginxServer("web", web, NGINX_MODERN), NginxServer("api", api, NGINX_ALL, legacy_403=True)]
    off = timed_reload(lambda: nginx.reload(browned))

    def opened(s: Scrape) -> bool:
        return value(s, OPEN) == 1 and s.value(OPEN, target="api", protocol="TLSv1.0", kind="http") == 1

    d.wait_metrics(opened, 20, "both windows open")
    time.sleep(max(0.0, 10 - (time.time() - off[1])))
    on = timed_reload(lambda: nginx.reload([NginxServer("web", web, NGINX_ALL), NginxServer("api", api, NGINX_ALL)]))

    def ended(s: Scrape) -> bool:
        return value(s, WINDOWS) == 1 and s.value(WINDOWS, target="api", protocol="TLSv1.0", kind="http") == 1

    scrape = d.wait_metrics(ended, 5, "both windows ended")
    for name, kind in (("web", "handshake"), ("api", "http")):
        end = scrape.value(END, target=name, protocol="TLSv1.0", kind=kind)
        assert end is not None and on[0] <= end <= on[1] + 3, (name, on, end)
    assert "Traceback" not in d.log_text()


def test_a_restart_in_the_middle_of_a_window_keeps_it(
    nginx_lab: NginxLabFactory, start_daemon: Daemons, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("web", port, NGINX_ALL)])
    config = write_config(tmp_path / "c.yaml", lab_config([target("web", port)], interval="2s"))
    first = start_daemon(config, debug=True)
    first.wait_metrics(lambda s: s.value(ACCEPTED, target="web", protocol="TLSv1.0") == 1, 15, "TLSv1.0 accepted")
    nginx.reload([NginxServer("web", port, NGINX_MODERN)])
    first.wait_metrics(lambda s: value(s, OPEN) == 1, 10, "a window open")
    (opened,) = json.loads(first.get("/api/v1/targets/web/windows")[1])["windows"]
    first.kill9()  # no chance to write anything more: what the state file holds is what there is

    second = start_daemon(config, debug=True)
    scrape = second.metrics()  # before its first sweep
    assert value(scrape, OPEN) == 1 and value(scrape, WINDOWS) == 0
    (kept,) = json.loads(second.get("/api/v1/targets/web/windows")[1])["windows"]
    assert kept["open"] and kept["first_refused"] == opened["first_refused"]
    assert kept["last_accepted_before"] == opened["last_accepted_before"] is not None
    on = timed_reload(lambda: nginx.reload([NginxServer("web", port, NGINX_ALL)]))
    scrape = second.wait_metrics(lambda s: value(s, WINDOWS) == 1, 10, "the window ended after the restart")
    assert value(scrape, START) == opened["first_refused"]
    end = value(scrape, END)
    assert end is not None and on[0] <= end <= on[1] + 3
    assert second.get("/api/v1/targets/nope/windows")[0] == 404


# --- the timeline in Chromium -------------------------------------------------------------------------------------

HOUR = 3600.0
RED = (0xD3, 0x2F, 0x2F)  # scanner.web.timeline.COLOURS, blended over the lane's pale green at 0.9
LANE = (0xE8, 0xF5, 0xE9)


def blend(colour: tuple[int, int, int], opacity: float) -> tuple[int, int, int]:
    return tuple(round(c * opacity + b * (1 - opacity)) for c, b in zip(colour, LANE, strict=True))  # type: ignore[return-value]


def near(pixel: tuple[int, int, int], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 3 for a, b in zip(pixel, colour, strict=True))


def seed_brownout_schedule(state: Path, name: str, now: float) -> None:
    """A PyPI-like day in the state file: 10-minute TLS 1.0/1.1 brownouts every 3 hours, then an HTTP 403 hour."""
    db = sqlite3.connect(state)
    rows = []
    for hours_ago in (21, 18, 15, 12, 9, 6):
        start = now - hours_ago * HOUR
        for protocol in ("TLSv1.0", "TLSv1.1"):
            rows.append((name, "127.0.0.1", protocol, "handshake", start - 30, start, start + 570, start + 600))
    rows.append(
        (name, "127.0.0.1", "TLSv1.1", "http", now - 4 * HOUR - 31, now - 4 * HOUR, now - 3 * HOUR, now - 3 * HOUR + 20)
    )
    db.executemany(
        "INSERT INTO refusal_window (target, address, protocol, kind, accepted_before, first_refused, last_refused,"
        " first_accepted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    for protocol, kind, count in (("TLSv1.0", "handshake", 6), ("TLSv1.1", "handshake", 6), ("TLSv1.1", "http", 1)):
        db.execute(
            "INSERT INTO refusal_series (target, address, protocol, kind, ended) VALUES (?, '127.0.0.1', ?, ?, ?)",
            (name, protocol, kind, count),
        )
    db.commit()
    db.close()


def test_the_timeline_in_chromium(nginx_lab: NginxLabFactory, tmp_path: Path) -> None:
    """A day of brownouts (seeded into the state file) plus one made now by an nginx reload, on the status page in a
    real headless Chromium at 800 px: shaded windows, a title with the exact times, a screenshot for deploy/."""
    (port,) = free_ports(1)
    nginx = nginx_lab([NginxServer("files", port, NGINX_ALL)])
    files = {"name": "files", "host": "127.0.0.1", "port": port, "protocols": ["TLSv1.0", "TLSv1.1", "TLSv1.2"]}
    config = write_config(tmp_path / "c.yaml", lab_config([files]))
    state = tmp_path / "state.db"
    first = Daemon(config, state, tmp_path / "first.log").start()  # creates the state file
    first.stop()
    seed_brownout_schedule(state, "files", time.time())
    d = Daemon(config, state, tmp_path / "daemon.log")
    try:
        d.start()
        d.wait_metrics(lambda s: s.value(ACCEPTED, target="files", protocol="TLSv1.0") == 1, 15, "TLSv1.0 accepted")
        nginx.reload([NginxServer("files", port, NGINX_MODERN)])
        d.wait_metrics(
            lambda s: s.value(OPEN, target="files", protocol="TLSv1.0", kind="handshake") == 1, 10, "a window open"
        )
        url = f"http://127.0.0.1:{d.port}/#timelines"
        dump = run_chromium(tmp_path, "--dump-dom", url)
        assert dump.returncode == 0, dump.stderr[-3000:]
        assert '<svg xmlns="http://www.w3.org/2000/svg" class="timeline"' in dump.stdout
        assert dump.stdout.count('class="window handshake ended"') == 12
        assert dump.stdout.count('class="window http ended"') == 1
        assert dump.stdout.count('class="window handshake open"') == 2  # TLS 1.0 and 1.1, refused now
        assert "<script" not in dump.stdout
        scrape = d.metrics()
        assert scrape.value("tls_scanner_refusal_pattern", target="files", protocol="TLSv1.0", kind="handshake",
                            pattern="periodic") == 1  # fmt: skip

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "refusal-windows.png"
        shot.unlink(missing_ok=True)
        result = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=800,700", url)
        assert result.returncode == 0 and shot.is_file(), result.stderr[-3000:]
        width, height, pixels = png_pixels(shot.read_bytes())
        assert (width, height) == (800, 700)
        shaded = sum(1 for p in pixels if near(p, blend(RED, 0.9)))
        assert shaded > 600, shaded  # 12 ten-minute windows of 18 px lanes, each ~5 px wide at 800 px
    finally:
        d.stop()
    if os.environ.get("UPDATE_DEPLOY_SCREENSHOT") or not TIMELINE_SCREENSHOT.exists():
        shutil.copyfile(shot, TIMELINE_SCREENSHOT)
