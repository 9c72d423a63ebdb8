"""The HTTP side's pure parts: content negotiation for /metrics."""

from __future__ import annotations

import pytest

from scanner.web import accepts_gzip


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),  # curl --compressed, browsers
        ("identity;q=1, GZIP;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("deflate", False),
        ("", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accepts_gzip(header: str, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip
