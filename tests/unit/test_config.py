"""Tests for the endpoints config: bad configs give one exact `PATH:LINE: message`; good ones load as documented."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from scanner.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    Config,
    Expectation,
    HttpCheck,
    TargetConfig,
    load_config,
    parse_duration,
)
from scanner.errors import ConfigError
from scanner.protocols import ALL_PROTOCOLS, Protocol

CONFIGS = Path(__file__).parent / "configs"
INVALID = CONFIGS / "invalid"
KNOWN = "SSLv2, SSLv3, TLSv1.0, TLSv1.1, TLSv1.2, TLSv1.3"
TARGET_KEYS = (
    "host, port, name, sni, address, interval, timeout, protocols, expect, http, labels, "
    "addresses, starttls, client_cert, https_proxy, confirm_sweeps, clients, deep_interval, ca_file, "
    "burst_interval, burst_for, pattern_window, permanent_after"
)
HINT = "use e.g. 500ms, 3s, 5m, 1h"
P = Protocol

INVALID_FILES = {
    "yaml_syntax.yaml": (3, "invalid YAML: mapping values are not allowed here"),
    "unquoted_ipv6.yaml": (
        3,
        "invalid YAML: expected the node content, but found ':' (quote bracketed IPv6 addresses: \"[::1]:8443\")",
    ),
    "unknown_key_top.yaml": (
        2,
        'unknown key "target" at top level (allowed: concurrency, workers, defaults, targets, resolver, '
        "max_range_endpoints, probe, politeness, clients)",
    ),
    "unknown_key_defaults.yaml": (
        3,
        'unknown key "port" in defaults (allowed: interval, timeout, protocols, expect, http, labels, '
        "addresses, starttls, client_cert, https_proxy, confirm_sweeps, clients, deep_interval, ca_file, "
        "burst_interval, burst_for, pattern_window, permanent_after, range_interval)",
    ),
    "unknown_key_target.yaml": (3, f'unknown key "timout" in target (allowed: {TARGET_KEYS})'),
    "unknown_key_expect.yaml": (5, 'unknown key "allow" in expect (allowed: accept, reject, http_ok)'),
    "unknown_key_http.yaml": (3, 'unknown key "url" in http (allowed: path, method, host, match)'),
    "targets_not_list.yaml": (2, "targets: expected a list, got mapping"),
    "port_not_number.yaml": (3, 'port: expected an integer 1-65535, got "abc"'),
    "port_zero.yaml": (3, "port: expected an integer 1-65535, got 0"),
    "port_too_big.yaml": (3, "port: expected an integer 1-65535, got 65536"),
    "port_quoted.yaml": (3, 'port: expected an integer 1-65535, got "443"'),
    "port_bool.yaml": (3, "port: expected an integer 1-65535, got boolean true"),
    "short_form_bad_port.yaml": (2, 'target "python.org:https": port must be an integer 1-65535, got "https"'),
    "unknown_protocol.yaml": (5, f'unknown protocol "TLSv1.4" (known: {KNOWN})'),
    "duration_bad_unit.yaml": (3, f'timeout: bad duration "5x": {HINT}'),
    "duration_zero.yaml": (2, 'interval: bad duration "0s": must be greater than 0'),
    "duration_negative.yaml": (3, 'interval: bad duration "-1s": must be greater than 0'),
    "duration_empty.yaml": (3, f'timeout: bad duration "": {HINT}'),
    "duplicate_name.yaml": (6, 'duplicate target name "web" (first defined on line 4)'),
    "duplicate_default_name.yaml": (4, 'duplicate target name "python.org:443" (first defined on line 2)'),
    "duplicate_yaml_key.yaml": (4, 'duplicate key "port" in target (first on line 3)'),
    "empty_targets.yaml": (3, "targets: at least one target is required"),
    "missing_targets.yaml": (1, "targets: at least one target is required"),
    "empty.yaml": (1, 'config is empty: expected a mapping with a "targets" list'),
    "comments_only.yaml": (1, 'config is empty: expected a mapping with a "targets" list'),
    "top_level_list.yaml": (1, "top level: expected a mapping, got list"),
    "accept_reject_overlap.yaml": (5, "TLSv1.2 is in both expect.accept (line 4) and expect.reject (line 5)"),
    "bad_label_name.yaml": (
        4,
        'label name "cost-center" is not valid: use letters, digits and _, not starting with a digit',
    ),
    "reserved_label.yaml": (
        4,
        'label name "target" is reserved for the scanner\'s own labels '
        "(target, protocol, reason, address, name, host, port, client, policy, cipher, profile, subject, issuer, "
        "serial, fingerprint_sha256, key, error, kind, pattern)",
    ),
    "dunder_label.yaml": (3, 'label name "__name__" is reserved: names starting with "__" are for Prometheus'),
    "label_not_string.yaml": (4, 'label "tier": expected a string value, got 1 (quote it)'),
    "url_host.yaml": (2, 'host must be a name or address, not a URL ("https://python.org")'),
    "url_host_long.yaml": (2, 'host must be a name or address, not a URL ("https://python.org/")'),
    "http_ok_without_http.yaml": (
        9,
        'expect.http_ok needs an HTTP check, but target "smtp.python.org:465" has none '
        "(set http: true or a mapping, or http_ok: [])",
    ),
}

# Smaller cases, written to tmp_path: (config text, line, message).
INVALID_INLINE = {
    "concurrency_zero": ("concurrency: 0\ntargets: [python.org]\n", 1, "concurrency: expected an integer >= 1, got 0"),
    "concurrency_string": (
        'concurrency: "8"\ntargets: [python.org]\n',
        1,
        'concurrency: expected an integer >= 1, got "8"',
    ),
    "defaults_list": ("defaults: []\ntargets: [python.org]\n", 1, "defaults: expected a mapping, got list"),
    "workers_negative": (
        "targets: [python.org]\nworkers: -1\n",
        2,
        'workers: expected "auto" or an integer 0-64, got -1',
    ),
    "workers_too_many": (
        "targets: [python.org]\nworkers: 65\n",
        2,
        'workers: expected "auto" or an integer 0-64, got 65',
    ),
    "workers_word": (
        "workers: two\ntargets: [python.org]\n",
        1,
        'workers: expected "auto" or an integer 0-64, got "two"',
    ),
    "workers_bool": (
        "workers: yes\ntargets: [python.org]\n",
        1,
        'workers: expected "auto" or an integer 0-64, got boolean yes',
    ),
    "targets_null": ("targets:\n", 1, "targets: at least one target is required"),
    "targets_string": ("targets: python.org\n", 1, 'targets: expected a list, got "python.org"'),
    "target_int": (
        "targets:\n  - 443\n",
        2,
        'target: expected "host[:port]" or a mapping with host, got 443 (quote it)',
    ),
    "target_missing_host": ("targets:\n  - port: 443\n", 2, 'target: missing required key "host"'),
    "host_not_string": ("targets:\n  - host: [a, b]\n", 2, "host: expected a string, got list"),
    "host_empty": ('targets:\n  - host: ""\n', 2, "host must not be empty"),
    "host_space": (
        'targets:\n  - "python org"\n',
        2,
        'host "python org" must not contain spaces or control characters',
    ),
    "host_with_port_long_form": (
        "targets:\n  - host: python.org:443\n",
        2,
        'host "python.org:443" must not include a port; use the port key',
    ),
    "host_bad_ipv6": ("targets:\n  - host: 'fe80::zz'\n", 2, 'host "fe80::zz" is not a valid IPv6 address'),
    "host_non_ascii": (
        "targets:\n  - bücher.example\n",
        2,
        'host "bücher.example" must be ASCII: write internationalized names as xn--...',
    ),
    "host_double_dot": ("targets:\n  - python..org\n", 2, 'host "python..org" is not a valid host name'),
    "brackets_not_ipv6": (
        'targets:\n  - "[python.org]:443"\n',
        2,
        'bad target "[python.org]:443": brackets are only for IPv6 addresses',
    ),
    "brackets_ipv4_long_form": (
        "targets:\n  - host: '[127.0.0.1]'\n",
        2,
        'host "[127.0.0.1]" is not a valid host name',
    ),
    "brackets_unclosed": (
        'targets:\n  - "[::1:443"\n',
        2,
        'bad target "[::1:443": write bracketed IPv6 addresses as "[::1]:8443"',
    ),
    "short_port_zero": (
        "targets:\n  - python.org:0\n",
        2,
        'target "python.org:0": port must be an integer 1-65535, got "0"',
    ),
    "short_port_too_big": (
        "targets:\n  - python.org:65536\n",
        2,
        'target "python.org:65536": port must be an integer 1-65535, got "65536"',
    ),
    "short_port_empty": (
        "targets:\n  - 'python.org:'\n",
        2,
        'target "python.org:": port must be an integer 1-65535, got ""',
    ),
    "name_empty": (
        'targets:\n  - host: python.org\n    name: " "\n',
        3,
        'name: expected a non-empty printable string, got " "',
    ),
    "sni_ip": (
        "targets:\n  - host: python.org\n    sni: 127.0.0.2\n",
        3,
        "sni: must be a DNS name, not an IP address (use sni: false to send none)",
    ),
    "sni_true": (
        "targets:\n  - host: python.org\n    sni: true\n",
        3,
        "sni: expected a server name or false, got boolean true",
    ),
    "protocols_empty": (
        "defaults:\n  protocols: []\ntargets: [python.org]\n",
        2,
        "protocols: at least one protocol is required",
    ),
    "protocols_not_list": (
        "defaults:\n  protocols: TLSv1.2\ntargets: [python.org]\n",
        2,
        'protocols: expected a list of protocols, got "TLSv1.2"',
    ),
    "protocols_duplicate": (
        "defaults:\n  protocols:\n    - TLSv1.2\n    - TLSv1.2\ntargets: [python.org]\n",
        4,
        "protocols: duplicate protocol TLSv1.2 (first on line 3)",
    ),
    "protocol_number": (
        "defaults:\n  protocols: [1.2]\ntargets: [python.org]\n",
        2,
        "protocols: expected a protocol name, got 1.2",
    ),
    "protocol_lowercase": (
        "defaults:\n  expect:\n    reject: [sslv3]\ntargets: [python.org]\n",
        3,
        f'unknown protocol "sslv3" (known: {KNOWN})',
    ),
    "expect_not_mapping": (
        "defaults:\n  expect: [TLSv1.2]\ntargets: [python.org]\n",
        2,
        'expect: each policy in the list must be a mapping (accept, reject, http_ok, from, name), got "TLSv1.2"',
    ),
    "http_ok_reject_overlap": (
        "defaults:\n  http: true\n  expect:\n    http_ok: [TLSv1.0]\n    reject: [TLSv1.0]\ntargets: [python.org]\n",
        5,
        "TLSv1.0 is in both expect.http_ok (line 4) and expect.reject (line 5)",
    ),
    "overlap_blames_target_not_defaults": (
        "defaults:\n  expect:\n    reject: [TLSv1.0]\ntargets:\n  - host: python.org\n    expect:\n"
        "      accept: [TLSv1.0]\n",
        7,
        "TLSv1.0 is in both expect.accept (line 7) and expect.reject (line 3)",
    ),
    "http_null": (
        "defaults:\n  http:\ntargets: [python.org]\n",
        2,
        "http: expected true, false or a mapping with path, method, host, got null",
    ),
    "http_path_relative": (
        "defaults:\n  http: {path: health}\ntargets: [python.org]\n",
        2,
        'http.path: must start with "/", got "health"',
    ),
    "http_path_space": (
        "defaults:\n  http: {path: /a b}\ntargets: [python.org]\n",
        2,
        'http.path: must be non-empty printable ASCII without spaces, got "/a b"',
    ),
    "http_method_lowercase": (
        "defaults:\n  http: {method: get}\ntargets: [python.org]\n",
        2,
        'http.method: expected an uppercase method such as GET, HEAD, POST, got "get"',
    ),
    "http_host_empty": (
        "defaults:\n  http: {host: ''}\ntargets: [python.org]\n",
        2,
        'http.host: must be non-empty printable ASCII without spaces, got ""',
    ),
    "http_host_crlf": (
        'defaults:\n  http: {host: "a\\r\\nX-Evil: 1"}\ntargets: [python.org]\n',
        2,
        'http.host: must be non-empty printable ASCII without spaces, got "a\\r\\nX-Evil: 1"',
    ),
    "labels_list": (
        "defaults:\n  labels: [a]\ntargets: [python.org]\n",
        2,
        "labels: expected a mapping of names to strings, got list",
    ),
    "label_bool": (
        "defaults:\n  labels: {prod: yes}\ntargets: [python.org]\n",
        2,
        'label "prod": expected a string value, got boolean yes (quote it)',
    ),
    "label_digit_start": (
        "defaults:\n  labels: {1team: a}\ntargets: [python.org]\n",
        2,
        'label name "1team" is not valid: use letters, digits and _, not starting with a digit',
    ),
    "label_duplicate": (
        "defaults:\n  labels:\n    team: a\n    team: b\ntargets: [python.org]\n",
        4,
        'duplicate key "team" in labels (first on line 3)',
    ),
    "duration_bool": (
        "defaults:\n  timeout: true\ntargets: [python.org]\n",
        2,
        "timeout: expected a duration such as 500ms, 3s, 5m, 1h, got boolean true",
    ),
    "duration_bare_zero": (
        "defaults:\n  timeout: 0\ntargets: [python.org]\n",
        2,
        "timeout: bad duration 0: must be greater than 0",
    ),
    "duration_infinite": (
        "defaults:\n  timeout: .inf\ntargets: [python.org]\n",
        2,
        "timeout: bad duration .inf: too large",
    ),
    "duration_no_unit": ('defaults:\n  timeout: "5"\ntargets: [python.org]\n', 2, f'timeout: bad duration "5": {HINT}'),
    "non_string_key": ("1: x\ntargets: [python.org]\n", 1, "top level: keys must be strings, got 1"),
    "top_level_scalar": ("python.org\n", 1, 'top level: expected a mapping, got "python.org"'),
    "two_documents": (
        "targets: [a.org]\n---\ntargets: [b.org]\n",
        2,
        "invalid YAML: expected a single document in the stream, but found another document",
    ),
    "control_character": ('targets:\n  - "a\x07"\n', 2, "invalid YAML: unacceptable character #x0007"),
    "explicit_int_tag": (
        "targets:\n  - host: python.org\n    port: !!int abc\n",
        3,
        "port: expected an integer 1-65535, got a value tagged !!int abc",
    ),
    "recursive_merge": ("defaults: &d\n  <<: *d\ntargets: [python.org]\n", 1, "defaults: recursive merge"),
    "merge_scalar": ("defaults:\n  <<: 5\ntargets: [python.org]\n", 2, "<<: expected a mapping to merge, got 5"),
    # Lists that must not be empty (nonempty_items): the resolver's servers, a range's ports, a profile's suites.
    "nameservers_empty": (
        "resolver: {nameservers: []}\ntargets: [python.org]\n",
        1,
        "resolver.nameservers: expected a non-empty list, got list",
    ),
    "nameservers_scalar": (
        "resolver: {nameservers: 5}\ntargets: [python.org]\n",
        1,
        "resolver.nameservers: expected a non-empty list, got 5",
    ),
    "range_ports_empty": (
        "targets:\n  - {network: 127.0.0.0/30, ports: []}\n",
        2,
        "ports: expected a non-empty list of ports, got list",
    ),
    "profile_ciphers_empty": (
        "clients:\n  x: {protocols: [TLSv1.2], ciphers: []}\ntargets: [python.org]\n",
        2,
        "clients.x.ciphers: expected a non-empty list of IANA cipher suite names",
    ),
    "duplicate_top_level": (
        "targets: [a.org]\nconcurrency: 2\ntargets: [b.org]\n",
        3,
        'duplicate key "targets" at top level (first on line 1)',
    ),
    # Label values and names must be UTF-8 (YAML's "\ud800" escape makes a lone surrogate).
    "label_value_surrogate": (
        'defaults:\n  labels: {team: "\\ud800"}\ntargets: [python.org]\n',
        2,
        'label "team": value "\\ud800" is not valid UTF-8 (surrogate code point)',
    ),
    "label_value_surrogate_pair_escapes": (
        'targets:\n  - host: python.org\n    labels: {icon: "\\ud83d\\ude00"}\n',
        3,
        'label "icon": value "\\ud83d\\ude00" is not valid UTF-8 (surrogate code point)',
    ),
    "name_surrogate": (
        'targets:\n  - host: python.org\n    name: "web\\udc80"\n',
        3,
        'name: "web\\udc80" is not valid UTF-8 (surrogate code point)',
    ),
    "label_name_surrogate": (
        'defaults:\n  labels: {"\\ud800": x}\ntargets: [python.org]\n',
        2,
        'label name "\\ud800" is not valid: use letters, digits and _, not starting with a digit',
    ),
    # Host names by DNS rules.
    "host_label_too_long": (
        f"targets:\n  - {'a' * 64}.example\n",
        2,
        f'host "{"a" * 57}..." is not a valid host name: label "{"a" * 57}..." is longer than 63 characters',
    ),
    "host_leading_hyphen": (
        "targets:\n  - -1s\n",
        2,
        'host "-1s" is not a valid host name: label "-1s" starts or ends with "-"',
    ),
    "host_label_trailing_hyphen": (
        "targets:\n  - host: www-.python.org\n",
        2,
        'host "www-.python.org" is not a valid host name: label "www-" starts or ends with "-"',
    ),
    "host_too_long": (
        "targets:\n  - " + ".".join(["a" * 63] * 4) + "\n",
        2,
        f'host "{"a" * 57}..." is not a valid host name',
    ),
    "sni_label_too_long": (
        f"targets:\n  - host: python.org\n    sni: x.{'b' * 70}\n",
        3,
        f'sni "x.{"b" * 55}..." is not a valid host name: label "{"b" * 57}..." is longer than 63 characters',
    ),
    "sni_leading_hyphen": (
        "targets:\n  - host: python.org\n    sni: -python.org\n",
        3,
        'sni "-python.org" is not a valid host name: label "-python" starts or ends with "-"',
    ),
    "proxy_host_hyphen": (
        'targets:\n  - host: python.org\n    https_proxy: "http://-proxy:3128"\n',
        3,
        'https_proxy host "-proxy" is not a valid host name: label "-proxy" starts or ends with "-"',
    ),
    # Numbers finite, durations at most a day.
    "rate_nan": (
        "politeness: {connections_per_second: .nan}\ntargets: [python.org]\n",
        1,
        "politeness.connections_per_second: expected a number >= 0, got .nan",
    ),
    "rate_inf": (
        "politeness:\n  connections_per_second: .inf\ntargets: [python.org]\n",
        2,
        "politeness.connections_per_second: expected a number >= 0, got .inf",
    ),
    "rate_below_one_a_day": (
        "politeness:\n  connections_per_second: 1.0e-9\ntargets: [python.org]\n",
        2,
        "politeness.connections_per_second: 1.0e-9 is less than one connection a day; 0 turns the limit off",
    ),
    "timeout_past_a_day": (
        "defaults:\n  timeout: 10000000h\ntargets: [python.org]\n",
        2,
        'timeout: bad duration "10000000h": must be at most 1 day (24h)',
    ),
    "interval_bare_past_a_day": (
        "defaults:\n  interval: 86401\ntargets: [python.org]\n",
        2,
        "interval: bad duration 86401: must be at most 1 day (24h)",
    ),
    "interval_bare_float_past_a_day": (
        "targets:\n  - host: python.org\n    interval: 1.0e+9\n",
        3,
        "interval: bad duration 1.0e+9: must be at most 1 day (24h)",
    ),
    "interval_bare_huge_int": (
        f"defaults:\n  interval: {'9' * 400}\ntargets: [python.org]\n",
        2,
        f"interval: bad duration {'9' * 57}...: too large",
    ),
    "resolver_timeout_past_a_day": (
        "resolver: {nameservers: [127.0.0.1], timeout: 25h}\ntargets: [python.org]\n",
        1,
        'resolver.timeout: bad duration "25h": must be at most 1 day (24h)',
    ),
    "max_range_endpoints_past_2_24": (
        "max_range_endpoints: 16777217\ntargets: [python.org]\n",
        1,
        "max_range_endpoints: expected an integer 1-16777216, got 16777217",
    ),
    # One duration syntax: YAML 1.1 reads 1:30 as the base-60 integer 90.
    "interval_sexagesimal": (
        "defaults:\n  interval: 1:30\ntargets: [python.org]\n",
        2,
        "interval: 1:30 is read by YAML 1.1 as the base-60 number 90; write 90s",
    ),
    "timeout_sexagesimal_float": (
        "targets:\n  - host: python.org\n    timeout: 1:30.5\n",
        3,
        "timeout: 1:30.5 is read by YAML 1.1 as the base-60 number 90.5; write 90.5s",
    ),
    "resolver_timeout_sexagesimal": (
        "resolver:\n  nameservers: [127.0.0.1]\n  timeout: 1:05\ntargets: [python.org]\n",
        3,
        "resolver.timeout: 1:05 is read by YAML 1.1 as the base-60 number 65; write 65s",
    ),
    "port_sexagesimal": (
        "targets:\n  - host: python.org\n    port: 7:23\n",
        3,
        "port: expected an integer 1-65535, got 7:23 (YAML 1.1 reads it in base 60: 443)",
    ),
    "rate_sexagesimal": (
        "politeness: {connections_per_second: 1:00}\ntargets: [python.org]\n",
        1,
        "politeness.connections_per_second: expected a number >= 0, got 1:00 (YAML 1.1 reads it in base 60: 60)",
    ),
    # Labels Prometheus reserves or rewrites.
    **{
        f"label_{name}": (
            f"defaults:\n  labels: {{{name}: x}}\ntargets: [python.org]\n",
            2,
            f'label name "{name}" is reserved for Prometheus\' own labels (job, instance, le, quantile)',
        )
        for name in ("job", "instance", "le", "quantile")
    },
    # confirm_sweeps: an integer 1-10.
    **{
        f"confirm_sweeps_{case}": (
            f"defaults:\n  confirm_sweeps: {value}\ntargets: [python.org]\n",
            2,
            f"confirm_sweeps: expected an integer 1-10, got {shown}",
        )
        for case, value, shown in (
            ("zero", "0", "0"),
            ("eleven", "11", "11"),
            ("negative", "-1", "-1"),
            ("bool", "true", "boolean true"),
            ("string", '"3"', '"3"'),
            ("float", "2.5", "2.5"),
            ("null", "", "null"),
            ("list", "[2]", "list"),
        )
    },
    "confirm_sweeps_in_range": (
        "targets:\n  - network: 192.0.2.0/30\n    confirm_sweeps: 99\n",
        3,
        "confirm_sweeps: expected an integer 1-10, got 99",
    ),
    # deep_interval: a duration up to 1 day, or 0 (off); ca_file: a readable PEM file.
    "deep_interval_negative": (
        "defaults:\n  deep_interval: -1h\ntargets: [python.org]\n",
        2,
        'deep_interval: bad duration "-1h": must be greater than 0',
    ),
    "deep_interval_too_long": (
        "targets:\n  - host: python.org\n    deep_interval: 25h\n",
        3,
        'deep_interval: bad duration "25h": must be at most 1 day (24h)',
    ),
    "deep_interval_list": (
        "defaults:\n  deep_interval: [6h]\ntargets: [python.org]\n",
        2,
        "deep_interval: expected a duration such as 500ms, 3s, 5m, 1h, got list",
    ),
    "ca_file_missing": (
        "targets:\n  - host: python.org\n    ca_file: /nonexistent/ca.pem\n",
        3,
        'ca_file: cannot read "/nonexistent/ca.pem"',
    ),
    "ca_file_not_pem": (
        "defaults:\n  ca_file: /etc/passwd\ntargets: [python.org]\n",
        2,
        'ca_file: no PEM certificate in "/etc/passwd"',
    ),
    "ca_file_not_string": (
        "defaults:\n  ca_file: [a]\ntargets: [python.org]\n",
        2,
        "ca_file: expected a string, got list",
    ),
    # Scalars PyYAML itself chokes on.
    "escape_past_unicode": ('targets:\n  - "\\UFFFFFFFF"\n', 2, "invalid YAML: escape beyond U+10FFFF"),
    "escape_just_past_unicode": ('targets:\n  - "\\U00110000"\n', 2, "invalid YAML: escape beyond U+10FFFF"),
    "explicit_int_tag_empty": (
        "targets:\n  - host: python.org\n    port: !!int _\n",
        3,
        "port: expected an integer 1-65535, got a value tagged !!int _",
    ),
}


def _error(path: str | Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


@pytest.mark.parametrize("name", sorted(INVALID_FILES))
def test_invalid_file(name: str) -> None:
    path = INVALID / name
    line, message = INVALID_FILES[name]
    error = _error(path)
    assert (error.path, error.line, error.message) == (str(path), line, message)
    assert str(error) == f"{path}:{line}: {message}"


def test_every_invalid_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in INVALID.glob("*.yaml")) == sorted(INVALID_FILES)


@pytest.mark.parametrize("case", sorted(INVALID_INLINE))
def test_invalid_inline(tmp_path: Path, case: str) -> None:
    text, line, message = INVALID_INLINE[case]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    error = _error(path)
    assert (error.line, error.message) == (line, message)
    assert str(error) == f"{path}:{line}: {message}"


@pytest.mark.parametrize(
    ("line", "workers"), [("", None), ("workers: auto\n", None), ("workers: 0\n", 0), ("workers: 3\n", 3)]
)
def test_workers(tmp_path: Path, line: str, workers: int | None) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(line + "targets: [python.org]\n")
    assert load_config(path).workers == workers


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert str(_error(path)) == f"{path}:1: cannot read config: No such file or directory"


def test_directory(tmp_path: Path) -> None:
    assert str(_error(tmp_path)) == f"{tmp_path}:1: cannot read config: Is a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("targets: [python.org]\n")
    path.chmod(0)
    assert str(_error(path)) == f"{path}:1: cannot read config: Permission denied"


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"targets:\n  - python.org\x00\n",
        "targets: [caf\xe9.org]\n".encode("latin-1"),
    ],
    ids=["png", "nul-byte", "latin-1"],
)
def test_binary_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    assert str(_error(path)) == f"{path}:1: not a text file (binary or not UTF-8)"


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _target(tmp_path: Path, text: str) -> TargetConfig:
    (target,) = _load(tmp_path, text).targets
    return target


@pytest.mark.parametrize(
    ("entry", "host", "port", "sni", "name"),
    [
        ("python.org", "python.org", 443, "python.org", "python.org:443"),
        ("example.org:8443", "example.org", 8443, "example.org", "example.org:8443"),
        ('"[::1]:8443"', "::1", 8443, None, "[::1]:8443"),
        ('"[::1]"', "::1", 443, None, "[::1]:443"),
        ("::1", "::1", 443, None, "[::1]:443"),
        ("'2001:db8::1'", "2001:db8::1", 443, None, "[2001:db8::1]:443"),
        ("127.0.0.1", "127.0.0.1", 443, None, "127.0.0.1:443"),
        ("127.0.0.1:8443", "127.0.0.1", 8443, None, "127.0.0.1:8443"),
        ("fqdn.example.org.", "fqdn.example.org.", 443, "fqdn.example.org.", "fqdn.example.org.:443"),
    ],
)
def test_short_forms(tmp_path: Path, entry: str, host: str, port: int, sni: str | None, name: str) -> None:
    target = _target(tmp_path, f"targets:\n  - {entry}\n")
    assert (target.host, target.port, target.sni, target.name, target.line) == (host, port, sni, name, 2)


def test_long_form_ipv6_host_and_name(tmp_path: Path) -> None:
    target = _target(tmp_path, "targets:\n  - host: '[::1]'\n    port: 8443\n")
    assert (target.host, target.port, target.sni, target.name) == ("::1", 8443, None, "[::1]:8443")


def test_builtin_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, "targets: [python.org]\n")
    assert config == Config(
        path=str(tmp_path / "config.yaml"),
        targets=(TargetConfig(name="python.org:443", host="python.org", sni="python.org", line=1),),
        concurrency=DEFAULT_CONCURRENCY,
    )
    target = config.targets[0]
    assert (target.interval, target.timeout, target.protocols) == (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, ALL_PROTOCOLS)
    assert target.expect.empty and target.http is None and target.labels == ()


def test_defaults_apply_and_targets_override(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
defaults:
  interval: 2m
  timeout: 4s
  protocols: [TLSv1.2, TLSv1.3]
targets:
  - inherits.example
  - host: overrides.example
    interval: 10s
    timeout: 1s
    protocols: [SSLv3]
""",
    )
    inherits, overrides = config.targets
    assert (inherits.interval, inherits.timeout, inherits.protocols) == (120.0, 4.0, (P.TLSv1_2, P.TLSv1_3))
    assert (overrides.interval, overrides.timeout, overrides.protocols) == (10.0, 1.0, (P.SSLv3,))
    assert (inherits.line, overrides.line) == (6, 7)


