"""The daemon's status page in a real headless Chromium, during a brownout made by an nginx reload: the DOM the browser
built (matrix, changed cell, transitions) and a screenshot (tests/artifacts/status-page.png) showing it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.servers import NginxLab, NginxServer, free_ports
from tests.lab.daemon import Daemon, Scrape, lab_config, require_binary, write_config
from tests.lab.servers import require_nginx

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
README_SCREENSHOT = REPO / "deploy" / "status-page.png"
PROTOCOLS = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_ALL = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
NGINX_MODERN = ["TLSv1.2", "TLSv1.3"]
WINDOW = (800, 700)  # the page must stay usable this narrow
# The status page's cell colours (scanner/web/app.py): accepted, rejected.
GREEN = (0xC8, 0xE6, 0xC9)
RED = (0xFF, 0xCD, 0xD2)


def chromium_args(tmp: Path) -> list[str]:
    """Headless, no sandbox (root), nothing fetched from outside: no background, component or sync traffic, and no
    name resolved (the page is loaded by IP address)."""
    return [
        require_binary("chromium", "chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-breakpad",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]


def run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "config"), "XDG_CACHE_HOME": str(tmp / "cache")}
    return subprocess.run(
        [*chromium_args(tmp), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


# --- reading what the browser shows ----------------------------------------------------------------------------


@dataclass
class Cell:
    classes: set[str]
    protocol: str | None
    text: str = ""


@dataclass
class Row:
    attrs: dict[str, str]
    cells: list[Cell] = field(default_factory=list)


class Tables(HTMLParser):
    """Rows of <table id="matrix"> and <table id="transitions">, with each cell's class and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[Row]] = {}
        self.headers: dict[str, list[str]] = {}
        self._table: str | None = None
        self._row: Row | None = None
        self._cell: Cell | None = None
        self._header: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id")
        elif self._table is None:
            return
        elif tag == "tr":
            self._row = Row(a)
        elif tag == "td" and self._row is not None:
            self._cell = Cell(set(a.get("class", "").split()), a.get("data-protocol"))
        elif tag == "th":
            self._header = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data
        elif self._header is not None:
            self._header.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._table is None:
            return
        if tag == "td" and self._row is not None and self._cell is not None:
            self._cell.text = self._cell.text.strip()
            self._row.cells.append(self._cell)
            self._cell = None
        elif tag == "th" and self._header is not None:
            self.headers.setdefault(self._table, []).append("".join(self._header).strip())
            self._header = None
        elif tag == "tr" and self._row is not None:
            if self._row.cells:
                self.tables.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(width, height, RGB pixels) of an 8-bit RGB or RGBA PNG, decoded with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    pixels: list[tuple[int, int, int]] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + predictor) & 0xFF
        pixels.extend((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        previous = line
    return width, height, pixels


# --- the lab ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brownout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """nginx: web (all versions, then TLS 1.2+ after a reload), legacy-403, modern; the daemon on them and a closed
    port, 1 s interval; returned once the daemon has seen web drop TLS 1.0 and 1.1."""
    require_binary("chromium", "chromium")
    require_nginx()
    tmp_path = tmp_path_factory.mktemp("browser")
    web, legacy, modern, down = free_ports(4)
    others = [
        NginxServer("legacy-403", legacy, NGINX_ALL, legacy_403=True),
        NginxServer("modern", modern, NGINX_MODERN),
    ]
    targets = [
        {
            "name": "web",
            "host": "127.0.0.1",
            "port": web,
            "http": True,
            "labels": {"team": "web"},
            "expect": {"accept": ["TLSv1.2", "TLSv1.3"], "reject": ["SSLv2", "SSLv3"]},
        },
        {
            "name": "legacy-403",
            "host": "127.0.0.1",
            "port": legacy,
            "http": True,
            "expect": {"http_ok": ["TLSv1.0"], "reject": ["TLSv1.1"]},
        },
        {"name": "modern", "host": "127.0.0.1", "port": modern},
        {"name": "down", "host": "127.0.0.1", "port": down},
    ]
    config = write_config(tmp_path / "scanner.yaml", lab_config(targets))
    with (
        NginxLab([NginxServer("web", web, NGINX_ALL), *others]) as nginx,
        Daemon(config, tmp_path / "state.db", tmp_path / "daemon.log") as daemon,
    ):

        def accepted(scrape: Scrape, protocol: str) -> list[float]:
            found = scrape.find("tls_scanner_protocol_accepted", target="web", protocol=protocol)
            return [s.value for s in found]

        daemon.wait_metrics(lambda s: accepted(s, "TLSv1.0") == [1.0], 30, "web to accept TLSv1.0")
        nginx.reload([NginxServer("web", web, NGINX_MODERN), *others])
        daemon.wait_metrics(
            lambda s: accepted(s, "TLSv1.0") == [0.0] and accepted(s, "TLSv1.1") == [0.0], 30, "web to drop TLS 1.0/1.1"
        )
        daemon.wait_metrics(lambda s: s.find("tls_scanner_scan_success", target="down"), 30, "a sweep of down")
        yield daemon


def test_status_page_in_chromium_shows_the_brownout(brownout: Daemon, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{brownout.port}/"
    dump = run_chromium(tmp_path, "--dump-dom", url)
    assert dump.returncode == 0, dump.stderr[-3000:]
    page = Tables()
    page.feed(dump.stdout)

    matrix = page.tables.get("matrix", [])
    rows: dict[str, list[Row]] = {}
    for row in matrix:
        rows.setdefault(row.attrs.get("data-target", ""), []).append(row)
    assert set(rows) == {"web", "legacy-403", "modern", "down"}, dump.stdout[:3000]
    cells = {name: {c.protocol: c for r in found for c in r.cells if c.protocol} for name, found in rows.items()}
    assert all(list(c) == PROTOCOLS for c in cells.values()), cells
    web = cells["web"]
    # Coloured by the policy where there is one (ok / violating), neutrally where there is none.
    for protocol in ("TLSv1.0", "TLSv1.1"):
        assert {"rejected", "changed", "neutral"} <= web[protocol].classes, (protocol, web[protocol])
    for protocol in ("TLSv1.2", "TLSv1.3"):
        assert web[protocol].classes == {"accepted", "ok"}, (protocol, web[protocol])
    assert {"rejected", "ok"} == web["SSLv3"].classes
    assert cells["modern"]["TLSv1.3"].classes == {"accepted", "neutral"}
    assert {"accepted", "violating"} <= cells["legacy-403"]["TLSv1.0"].classes
    assert {"accepted", "violating"} <= cells["legacy-403"]["TLSv1.1"].classes
    policy = {name: found[0].cells[len(PROTOCOLS) + 3].text for name, found in rows.items()}
    assert policy == {"web": "met", "legacy-403": "VIOLATED", "modern": "-", "down": "-"}, policy
    assert "team=web" in rows["web"][0].cells[0].text
    assert 'href="/metrics"' in dump.stdout and 'href="/api/v1/targets"' in dump.stdout
    assert "legacy-403</b>: TLSv1.0 expected HTTP 2xx/3xx, got 403" in dump.stdout
    assert not any("changed" in c.classes for name in ("modern", "legacy-403") for c in cells[name].values())
    assert all(c.classes & {"error", "unknown"} for c in cells["down"].values()), cells["down"]
    assert any("403" in c.text for r in rows["legacy-403"] for c in r.cells), "HTTP 403 over TLS 1.0/1.1 not shown"

    header = page.headers["transitions"]
    transitions = [dict(zip(header, (c.text for c in r.cells), strict=False)) for r in page.tables["transitions"]]
    seen = {(t["Target"], t["Protocol"], t["From"], t["To"]) for t in transitions}
    assert {("web", "TLSv1.0", "accepted", "rejected"), ("web", "TLSv1.1", "accepted", "rejected")} <= seen, seen


def test_status_page_screenshot(brownout: Daemon, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    url = f"http://127.0.0.1:{brownout.port}/"
    result = run_chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-3000:]
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == WINDOW
    # The brownout is visible: green cells (accepted) and red ones (rejected), not a blank or error page.
    green = sum(1 for p in pixels if p == GREEN)
    red = sum(1 for p in pixels if p == RED)
    assert green > 2000 and red > 2000, (green, red)
    if os.environ.get("UPDATE_DEPLOY_SCREENSHOT") or not README_SCREENSHOT.exists():
        shutil.copyfile(shot, README_SCREENSHOT)
