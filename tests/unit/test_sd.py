"""GET /api/v1/sd: every configured target (all shards; range endpoints found open) as an http_sd group."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from scanner.config import parse_config
from scanner.targets import expand
from scanner.web.sd import sd_handler, target_groups
from tests.unit.factories import target

CONFIG = """\
defaults:
  labels: {env: prod}
targets:
  - name: web
    host: web.example
    labels: {team: infra}
  - api.example:8443
"""


def test_each_target_is_one_group_with_its_labels() -> None:
    config = parse_config(CONFIG, "<test>")
    assert target_groups(expand(config)) == [
        {"targets": ["web"], "labels": {"env": "prod", "team": "infra"}},
        {"targets": ["api.example:8443"], "labels": {"env": "prod"}},
    ]


def test_no_targets_is_an_empty_list() -> None:
    assert target_groups(()) == []


async def test_handler_answers_json_of_the_config_in_force() -> None:
    targets = [target("a", labels=(("team", "x"),))]
    app = web.Application()
    app.router.add_get("/api/v1/sd", sd_handler(lambda: targets))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/api/v1/sd")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert json.loads(await response.text()) == [{"targets": ["a"], "labels": {"team": "x"}}]
        targets.append(target("b"))  # asked again at each request: a reload shows at once
        response = await client.get("/api/v1/sd")
        assert [g["targets"] for g in json.loads(await response.text())] == [["a"], ["b"]]
