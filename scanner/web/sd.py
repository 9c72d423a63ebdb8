"""GET /api/v1/sd: every configured target (all shards; range endpoints this replica found open) as an http_sd group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from scanner.config import TargetConfig


def target_groups(targets: Sequence[TargetConfig]) -> list[dict[str, Any]]:
    """`[{"targets": [name], "labels": {...}}]`: what Prometheus' http_sd_configs reads, in config order."""
    return [{"targets": [target.name], "labels": dict(target.labels)} for target in targets]


def sd_handler(configured: Callable[[], Sequence[TargetConfig]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The /api/v1/sd handler over `configured` (every target of the config in force, all shards)."""

    async def sd(request: web.Request) -> web.Response:
        return web.json_response(target_groups(configured()))

    return sd
