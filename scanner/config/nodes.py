"""One way to read YAML nodes, for every config file the program reads: the hardened composer, the node helpers.

Every problem is an InvalidNode carrying its line; build_document turns it into one ConfigError `PATH:LINE: message`.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
import typing
from collections.abc import Callable, Mapping

import yaml

from scanner.errors import ConfigError
from scanner.protocols import ALL_PROTOCOLS, Protocol

MAX_ALIAS_NODES = 1_000_000  # nodes YAML aliases may add to the document (a "billion laughs" bound)
MAX_DURATION = 86400.0  # one day: timers past it are a mistake, and far past it overflow
NOT_UTF8 = "is not valid UTF-8 (surrogate code point)"
_KNOWN_PROTOCOLS = ", ".join(ALL_PROTOCOLS)

TAG_STR = "tag:yaml.org,2002:str"
TAG_INT = "tag:yaml.org,2002:int"
TAG_FLOAT = "tag:yaml.org,2002:float"
TAG_BOOL = "tag:yaml.org,2002:bool"
TAG_NULL = "tag:yaml.org,2002:null"
TAG_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {TAG_BOOL: "boolean", "tag:yaml.org,2002:timestamp": "timestamp", "tag:yaml.org,2002:binary": "binary"}

_DURATION_RE = re.compile(r"(-?)([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "use e.g. 500ms, 3s, 5m, 1h"
_UNQUOTED_IPV6_RE = re.compile(r"\s*-?\s*\[[0-9A-Fa-f:.%]*\]:")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

Pairs = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (key node, value node)
ProtocolLines = dict[Protocol, int]  # protocol -> line it was written on, in the order written
# The keys of each mapping read so far in the document being read, by id(node): aliases share nodes, so a merge
# chain is followed once, not once per reference to it.
_PAIRS_READ: contextvars.ContextVar[dict[int, Pairs]] = contextvars.ContextVar("_PAIRS_READ")
_T = typing.TypeVar("_T")


class InvalidNode(Exception):
    """A problem at a node (or line), raised inside the walker and turned into ConfigError with the path."""

    def __init__(self, where: yaml.Node | int, message: str) -> None:
        super().__init__(message)
        self.line = where if isinstance(where, int) else line_of(where)
        self.message = message


def build_document(name: str, root: yaml.Node | None, build: Callable[[yaml.Node | None], _T]) -> _T:
    """Run `build` over a composed document; an InvalidNode becomes ConfigError at `name`:line."""
    token = _PAIRS_READ.set({})
    try:
        return build(root)
    except InvalidNode as exc:
        raise ConfigError(name, exc.line, exc.message) from None
    finally:
        _PAIRS_READ.reset(token)


class _AliasBomb(Exception):
    """Aliases in the document add more than MAX_ALIAS_NODES nodes; raised at the alias that crosses the bound."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _Loader(yaml.SafeLoader):
    """PyYAML's safe composer, counting the nodes each alias brings in (as a walk of the tree would meet them)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.alias_nodes = 0
        self._open: list[str] = []  # anchors of the nodes still being composed
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                unfinished = {id(self.anchors[anchor]) for anchor in self._open if anchor in self.anchors}
                self.alias_nodes += _tree_size(node, self._sizes, unfinished)
                if self.alias_nodes > MAX_ALIAS_NODES:
                    raise _AliasBomb(event.start_mark.line + 1 if event.start_mark else 1)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()


class _SizeFrame:
    """One node on _tree_size's stack: the children left to visit, the count when it was entered."""

    __slots__ = ("children", "node", "start", "unsure")

    def __init__(self, node: yaml.Node, start: int) -> None:
        self.node = node
        self.start = start
        self.unsure = False  # it reaches an unfinished node or a cycle: its size may still grow, so is not kept
        if isinstance(node, yaml.SequenceNode):
            self.children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            self.children = [child for pair in node.value for child in pair]
        else:
            self.children = []


