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
        self.config_loaded = True  # the endpoints file's last (re)load
        self.web_config_loaded = True  # the web config's last reload, reported by whoever reloads it
        self.last_success_at = time.time()

    @property
    def reload_successful(self) -> bool:
        """Whether the last (re)load of each file in force succeeded: a bad web config counts as a failed reload."""
        return self.config_loaded and self.web_config_loaded

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
            self.config_loaded = False
            raise
        self.config = config
        self.config_loaded = True
        self.last_success_at = time.time()
        return config
