"""Pytest fixtures over the loopback test lab: servers (tests/lab/servers.py, bench/servers.py) and daemons."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.daemon import Daemons
from tests.lab.servers import LabCerts, LabStack, NginxLabFactory, make_lab_certs, require_nginx


@pytest.fixture(scope="session")
def tmp_certs(tmp_path_factory: pytest.TempPathFactory) -> LabCerts:
    """CA, server, self-signed, expired, wrong-host and client certificates, made once per session."""
    return make_lab_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def lab(tmp_certs: LabCerts) -> Iterator[LabStack]:
    """Start lab servers on demand (lab.tls_server, lab.peer, lab.nginx); all stop when the test ends."""
    with contextlib.closing(LabStack(tmp_certs)) as stack:
        yield stack


@pytest.fixture
def requires_nginx() -> None:
    """Skip without nginx, or fail when CI is set and nginx is missing."""
    require_nginx()


@pytest.fixture
def nginx_lab(requires_nginx: None, lab: LabStack) -> NginxLabFactory:
    """Start NginxLab instances (tmp_certs.server by default) that stop when the test ends."""
    return lab.nginx


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Daemons]:
    """Start `python -m scanner` daemons (state file and logs under tmp_path); all are stopped by pid at the end."""
    with contextlib.closing(Daemons(tmp_path)) as daemons:
        yield daemons
