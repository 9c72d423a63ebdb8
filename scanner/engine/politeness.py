"""Politeness per remote address, whichever targets share it: connections open at once, and new ones per second."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from scanner.config import Politeness


@dataclass
class _Address:
    slots: asyncio.Semaphore
    next_at: float = 0.0  # monotonic time of this address's next connection under the rate limit
    users: int = 0  # holders of and waiters for a slot


class AddressGate:
    """Hands out per-address connection slots; forgets addresses nobody uses, so changing DNS answers cost nothing."""

    def __init__(self, settings: Politeness) -> None:
        self.settings = settings
        self._addresses: dict[str, _Address] = {}
        self._prune_at = 64  # prune idle entries when the table grows past this (amortised O(1))

    def __len__(self) -> int:
        return len(self._addresses)

    @contextlib.asynccontextmanager
    async def connection(self, address: str) -> AsyncIterator[None]:
        """Hold one of `address`'s slots, after waiting for its turn under the optional rate limit."""
        entry = self._addresses.get(address)
        if entry is None:
            entry = self._addresses[address] = _Address(asyncio.Semaphore(self.settings.connections_per_address))
            if len(self._addresses) > self._prune_at:
                self._prune()
        entry.users += 1
        try:
            async with entry.slots:
                await self._pace(entry)
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and entry.next_at <= time.monotonic() and self._addresses.get(address) is entry:
                del self._addresses[address]

    async def _pace(self, entry: _Address) -> None:
        rate = self.settings.connections_per_second
        if rate <= 0:
            return
        now = time.monotonic()
        at = max(now, entry.next_at)
        entry.next_at = at + 1.0 / rate
        if at > now:
            await asyncio.sleep(at - now)

    def _prune(self) -> None:
        """Drop idle addresses whose rate-limit turn has passed; a pending turn keeps an entry until it passes."""
        now = time.monotonic()
        for address, entry in list(self._addresses.items()):
            if entry.users == 0 and entry.next_at <= now:
                del self._addresses[address]
        self._prune_at = max(64, 2 * len(self._addresses))
