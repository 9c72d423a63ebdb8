"""Latest state per target and protocol, transitions and their history, kept in SQLite so they survive restarts."""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from scanner.config import TargetConfig
from scanner.errors import StateFileError
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult, DeepState, deep_changes, deep_from_dict, deep_to_dict
from scanner.results.sweep import ErrorReason, ProtocolResult, ProtocolState, SweepResult
from scanner.state.status import (
    ProtocolStatus,
    TargetStatus,
    Transition,
    TransitionKind,
    advance,
    advance_clients,
    current,
    current_clients,
    ended_at,
    error_reasons,
    retries,
)

log = logging.getLogger(__name__)

HISTORY_PER_TARGET = 1000
# Marks a state file as ours ("TLSS"), so a foreign SQLite file is never mistaken for one.
_APPLICATION_ID = 0x544C5353
_SCHEMA_VERSION = 3
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
"""
_CERTIFICATE_ITEM = "certificate"
# Format 2 -> 3: HTTP status changes are kept like handshake flips.
_MIGRATE_FROM_2 = """
ALTER TABLE protocol_state ADD COLUMN http_status INTEGER;
ALTER TABLE protocol_state ADD COLUMN http_last_change REAL;
ALTER TABLE protocol_state ADD COLUMN http_changes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transition ADD COLUMN kind TEXT NOT NULL DEFAULT 'handshake';
ALTER TABLE transition ADD COLUMN client TEXT NOT NULL DEFAULT '';
"""
# Writes that fail (disk full) are kept for later, up to this many transitions; the latest state per series is
# always kept, so a long outage loses only the oldest history.
MAX_UNWRITTEN_TRANSITIONS = 10_000
_STATE_COLUMNS = "target, address, protocol, state, last_change, changes, http_status, http_last_change, http_changes"
_StateRow = tuple[str, str, str, str, float, int, int | None, float | None, int]


class _Answers:
    """One object per distinct set of answers, shared by the sweeps the store keeps: across a fleet most addresses
    answer alike (the same alert, the same negotiated suite), and at 10,000 targets the copies cost ~12 MB.
    Bounded: forgotten (not the sweeps holding them) when full."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._sets: dict[tuple[tuple[Protocol, ProtocolResult], ...], Mapping[Protocol, ProtocolResult]] = {}

    def sweep(self, sweep: SweepResult) -> SweepResult:
        """`sweep` with each address's answers replaced by an equal shared set."""
        if not sweep.addresses:
            return sweep
        return replace(sweep, addresses=tuple(replace(a, protocols=self._set(a.protocols)) for a in sweep.addresses))

    def _set(self, protocols: Mapping[Protocol, ProtocolResult]) -> Mapping[Protocol, ProtocolResult]:
        key = tuple(protocols.items())
        shared = self._sets.get(key)
        if shared is None:
            if len(self._sets) >= self.LIMIT:
                self._sets.clear()
            shared = self._sets[key] = MappingProxyType(dict(key))
        return shared


@dataclass(slots=True)
class _Record:
    """What the store holds about one configured target besides its determined states."""

    target: TargetConfig
    last_sweep: SweepResult | None = None
    addresses: list[str] | None = None  # the last addresses probed: a DNS outage keeps them
    sweeps: int = 0  # sweeps recorded: what a cached rendering was built from
    last_success_at: float | None = None
    errors: Counter[ErrorReason] = field(default_factory=Counter)
    retries: int = 0
    deep: DeepResult | None = None  # the last deep scan
    deep_scans: int = 0


