"""host:port, one way: IPv6 in brackets both ways, ports checked."""

from __future__ import annotations

import pytest

from scanner.config import parse_config
from scanner.hostport import join_host_port, parse_host_port, parse_port, split_host_port


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.org", "example.org", None),
        ("example.org:8443", "example.org", "8443"),
        ("127.0.0.1:443", "127.0.0.1", "443"),
        ("[::1]:8443", "::1", "8443"),
        ("[::1]", "::1", None),
        ("::1", "::1", None),
        ("2001:db8::1", "2001:db8::1", None),
        (":9913", "", "9913"),
    ],
)
def test_split(text: str, host: str, port: str | None) -> None:
    assert split_host_port(text) == (host, port)


def test_unclosed_bracket_is_refused() -> None:
    with pytest.raises(ValueError, match=r'write bracketed IPv6 addresses as "\[::1\]:8443"'):
        split_host_port("[::1:8443")


@pytest.mark.parametrize(("host", "port", "text"), [("::1", 443, "[::1]:443"), ("a.example", 80, "a.example:80")])
def test_join_round_trips(host: str, port: int, text: str) -> None:
    assert join_host_port(host, port) == text
    assert parse_host_port(text) == (host, port)


@pytest.mark.parametrize("text", ["0", "65536", "-1", "44x", "", "123456"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(ValueError):
        parse_port(text)


def test_default_port_and_bad_port_message() -> None:
    assert parse_host_port("example.org", default_port=443) == ("example.org", 443)
    with pytest.raises(ValueError, match=r"bad port in 'example\.org:0'"):
        parse_host_port("example.org:0")


def test_an_unnamed_target_is_named_host_port() -> None:
    """The name joins host and port (IPv6 in brackets); a pinned address changes where it connects, not its name."""
    target = parse_config(
        "targets:\n  - {host: '2001:db8::1', port: 8443, address: '2001:db8::2'}\n", "<test>"
    ).targets[0]
    assert (target.name, target.host, target.port, target.address) == (
        "[2001:db8::1]:8443",
        "2001:db8::1",
        8443,
        "2001:db8::2",
    )
