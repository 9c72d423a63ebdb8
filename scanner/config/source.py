"""Reading a config's bytes: a regular file or standard input, bounded in size, refused before any read otherwise."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from scanner.errors import ConfigError

MAX_CONFIG_BYTES = 16 * 1024 * 1024
STDIN = "<stdin>"  # the name of a config read from standard input (`--config -`)
TOO_LARGE = f"config is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"
_FILE_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def names_a_file(path: str) -> bool:
    """Whether a Config.path names a file (not `<stdin>` or another `<...>` source)."""
    return not (path.startswith("<") and path.endswith(">"))


def read_file(path: str | Path, name: str) -> bytes:
    """Read a regular file of at most MAX_CONFIG_BYTES; devices, FIFOs and sockets are refused before any read."""
    try:
        _check_regular(os.stat(path), name)
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, opening it still does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            _check_regular(info, name)
            if info.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(name, 1, TOO_LARGE)
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(name, 1, f"cannot read config: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL character in the path
        raise ConfigError(name, 1, f"cannot read config: {exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(name, 1, TOO_LARGE)
    return data


def _check_regular(info: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(name, 1, "cannot read config: Is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a file")
        raise ConfigError(name, 1, f"cannot read config: {kind}, not a regular file (for standard input use -)")


def read_stdin() -> bytes:
    """Read standard input to its end, at most MAX_CONFIG_BYTES."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise ConfigError(STDIN, 1, "cannot read config: no standard input")
    try:
        data = stream.read(MAX_CONFIG_BYTES + 1) or b""
    except OSError as exc:
        raise ConfigError(STDIN, 1, f"cannot read config: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(STDIN, 1, TOO_LARGE)
    return bytes(data)
