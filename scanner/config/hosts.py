"""Host names, addresses and host:port as the endpoints file writes them, checked where they are written."""

from __future__ import annotations

import ipaddress
import re

import yaml

from scanner.config.nodes import TAG_STR, InvalidNode, bool_value, describe, quote, str_value
from scanner.hostport import parse_port, split_host_port

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")


def host_port(text: str, node: yaml.Node) -> tuple[str, int | None]:
    """Split a short-form target `host`, `host:port`, `[v6]:port` or bare IPv6 into host and port."""
    _check_not_url(text, node)
    try:
        host, port_text = split_host_port(text)
    except ValueError as exc:
        raise InvalidNode(node, f"bad target {quote(text)}: {exc}") from None
    if text.startswith("[") and (":" not in host or not is_ip(host)):
        raise InvalidNode(node, f"bad target {quote(text)}: brackets are only for IPv6 addresses")
    host = host_name(host, node, allow_brackets=False)
    if port_text is None:
        return host, None
    try:
        return host, parse_port(port_text)
    except ValueError:
        raise InvalidNode(
            node, f"target {quote(text)}: port must be an integer 1-65535, got {quote(port_text)}"
        ) from None


def host_name(text: str, node: yaml.Node, allow_brackets: bool = True) -> str:
    """Validate a host name or IP address (brackets around IPv6 are dropped) and return it."""
    _check_not_url(text, node)
    if allow_brackets and text.startswith("[") and text.endswith("]") and ":" in text and is_ip(text[1:-1]):
        text = text[1:-1]
    if not text:
        raise InvalidNode(node, "host must not be empty")
    if is_ip(text):
        return str(ipaddress.ip_address(text))  # one spelling per address, for per-address limits and labels
    if ":" in text:
        if text.count(":") == 1:
            raise InvalidNode(node, f"host {quote(text)} must not include a port; use the port key")
        raise InvalidNode(node, f"host {quote(text)} is not a valid IPv6 address")
    check_hostname(text, node, "host")
    return text


def _check_not_url(text: str, node: yaml.Node) -> None:
    """Reject URLs and paths where a bare host is expected."""
    if "://" in text or "/" in text:
        raise InvalidNode(node, f"host must be a name or address, not a URL ({quote(text)})")


def check_hostname(text: str, node: yaml.Node, what: str) -> None:
    """Reject strings that cannot be a DNS name."""
    if not text.isascii():
        raise InvalidNode(node, f"{what} {quote(text)} must be ASCII: write internationalized names as xn--...")
    if any(char.isspace() or not char.isprintable() for char in text):
        raise InvalidNode(node, f"{what} {quote(text)} must not contain spaces or control characters")
    if not _HOSTNAME_RE.fullmatch(text) or len(text.removesuffix(".")) > 253:
        raise InvalidNode(node, f"{what} {quote(text)} is not a valid host name")
    for label in text.removesuffix(".").split("."):
        problem = ""
        if len(label) > 63:
            problem = "is longer than 63 characters"
        elif label.startswith("-") or label.endswith("-"):
            problem = 'starts or ends with "-"'
        if problem:
            raise InvalidNode(node, f"{what} {quote(text)} is not a valid host name: label {quote(label)} {problem}")


def is_ip(text: str) -> bool:
    """Tell whether `text` is an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def sni_value(node: yaml.Node) -> str | bool:
    """Parse `sni`: a DNS name, or false for none."""
    if bool_value(node) is False:
        return False
    if not isinstance(node, yaml.ScalarNode) or node.tag != TAG_STR:
        raise InvalidNode(node, f"sni: expected a server name or false, got {describe(node)}")
    if is_ip(node.value):
        raise InvalidNode(node, "sni: must be a DNS name, not an IP address (use sni: false to send none)")
    check_hostname(node.value, node, "sni")
    return str(node.value)


def https_proxy(node: yaml.Node) -> str:
    url = str_value(node, "https_proxy")
    match = re.fullmatch(r"http://([^/:@\s]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})/?", url)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidNode(node, f"https_proxy: expected http://host:port, got {quote(url)}")
    host = match.group(1)
    if host.startswith("["):
        if not is_ip(host[1:-1]):
            raise InvalidNode(node, f"https_proxy: expected http://host:port, got {quote(url)}")
    elif not is_ip(host):
        check_hostname(host, node, "https_proxy host")
    return url
