"""The SQLite state file: its schema, opening and checking it (a damaged one renamed aside), reading and writing rows.

What survives a restart: the determined states, the client profiles' states, the deep tier's suites, certificates and
last scans, and each target's history of transitions. The in-memory view above it is scanner.state.store.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable

from scanner.config import TargetConfig
from scanner.errors import StateFileError
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult, DeepState, deep_from_dict, deep_to_dict
from scanner.results.sweep import ProtocolState
from scanner.state.status import ProtocolStatus, Transition, TransitionKind
from scanner.state.windows import KEPT_WINDOWS, SeriesRow, WindowKind, WindowRow

# The state file's messages keep the logger they always had: log filters select on it.
log = logging.getLogger("scanner.state.store")

HISTORY_PER_TARGET = 1000
# Marks a state file as ours ("TLSS"), so a foreign SQLite file is never mistaken for one.
_APPLICATION_ID = 0x544C5353
_SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS protocol_state (
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    protocol TEXT NOT NULL,
    state TEXT NOT NULL,
    last_change REAL NOT NULL,
    changes INTEGER NOT NULL,
    http_status INTEGER,
    http_last_change REAL,
    http_changes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (target, address, protocol)
);
CREATE TABLE IF NOT EXISTS transition (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    protocol TEXT NOT NULL,
    at REAL NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'handshake',
    client TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS client_state (
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    client TEXT NOT NULL,
    state TEXT NOT NULL,  -- accepted: the client profile can connect
    last_change REAL NOT NULL,
    changes INTEGER NOT NULL,
    PRIMARY KEY (target, address, client)
);
CREATE INDEX IF NOT EXISTS transition_by_target ON transition (target, id);
CREATE TABLE IF NOT EXISTS deep_state (
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    item TEXT NOT NULL,  -- a protocol (value: its accepted suites, space-separated) or 'certificate' (a fingerprint)
    value TEXT NOT NULL,
    changes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (target, address, item)
);
CREATE TABLE IF NOT EXISTS deep_scan (
    target TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    duration REAL NOT NULL,
    error TEXT,
    addresses TEXT NOT NULL  -- JSON: [[address, what --once --deep puts under "deep"], ...]
);
CREATE TABLE IF NOT EXISTS refusal_series (
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    protocol TEXT NOT NULL,
    kind TEXT NOT NULL,  -- handshake or http
    ended INTEGER NOT NULL DEFAULT 0,  -- refusal windows ended, all time
    accepted_before REAL,  -- the open window, if any: last accepted observation before it
    first_refused REAL,  -- its start (NULL: no window open)
    last_refused REAL,
    PRIMARY KEY (target, address, protocol, kind)
);
CREATE TABLE IF NOT EXISTS refusal_window (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    protocol TEXT NOT NULL,
    kind TEXT NOT NULL,
    accepted_before REAL,
    first_refused REAL NOT NULL,
    last_refused REAL NOT NULL,
    first_accepted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS refusal_window_by_target ON refusal_window (target, id);
"""
# Format 3 -> 4: refusal windows (the two refusal_ tables, created by _SCHEMA like any missing table).
_CERTIFICATE_ITEM = "certificate"
# Format 2 -> 3: HTTP status changes are kept like handshake flips.
_MIGRATE_FROM_2 = """
ALTER TABLE protocol_state ADD COLUMN http_status INTEGER;
ALTER TABLE protocol_state ADD COLUMN http_last_change REAL;
ALTER TABLE protocol_state ADD COLUMN http_changes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transition ADD COLUMN kind TEXT NOT NULL DEFAULT 'handshake';
ALTER TABLE transition ADD COLUMN client TEXT NOT NULL DEFAULT '';
"""

_STATE_COLUMNS = "target, address, protocol, state, last_change, changes, http_status, http_last_change, http_changes"

ProtocolRow = tuple[str, str, str, str, float, int, int | None, float | None, int]
ClientRow = tuple[str, str, str, str, float, int]
Known = dict[str, dict[str, dict[Protocol, ProtocolStatus]]]  # target -> address -> protocol -> status
KnownClients = dict[str, dict[str, dict[str, ProtocolStatus]]]  # target -> address -> client profile -> status
SavedDeep = tuple[float, float, str | None, str]  # a deep_scan row: started_at, duration, error, addresses (JSON)


