"""The HTTP side's pure parts: content negotiation for /metrics."""

from __future__ import annotations

import asyncio

import pytest

from scanner.web.app import WRITE_BYTES, _batched, accepts_gzip


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


def test_exposition_parts_are_written_joined_in_bounded_batches() -> None:
    """The exposition's many small parts go out as few writes of about WRITE_BYTES, the same bytes in order."""
    parts = [bytes([65 + i % 26]) * (100 + i % 7000) for i in range(3000)]

    async def collect() -> list[bytes]:
        return [chunk async for chunk in _batched(parts)]

    chunks = asyncio.run(collect())
    assert b"".join(chunks) == b"".join(parts)
    assert all(WRITE_BYTES <= len(c) < WRITE_BYTES + 7100 for c in chunks[:-1])
    assert 0 < len(chunks[-1]) < WRITE_BYTES + 7100
    assert len(chunks) < len(parts) / 50
