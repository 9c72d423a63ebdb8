"""The config layer: the endpoints file and the web config read, validated and frozen, or refused with `PATH:LINE:`.

Owns the config model (model: frozen dataclasses), the hardened YAML reader and the one set of node helpers both
config files are read with (nodes), the endpoints file's rules (endpoints: top level, targets and ranges; settings:
the per-target keys; policies, hosts, profiles), and SafeConfig (live: the config in force and its reload status).
Imports only the top-level helpers (errors, protocols, hostport); nothing else in the program is imported here.
"""

# Reading the endpoints file (PATH:LINE: errors are scanner.errors.ConfigError)
from scanner.config.endpoints import load_config, parse_config
from scanner.config.hosts import is_ip

# The config in force and its reload status
from scanner.config.live import SafeConfig

# The model: what a validated endpoints file is
from scanner.config.model import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONFIRM_SWEEPS,
    DEFAULT_DEEP_INTERVAL,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_RANGE_ENDPOINTS,
    DEFAULT_TIMEOUT,
    MAX_RANGE_ENDPOINTS,
    MAX_WORKERS,
    AddressMode,
    ClientCertificate,
    Config,
    DatedPolicy,
    Expectation,
    HttpCheck,
    Politeness,
    ProbeSettings,
    RangeConfig,
    Resolver,
    StartTls,
    TargetConfig,
)

# Limits and units every config file shares
from scanner.config.nodes import MAX_DURATION, parse_duration

# Client profiles
from scanner.config.profiles import ClientProfile, builtin_profiles

# Where an endpoints file comes from
from scanner.config.source import MAX_CONFIG_BYTES, STDIN

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONFIRM_SWEEPS",
    "DEFAULT_DEEP_INTERVAL",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_RANGE_ENDPOINTS",
    "DEFAULT_TIMEOUT",
    "MAX_CONFIG_BYTES",
    "MAX_DURATION",
    "MAX_RANGE_ENDPOINTS",
    "MAX_WORKERS",
    "STDIN",
    "AddressMode",
    "ClientCertificate",
    "ClientProfile",
    "Config",
    "DatedPolicy",
    "Expectation",
    "HttpCheck",
    "Politeness",
    "ProbeSettings",
    "RangeConfig",
    "Resolver",
    "SafeConfig",
    "StartTls",
    "TargetConfig",
    "builtin_profiles",
    "is_ip",
    "load_config",
    "parse_config",
    "parse_duration",
]
