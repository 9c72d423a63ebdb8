"""host:port read and written one way, IPv6 in brackets (Go's net.SplitHostPort / net.JoinHostPort)."""

from __future__ import annotations

import re

_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?")


def bracket(host: str) -> str:
    """The host as it goes before `:port` or into a Host header: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


def join_host_port(host: str, port: int) -> str:
    """`host:port`, or `[v6]:port`."""
    return f"{bracket(host)}:{port}"


def split_host_port(text: str) -> tuple[str, str | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (host without brackets, port text or None).

    Raises ValueError for an unclosed bracket; what host and port may be is for the caller to judge.
    """
    if text.startswith("["):
        match = _BRACKETED.fullmatch(text)
        if match is None:
            raise ValueError('write bracketed IPv6 addresses as "[::1]:8443"')
        return match.group(1), match.group(2)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, None


def parse_port(text: str) -> int:
    """A port number 1-65535 written in decimal digits; ValueError otherwise."""
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be an integer 1-65535, got {text!r}")
    return int(text)


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """Split and check a user's `host[:port]` (as `/probe?target=` takes it): (host, port or `default_port`)."""
    host, port = split_host_port(text)
    if port is None:
        return host, default_port
    try:
        return host, parse_port(port)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
