"""A private DNS server for the tests: dnsmasq on 127.0.0.1 answering only from a hosts file, stopped by pid.

dnsmasq runs with no upstream servers (`--no-resolv`, no `--server`), no /etc/hosts, and `--local` for the test
zones, so no query it receives ever leaves the machine. Point the scanner at it with the config's `resolver:` key.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self

import dns.exception
import dns.resolver

from bench.servers import Managed, free_ports, stop_process, wait_for
from tests.lab.servers import missing

DNSMASQ_MISSING_REASON = "dnsmasq not installed (Debian package dnsmasq-base; tests/run.sh installs it)"
# Names under these zones are answered from the hosts file or NXDOMAIN, never forwarded.
LOCAL_ZONES = ("lab.test", "test", "invalid")


def dnsmasq_binary() -> str | None:
    """The dnsmasq binary: on PATH, or Debian's /usr/sbin/dnsmasq (not on a normal user's PATH)."""
    found = shutil.which("dnsmasq")
    if found is not None:
        return found
    debian = Path("/usr/sbin/dnsmasq")
    return str(debian) if os.access(debian, os.X_OK) else None


def require_dnsmasq() -> str:
    """Return the dnsmasq path; skip the calling test without it, or fail when CI is set."""
    binary = dnsmasq_binary()
    if binary is not None:
        return binary
    missing("dnsmasq", DNSMASQ_MISSING_REASON)


Records = Mapping[str, Sequence[str]]  # name -> its addresses (A and AAAA), in answer order


class DnsLab(Managed):
    """dnsmasq serving `records` on 127.0.0.1:port; `set()` rewrites them and SIGHUPs it (by pid)."""

    def __init__(self, directory: Path, records: Records, binary: str | None = None, extra: Sequence[str] = ()) -> None:
        self.extra = tuple(extra)  # more dnsmasq options, e.g. --host-record=NAME,ADDRESS
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hosts = self.directory / "dns-hosts"
        self.log = self.directory / "dnsmasq.log"
        self.binary = binary or require_dnsmasq()
        self.records: dict[str, list[str]] = {name: list(addresses) for name, addresses in records.items()}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """`127.0.0.1:PORT`, as the config's resolver.nameservers wants it."""
        return f"127.0.0.1:{self.port}"

    def resolver_config(self, timeout: str = "2s") -> dict[str, Any]:
        """The config's `resolver:` mapping pointing at this server."""
        return {"nameservers": [self.nameserver], "timeout": timeout}

    def _write_hosts(self) -> None:
        lines = [f"{address} {name}" for name, addresses in self.records.items() for address in addresses]
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.hosts)

    def _args(self) -> list[str]:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        return [
            self.binary,
            "--no-daemon",
            "--keep-in-foreground",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--conf-file=/dev/null",
            f"--addn-hosts={self.hosts}",
            # Stay this user: as root dnsmasq would drop to nobody and fail to re-read the hosts file on SIGHUP.
            f"--user={user}",
            f"--group={group}",
            "--log-queries",
            f"--log-facility={self.log}",
            *(f"--local=/{zone}/" for zone in LOCAL_ZONES),
            *self.extra,
        ]

    def query(self, name: str, kind: str, lifetime: float = 1.0) -> list[str]:
        """Ask this server directly (no cache): the addresses, [] for NXDOMAIN/no data; raise on failure."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = lifetime
        try:
            return [rdata.address for rdata in resolver.resolve(name, kind, search=False)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []

    def answers(self, name: str, lifetime: float = 1.0) -> list[str]:
        """A then AAAA answers for name (dnsmasq rotates the order of several records)."""
        return self.query(name, "A", lifetime) + self.query(name, "AAAA", lifetime)

    def _serving(self, records: Records) -> bool:
        try:
            return all(sorted(self.answers(n, 0.2)) == sorted(a) for n, a in records.items())
        except dns.exception.DNSException:
            return False

    def _up_or_exited(self, process: subprocess.Popen[bytes]) -> bool:
        """Tell whether dnsmasq answers with the records, or has exited."""
        return process.poll() is not None or self._serving(self.records)

    def start(self, timeout: float = 10.0) -> Self:
        """Write the hosts file, start dnsmasq and wait until it answers with the records."""
        self._write_hosts()
        for _ in range(3):
            self.port = free_ports(1)[0]
            self.log.write_bytes(b"")
            stderr = self.directory / "dnsmasq.stderr"
            with stderr.open("wb") as out:
                self.process = subprocess.Popen(
                    self._args(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
            process = self.process
            try:
                wait_for(partial(self._up_or_exited, process), timeout, interval=0.05, what="dnsmasq to answer")
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"dnsmasq did not answer within {timeout}s:\n{stderr.read_text()}") from None
            if process.poll() is None:
                return self
            text = stderr.read_text(errors="replace")
            self.process = None
            if "in use" not in text:
                raise RuntimeError(f"dnsmasq exited:\n{text}")
        raise RuntimeError("dnsmasq: no free port after 3 tries")

    def set(self, records: Records, timeout: float = 5.0) -> None:
        """Replace the records, SIGHUP dnsmasq (re-reads the hosts file, clears its cache), wait until served."""
        if self.process is None:
            raise RuntimeError("dnsmasq is not running")
        gone = [name for name in self.records if name not in records]
        self.records = {name: list(addresses) for name, addresses in records.items()}
        self._write_hosts()
        os.kill(self.process.pid, signal.SIGHUP)
        expected = {**{name: [] for name in gone}, **self.records}
        wait_for(lambda: self._serving(expected), timeout, interval=0.05, what="dnsmasq to serve the new records")

    def queries(self) -> list[str]:
        """The names queried so far (from dnsmasq's --log-queries log)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        names = []
        for line in text.splitlines():
            # "dnsmasq[PID]: query[A] name.lab.test from 127.0.0.1"
            if "query[" in line:
                names.append(line.split("query[", 1)[1].split()[1])
        return names

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        stop_process(process, 5)


@contextlib.contextmanager
def dns_lab(directory: Path, records: Records) -> Iterator[DnsLab]:
    """Run a DnsLab for the duration of the block (skips the test without dnsmasq; fails in CI)."""
    with DnsLab(directory, records) as server:
        yield server
