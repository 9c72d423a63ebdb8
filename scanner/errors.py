"""The project's own exceptions, under one base (as sslyze's errors.py): config, TLS files, names, state, workers."""

from __future__ import annotations


class ScannerError(Exception):
    """Base of every error tls-scanner raises on purpose."""


class ConfigError(ScannerError):
    """A config (or web config) that cannot be used; str() is `PATH:LINE: what is wrong`."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class TlsContextError(ScannerError, ValueError):
    """The web config's TLS files or settings cannot make a server SSLContext; `key` names the tls_server_config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class ResolveError(ScannerError):
    """The name did not resolve to any usable address."""


class StateFileError(ScannerError):
    """The state file is not a usable tls-scanner state file."""


class WorkerError(ScannerError):
    """A sweep raised inside a worker process (its traceback is in the worker's log)."""