def test_protocols_canonical_order(tmp_path: Path) -> None:
    target = _target(tmp_path, "targets:\n  - host: a.example\n    protocols: [TLSv1.3, SSLv2, TLSv1.1, TLSv1.0]\n")
    assert target.protocols == (P.SSLv2, P.TLSv1_0, P.TLSv1_1, P.TLSv1_3)


def test_expect_replaces_defaults_key_by_key(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
defaults:
  http: true
  expect: {accept: [TLSv1.2], reject: [SSLv2, SSLv3], http_ok: [TLSv1.2]}
targets:
  - inherits.example
  - host: replaces.example
    expect: {reject: [TLSv1.0], http_ok: []}
""",
    )
    inherits, replaces = config.targets
    assert inherits.expect == Expectation(
        accept=frozenset({P.TLSv1_2}), reject=frozenset({P.SSLv2, P.SSLv3}), http_ok=frozenset({P.TLSv1_2})
    )
    assert replaces.expect == Expectation(accept=frozenset({P.TLSv1_2}), reject=frozenset({P.TLSv1_0}))


def test_target_can_clear_a_default_overlap(tmp_path: Path) -> None:
    text = "defaults:\n  expect: {reject: [TLSv1.0]}\ntargets:\n  - host: a.example\n    expect: {reject: []}\n"
    assert _target(tmp_path, text).expect.empty


@pytest.mark.parametrize(
    ("sni_line", "host", "expected"),
    [
        ("", "python.org", "python.org"),
        ("", "192.0.2.1", None),
        ("", "'2001:db8::1'", None),
        ("    sni: false\n", "python.org", None),
        ("    sni: www.python.org\n", "python.org", "www.python.org"),
        ("    sni: python.org\n", "192.0.2.1", "python.org"),
    ],
)
def test_sni(tmp_path: Path, sni_line: str, host: str, expected: str | None) -> None:
    assert _target(tmp_path, f"targets:\n  - host: {host}\n{sni_line}").sni == expected


def test_explicit_name(tmp_path: Path) -> None:
    assert _target(tmp_path, "targets:\n  - host: python.org\n    name: main site\n").name == "main site"


def test_labels_merge_and_sort(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
defaults:
  labels: {team: infra, env: prod}
targets:
  - a.example
  - host: b.example
    labels: {zone: eu, env: staging, _private: "1"}
""",
    )
    a, b = config.targets
    assert a.labels == (("env", "prod"), ("team", "infra"))
    assert b.labels == (("_private", "1"), ("env", "staging"), ("team", "infra"), ("zone", "eu"))


