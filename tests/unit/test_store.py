"""The results store: determined states, flips, errors that change nothing, history, and a durable file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from scanner.errors import StateFileError
from scanner.protocols import Protocol
from scanner.results.sweep import ErrorReason
from scanner.state.store import HISTORY_PER_TARGET, ResultStore
from tests.unit.factories import A, E, R, sweep, target

T10, T12 = Protocol.TLSv1_0, Protocol.TLSv1_2


def test_flip_is_a_transition_and_error_keeps_last_state() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    assert store.record(sweep(t, {T10: A, T12: A}, at=100)) == []
    assert store.record(sweep(t, {T10: E, T12: A}, at=200)) == []  # an outage is not a brownout
    status = store.status("t")
    assert status.addresses["127.0.0.1"][T10].state is A
    assert status.addresses["127.0.0.1"][T10].last_change == 100.5
    assert status.errors == {ErrorReason.TIMEOUT: 1}
    flips = store.record(sweep(t, {T10: R, T12: A}, at=300))
    assert [(f.address, f.protocol, f.old, f.new, f.at) for f in flips] == [("127.0.0.1", T10, A, R, 300.5)]
    (status,) = store.snapshot(with_transitions=5)
    assert status.addresses["127.0.0.1"][T10].changes == 1
    assert status.addresses["127.0.0.1"][T12].changes == 0
    assert status.last_success_at == 300.5
    assert [t.new for t in status.transitions] == [R]


def test_removed_targets_vanish_from_snapshot() -> None:
    store = ResultStore(None)
    a, b = target("a"), target("b")
    store.set_targets([a, b])
    store.record(sweep(a, {T10: A}))
    store.record(sweep(b, {T10: A}))
    store.set_targets([b])
    assert [s.target.name for s in store.snapshot()] == ["b"]


def test_state_survives_restart_and_a_change_while_down_counts(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    t = target()
    store = ResultStore(path)
    store.set_targets([t])
    store.record(sweep(t, {T10: A}, at=100))
    store.close()

    store = ResultStore(path)
    store.set_targets([t])
    assert store.status("t").addresses["127.0.0.1"][T10].last_change == 100.5
    flips = store.record(sweep(t, {T10: R}, at=500))
    assert len(flips) == 1
    assert store.status("t").addresses["127.0.0.1"][T10].changes == 1
    store.close()


def test_history_is_bounded(tmp_path: Path) -> None:
    store = ResultStore(str(tmp_path / "s.db"))
    t = target()
    store.set_targets([t])
    for i in range(HISTORY_PER_TARGET + 50):
        store.record(sweep(t, {T10: A if i % 2 else R}, at=float(i)))
    count = store._file._db.execute("SELECT COUNT(*) FROM transition WHERE target = 't'").fetchone()[0]
    assert count == HISTORY_PER_TARGET
    assert store.status("t").addresses["127.0.0.1"][T10].changes == HISTORY_PER_TARGET + 49
    store.close()


def test_corrupt_file_is_set_aside_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    garbage = b"this is not sqlite at all" * 100
    path.write_bytes(garbage)
    store = ResultStore(str(path))
    store.close()
    aside = [p for p in os.listdir(tmp_path) if p.startswith("state.db.unusable-") and not p.endswith(("-wal", "-shm"))]
    assert len(aside) == 1
    assert (tmp_path / aside[0]).read_bytes() == garbage


def test_foreign_sqlite_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.execute("INSERT INTO invoices VALUES (42)")
    db.commit()
    db.close()
    ResultStore(str(path)).close()
    aside = [p for p in os.listdir(tmp_path) if p.startswith("state.db.unusable-") and not p.endswith(("-wal", "-shm"))]
    assert len(aside) == 1
    assert sqlite3.connect(tmp_path / aside[0]).execute("SELECT id FROM invoices").fetchone() == (42,)


def test_each_address_has_its_own_state_and_gone_addresses_are_not_reported() -> None:
    store = ResultStore(None)
    t = target()
    store.set_targets([t])
    store.record(sweep(t, {T10: A}, at=100, more={"127.0.0.2": {T10: A}}))
    flips = store.record(sweep(t, {T10: A}, at=200, more={"127.0.0.2": {T10: R}}))
    assert [(f.address, f.new) for f in flips] == [("127.0.0.2", R)]
    assert store.status("t").addresses["127.0.0.1"][T10].changes == 0
    store.record(sweep(t, {T10: A}, at=300))
    assert list(store.status("t").addresses) == ["127.0.0.1"]


def test_state_file_of_another_format_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = ResultStore(str(path))
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    ResultStore(str(path)).close()
    assert any(p.startswith("state.db.unusable-") for p in os.listdir(tmp_path))


def test_state_file_and_its_wal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    t = target()
    old = os.umask(0)
    try:
        store = ResultStore(str(tmp_path / "state.db"))
        store.set_targets([t])
        store.record(sweep(t, {T10: A}))
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}


def test_snapshot_lists_each_targets_recent_transitions_newest_first() -> None:
    store = ResultStore(None)
    a, b = target("a"), target("b")
    store.set_targets([a, b])
    for i, state in enumerate([A, R, A, R]):
        store.record(sweep(a, {T10: state}, at=100 * i))
    store.record(sweep(b, {T10: A}, at=0))
    store.record(sweep(b, {T10: R}, at=50))
    by_name = {s.target.name: s for s in store.snapshot(with_transitions=2)}
    assert [(t.new, t.at) for t in by_name["a"].transitions] == [(R, 300.5), (A, 200.5)]
    assert [(t.target, t.new) for t in by_name["b"].transitions] == [("b", R)]
    assert all(not s.transitions for s in store.snapshot())


def test_a_full_disk_stops_no_sweep_and_kept_transitions_are_written_later(tmp_path: Path) -> None:
    t = target("t" * 3000)  # a long name: each transition needs a page of its own
    path = str(tmp_path / "state.db")
    store = ResultStore(path)
    store.set_targets([t])
    store.record(sweep(t, {T10: A}, at=0))
    # SQLite's own limit on the file's pages: the same "database or disk is full" a full disk gives.
    pages = store._file._db.execute("PRAGMA page_count").fetchone()[0]
    store._file._db.execute(f"PRAGMA max_page_count = {pages}")
    flips = []
    for i in range(1, 41):
        flips += store.record(sweep(t, {T10: R if i % 2 else A}, at=100 * i))
    assert len(flips) == 40  # every flip seen while nothing could be written
    assert not store.writable and store.write_errors >= 1
    (status,) = store.snapshot()
    assert status.addresses["127.0.0.1"][T10].changes == 40
    store._file._db.execute("PRAGMA max_page_count = 1073741823")
    store.record(sweep(t, {T10: A}, at=5000))  # no flip: only the kept ones are written
    assert store.writable
    store.close()
    reopened = ResultStore(path)
    reopened.set_targets([t])
    (status,) = reopened.snapshot(with_transitions=100)
    assert status.addresses["127.0.0.1"][T10].changes == 40
    assert [x.at for x in status.transitions] == [100.0 * i + 0.5 for i in range(40, 0, -1)]
    reopened.close()


def test_rows_that_are_not_utf8_are_dropped_not_fatal(tmp_path: Path) -> None:
    t = target()
    path = str(tmp_path / "state.db")
    store = ResultStore(path)
    store.set_targets([t])
    store.record(sweep(t, {T10: A, T12: A}))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE protocol_state SET target = CAST(X'74FF' AS TEXT) WHERE protocol = 'TLSv1.0'")
        db.execute(
            "INSERT INTO transition (target, address, protocol, at, old, new) "
            "VALUES ('t', CAST(X'FF' AS TEXT), 'TLSv1.2', 1, 'accepted', 'rejected')"
        )
    reopened = ResultStore(path)
    reopened.set_targets([t])
    (status,) = reopened.snapshot(with_transitions=5)
    assert list(status.addresses["127.0.0.1"]) == [T12]
    assert [x.address for x in status.transitions] == ["\ufffd"]
    reopened.close()


def test_a_format_2_file_is_migrated_with_its_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE protocol_state (target TEXT NOT NULL, address TEXT NOT NULL, protocol TEXT NOT NULL,"
            " state TEXT NOT NULL, last_change REAL NOT NULL, changes INTEGER NOT NULL,"
            " PRIMARY KEY (target, address, protocol));"
            "CREATE TABLE transition (id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL,"
            " address TEXT NOT NULL, protocol TEXT NOT NULL, at REAL NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL);"
            "INSERT INTO protocol_state VALUES ('t', '127.0.0.1', 'TLSv1.0', 'rejected', 50.0, 3);"
            "INSERT INTO transition (target, address, protocol, at, old, new)"
            " VALUES ('t', '127.0.0.1', 'TLSv1.0', 50.0, 'accepted', 'rejected');"
            "PRAGMA application_id = 1414288211; PRAGMA user_version = 2;"
        )
    store = ResultStore(str(path))
    store.set_targets([target()])
    (status,) = store.snapshot(with_transitions=5)
    assert status.addresses["127.0.0.1"][T10].changes == 3
    assert [(x.kind.value, x.new) for x in status.transitions] == [("handshake", "rejected")]
    store.close()
    assert not list(tmp_path.glob("*.unusable-*"))


@pytest.mark.parametrize("case", ["directory", "missing parent"])
def test_a_state_path_that_cannot_hold_the_file_is_refused_untouched(tmp_path: Path, case: str) -> None:
    path = tmp_path / "state.db"
    if case == "directory":
        path.mkdir()
        (path / "inside").write_text("keep")
    else:
        path = tmp_path / "nowhere" / "state.db"
    with pytest.raises(StateFileError, match="directory"):
        ResultStore(str(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["inside", "state.db"] if case == "directory" else [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anything")
def test_a_file_we_may_not_write_is_refused_not_renamed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = ResultStore(str(path))
    store.close()
    path.chmod(0o444)
    with pytest.raises(StateFileError, match="permission denied"):
        ResultStore(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


def test_equal_answers_are_kept_once_across_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets that answered alike share one read-only set of answers in the store (10,000 copies cost ~12 MB);
    different answers stay apart, and the bound on what is remembered changes no answer."""
    from scanner.state import store as store_module

    monkeypatch.setattr(store_module._Answers, "LIMIT", 2)
    store = ResultStore()
    targets = [target(f"t{i}") for i in range(6)]
    store.set_targets(targets)
    first, second = {Protocol.TLSv1_2: A, Protocol.TLSv1_0: R}, {Protocol.TLSv1_2: A, Protocol.TLSv1_0: A}
    expected = [first, first, second, second, {Protocol.TLSv1_2: E}, first]
    for t, states in zip(targets, expected, strict=True):
        store.record(sweep(t, states))
    kept = [store.status(t.name).last_sweep.addresses[0].protocols for t in targets]  # type: ignore[union-attr]
    assert kept[0] is kept[1] and kept[2] is kept[3]
    assert kept[1] is not kept[2] and kept[0] != kept[2]
    assert [{p: r.state for p, r in answers.items()} for answers in kept] == expected
    with pytest.raises(TypeError):
        kept[0][Protocol.TLSv1_3] = kept[0][Protocol.TLSv1_2]  # type: ignore[index]
