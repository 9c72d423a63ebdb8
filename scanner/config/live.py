"""The config in force and the truth about its last (re)load."""

from __future__ import annotations

import time

from scanner.config.endpoints import load_config
from scanner.config.model import Config
from scanner.config.source import names_a_file
from scanner.errors import ConfigError


class SafeConfig:
    """The config in force and the truth about its last (re)load (blackbox_exporter's SafeConfig)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reload_successful = True
        self.last_success_at = time.time()

    def reload(self) -> Config:
        """Re-read the config file; on ConfigError the old config stays in force.

        A config that did not come from a file (standard input, `<...>` names given to parse_config) cannot be read
        again: it stays in force as it is.
        """
        if not names_a_file(self.config.path):
            return self.config
        try:
            config = load_config(self.config.path)
        except ConfigError:
            self.reload_successful = False
            raise
        self.config = config
        self.reload_successful = True
        self.last_success_at = time.time()
        return config