def _tree_size(root: yaml.Node, sizes: dict[int, int], unfinished: set[int]) -> int:
    """How many nodes a walk of `root` as a tree meets (a shared node once per path to it), up to MAX_ALIAS_NODES + 1.

    Iterative, and stops at the bound, so a "billion laughs" costs no more than the bound; sizes of finished
    subtrees are kept in `sizes`. A node still being composed, or met again below itself, counts once.
    """
    cap = MAX_ALIAS_NODES + 1
    if id(root) in sizes:
        return sizes[id(root)]
    stack = [_SizeFrame(root, 0)]
    stack[0].unsure = id(root) in unfinished
    on_stack = {id(root)}
    count = 1
    while stack:
        if count >= cap:
            return cap
        frame = stack[-1]
        if frame.children:
            child = frame.children.pop()
            if id(child) in sizes:
                count += sizes[id(child)]
            elif id(child) in on_stack or id(child) in unfinished:
                count += 1
                frame.unsure = True
            else:
                on_stack.add(id(child))
                stack.append(_SizeFrame(child, count))
                count += 1
            continue
        stack.pop()
        on_stack.discard(id(frame.node))
        if not frame.unsure:
            sizes[id(frame.node)] = count - frame.start
        elif stack:
            stack[-1].unsure = True
    return count


def compose_yaml(name: str, text: str) -> yaml.Node | None:
    """Parse `text` into a node tree, turning YAML errors into ConfigError at the problem's line (also for the
    web config): aliases bounded, and every PyYAML failure a message."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        return loader.get_single_node()
    except _AliasBomb as exc:
        message = f"YAML aliases expand the config past {MAX_ALIAS_NODES} nodes here (each alias repeats its anchor)"
        raise ConfigError(name, exc.line, message) from None
    except (ValueError, OverflowError):  # PyYAML's chr() on a \U escape past U+10FFFF
        line = loader.line + 1 if loader is not None else 1
        raise ConfigError(name, line, "invalid YAML: escape beyond U+10FFFF") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and not exc.context.startswith("while "):
            message = f"{exc.context}, {exc.problem}"
        source = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        if _UNQUOTED_IPV6_RE.match(source):
            message += ' (quote bracketed IPv6 addresses: "[::1]:8443")'
        raise ConfigError(name, line, f"invalid YAML: {message}") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(name, line, f"invalid YAML: unacceptable character #x{exc.character:04x}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(name, 1, f"invalid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(name, 1, "invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_mapping(
    node: yaml.Node,
    what: str,
    allowed: tuple[str, ...] | None = None,
    refused: Mapping[str, str] | None = None,
    *,
    number_keys: bool = False,
) -> Pairs:
    """Return a mapping's keys, refusing any other node, and keys not in `allowed` (None: any key).

    `refused` says why a key the format knows is not taken; `number_keys` reads integer keys as their text.
    """
    if not isinstance(node, yaml.MappingNode):
        keys = f" with {', '.join(allowed)}" if allowed else ""
        raise InvalidNode(node, f"{what}: expected a mapping{keys}, got {describe(node)}")
    pairs = read_pairs(node, what, number_keys=number_keys)
    for key, (key_node, _) in pairs.items():
        if refused and key in refused:
            raise InvalidNode(key_node, refused[key])
        if allowed is not None and key not in allowed:
            raise InvalidNode(key_node, f"unknown key {quote(key)} {_in(what)} (allowed: {', '.join(allowed)})")
    return pairs


def _in(what: str) -> str:
    """Say where a key is: "at top level" or "in <section>"."""
    return "at top level" if what == "top level" else f"in {what}"


class _MergeFrame:
    """One mapping on read_pairs' stack: its pairs left to read, its own keys, the keys merged into it so far."""

    __slots__ = ("explicit", "items", "merged", "node", "sources")

    def __init__(self, node: yaml.MappingNode) -> None:
        self.node = node
        self.items: typing.Iterator[tuple[yaml.Node, yaml.Node]] = iter(node.value)
        self.sources: typing.Iterator[yaml.Node] = iter(())  # of the `<<` key being read
        self.explicit: Pairs = {}
        self.merged: Pairs = {}