@pytest.mark.parametrize(
    ("default_http", "target_http", "expected"),
    [
        (None, None, None),
        ("true", None, HttpCheck()),
        ("false", None, None),
        ("{path: /health, method: HEAD}", None, HttpCheck(path="/health", method="HEAD")),
        ("{path: /health, method: HEAD}", "false", None),
        ("{path: /health, method: HEAD}", "true", HttpCheck()),
        ("{path: /health, method: HEAD}", "{host: h.example}", HttpCheck(host="h.example")),
        (
            None,
            "{path: '/x?y=1', method: POST, host: 'h:8443'}",
            HttpCheck(path="/x?y=1", method="POST", host="h:8443"),
        ),
    ],
)
def test_http(tmp_path: Path, default_http: str | None, target_http: str | None, expected: HttpCheck | None) -> None:
    text = f"defaults:\n  http: {default_http}\n" if default_http else ""
    text += "targets:\n  - host: python.org\n"
    text += f"    http: {target_http}\n" if target_http else ""
    assert _target(tmp_path, text).http == expected


def test_yaml_merge_keys(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
targets:
  - &common
    host: a.example
    port: 8443
    timeout: 2s
  - <<: *common
    host: b.example
""",
    )
    a, b = config.targets
    assert (a.host, a.port, a.timeout, a.name) == ("a.example", 8443, 2.0, "a.example:8443")
    assert (b.host, b.port, b.timeout, b.name) == ("b.example", 8443, 2.0, "b.example:8443")


def test_path_object_is_stored_as_str(tmp_path: Path) -> None:
    assert _load(tmp_path, "targets: [python.org]\n").path == str(tmp_path / "config.yaml")


def test_valid_full() -> None:
    path = CONFIGS / "valid_full.yaml"
    inherited = TargetConfig(
        name="",
        host="",
        labels=(("env", "prod"), ("team", "infra")),
        interval=300.0,
        timeout=2.5,
        expect=Expectation(
            accept=frozenset({P.TLSv1_2}), reject=frozenset({P.SSLv2, P.SSLv3}), http_ok=frozenset({P.TLSv1_2})
        ),
        http=HttpCheck(path="/healthz", method="HEAD", host="status.example.org"),
    )
    assert load_config(path) == Config(
        path=str(path),
        concurrency=32,
        targets=(
            replace(inherited, name="python.org:443", host="python.org", sni="python.org", line=14),
            replace(inherited, name="example.org:8443", host="example.org", port=8443, sni="example.org", line=15),
            replace(inherited, name="[2001:db8::1]:8443", host="2001:db8::1", port=8443, line=16),
            replace(inherited, name="192.0.2.10:443", host="192.0.2.10", line=17),
            TargetConfig(
                name="testpypi",
                host="test.pypi.org",
                port=8443,
                sni="pypi.org",
                labels=(("env", "staging"), ("owner", "packaging"), ("team", "infra")),
                interval=30.0,
                timeout=0.5,
                protocols=(P.TLSv1_2, P.TLSv1_3),
                expect=Expectation(
                    accept=frozenset({P.TLSv1_2}),
                    reject=frozenset({P.TLSv1_0, P.TLSv1_1}),
                    http_ok=frozenset({P.TLSv1_2}),
                ),
                http=HttpCheck(path="/simple/"),
                line=18,
            ),
            replace(
                inherited,
                name="[2001:db8::2]:443",
                host="2001:db8::2",
                expect=replace(inherited.expect, http_ok=frozenset()),
                http=None,
                line=28,
            ),
            replace(
                inherited,
                name="files.example.org:443",
                host="files.example.org",
                sni="files.example.org",
                http=HttpCheck(),
                line=32,
            ),
        ),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("3s", 3.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("0.25h", 900.0),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("5x", HINT),
        ("5", HINT),
        ("", HINT),
        ("s", HINT),
        ("1.s", HINT),
        ("5 s", HINT),
        ("1m30s", HINT),
        ("5S", HINT),
        ("0s", "must be greater than 0"),
        ("0.0ms", "must be greater than 0"),
        ("-1s", "must be greater than 0"),
        ("9" * 400 + "h", "too large"),
    ],
)
def test_parse_duration_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^bad duration ") as info:
        parse_duration(text)
    assert str(info.value).endswith(f": {problem}")


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0.5", 0.5), ("2s", 2.0), ("250ms", 0.25)])
def test_duration_in_config(tmp_path: Path, value: str, seconds: float) -> None:
    assert _target(tmp_path, f"defaults:\n  timeout: {value}\ntargets: [python.org]\n").timeout == seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [("café", "café"), ('"\\u00e9"', "é"), ('"\\U0001F600"', "\U0001f600"), ("😀", "😀"), ('"a\\tb"', "a\tb")],
)
def test_label_values_that_are_utf8(tmp_path: Path, value: str, expected: str) -> None:
    target = _target(tmp_path, f"targets:\n  - host: python.org\n    labels: {{team: {value}}}\n")
    assert target.labels == (("team", expected),)
    assert target.labels[0][1].encode("utf-8")


@pytest.mark.parametrize("name", ["jobs", "instance_id", "les", "quantiles", "Job"])
def test_label_names_near_the_reserved_ones(tmp_path: Path, name: str) -> None:
    target = _target(tmp_path, f"targets:\n  - host: python.org\n    labels: {{{name}: x}}\n")
    assert target.labels == ((name, "x"),)


@pytest.mark.parametrize(
    "host",
    [
        "a" * 63 + ".example",
        ".".join(["a" * 63] * 3 + ["b" * 61]),  # 253 characters
        ".".join(["a" * 63] * 3 + ["b" * 61]) + ".",
        "a-b.example",
        "xn--bcher-kva.example",
        "_dmarc.example.org",
        "1.example",
    ],
)
def test_host_names_within_dns_rules(tmp_path: Path, host: str) -> None:
    target = _target(tmp_path, f"targets:\n  - host: {host}\n    sni: {host}\n")
    assert (target.host, target.sni) == (host, host)
    host.encode("idna")  # what a sweep does with it


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        ("interval: 24h", 86400.0),
        ("interval: 86400", 86400.0),
        ("interval: 1440m", 86400.0),
        ('interval: "90s"', 90.0),
        ("timeout: 86400.0", 86400.0),
    ],
)
def test_durations_up_to_a_day(tmp_path: Path, line: str, seconds: float) -> None:
    target = _target(tmp_path, f"defaults:\n  {line}\ntargets: [python.org]\n")
    assert seconds in (target.interval, target.timeout)


def test_quoted_sexagesimal_is_a_bad_duration_not_90(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('defaults:\n  interval: "1:30"\ntargets: [python.org]\n')
    assert _error(path).message == f'interval: bad duration "1:30": {HINT}'


@pytest.mark.parametrize(("rate", "expected"), [("0", 0.0), ("1.2e-5", 1.2e-5), ("1.0e+9", 1e9), ("10", 10.0)])
def test_connections_per_second_finite(tmp_path: Path, rate: str, expected: float) -> None:
    config = _load(tmp_path, f"politeness: {{connections_per_second: {rate}}}\ntargets: [python.org]\n")
    assert config.politeness.connections_per_second == expected


def test_max_range_endpoints_up_to_2_24(tmp_path: Path) -> None:
    assert _load(tmp_path, "max_range_endpoints: 16777216\ntargets: [python.org]\n").max_range_endpoints == 2**24


def test_confirm_sweeps(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
defaults:
  confirm_sweeps: 3
targets:
  - inherits.example
  - host: overrides.example
    confirm_sweeps: 1
  - network: 192.0.2.0/30
    confirm_sweeps: 10
""",
    )
    inherits, overrides = config.targets
    assert (inherits.confirm_sweeps, overrides.confirm_sweeps, config.ranges[0].template.confirm_sweeps) == (3, 1, 10)
    assert _target(tmp_path, "targets: [python.org]\n").confirm_sweeps == 2 == TargetConfig("n", "h").confirm_sweeps


