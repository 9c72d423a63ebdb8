"""Fuzzing the config loader: whatever the text, load_config/parse_config return a Config or raise ConfigError, and
what they accept can be swept, rendered and exported (names and label values are UTF-8, hosts IDNA-encodable,
durations within a day). Bounded to a few seconds; no sslyze import."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.config import MAX_DURATION, Config, is_ip, load_config, parse_config
from scanner.errors import ConfigError
from scanner.output.metrics import INTERVAL, sample
from scanner.targets import expand

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Raw(str):
    """YAML source written as is (a plain scalar, an alias, a tag), not quoted."""


# Scalars YAML 1.1 reads in surprising ways, and fragments that exercise the loader's own limits.
RAW_SCALARS = [
    "1:30", "1:30.5", "7:23", ".nan", ".NaN", ".inf", "-.inf", "1.0e+400", "9" * 400, "0x1F", "017", "0b101",
    "1_000", "~", "null", "yes", "no", "on", "off", "2001-01-01", "!!int _", "!!int ''", "!!float ''", "!!float .",
    "!!int 1:x", "!!bool maybe", "!!binary aGk=", "!foo bar", "*undefined", '"\\ud800"', '"\\udfff x"',
    '"\\ud83d\\ude00"', '"\\UFFFFFFFF"', '"\\U00110000"', '"\\x00"', "-1s", "1.5h", "25h", "0s", "1e-9",
    "10000000h", "'1:30'", "|\n  x", "[", "{", "&a", "<<",
]  # fmt: skip

HOSTS = [
    "python.org", "a" * 63 + ".example", "a" * 64 + ".example", "-1s", "x-.example", "a..b", "127.0.0.1",
    "::1", "[::1]", "2001:db8::1", "fqdn.example.", "_srv.example", "xn--bcher-kva.example", "bücher.example",
    "a b", "http://x", "host:443", "", ".".join(["a" * 63] * 4),
]  # fmt: skip

NETWORKS = ["192.0.2.0/30", "192.0.2.1/32", "2001:db8::/126", "192.0.2.1/30", "127.0.0.0/8", "::/0", "nonsense"]


def _characters() -> st.SearchStrategy[str]:
    """Any character, lone surrogates (what YAML's \\ud800 escape makes) included."""
    return st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))