class ResultStore:
    """Keeps the latest results in memory, and their durable part in a SQLite file (or nowhere with path=None)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._db = _open_state_file(path)
        self._records: dict[str, _Record] = {}
        self.generation = 0  # changes whenever anything a reader sees changes
        # target -> address -> protocol -> status; kept for targets not (yet) configured, as in the file
        self._known: dict[str, dict[str, dict[Protocol, ProtocolStatus]]] = {}
        # target -> address -> client profile -> status (accepted: it can connect)
        self._known_clients: dict[str, dict[str, dict[str, ProtocolStatus]]] = {}
        self._unwritten_client_rows: dict[tuple[str, str, str], tuple[str, str, str, str, float, int]] = {}
        self.writable = True  # whether the last write to the state file succeeded
        self.write_errors = 0  # writes that failed (disk full, I/O error): sweeping goes on in memory
        self._unwritten_rows: dict[tuple[str, str, str], _StateRow] = {}
        self._unwritten_transitions: collections.deque[Transition] = collections.deque(maxlen=MAX_UNWRITTEN_TRANSITIONS)
        self._deep: dict[str, dict[str, DeepState]] = {}  # target -> address -> what the deep scans established
        self._answers = _Answers()
        self._load()
        self._load_clients()
        self._load_deep()
        # target -> its last deep scan as read from the file, until the target is configured
        self._saved_deep: dict[str, tuple[float, float, str | None, str]] = {
            target: (float(started), float(duration), error, addresses)
            for target, started, duration, error, addresses in self._db.execute(
                "SELECT target, started_at, duration, error, addresses FROM deep_scan"
            )
        }

    def _load_clients(self) -> None:
        for target, address, client, state, last_change, changes in self._db.execute(
            "SELECT target, address, client, state, last_change, changes FROM client_state"
        ):
            try:
                status = ProtocolStatus(ProtocolState(state), float(last_change), int(changes))
            except (ValueError, TypeError):
                log.warning("state file: ignoring an unreadable client row %r", (target, address, client))
                continue
            self._known_clients.setdefault(target, {}).setdefault(address, {})[client] = status

    def _load(self) -> None:
        # Read as bytes: text that is not UTF-8 (a damaged or edited file) drops its row, not the daemon.
        lenient, self._db.text_factory = self._db.text_factory, bytes
        try:
            rows = self._db.execute(f"SELECT {_STATE_COLUMNS} FROM protocol_state").fetchall()
        finally:
            self._db.text_factory = lenient
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
                self._known.setdefault(target, {}).setdefault(address, {})[Protocol(protocol)] = status
            except (ValueError, TypeError, AttributeError):
                log.warning("state file: ignoring an unreadable row %r", raw[:3])

    def _load_deep(self) -> None:
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
        for key in suites.keys() | fingerprints.keys():
            state = DeepState(suites.get(key, {}), fingerprints.get(key), counts.get(key, {}))
            self._deep.setdefault(key[0], {})[key[1]] = state

    def _restored_deep(self, target: TargetConfig) -> DeepResult | None:
        """The target's last deep scan from the state file (its metrics stay across a restart)."""
        started, duration, error, addresses = self._saved_deep.pop(target.name)
        try:
            found = tuple(deep_from_dict(address, data) for address, data in json.loads(addresses))
        except (ValueError, TypeError, KeyError):
            log.warning("state file: ignoring the unreadable last deep scan of %s", target.name)
            return None
        return DeepResult(target, started, duration, found, error)

    def _record(self, target: TargetConfig) -> _Record:
        """The target's record, made on its first result (a target recorded before set_targets, in tests)."""
        record = self._records.get(target.name)
        if record is None:
            record = self._records[target.name] = _Record(target)
        return record

    def last_deep_at(self, name: str) -> float | None:
        """When the target's last deep scan ended (kept across restarts), None before any."""
        record = self._records.get(name)
        return None if record is None or record.deep is None else record.deep.ended_at

    def record_deep(self, result: DeepResult) -> list[Transition]:
        """Take in one deep scan: keep it, find suites added or removed and certificates replaced, persist them."""
        name = result.target.name
        record = self._record(result.target)
        record.deep = result
        record.deep_scans += 1
        self.generation += 1
        known = self._deep.setdefault(name, {})
        transitions: list[Transition] = []
        rows: list[tuple[str, str, str, str, int]] = []
        for address in result.addresses:
            state, changes = deep_changes(known.get(address.address), address)
            known[address.address] = state
            for protocol, accepted in state.cipher_suites.items():
                rows.append(
                    (name, address.address, protocol.value, " ".join(sorted(accepted)), state.changes[protocol])
                )
            if state.fingerprint is not None:
                rows.append((name, address.address, _CERTIFICATE_ITEM, state.fingerprint, 0))
            # A certificate change is listed under the highest version the address accepts (Transition needs one).
            highest = max(
                (p for p, s in state.cipher_suites.items() if s), default=Protocol.TLSv1_2, key=list(Protocol).index
            )
            for change in changes:
                kind = TransitionKind.CERTIFICATE if change.protocol is None else TransitionKind.CIPHER
                protocol = change.protocol or highest
                transitions.append(
                    Transition(name, change.address, protocol, result.ended_at, change.old, change.new, kind)
                )
        try:
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
        except sqlite3.Error as exc:  # the in-memory state goes on; the next deep scan writes it again
            self.write_errors += 1
            log.error("cannot write the deep scan of %s to the state file %s: %s", name, self.path, exc)
        self._unwritten_transitions.extend(transitions)
        if self._unwritten_transitions:
            self._write()
        return transitions

    def close(self) -> None:
        self._db.close()

    def set_targets(self, targets: Iterable[TargetConfig]) -> None:
        """Declare the configured targets; results of targets no longer configured stop being reported."""
        records = {}
        for target in targets:
            record = self._records.get(target.name) or _Record(target)
            record.target = target
            if record.deep is None and target.name in self._saved_deep:
                record.deep = self._restored_deep(target)
            records[target.name] = record
        self._records = records
        self.generation += 1

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def names(self) -> list[str]:
        """The configured targets' names, in config order."""
        return list(self._records)

    def target(self, name: str) -> TargetConfig:
        return self._records[name].target

    def version(self, name: str) -> int:
        """Changes whenever a sweep or a deep scan of the target is recorded."""
        record = self._records[name]
        return record.sweeps + record.deep_scans

    def last_addresses(self, name: str) -> list[str] | None:
        """The addresses the target's last sweep probed (kept through a DNS outage); None before any."""
        record = self._records.get(name)
        return None if record is None or record.addresses is None else list(record.addresses)

    def record(self, sweep: SweepResult) -> list[Transition]:
        """Take in one sweep: update the determined states, count flips, and persist them."""
        name = sweep.target.name
        record = self._record(sweep.target)
        record.last_sweep = self._answers.sweep(sweep)
        record.sweeps += 1
        self.generation += 1
        if sweep.addresses:
            record.addresses = [a.address for a in sweep.addresses]
        if sweep.complete:
            record.last_success_at = ended_at(sweep)
        record.errors.update(error_reasons(sweep))
        record.retries += retries(sweep)
        known = self._known.setdefault(name, {})
        changed, transitions = advance(known, sweep)
        for address, statuses in changed.items():
            known.setdefault(address, {}).update(statuses)
            for p, s in statuses.items():
                self._unwritten_rows[(name, address, p.value)] = (
                    name, address, p.value, s.state.value, s.last_change, s.changes,
                    s.http_status, s.http_last_change, s.http_changes,
                )  # fmt: skip
        known_clients = self._known_clients.setdefault(name, {})
        changed_clients, client_transitions = advance_clients(known_clients, sweep)
        for address, by_client in changed_clients.items():
            known_clients.setdefault(address, {}).update(by_client)
            for client, s in by_client.items():
                row = (name, address, client, s.state.value, s.last_change, s.changes)
                self._unwritten_client_rows[(name, address, client)] = row
        transitions += client_transitions
        self._unwritten_transitions.extend(transitions)
        if self._unwritten_rows or self._unwritten_client_rows or self._unwritten_transitions:
            self._write()
        return transitions

    def _write(self) -> None:
        """Write what is pending; on failure keep it for the next sweep, and say so once per change of state."""
        rows, transitions = list(self._unwritten_rows.values()), list(self._unwritten_transitions)
        try:
            with self._db:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO protocol_state ({_STATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO client_state (target, address, client, state, last_change, changes)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    list(self._unwritten_client_rows.values()),
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
        except sqlite3.Error as exc:
            self.write_errors += 1
            if self.writable:
                log.error(
                    "cannot write the state file %s (%s): sweeping goes on, changes are kept until it works",
                    self.path,
                    exc,
                )
            self.writable = False
            return
        if not self.writable:
            log.warning("state file %s writable again: wrote %d kept transitions", self.path, len(transitions))
        self.writable = True
        self._unwritten_rows.clear()
        self._unwritten_client_rows.clear()
        self._unwritten_transitions.clear()

    def transitions(self, limit: int = 20) -> dict[str, tuple[Transition, ...]]:
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

    def status(self, name: str, transitions: tuple[Transition, ...] = ()) -> TargetStatus:
        record = self._records[name]
        return TargetStatus(
            target=record.target,
            last_sweep=record.last_sweep,
            addresses=current(record.target, self._known.get(name, {}), record.addresses),
            last_success_at=record.last_success_at,
            errors=dict(record.errors),
            transitions=transitions,
            clients=current_clients(record.target, self._known_clients.get(name, {}), record.addresses),
            retries=record.retries,
            deep=record.deep,
            deep_states=dict(self._deep.get(name, {})),
        )

    def snapshot(self, with_transitions: int = 0) -> list[TargetStatus]:
        """The status of every configured target, in config order."""
        return list(self.statuses(with_transitions))

    def statuses(self, with_transitions: int = 0) -> Iterator[TargetStatus]:
        """snapshot() one target at a time, for a caller that pauses between them: a target a reload removes
        meanwhile is left out."""
        recent = self.transitions(with_transitions) if with_transitions else {}
        for name in list(self._records):
            if name in self._records:
                yield self.status(name, recent.get(name, ()))


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
        elif tables and version != _SCHEMA_VERSION:
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