@pytest.mark.parametrize(
    ("allow", "is_open"),
    [
        ("[]", False),
        ("['192.0.2.0/24', '*.example.org']", False),
        ("['0.0.0.0/0']", True),
        ("['::/0']", True),
        ("['127.1.2.3/0']", True),  # normalized to 0.0.0.0/0
        ("['*']", True),
        ("['**']", True),
        ("['*.*']", False),
        ("['127.0.0.1', '*']", True),
    ],
)
def test_probe_open_to_everything(tmp_path: Path, allow: str, is_open: bool) -> None:
    config = _load(tmp_path, f"probe: {{allow: {allow}}}\ntargets: [python.org]\n")
    assert config.probe.open_to_everything is is_open


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0s", 0.0), ("30m", 1800.0), ("24h", 86400.0)])
def test_deep_interval(tmp_path: Path, value: str, seconds: float) -> None:
    config = _load(tmp_path, f"defaults:\n  deep_interval: {value}\ntargets:\n  - python.org\n  - host: a.example\n")
    assert [t.deep_interval for t in config.targets] == [seconds, seconds]
    assert _target(tmp_path, "targets: [python.org]\n").deep_interval == 6 * 3600


def test_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", encoding="ascii")
    config = _load(
        tmp_path, f"defaults:\n  ca_file: {ca}\ntargets:\n  - python.org\n  - host: b.example\n    ca_file: {ca}\n"
    )
    assert [t.ca_file for t in config.targets] == [str(ca), str(ca)]
    assert _target(tmp_path, "targets: [python.org]\n").ca_file is None