def read_pairs(node: yaml.MappingNode, what: str, *, number_keys: bool = False) -> Pairs:
    """Return key -> (key node, value node) in file order, applying `<<` merges and rejecting duplicate keys.

    Merges are followed with a stack of our own, not by recursion, so a long chain of them is no RecursionError.
    """
    done = _PAIRS_READ.get({})
    if id(node) in done:
        return done[id(node)]
    key_tags = (TAG_STR, TAG_INT) if number_keys else (TAG_STR,)
    stack = [_MergeFrame(node)]
    on_stack = {id(node)}
    while True:
        frame = stack[-1]
        source = next(frame.sources, None)
        if source is not None:
            if not isinstance(source, yaml.MappingNode):
                raise InvalidNode(source, f"<<: expected a mapping to merge, got {describe(source)}")
            if id(source) in on_stack:
                raise InvalidNode(source, f"{what}: recursive merge")
            if id(source) in done:
                for key, pair in done[id(source)].items():
                    frame.merged.setdefault(key, pair)
            else:
                stack.append(_MergeFrame(source))
                on_stack.add(id(source))
            continue
        item = next(frame.items, None)
        if item is None:
            stack.pop()
            on_stack.discard(id(frame.node))
            pairs = {key: pair for key, pair in frame.merged.items() if key not in frame.explicit} | frame.explicit
            pairs = dict(sorted(pairs.items(), key=lambda entry: entry[1][0].start_mark.index))
            done[id(frame.node)] = pairs
            if not stack:
                return pairs
            for key, pair in pairs.items():
                stack[-1].merged.setdefault(key, pair)
            continue
        key_node, value_node = item
        if key_node.tag == TAG_MERGE:
            frame.sources = iter(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in key_tags:
            raise InvalidNode(key_node, f"{what}: keys must be strings, got {describe(key_node)}")
        key = str(key_node.value)
        if key in frame.explicit:
            first = line_of(frame.explicit[key][0])
            raise InvalidNode(key_node, f"duplicate key {quote(key)} {_in(what)} (first on line {first})")
        frame.explicit[key] = (key_node, value_node)


def parse_duration(text: str) -> float:
    """Return the seconds in a duration like 500ms, 1.5s, 5m or 1h; raise ValueError if malformed or not > 0."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad duration {quote(text)}: {_DURATION_HINT}")
    sign, number, unit = match.groups()
    return _positive_seconds(float(sign + number) * _DURATION_UNITS[unit], quote(text))


def _positive_seconds(seconds: float, shown: str) -> float:
    """Return `seconds` if finite and > 0, else raise ValueError naming the value as `shown`."""
    if math.isnan(seconds):
        raise ValueError(f"bad duration {shown}: {_DURATION_HINT}")
    if seconds <= 0:
        raise ValueError(f"bad duration {shown}: must be greater than 0")
    if math.isinf(seconds):
        raise ValueError(f"bad duration {shown}: too large")
    if seconds > MAX_DURATION:
        raise ValueError(f"bad duration {shown}: must be at most 1 day (24h)")
    return seconds


def duration_value(node: yaml.Node, key: str) -> float:
    """Parse a duration given as text with a unit, or as a bare number of seconds."""
    if isinstance(node, yaml.ScalarNode) and sexagesimal(node):
        value = base_60(node)
        seconds = f"the base-60 number {value}; write {value}s" if value else "a base-60 number; write e.g. 90s"
        raise InvalidNode(node, f"{key}: {short(node.value)} is read by YAML 1.1 as {seconds}")
    try:
        if isinstance(node, yaml.ScalarNode) and node.tag == TAG_STR:
            return parse_duration(node.value)
        number = number_value(node)
        if number is not None:
            return _positive_seconds(number, short(node.value))
    except ValueError as exc:
        raise InvalidNode(node, f"{key}: {exc}") from None
    raise InvalidNode(node, f"{key}: expected a duration such as 500ms, 3s, 5m, 1h, got {describe(node)}")


def protocol_lines(node: yaml.Node, key: str) -> ProtocolLines:
    """Parse a list of protocol names, rejecting unknown and repeated ones."""
    if not isinstance(node, yaml.SequenceNode):
        raise InvalidNode(node, f"{key}: expected a list of protocols, got {describe(node)}")
    protocols: ProtocolLines = {}
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or item.tag != TAG_STR:
            raise InvalidNode(item, f"{key}: expected a protocol name, got {describe(item)}")
        if item.value not in Protocol.__members__.values():
            raise InvalidNode(item, f"unknown protocol {quote(item.value)} (known: {_KNOWN_PROTOCOLS})")
        protocol = Protocol(item.value)
        if protocol in protocols:
            raise InvalidNode(item, f"{key}: duplicate protocol {protocol} (first on line {protocols[protocol]})")
        protocols[protocol] = line_of(item)
    return protocols


def str_list(node: yaml.Node, key: str) -> list[tuple[yaml.Node, str]]:
    """A list of strings, each with its node (for its line); raise naming `key` for anything else."""
    if not isinstance(node, yaml.SequenceNode):
        raise InvalidNode(node, f"{key}: expected a list, got {describe(node)}")
    return [(item, str_value(item, key)) for item in node.value]


def nonempty_items(node: yaml.Node, message: str) -> list[yaml.Node]:
    """The items of a non-empty list; raise `message` at the node for anything else."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise InvalidNode(node, message)
    return list(node.value)


def str_value(node: yaml.Node, key: str) -> str:
    """Return a string scalar's text, or raise naming `key`."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != TAG_STR:
        raise InvalidNode(node, f"{key}: expected a string, got {describe(node)}{quote_hint(node)}")
    if not is_utf8(node.value):
        raise InvalidNode(node, f"{key}: {quote(node.value)} {NOT_UTF8}")
    return str(node.value)


def is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (YAML's \\ud800 escapes give lone surrogates, which do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def quote_hint(node: yaml.Node) -> str:
    """Suggest quoting a scalar that YAML read as a number, boolean or date instead of text."""
    return " (quote it)" if isinstance(node, yaml.ScalarNode) and node.tag != TAG_NULL else ""


def int_value(node: yaml.Node) -> int | None:
    """Return an integer scalar's value (not a boolean, not a quoted number, not base 60), else None."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != TAG_INT or sexagesimal(node):
        return None
    try:
        return yaml.constructor.SafeConstructor().construct_yaml_int(node)
    except (ValueError, IndexError):  # an explicit !!int tag on text that is not a number
        return None


def number_value(node: yaml.Node) -> float | None:
    """Return an integer or float scalar's value (not base 60) as a float, else None."""
    if isinstance(node, yaml.ScalarNode) and node.tag == TAG_FLOAT and not sexagesimal(node):
        try:
            return yaml.constructor.SafeConstructor().construct_yaml_float(node)
        except (ValueError, IndexError):
            return None
    value = int_value(node)
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def sexagesimal(node: yaml.Node) -> bool:
    """Whether YAML 1.1 reads this scalar as a base-60 number (`1:30` is 90), which nobody means."""
    return isinstance(node, yaml.ScalarNode) and node.tag in (TAG_INT, TAG_FLOAT) and ":" in node.value


def base_60(node: yaml.ScalarNode) -> str:
    """The value YAML 1.1 gives a base-60 scalar, as text ("" when too long to be worth working out)."""
    if len(node.value) > 40:
        return ""
    constructor = yaml.constructor.SafeConstructor()
    try:
        value = constructor.construct_yaml_int(node) if node.tag == TAG_INT else constructor.construct_yaml_float(node)
    except (ValueError, IndexError):
        return ""
    return short(f"{value:g}" if isinstance(value, float) else str(value))


def bool_value(node: yaml.Node) -> bool | None:
    """Return a boolean scalar's value, else None."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != TAG_BOOL:
        return None
    return yaml.constructor.SafeConstructor.bool_values.get(str(node.value).lower())


def bool_flag(node: yaml.Node, key: str) -> bool:
    """Return a boolean scalar's value, or raise naming `key`."""
    flag = bool_value(node)
    if flag is None:
        raise InvalidNode(node, f"{key}: expected true or false, got {describe(node)}")
    return flag


def is_null(node: yaml.Node) -> bool:
    """Whether the node is YAML null (empty, ~ or null)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == TAG_NULL


def line_of(node: yaml.Node) -> int:
    """Return the 1-based line where `node` starts."""
    return int(node.start_mark.line) + 1


def describe(node: yaml.Node) -> str:
    """Describe a node for `got ...` in messages: a quoted string, a number, or the kind of value."""
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if node.tag == TAG_STR:
        return quote(node.value)
    if isinstance(node, yaml.ScalarNode) and sexagesimal(node):
        value = base_60(node)
        return f"{short(node.value)} (YAML 1.1 reads it in base 60{': ' + value if value else ''})"
    if node.tag in (TAG_INT, TAG_FLOAT) and number_value(node) is not None:
        return short(str(node.value))
    if node.tag == TAG_NULL:
        return "null"
    kind = _KINDS.get(node.tag, "a value tagged " + node.tag.replace("tag:yaml.org,2002:", "!!"))
    return f"{short(kind)} {short(str(node.value))}"


def quote(text: str) -> str:
    """Quote user text for a message, escaping control characters and shortening long values."""
    if len(text) > 60:
        text = text[:57] + "..."
    return _escape_surrogates(json.dumps(text, ensure_ascii=False))


def short(text: str) -> str:
    """Shorten unquoted user text (a number, a tag) for a message."""
    return _escape_surrogates(text if len(text) <= 60 else text[:57] + "...")


def _escape_surrogates(text: str) -> str:
    """Write lone surrogates as \\uXXXX, so that a message always encodes (as the YAML escape that made them)."""
    return _SURROGATE_RE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
