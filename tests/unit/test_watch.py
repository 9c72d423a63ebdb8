"""--config.watch: a file is reloaded once per change of its content, however it changed (symlink swaps too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanner.daemon.watch import FileWatch, digest, watch_files


class Reloads:
    """A reload function that counts its calls and answers a given error."""

    def __init__(self, error: str | None = None) -> None:
        self.calls = 0
        self.error = error

    def __call__(self) -> str | None:
        self.calls += 1
        return self.error


def configmap(root: Path, content: str, stamp: str) -> Path:
    """A ConfigMap volume as the kubelet lays it out: `endpoints.yaml` -> `..data/endpoints.yaml`, `..data` ->
    `..STAMP`; a later call swaps `..data` to a new directory atomically, as the kubelet does on an update."""
    data = root / f"..{stamp}"
    data.mkdir()
    (data / "endpoints.yaml").write_text(content)
    link = root / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, root / "..data")
    file = root / "endpoints.yaml"
    if not file.is_symlink():
        file.symlink_to("..data/endpoints.yaml")
    return file


def test_unchanged_file_is_not_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("targets: []\n")
    reload = Reloads()
    watch = FileWatch(lambda: {str(path): reload})
    path.write_text("targets: []\n")  # written again, same content
    assert watch.check() == []
    assert reload.calls == 0


def test_in_place_edit_reloads_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("targets: []\n")
    reload = Reloads()
    watch = FileWatch(lambda: {str(path): reload})
    path.write_text("targets: [a.example]\n")
    assert watch.check() == [str(path)]
    assert watch.check() == []
    assert reload.calls == 1


def test_configmap_data_swap_is_seen(tmp_path: Path) -> None:
    file = configmap(tmp_path, "targets: []\n", "2026_12_04_10_00_00.1")
    reload = Reloads()
    watch = FileWatch(lambda: {str(file): reload})
    before = os.stat(file, follow_symlinks=False)
    configmap(tmp_path, "targets: [a.example]\n", "2026_12_04_10_01_00.2")
    after = os.stat(file, follow_symlinks=False)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # the link itself: untouched
    assert watch.check() == [str(file)]
    assert reload.calls == 1


def test_bad_file_is_reloaded_once_then_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("targets: []\n")
    reload = Reloads(error="c.yaml:1: unknown key")
    watch = FileWatch(lambda: {str(path): reload})
    path.write_text("colour: blue\n")
    for _ in range(5):
        watch.check()
    assert reload.calls == 1  # reported once, not at every check
    path.write_text("targets: []\n")
    watch.check()
    assert reload.calls == 2


def test_vanished_file_is_reloaded_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("targets: []\n")
    reload = Reloads(error="cannot read")
    watch = FileWatch(lambda: {str(path): reload})
    path.unlink()
    assert digest(str(path)) is None
    watch.check()
    watch.check()
    assert reload.calls == 1


def test_each_file_has_its_own_reload(tmp_path: Path) -> None:
    config, web = tmp_path / "c.yaml", tmp_path / "web.yml"
    config.write_text("targets: []\n")
    web.write_text("{}\n")
    reload_config, reload_web = Reloads(), Reloads()
    watch = FileWatch(lambda: {str(config): reload_config, str(web): reload_web})
    web.write_text("basic_auth_users: {}\n")
    assert watch.check() == [str(web)]
    assert (reload_config.calls, reload_web.calls) == (0, 1)


def test_files_sharing_a_reload_changing_together_reload_once(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("old cert\n")
    key.write_text("old key\n")
    reload = Reloads()
    watch = FileWatch(lambda: {str(cert): reload, str(key): reload})
    cert.write_text("new cert\n")
    key.write_text("new key\n")
    assert watch.check() == [str(cert), str(key)]
    assert reload.calls == 1


def test_a_file_new_to_the_watch_is_remembered_not_reloaded(tmp_path: Path) -> None:
    web, cert = tmp_path / "web.yml", tmp_path / "tls.crt"
    web.write_text("{}\n")
    cert.write_text("cert\n")
    reload = Reloads()
    files = {str(web): reload}
    watch = FileWatch(lambda: files)
    files[str(cert)] = reload  # a reload of web.yml named a certificate
    assert watch.check() == []
    cert.write_text("renewed\n")
    assert watch.check() == [str(cert)]
    assert reload.calls == 1


async def test_watch_files_checks_at_each_interval(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("targets: []\n")
    reload = Reloads()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # a fake clock: each tick edits the file, the third one stops
        slept.append(seconds)
        if len(slept) == 3:
            raise StopAsyncIteration
        path.write_text(f"targets: []  # tick {len(slept)}\n")

    with pytest.raises(StopAsyncIteration):
        await watch_files(lambda: {str(path): reload}, interval=0.5, sleep=sleep)
    assert slept == [0.5, 0.5, 0.5]
    assert reload.calls == 2


async def test_watch_files_without_files_returns() -> None:
    await watch_files(dict)
