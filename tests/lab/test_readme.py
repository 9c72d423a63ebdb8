"""The README tells the truth: every flag and metric family it should name, and its web config recipe works."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scanner.cli import build_parser
from scanner.output.metrics import TARGET_FAMILIES
from scanner.web.config import load_web_config
from tests.lab.daemon import REPO, require_binary
from tests.lab.servers import LabCerts
from tests.lab.test_deploy import assert_credentials_match, run

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_every_flag_and_target_family_is_documented() -> None:
    flags = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    missing = [flag for flag in sorted(flags - {"--help"}) if f"`{flag}" not in README]
    assert missing == [], missing
    families = [f.name for f in TARGET_FAMILIES if f"`{f.name}`" not in README]
    assert families == [], families


def test_web_config_example_loads_and_its_hash_is_for_the_documented_password(
    tmp_certs: LabCerts, tmp_path: Path
) -> None:
    text = section("Securing the endpoint")
    example = next(b for b in blocks(text, "yaml") if b.startswith("tls_server_config:\n  cert_file: /"))
    document = yaml.safe_load(example)
    tls = document["tls_server_config"]
    example = example.replace(tls["cert_file"], str(tmp_certs.server.cert))
    example = example.replace(tls["key_file"], str(tmp_certs.server.key))
    path = tmp_path / "web.yml"
    path.write_text(example)
    config = load_web_config(str(path))
    password = re.search(r"the hash is for the password `([^`]+)`", text)
    assert password is not None
    assert_credentials_match(config, next(iter(document["basic_auth_users"])), password.group(1))


def test_prometheus_scrape_example_is_valid(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    example = next(b for b in blocks(section("Securing the endpoint"), "yaml") if b.startswith("scrape_configs:"))
    (tmp_path / "prometheus.yml").write_text(example)
    result = run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    job = yaml.safe_load(example)["scrape_configs"][0]
    assert job["scheme"] == "https" and "basic_auth" in job and "tls_config" in job
