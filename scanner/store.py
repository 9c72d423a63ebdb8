"""Latest state per target and protocol, transitions and their history, kept in SQLite so they survive restarts."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from scanner.config import TargetConfig
from scanner.errors import StateFileError
from scanner.protocols import Protocol
from scanner.results import ErrorReason, ProtocolState, SweepResult
from scanner.status import ProtocolStatus, TargetStatus, Transition, advance, current, ended_at, error_reasons

log = logging.getLogger(__name__)

HISTORY_PER_TARGET = 1000
# Marks a state file as ours ("TLSS"), so a foreign SQLite file is never mistaken for one.
_APPLICATION_ID = 0x544C5353
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS protocol_state (
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    protocol TEXT NOT NULL,
    state TEXT NOT NULL,
    last_change REAL NOT NULL,
    changes INTEGER NOT NULL,
    PRIMARY KEY (target, address, protocol)
);
CREATE TABLE IF NOT EXISTS transition (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    protocol TEXT NOT NULL,
    at REAL NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transition_by_target ON transition (target, id);
"""


@dataclass
class _Record:
    """What the store holds about one configured target besides its determined states."""

    target: TargetConfig
    last_sweep: SweepResult | None = None
    addresses: list[str] | None = None  # the last addresses probed: a DNS outage keeps them
    sweeps: int = 0  # sweeps recorded: what a cached rendering was built from
    last_success_at: float | None = None
    errors: Counter[ErrorReason] = field(default_factory=Counter)


class ResultStore:
    """Keeps the latest results in memory, and their durable part in a SQLite file (or nowhere with path=None)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._db = _open_state_file(path)
        self._records: dict[str, _Record] = {}
        self.generation = 0  # changes whenever anything a reader sees changes
        # target -> address -> protocol -> status; kept for targets not (yet) configured, as in the file
        self._known: dict[str, dict[str, dict[Protocol, ProtocolStatus]]] = {}
        for target, address, protocol, state, last_change, changes in self._db.execute(
            "SELECT target, address, protocol, state, last_change, changes FROM protocol_state"
        ):
            try:
                status = ProtocolStatus(ProtocolState(state), float(last_change), int(changes))
                self._known.setdefault(target, {}).setdefault(address, {})[Protocol(protocol)] = status
            except ValueError:
                log.warning("state file: ignoring unknown row %r/%r/%r", target, address, protocol)

    def close(self) -> None:
        self._db.close()

    def set_targets(self, targets: Iterable[TargetConfig]) -> None:
        """Declare the configured targets; results of targets no longer configured stop being reported."""
        records = {}
        for target in targets:
            record = self._records.get(target.name) or _Record(target)
            record.target = target
            records[target.name] = record
        self._records = records
        self.generation += 1

    def names(self) -> list[str]:
        """The configured targets' names, in config order."""
        return list(self._records)

    def target(self, name: str) -> TargetConfig:
        return self._records[name].target

    def version(self, name: str) -> int:
        """Changes whenever a sweep of the target is recorded."""
        return self._records[name].sweeps

    def record(self, sweep: SweepResult) -> list[Transition]:
        """Take in one sweep: update the determined states, count flips, and persist them."""
        name = sweep.target.name
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = _Record(sweep.target)
        record.last_sweep = sweep
        record.sweeps += 1
        self.generation += 1
        if sweep.addresses:
            record.addresses = [a.address for a in sweep.addresses]
        if sweep.complete:
            record.last_success_at = ended_at(sweep)
        record.errors.update(error_reasons(sweep))
        known = self._known.setdefault(name, {})
        changed, transitions = advance(known, sweep)
        rows: list[tuple[str, str, str, str, float, int]] = []
        for address, statuses in changed.items():
            known.setdefault(address, {}).update(statuses)
            rows.extend((name, address, p.value, s.state.value, s.last_change, s.changes) for p, s in statuses.items())
        if rows:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO protocol_state (target, address, protocol, state, last_change, changes)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.executemany(
                    "INSERT INTO transition (target, address, protocol, at, old, new) VALUES (?, ?, ?, ?, ?, ?)",
                    [(t.target, t.address, t.protocol.value, t.at, t.old.value, t.new.value) for t in transitions],
                )
                if transitions:
                    self._db.execute(
                        "DELETE FROM transition WHERE target = ? AND id <= "
                        "(SELECT id FROM transition WHERE target = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (name, name, HISTORY_PER_TARGET),
                    )
        return transitions

    def transitions(self, limit: int = 20) -> dict[str, tuple[Transition, ...]]:
        """The most recent transitions of every target that has some, newest first, in one query."""
        rows = self._db.execute(
            "SELECT target, address, protocol, at, old, new FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY target ORDER BY id DESC) AS n FROM transition"
            ") WHERE n <= ? ORDER BY target, id DESC",
            (limit,),
        ).fetchall()
        found: dict[str, list[Transition]] = {}
        for target, a, p, at, o, n in rows:
            found.setdefault(target, []).append(
                Transition(target, a, Protocol(p), at, ProtocolState(o), ProtocolState(n))
            )
        return {target: tuple(each) for target, each in found.items()}

    def status(self, name: str, transitions: tuple[Transition, ...] = ()) -> TargetStatus:
        record = self._records[name]
        return TargetStatus(
            target=record.target,
            last_sweep=record.last_sweep,
            addresses=current(record.target, self._known.get(name, {}), record.addresses),
            last_success_at=record.last_success_at,
            errors=dict(record.errors),
            transitions=transitions,
        )

    def snapshot(self, with_transitions: int = 0) -> list[TargetStatus]:
        """The status of every configured target, in config order."""
        recent = self.transitions(with_transitions) if with_transitions else {}
        return [self.status(name, recent.get(name, ())) for name in self._records]


def _open_state_file(path: str | None) -> sqlite3.Connection:
    """Open (or create) the state file; a corrupt or foreign one is renamed aside, never deleted."""
    if path is None:
        return _init(sqlite3.connect(":memory:", check_same_thread=False))
    try:
        return _init(_connect(path))
    except (sqlite3.DatabaseError, StateFileError) as exc:
        aside = f"{path}.unusable-{time.strftime('%Y%m%dT%H%M%S')}"
        n = 1
        while os.path.exists(aside):
            n += 1
            aside = f"{path}.unusable-{time.strftime('%Y%m%dT%H%M%S')}-{n}"
        log.error("state file %s is unusable (%s); moved it to %s and starting with no history", path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
        return _init(_connect(path))


def _connect(path: str) -> sqlite3.Connection:
    _create_private(path)
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id not in (0, _APPLICATION_ID) or (application_id == 0 and tables):
            raise StateFileError("not a tls-scanner state file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if tables and version != _SCHEMA_VERSION:
            raise StateFileError(f"state file format {version}, this version reads {_SCHEMA_VERSION}")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise StateFileError("integrity check failed")
    except BaseException:
        db.close()
        raise
    return db


def _create_private(path: str) -> None:
    """Create a missing state file readable by its owner only, whatever the umask.

    SQLite gives the -wal and -shm files the permissions of the database file, so they are private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # it exists, or SQLite will say why it cannot be opened
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _init(db: sqlite3.Connection) -> sqlite3.Connection:
    # WAL + synchronous=NORMAL: every commit is atomic, so kill -9 at any moment leaves a readable file.
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    db.executescript(_SCHEMA)
    db.commit()
    return db
