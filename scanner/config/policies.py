"""Policies as the endpoints file writes them: protocol lists, `expect:` and its dated deadlines."""

from __future__ import annotations

import datetime

import yaml

from scanner.config.model import DatedPolicy, Expectation
from scanner.config.nodes import (
    InvalidNode,
    ProtocolLines,
    describe,
    protocol_lines,
    read_mapping,
    read_pairs,
    str_value,
)

_EXPECT_KEYS = ("accept", "reject", "http_ok")
_DATED_KEYS = (*_EXPECT_KEYS, "from", "name")


_ExpectGiven = tuple[dict[str, tuple[yaml.Node, ProtocolLines]], tuple[DatedPolicy, ...]]


def expect_policies(node: yaml.Node) -> _ExpectGiven:
    """`expect:` as one policy (a mapping), or a list of them where those with `from: DATE` are deadlines."""
    if isinstance(node, yaml.SequenceNode):
        base: dict[str, tuple[yaml.Node, ProtocolLines]] = {}
        dated: list[DatedPolicy] = []
        for item in node.value:
            if not isinstance(item, yaml.MappingNode):
                raise InvalidNode(
                    item,
                    "expect: each policy in the list must be a mapping (accept, reject, http_ok, from, name), "
                    f"got {describe(item)}",
                )
            if "from" in read_pairs(item, "expect"):
                dated.append(_dated_policy(item))
            else:
                base.update(_policy(item))
        names = [d.name for d in dated]
        if len(set(names)) != len(names):
            raise InvalidNode(
                node, f"expect: two dated policies are named the same ({', '.join(names)}); give each a name"
            )
        return base, tuple(dated)
    return _policy(node), ()


def _policy(node: yaml.Node, keys: tuple[str, ...] = _EXPECT_KEYS) -> dict[str, tuple[yaml.Node, ProtocolLines]]:
    if not isinstance(node, yaml.MappingNode):
        raise InvalidNode(node, f"expect: expected a mapping with accept, reject, http_ok, got {describe(node)}")
    return {
        name: (name_node, protocol_lines(value_node, f"expect.{name}"))
        for name, (name_node, value_node) in read_mapping(node, "expect", keys).items()
        if name in _EXPECT_KEYS
    }


def _dated_policy(node: yaml.MappingNode) -> DatedPolicy:
    """`{reject: [...], from: 2018-06-30, name: pypi-2018}`."""
    pairs = read_mapping(node, "expect", _DATED_KEYS)
    expect = _policy(node, _DATED_KEYS)
    check_expect(expect, set(expect))
    from_node = pairs["from"][1]
    text = str(from_node.value) if isinstance(from_node, yaml.ScalarNode) else ""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise InvalidNode(
            from_node, f"expect.from: expected an ISO 8601 date such as 2018-06-30, got {describe(from_node)}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    name = str_value(pairs["name"][1], "expect.name") if "name" in pairs else f"from {text}"
    if "name" in pairs and not name.strip():
        raise InvalidNode(pairs["name"][1], "expect.name: expected a non-empty name")
    policy = Expectation(**{key: frozenset(protocols) for key, (_, protocols) in expect.items()})
    return DatedPolicy(name=name, expect=policy, start=when.timestamp())


def check_expect(expect: dict[str, tuple[yaml.Node, ProtocolLines]], own: set[str]) -> None:
    """Reject a protocol both expected to work and to be rejected; blame the line written at the level `own`."""
    reject = expect.get("reject", (None, {}))[1]
    for other in ("accept", "http_ok"):
        protocols = expect.get(other, (None, {}))[1]
        for protocol, line in protocols.items():
            if protocol in reject:
                lines = [n for key, n in ((other, line), ("reject", reject[protocol])) if key in own]
                where = max(lines or [line, reject[protocol]])
                raise InvalidNode(
                    where,
                    f"{protocol} is in both expect.{other} (line {line}) and expect.reject (line {reject[protocol]})",
                )
