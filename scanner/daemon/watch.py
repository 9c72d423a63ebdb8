"""--config.watch: reload a config file whose content changed, checked by hash each second.

A hash of the content, not inotify on the file: a Kubernetes ConfigMap volume is a symlink through `..data`, which
the kubelet swaps atomically to a new directory, so the file watched is never written to or moved itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 1.0
Reload = Callable[[], str | None]  # re-reads one file; returns its error, or None when the new content applied


def digest(path: str) -> str | None:
    """The SHA-256 of what `path` (symlinks followed) holds now, or None when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None


class FileWatch:
    """Calls a file's reload when its content differs from the last look, once per change.

    `files` is asked at each check, as a reload may name other files (a web config's new certificate); a file new
    to the watch is only remembered. Files that share a reload (a certificate and its key) changing together reload
    once."""

    def __init__(self, files: Callable[[], Mapping[str, Reload]]) -> None:
        self._files = files
        self._seen = {path: digest(path) for path in files()}

    def check(self) -> list[str]:
        """Reload what changed since the last check; returns the paths that changed."""
        changed: list[str] = []
        reloads: list[Reload] = []
        seen: dict[str, str | None] = {}
        for path, reload in self._files().items():
            seen[path] = now = digest(path)
            if path in self._seen and now != self._seen[path]:
                changed.append(path)
                if reload not in reloads:
                    reloads.append(reload)
        # Remembered before reloading: a bad file is reported once, not at every check, until it changes again.
        self._seen = seen
        for path in changed:
            log.info("%s changed, reloading it", path)
        for reload in reloads:
            reload()
        return changed


async def watch_files(
    files: Callable[[], Mapping[str, Reload]],
    interval: float = WATCH_INTERVAL_SECONDS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Check `files` every `interval` seconds until cancelled, reloading those whose content changed."""
    if not files():
        return
    watch = FileWatch(files)
    while True:
        await sleep(interval)
        watch.check()
