"""--log-format: text for people, one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from scanner.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    logging.getLogger("scanner.daemon.scheduler").warning("%s %s changed: %s -> %s", "pypi.org", "TLSv1.0", "a", "r")
    logging.getLogger("scanner.daemon.scheduler").debug("not shown at info")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "warning"
    assert entry["logger"] == "scanner.daemon.scheduler"
    assert entry["msg"] == "pypi.org TLSv1.0 changed: a -> r"
    assert entry["ts"].endswith("Z")


def test_text_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("error", "text")
    logging.getLogger("scanner.daemon.service").warning("hidden")
    logging.getLogger("scanner.daemon.service").error("config reload failed")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "ERROR scanner.daemon.service: config reload failed" in err