class StateFile:
    """The state file (an in-memory database with path=None): rows in and out, nothing held above them."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._db = _open_state_file(path)

    def close(self) -> None:
        self._db.close()

    def protocols(self) -> Known:
        """The determined states; an unreadable row is dropped with a warning."""
        # Read as bytes: text that is not UTF-8 (a damaged or edited file) drops its row, not the daemon.
        lenient, self._db.text_factory = self._db.text_factory, bytes
        try:
            rows = self._db.execute(f"SELECT {_STATE_COLUMNS} FROM protocol_state").fetchall()
        finally:
            self._db.text_factory = lenient
        known: Known = {}
        for raw in rows:
            try:
                target, address, protocol, state = (field.decode() for field in raw[:4])
                status = ProtocolStatus(
                    ProtocolState(state),
                    float(raw[4]),
                    int(raw[5]),
                    None if raw[6] is None else int(raw[6]),
                    None if raw[7] is None else float(raw[7]),
                    int(raw[8]),
                )
                known.setdefault(target, {}).setdefault(address, {})[Protocol(protocol)] = status
            except (ValueError, TypeError, AttributeError):
                log.warning("state file: ignoring an unreadable row %r", raw[:3])
        return known

    def clients(self) -> KnownClients:
        """The client profiles' states; an unreadable row is dropped with a warning."""
        known: KnownClients = {}
        for target, address, client, state, last_change, changes in self._db.execute(
            "SELECT target, address, client, state, last_change, changes FROM client_state"
        ):
            try:
                status = ProtocolStatus(ProtocolState(state), float(last_change), int(changes))
            except (ValueError, TypeError):
                log.warning("state file: ignoring an unreadable client row %r", (target, address, client))
                continue
            known.setdefault(target, {}).setdefault(address, {})[client] = status
        return known

    def deep_states(self) -> dict[str, dict[str, DeepState]]:
        """target -> address -> what the deep scans established (suites per version, certificate, change counts)."""
        suites: dict[tuple[str, str], dict[Protocol, frozenset[str]]] = {}
        counts: dict[tuple[str, str], dict[Protocol, int]] = {}
        fingerprints: dict[tuple[str, str], str] = {}
        for target, address, item, value, changes in self._db.execute(
            "SELECT target, address, item, value, changes FROM deep_state"
        ):
            key = (target, address)
            if item == _CERTIFICATE_ITEM:
                fingerprints[key] = value
            elif item in Protocol.__members__.values():
                suites.setdefault(key, {})[Protocol(item)] = frozenset(value.split())
                counts.setdefault(key, {})[Protocol(item)] = int(changes)
        found: dict[str, dict[str, DeepState]] = {}
        for key in suites.keys() | fingerprints.keys():
            state = DeepState(suites.get(key, {}), fingerprints.get(key), counts.get(key, {}))
            found.setdefault(key[0], {})[key[1]] = state
        return found

    def deep_scans(self) -> dict[str, SavedDeep]:
        """target -> its last deep scan as written (decoded by restored_deep once the target is configured)."""
        return {
            target: (float(started), float(duration), error, addresses)
            for target, started, duration, error, addresses in self._db.execute(
                "SELECT target, started_at, duration, error, addresses FROM deep_scan"
            )
        }

    def refusals(self) -> tuple[list[SeriesRow], list[WindowRow]]:
        """Each series' window count and open window; each target's most recent ended windows (oldest first)."""
        series: list[SeriesRow] = []
        for row in self._db.execute(
            "SELECT target, address, protocol, kind, ended, accepted_before, first_refused, last_refused"
            " FROM refusal_series"
        ):
            if _readable_window(row[2], row[3]):
                series.append(row)
        windows: list[WindowRow] = []
        for row in self._db.execute(
            "SELECT target, address, protocol, kind, accepted_before, first_refused, last_refused, first_accepted"
            " FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY target ORDER BY id DESC) AS n FROM refusal_window"
            ") WHERE n <= ? ORDER BY target, id",
            (KEPT_WINDOWS,),
        ):
            if _readable_window(row[2], row[3]):
                windows.append(row)
        return series, windows

    def write(
        self,
        rows: Iterable[ProtocolRow],
        clients: Iterable[ClientRow],
        transitions: list[Transition],
        series: Iterable[SeriesRow] = (),
        windows: Iterable[WindowRow] = (),
    ) -> None:
        """Write states, transitions and refusal windows in one commit, trimming each target's history; raises
        sqlite3.Error."""
        with self._db:
            self._write_refusals(list(series), list(windows))
            self._db.executemany(
                f"INSERT OR REPLACE INTO protocol_state ({_STATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                list(rows),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO client_state (target, address, client, state, last_change, changes)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                list(clients),
            )
            self._db.executemany(
                "INSERT INTO transition (target, address, protocol, at, old, new, kind, client)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (t.target, t.address, t.protocol.value, t.at, t.old, t.new, t.kind.value, t.client)
                    for t in transitions
                ],
            )
            for target in {t.target for t in transitions}:
                self._db.execute(
                    "DELETE FROM transition WHERE target = ? AND id <= "
                    "(SELECT id FROM transition WHERE target = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (target, target, HISTORY_PER_TARGET),
                )

    def _write_refusals(self, series: list[SeriesRow], windows: list[WindowRow]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO refusal_series (target, address, protocol, kind, ended, accepted_before,"
            " first_refused, last_refused) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            series,
        )
        self._db.executemany(
            "INSERT INTO refusal_window (target, address, protocol, kind, accepted_before, first_refused,"
            " last_refused, first_accepted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            windows,
        )
        for target in {w[0] for w in windows}:
            self._db.execute(
                "DELETE FROM refusal_window WHERE target = ? AND id <= "
                "(SELECT id FROM refusal_window WHERE target = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (target, target, HISTORY_PER_TARGET),
            )

    def write_deep(self, result: DeepResult, states: dict[str, DeepState]) -> None:
        """Write a deep scan and the states it left per address in one commit; raises sqlite3.Error."""
        name = result.target.name
        rows: list[tuple[str, str, str, str, int]] = []
        for address in result.addresses:
            state = states[address.address]
            for protocol, accepted in state.cipher_suites.items():
                rows.append(
                    (name, address.address, protocol.value, " ".join(sorted(accepted)), state.changes[protocol])
                )
            if state.fingerprint is not None:
                rows.append((name, address.address, _CERTIFICATE_ITEM, state.fingerprint, 0))
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO deep_state (target, address, item, value, changes) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute(
                "INSERT OR REPLACE INTO deep_scan (target, started_at, duration, error, addresses)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    name,
                    result.started_at,
                    result.duration_seconds,
                    result.error,
                    json.dumps([[a.address, deep_to_dict(a)] for a in result.addresses]),
                ),
            )

    def forget(self, targets: Iterable[str]) -> None:
        """Delete every row of these targets (retired range endpoints); raises sqlite3.Error."""
        names = [(name,) for name in targets]
        with self._db:
            for table in _TARGET_TABLES:
                self._db.executemany(f"DELETE FROM {table} WHERE target = ?", names)

    def transitions(self, limit: int) -> dict[str, tuple[Transition, ...]]:
        """The most recent transitions of every target that has some, newest first, in one query."""
        rows = self._db.execute(
            "SELECT target, address, protocol, at, old, new, kind, client FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY target ORDER BY id DESC) AS n FROM transition"
            ") WHERE n <= ? ORDER BY target, id DESC",
            (limit,),
        ).fetchall()
        found: dict[str, list[Transition]] = {}
        for target, a, p, at, o, n, kind, client in rows:
            transition = Transition(target, a, Protocol(p), at, o, n, TransitionKind(kind), client)
            found.setdefault(target, []).append(transition)
        return {target: tuple(each) for target, each in found.items()}


