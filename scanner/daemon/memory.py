"""Giving freed memory back to the system, for the daemon and its workers (glibc only; elsewhere a no-op).

glibc keeps freed memory in its heaps for reuse: after a 40 MB /metrics answer in the main process, or the OpenSSL
buffers of thousands of handshakes spread over the arenas of a worker's threads, the pages stay resident although
nothing uses them, and RSS only ever grows. malloc_trim(0) hands the free pages back; it takes a few milliseconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_EVERY_SECONDS = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    return trim


async def trim_periodically(every: float = TRIM_EVERY_SECONDS) -> None:
    """Trim every `every` seconds until cancelled."""
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(every)
        trim(0)
