"""Targets: range expansion, finding a configured target for /probe, the /probe allowlist, and shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanner.config import Config, load_config
from scanner.hostport import join_host_port
from scanner.targets import (
    ALL,
    BLOCK_ENDPOINTS,
    Shard,
    block_endpoints,
    count_endpoints,
    expand,
    find_configured,
    probe_refusal,
    range_blocks,
    range_target,
)
from tests.unit.factories import owner


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "endpoints.yaml"
    path.write_text(text)
    return load_config(path)


def _endpoints(config: Config, shard: Shard = ALL, size: int = BLOCK_ENDPOINTS) -> list[str]:
    return [join_host_port(h, p) for b in range_blocks(config, shard, size) for h, p in block_endpoints(b)]


def test_ranges_are_discovered_not_expanded_and_skip_explicit_names_and_earlier_ranges(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "targets:\n"
        "  - 127.0.0.2:8443\n"
        "  - {network: 127.0.0.0/30, ports: [8443, 9443], labels: {zone: dmz}}\n"
        "  - {network: 127.0.0.2/31, ports: [8443]}\n"
        '  - {network: "::1/128", ports: [443]}\n',
    )
    assert [t.name for t in expand(config)] == ["127.0.0.2:8443"]
    # Port after port; 127.0.0.2:8443 is the explicit target's, 127.0.0.2/31 on 8443 was the first range's.
    expected = ["127.0.0.0:8443", "127.0.0.1:8443", "127.0.0.3:8443"]
    expected += ["127.0.0.0:9443", "127.0.0.1:9443", "127.0.0.2:9443", "127.0.0.3:9443", "[::1]:443"]
    assert _endpoints(config) == expected
    assert _endpoints(config, size=3) == expected  # however the ranges are cut into blocks
    assert count_endpoints(config) == 1 + len(expected)
    ranged = range_target(config.ranges[0], "127.0.0.1", 9443)
    assert (ranged.name, ranged.range, ranged.labels) == ("127.0.0.1:9443", "127.0.0.0/30", (("zone", "dmz"),))


def test_shards_split_range_endpoints_by_name(tmp_path: Path) -> None:
    config = _config(tmp_path, "targets:\n  - {network: 127.0.1.0/24, ports: [443, 8443]}\n")
    everything = _endpoints(config)
    shares = [_endpoints(config, Shard(i, 3)) for i in range(3)]
    assert sorted(name for share in shares for name in share) == sorted(everything) and len(everything) == 512
    assert all(owner(name, 3) == i for i, share in enumerate(shares) for name in share)


def test_a_slash_8_is_counted_and_cut_into_blocks_without_listing_it(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "max_range_endpoints: 16777216\ntargets:\n  - 127.1.2.3:443\n  - {network: 127.0.0.0/8, ports: [443]}\n",
    )
    assert count_endpoints(config) == 2**24  # the explicit target is one of the range's endpoints
    blocks = list(range_blocks(config))
    assert len(blocks) == 2**24 // BLOCK_ENDPOINTS
    assert (blocks[0].start, blocks[0].stop, blocks[-1].stop) == (0, BLOCK_ENDPOINTS, 2**24)
    # The explicit target travels with its own block only (127.1.2.3 is endpoint 0x010203 of the range).
    assert [(b.start, b.explicit) for b in blocks if b.explicit] == [
        (0x010203 // BLOCK_ENDPOINTS * BLOCK_ENDPOINTS, frozenset({(0x7F010203, 443)}))
    ]


def test_find_configured_by_name_host_port_and_range(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "targets:\n"
        "  - {name: web, host: 127.0.0.5, port: 8443}\n"
        '  - "[::1]:9443"\n'
        "  - {network: 127.0.1.0/24, ports: [443]}\n",
    )
    web = find_configured(config, "web")
    assert web is not None and web.port == 8443
    assert find_configured(config, "127.0.0.5:8443") == web
    v6 = find_configured(config, "[::1]:9443")
    assert v6 is not None and v6.host == "::1"
    endpoint = find_configured(config, "127.0.1.7:443")
    assert endpoint is not None and endpoint.name == "127.0.1.7:443" and endpoint.range == "127.0.1.0/24"
    assert find_configured(config, "127.0.1.7:444") is None
    assert find_configured(config, "127.0.0.5") is None  # no port: not the 8443 target
    with pytest.raises(ValueError, match="bad port"):
        find_configured(config, "127.0.0.5:99999")


@pytest.mark.parametrize(
    ("allow", "host", "addresses", "refusal"),
    [
        ((), "127.0.0.1", None, "only configured targets may be probed (see probe.allow)"),
        (("127.0.0.0/8",), "127.0.0.9", ["127.0.0.9"], None),
        (("127.0.0.0/16",), "127.9.0.1", ["127.9.0.1"], "127.9.0.1 is outside probe.allow"),
        (("*.lab.test",), "a.lab.test", None, None),
        (("*.lab.test",), "a.other.test", None, "a.other.test matches no name in probe.allow"),
        (
            ("127.0.0.0/16",),
            "a.lab.test",
            ["127.0.0.1", "127.9.1.1"],
            "a.lab.test resolves to 127.9.1.1, outside probe.allow",
        ),
        (("*.lab.test",), "127.0.0.1", ["127.0.0.1"], "127.0.0.1: no network in probe.allow"),
    ],
)
def test_probe_refusal(allow: tuple[str, ...], host: str, addresses: list[str] | None, refusal: str | None) -> None:
    assert probe_refusal(allow, host, addresses) == refusal


def test_rendezvous_hashing_partitions_and_moves_a_quarter_from_3_to_4() -> None:
    names = [f"host-{i}.lab.test:443" for i in range(10_000)]
    three = [owner(n, 3) for n in names]
    four = [owner(n, 4) for n in names]
    for index in range(3):
        assert 0.30 < three.count(index) / len(names) < 0.37
    moved = [n for n, a, b in zip(names, three, four, strict=True) if a != b]
    assert 0.2 <= len(moved) / len(names) <= 0.3
    # A name only ever moves to the new replica; the others keep what they had.
    assert {four[names.index(n)] for n in moved} == {3}
    assert Shard(0, 1).owns("anything") and Shard.parse(" 2/3 ") == Shard(2, 3)


@pytest.mark.parametrize("text", ["3/3", "x", "-1/3", "1/0", "1/3/4", "1:3", ""])
def test_shard_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid --shard"):
        Shard.parse(text)