def _readable_window(protocol: object, kind: object) -> bool:
    if protocol in Protocol.__members__.values() and kind in WindowKind.__members__.values():
        return True
    log.warning("state file: ignoring an unreadable refusal window row (%r, %r)", protocol, kind)
    return False


_TARGET_TABLES = (
    "protocol_state",
    "transition",
    "client_state",
    "deep_state",
    "deep_scan",
    "refusal_series",
    "refusal_window",
)


def restored_deep(target: TargetConfig, saved: SavedDeep) -> DeepResult | None:
    """The target's last deep scan from its deep_scan row (its metrics stay across a restart); None if unreadable."""
    started, duration, error, addresses = saved
    try:
        found = tuple(deep_from_dict(address, data) for address, data in json.loads(addresses))
    except (ValueError, TypeError, KeyError):
        log.warning("state file: ignoring the unreadable last deep scan of %s", target.name)
        return None
    return DeepResult(target, started, duration, found, error)


class _Unusable(Exception):
    """A state file that is ours (or no SQLite file at all) but damaged: it may be renamed aside."""


def _open_state_file(path: str | None) -> sqlite3.Connection:
    """Open (or create) the state file; a damaged one is renamed aside, never deleted.

    Raises StateFileError, touching nothing, when the file cannot be used as it is: a directory, a missing parent,
    no write permission, a full disk. Renaming those aside would lose history that is fine.
    """
    if path is None:
        return _init(sqlite3.connect(":memory:", check_same_thread=False))
    _check_location(path)
    try:
        try:
            return _init(_connect(path))
        except _Unusable as exc:
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
    except (sqlite3.Error, _Unusable) as exc:  # a full disk, an I/O error: the file may be fine
        raise StateFileError(f"cannot use the state file {path}: {exc}") from None


def _check_location(path: str) -> None:
    """Refuse, with the reason, a state path that cannot hold our file."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise StateFileError(f"the state file {path} is a directory")
    if not os.path.isdir(parent):
        raise StateFileError(f"cannot create the state file {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StateFileError(f"cannot write the state file {path}: no write permission on {parent} (SQLite needs it)")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix) and not os.access(path + suffix, os.R_OK | os.W_OK):
            raise StateFileError(f"cannot write the state file {path + suffix}: permission denied")


def _connect(path: str) -> sqlite3.Connection:
    """Open and check the file; _Unusable when it is damaged or not ours."""
    _create_private(path)
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        try:
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _Unusable("integrity check failed")
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:  # not a database, malformed
            raise _Unusable(str(exc)) from None
        if application_id not in (0, _APPLICATION_ID) or (application_id == 0 and tables):
            raise _Unusable("not a tls-scanner state file")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if tables and version == 2:
            with db:
                db.executescript(_MIGRATE_FROM_2)
        elif tables and version not in (3, _SCHEMA_VERSION):
            raise _Unusable(f"state file format {version}, this version reads {_SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    # Text that is not UTF-8 (a damaged or edited file) must not stop a page from rendering.
    db.text_factory = lambda data: data.decode("utf-8", "replace")
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
