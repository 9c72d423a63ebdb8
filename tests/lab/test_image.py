"""The container image, built from deploy/Dockerfile with podman and run: `--once` against a lab server, and the
daemon passing the image's HEALTHCHECK.

No base image can be pulled here, so the Dockerfile's PYTHON_IMAGE is a base made on this machine: a Debian bookworm
root filesystem from debootstrap (the mirror apt uses) with python3 and venv, trusting the CA certificates this machine
trusts (pip behind an intercepting proxy needs them). Its tarball is cached in .cache/image/ (gitignored) and the
imported base in podman's store, so only the first run pays for debootstrap (~1.5 min); the image build itself is
~45 s. Where containers cannot run, the tests skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import wait_for
from scanner.protocols import Protocol as P
from tests.lab.daemon import REPO
from tests.lab.servers import LabStack, missing

BASE = "localhost/tls-scanner-base:bookworm"
IMAGE = "localhost/tls-scanner:lab"
CACHE = REPO / ".cache" / "image"
ROOTFS_TAR = CACHE / "bookworm-rootfs.tar"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# crun refuses hosts whose cgroups are in hybrid mode (as here); runc runs there.
RUNTIME = ["--runtime", "runc"]
# podman raises RLIMIT_NOFILE and RLIMIT_NPROC by default, which a host without CAP_SYS_RESOURCE refuses.
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with this host's runtime, output captured."""
    result = subprocess.run(
        ["podman", *RUNTIME, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), for debootstrap."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and words[1].rstrip("/").endswith("/debian"):
                    return words[1]
                if words[:1] == ["deb"] and any(w.rstrip("/").endswith("/debian") for w in words[1:2]):
                    return words[1]
    return "http://deb.debian.org/debian"


def make_rootfs_tar() -> None:
    """debootstrap a minimal bookworm with python3 and venv; this machine's CA bundle in it; cached as a tarball."""
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    include = "--include=python3,python3-venv,python-is-python3,ca-certificates"
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", include, "bookworm", str(rootfs), debian_mirror()],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"debootstrap could not make a root filesystem: {result.stdout[-500:]}{result.stderr[-500:]}")
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        leftover.unlink()
    partial = ROOTFS_TAR.with_suffix(".partial")
    subprocess.run(["tar", "-cf", str(partial), "--numeric-owner", "-C", str(rootfs), "."], check=True, timeout=300)
    partial.replace(ROOTFS_TAR)
    shutil.rmtree(rootfs)


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from deploy/Dockerfile on a locally made base; skips where containers cannot run."""
    for tool, package in (("podman", "podman"), ("runc", "runc"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            missing(tool, f"{tool} not installed (Debian package {package}; tests/run.sh installs it)")
    if podman("image", "exists", BASE, check=False).returncode != 0:
        if not ROOTFS_TAR.is_file():
            make_rootfs_tar()
        env = "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"  # pip's own bundle lacks this machine's CAs
        podman("import", "--change", env, str(ROOTFS_TAR), BASE, timeout=300)
    runs = podman("run", "--rm", *LIMITS, "--network", "none", BASE, "true", check=False)
    if runs.returncode != 0:
        pytest.skip(f"containers cannot run on this machine: {runs.stderr.strip()[-500:]}")
    podman(
        "build",
        *LIMITS,
        "--network=host",  # pip fetches the pinned wheels from the package index
        "--format=docker",  # keeps HEALTHCHECK, which the OCI format has no field for
        f"--build-arg=PYTHON_IMAGE={BASE}",
        "--file=deploy/Dockerfile",
        f"--tag={IMAGE}",
        ".",
        timeout=900,
    )
    return IMAGE


@contextlib.contextmanager
def container(image: str, *args: str) -> Iterator[str]:
    """A detached container of `image` (podman run -d ARGS), removed at the end: its name."""
    name = f"tls-scanner-lab-{uuid.uuid4().hex[:12]}"
    podman("run", "-d", "--name", name, *LIMITS, *args, image)
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "15", name, check=False)


def test_image_once_scans_a_lab_server(image: str, lab: LabStack) -> None:
    """`docker run IMAGE --once HOST:PORT --format json`, on the host's network to reach the lab server."""
    server = lab.tls_server({P.TLSv1_2, P.TLSv1_3})
    result = podman(
        "run", "--rm", *LIMITS, "--network=host", image, "--once", f"127.0.0.1:{server.port}", "--format", "json",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (target,) = json.loads(result.stdout)["targets"]
    assert target["name"] == f"127.0.0.1:{server.port}"
    accepted = {p for p, state in target["protocols"].items() if state == "accepted"}
    assert accepted == {"TLSv1.2", "TLSv1.3"}


def test_image_daemon_passes_its_healthcheck_read_only_and_stops_cleanly(image: str, tmp_path: Path) -> None:
    """The image's CMD (the daemon) with a read-only root filesystem, its own network namespace and a config of one
    loopback target mounted over the default: HEALTHCHECK passes, /-/ready answers, SIGTERM exits 0."""
    config = tmp_path / "endpoints.yaml"
    config.write_text("defaults: {interval: 1h, timeout: 1s}\ntargets:\n  - 127.0.0.1:1\n")
    config.chmod(0o644)
    mount = f"{config}:/etc/tls-scanner/endpoints.yaml:ro"
    args = ["--read-only", "--network=none", "--health-interval=disable", "--volume", mount]
    with container(image, *args) as name:

        def healthy() -> bool:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                raise AssertionError(f"the container is {state}:\n{podman('logs', name).stderr[-3000:]}")
            return podman("healthcheck", "run", name, check=False).returncode == 0

        wait_for(healthy, 30, interval=0.5, what="the image's HEALTHCHECK to pass")
        ready = "import urllib.request as r; print(r.urlopen('http://127.0.0.1:9913/-/ready', timeout=4).status)"
        assert podman("exec", name, "python", "-c", ready).stdout.strip() == "200"
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", name, "test", "-f", "/var/lib/tls-scanner/tls-scanner.db").returncode == 0
        podman("stop", "--time", "15", name)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        logs = podman("logs", name)
        assert '"msg": "stopped"' in logs.stdout + logs.stderr