def test_clients_expect_list_and_http_match(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "clients:\n"
        "  pos-terminal: {protocols: [TLSv1.0], ciphers: [TLS_RSA_WITH_AES_128_CBC_SHA], sni: false}\n"
        "defaults:\n  clients: [pos-terminal, java8]\n"
        "targets:\n"
        "  - host: python.org\n"
        "    http: {match: 'Brownout of Legacy TLS'}\n"
        "    expect:\n"
        "      - {accept: [TLSv1.2]}\n"
        "      - {reject: [TLSv1.0], from: 2018-06-30, name: pypi-2018}\n"
        "  - {host: b.example, clients: all}\n",
    )
    first, second = config.targets
    assert [c.name for c in first.clients] == ["pos-terminal", "java8"]
    assert first.clients[0].sni is False and first.clients[0].protocols == (Protocol.TLSv1_0,)
    assert first.expect.accept == frozenset({Protocol.TLSv1_2})
    (dated,) = first.deadlines
    assert (dated.name, dated.start, dated.expect.reject) == ("pypi-2018", 1530316800.0, frozenset({Protocol.TLSv1_0}))
    assert first.http is not None and first.http.match == "Brownout of Legacy TLS"
    assert "macos-system-python2.7" in [c.name for c in second.clients] and "pos-terminal" in [
        c.name for c in second.clients
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("targets:\n  - {host: a.example, clients: [nokia3310]}\n", 2, 'clients: unknown client profile "nokia3310"'),
        (
            "clients:\n  x: {protocols: [TLSv1.0]}\ntargets: [a.example]\n",
            2,
            'clients.x: missing required key "ciphers"',
        ),
        (
            "clients:\n  x: {protocols: [TLSv1.0], ciphers: [AES128-SHA]}\ntargets: [a.example]\n",
            2,
            'clients.x.ciphers: "AES128-SHA" is not an IANA cipher suite name (TLS_...)',
        ),
        (
            "targets:\n  - host: a.example\n    expect:\n      - {reject: [TLSv1.0], from: soon}\n",
            4,
            'expect.from: expected an ISO 8601 date such as 2018-06-30, got "soon"',
        ),
        ("targets:\n  - {host: a.example, http: {match: '('}}\n", 2, "http.match: not a regular expression"),
    ],
)
def test_clients_and_deadline_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == line and info.value.message.startswith(message), info.value