def _text(max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(_characters(), max_size=max_size)


def _mostly(valid: st.SearchStrategy[Any], *odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually (9 in 10) a valid value, else an odd one: enough configs must be accepted to be checked."""
    odd_one = st.one_of(*odd)
    return st.integers(0, 9).flatmap(lambda roll: odd_one if roll == 0 else valid)


def _scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(RAW_SCALARS).map(Raw),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        _text(),
    )


def _duration() -> st.SearchStrategy[Any]:
    units = st.sampled_from(["ms", "s", "m", "h", "", "d"])
    spelled = st.builds(lambda n, u: f"{n:g}{u}", st.floats(-10, 1e9, allow_nan=False), units)
    valid = st.builds(lambda n, u: f"{n}{u}", st.integers(1, 120), st.sampled_from(["ms", "s", "m", "h"]))
    return _mostly(valid, spelled, st.floats(0, 1e6), _scalar())


def _labels() -> st.SearchStrategy[Any]:
    valid_names = st.sampled_from(["team", "env", "zone", "_ok", "tier"])
    odd_names = st.sampled_from(["job", "instance", "le", "quantile", "target", "__x", "1a", "a-b"])
    values = _mostly(st.text(st.characters(), max_size=8), _text(), _scalar())
    return _mostly(st.dictionaries(_mostly(valid_names, odd_names, _text(6)), values, max_size=3), _scalar())


def _layer() -> dict[str, st.SearchStrategy[Any]]:
    """Keys shared by defaults, targets and ranges."""
    names = st.sampled_from(["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"])
    protocols = _mostly(st.lists(names, min_size=1, max_size=3, unique=True), st.lists(st.just("TLSv1.4")))
    expect = st.fixed_dictionaries({}, optional={"accept": protocols, "reject": protocols})
    return {
        "interval": _duration(),
        "timeout": _duration(),
        "protocols": _mostly(protocols, _scalar()),
        "labels": _labels(),
        "confirm_sweeps": _mostly(st.integers(1, 10), st.integers(-2, 12), _scalar()),
        "expect": _mostly(expect, _scalar()),
        "http": st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={"path": st.sampled_from(["/", "x"])})),
        "addresses": _mostly(st.sampled_from(["all", "first", "ipv4", "ipv6"]), st.just("some")),
        "https_proxy": _mostly(
            st.sampled_from(["http://proxy:3128", "http://[::1]:8"]), st.sampled_from(["http://-x:1", "http://[::]]:8"])
        ),
    }


def _target() -> st.SearchStrategy[Any]:
    valid_host = st.builds(lambda n: f"h{n}.example.org", st.integers(0, 10**6))
    host = _mostly(valid_host, st.sampled_from(HOSTS), _text(20))
    port = _mostly(st.integers(1, 65535), st.integers(-1, 70000), _scalar())
    long_form = st.fixed_dictionaries(
        {"host": host},
        optional={"port": port, "name": _mostly(_text(), _scalar()), "sni": _mostly(host, _scalar()), **_layer()},
    )
    network = st.fixed_dictionaries(
        {"network": st.sampled_from(NETWORKS)},
        optional={"ports": st.lists(port, max_size=3), "labels": _labels(), "confirm_sweeps": st.integers(0, 11)},
    )
    short = st.builds(lambda h, p: h if p is None else f"{h}:{p}", host, st.one_of(st.none(), port))
    return _mostly(st.one_of(short, long_form), network, _scalar())


def _config() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"targets": _mostly(st.lists(_target(), min_size=1, max_size=4), st.lists(_target(), max_size=0))},
        optional={
            "defaults": st.fixed_dictionaries({}, optional=_layer()),
            "concurrency": _mostly(st.integers(1, 256), st.integers(-1, 10**30), _scalar()),
            "max_range_endpoints": _mostly(st.integers(1, 2**24), st.integers(2**24, 2**25), _scalar()),
            "politeness": st.fixed_dictionaries(
                {},
                optional={
                    "connections_per_address": _mostly(st.integers(1, 16), _scalar()),
                    "connections_per_second": _mostly(st.floats(0, 1000), _scalar()),
                },
            ),
            "probe": st.fixed_dictionaries(
                {}, optional={"allow": st.lists(st.sampled_from(["*", "0.0.0.0/0", "::/0", "*.example", "x/99"]))}
            ),
            "resolver": st.fixed_dictionaries(
                {"nameservers": st.lists(st.sampled_from(["127.0.0.1", "[::1]:53", "x"]), min_size=1, max_size=2)},
                optional={"timeout": _duration()},
            ),
        },
    )


def emit(value: Any) -> str:
    """Flow-style YAML for a value: strings JSON-quoted (lone surrogates as \\ud800 escapes), Raw as is."""
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(emit(item) for item in value) + "]"
    return "{" + ", ".join(f"{emit(key)}: {emit(item)}" for key, item in value.items()) + "}"


def check_accepted(config: Config) -> None:
    """What a sweep, /metrics and --once JSON need of an accepted config."""
    ranges = sum(entry.size for entry in config.ranges)
    targets = expand(config) if ranges <= 4096 else config.targets + tuple(entry.template for entry in config.ranges)
    for target in targets:
        target.name.encode("utf-8")
        for key, value in target.labels:
            key.encode("utf-8")
            value.encode("utf-8")
        sample(INTERVAL, {"target": target.name, **dict(target.labels)}, target.interval).encode("utf-8")
        json.dumps({"name": target.name, "labels": dict(target.labels)}, ensure_ascii=False).encode("utf-8")
        for name in (target.host, target.sni):
            if name and not is_ip(name):
                name.encode("idna")
        for seconds in (target.interval, target.timeout):
            assert 0 < seconds <= MAX_DURATION
        assert 1 <= target.confirm_sweeps <= 10
    assert math.isfinite(config.politeness.connections_per_second)
    assert config.resolver is None or 0 < config.resolver.timeout <= MAX_DURATION
    assert 1 <= config.max_range_endpoints <= 2**24


def parse(text: str) -> Config | None:
    """parse_config's Config, or None for a ConfigError; any other exception fails the test."""
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        str(exc).encode("utf-8")  # the one line printed for it
        assert exc.path == "fuzz.yaml" and exc.line >= 1
        return None
    check_accepted(config)
    return config


@FUZZ
@given(_config())
def test_structured_configs(document: dict[str, Any]) -> None:
    parse(emit(document))


@FUZZ
@given(_config(), st.sampled_from(["block", "json"]))
def test_structured_configs_in_other_spellings(document: dict[str, Any], style: str) -> None:
    if style == "json":
        text = json.dumps(document, default=str)
    else:
        text = "".join(f"{emit(key)}: {emit(value)}\n" for key, value in document.items())
    parse(text)


@FUZZ
@given(st.fixed_dictionaries({}, optional=_layer()), st.lists(_target(), min_size=1, max_size=5), st.data())
def test_structured_configs_with_aliases_and_merges(defaults: dict[str, Any], targets: list[Any], data: Any) -> None:
    lines = [f"defaults: &d {emit(defaults)}", "targets:"]
    anchored: list[int] = []
    for index, target in enumerate(targets):
        how = data.draw(st.sampled_from(["plain", "anchor", "merge defaults", "merge target", "alias"]))
        if how == "anchor" or (how in ("merge target", "alias") and not anchored):
            lines.append(f"  - &t{index} {emit(target)}")
            anchored.append(index)
        elif how == "merge defaults":
            lines.append(f"  - {{<<: *d, host: h{index}.example}}")
        elif how == "merge target":
            lines.append(f"  - {{<<: [*t{data.draw(st.sampled_from(anchored))}, *d], name: n{index}}}")
        elif how == "alias":
            lines.append(f"  - *t{data.draw(st.sampled_from(anchored))}")
        else:
            lines.append(f"  - {emit(target)}")
    parse("\n".join(lines) + "\n")


TOKENS = [
    "targets:", "defaults:", "labels:", "interval:", "timeout:", "host:", "name:", "sni:", "port:", "network:",
    "confirm_sweeps:", "politeness:", "connections_per_second:", "probe:", "allow:", "resolver:", "<<:", "? ",
    "\n", "\n  ", "\n    ", "- ", "  - ", " ", ": ", ", ", "{", "}", "[", "]", "&a ", "&b ", "*a", "*b", "!!int ",
    "!!str ", "!!merge ", "'", '"', "#", "|", ">", "---", "...", "%YAML 1.1\n", "python.org", "a.example", "443",
    "\t", "\\", "é", "\ufeff", *RAW_SCALARS,
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_yamlish_text(text: str) -> None:
    parse(text)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(TOKENS), _text(4)), max_size=30).map("".join))
def test_yamlish_text_with_any_characters(text: str) -> None:
    parse(text)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(TOKENS)).map(lambda t: "".join(t).encode())))
def test_bytes_from_a_file(scratch: Path, data: bytes) -> None:
    path = scratch / "config.yaml"
    path.write_bytes(data)
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert exc.path == str(path)
        return
    check_accepted(config)
