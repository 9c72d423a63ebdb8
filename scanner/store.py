"""Latest state per target and protocol, transitions and their history, kept in SQLite so they survive restarts."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scanner.config import TargetConfig
from scanner.policy import Verdict, verdict
from scanner.probe import ErrorReason, ProtocolState, SweepResult
from scanner.protocols import Protocol

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


class StateFileError(Exception):
    """The state file is not a usable tls-scanner state file."""


@dataclass(frozen=True)
class Transition:
    """A protocol flipping between accepted and rejected on one address of a target."""

    target: str
    address: str
    protocol: Protocol
    at: float
    old: ProtocolState
    new: ProtocolState


@dataclass(frozen=True)
class ProtocolStatus:
    """The latest determined state of one protocol of one target."""

    state: ProtocolState  # ACCEPTED or REJECTED, never ERROR: an outage is not a brownout
    last_change: float  # when it last flipped, or when it was first determined
    changes: int  # flips observed


@dataclass(frozen=True)
class TargetStatus:
    """Everything the collector, the web pages and the reports need about one target."""

    target: TargetConfig
    last_sweep: SweepResult | None
    addresses: Mapping[str, Mapping[Protocol, ProtocolStatus]]  # the last sweep's addresses (all known before it)
    last_success_at: float | None
    errors: Mapping[ErrorReason, int]
    verdict: Verdict | None  # from the last sweep; None before the first one
    transitions: tuple[Transition, ...] = field(default=())  # most recent first


class ResultStore:
    """Keeps the latest results in memory, and their durable part in a SQLite file (or nowhere with path=None)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._db = _open_state_file(path)
        self._targets: dict[str, TargetConfig] = {}
        self._last: dict[str, SweepResult] = {}
        self._addresses: dict[str, list[str]] = {}  # the last addresses probed: a DNS outage keeps them
        self._versions: dict[str, int] = {}  # sweeps recorded per target: what a cached rendering was built from
        self._last_success: dict[str, float] = {}
        self._errors: dict[str, Counter[ErrorReason]] = {}
        self._verdicts: dict[str, Verdict] = {}
        # target -> address -> protocol -> status
        self._status: dict[str, dict[str, dict[Protocol, ProtocolStatus]]] = {}
        for target, address, protocol, state, last_change, changes in self._db.execute(
            "SELECT target, address, protocol, state, last_change, changes FROM protocol_state"
        ):
            try:
                status = ProtocolStatus(ProtocolState(state), float(last_change), int(changes))
                self._status.setdefault(target, {}).setdefault(address, {})[Protocol(protocol)] = status
            except ValueError:
                log.warning("state file: ignoring unknown row %r/%r/%r", target, address, protocol)

    def close(self) -> None:
        self._db.close()

    def set_targets(self, targets: Iterable[TargetConfig]) -> None:
        """Declare the configured targets; results of targets no longer configured stop being reported."""
        self._targets = {t.name: t for t in targets}
        for cache in (self._last, self._addresses, self._versions, self._last_success, self._errors, self._verdicts):
            for name in list(cache):
                if name not in self._targets:
                    del cache[name]

    def names(self) -> list[str]:
        """The configured targets' names, in config order."""
        return list(self._targets)

    def target(self, name: str) -> TargetConfig:
        return self._targets[name]

    def version(self, name: str) -> int:
        """Changes whenever a sweep of the target is recorded."""
        return self._versions.get(name, 0)

    def record(self, sweep: SweepResult) -> list[Transition]:
        """Take in one sweep: update the determined states, count flips, and persist them."""
        name = sweep.target.name
        at = sweep.started_at + sweep.duration_seconds
        self._last[name] = sweep
        self._versions[name] = self._versions.get(name, 0) + 1
        if sweep.addresses:
            self._addresses[name] = [a.address for a in sweep.addresses]
        if sweep.complete:
            self._last_success[name] = at
        reasons = {r.reason for r in sweep.protocols.values() if r.reason is not None}
        if sweep.error_reason is not None:
            reasons.add(sweep.error_reason)
        self._errors.setdefault(name, Counter()).update(reasons)
        self._verdicts[name] = verdict(sweep)

        transitions: list[Transition] = []
        rows: list[tuple[str, str, str, str, float, int]] = []
        known = self._status.setdefault(name, {})
        for result in sweep.addresses:
            statuses = known.setdefault(result.address, {})
            for protocol, outcome in result.protocols.items():
                if outcome.state is ProtocolState.ERROR:
                    continue  # keep the last determined state: an outage is not a brownout
                previous = statuses.get(protocol)
                if previous is None:
                    status = ProtocolStatus(outcome.state, at, 0)
                elif previous.state is outcome.state:
                    continue
                else:
                    status = ProtocolStatus(outcome.state, at, previous.changes + 1)
                    transitions.append(Transition(name, result.address, protocol, at, previous.state, outcome.state))
                statuses[protocol] = status
                rows.append(
                    (name, result.address, protocol.value, status.state.value, status.last_change, status.changes)
                )
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

    def transitions(self, target: str, limit: int = 20) -> tuple[Transition, ...]:
        """The most recent transitions of a target, newest first."""
        rows = self._db.execute(
            "SELECT address, protocol, at, old, new FROM transition WHERE target = ? ORDER BY id DESC LIMIT ?",
            (target, limit),
        ).fetchall()
        return tuple(
            Transition(target, a, Protocol(p), at, ProtocolState(o), ProtocolState(n)) for a, p, at, o, n in rows
        )

    def status(self, name: str, with_transitions: int = 0) -> TargetStatus:
        target = self._targets[name]
        last = self._last.get(name)
        known = self._status.get(name, {})
        addresses = self._addresses.get(name)
        current = known if addresses is None else {a: known.get(a, {}) for a in addresses}
        return TargetStatus(
            target=target,
            last_sweep=last,
            addresses={
                address: {p: statuses[p] for p in target.protocols if p in statuses}
                for address, statuses in current.items()
            },
            last_success_at=self._last_success.get(name),
            errors=dict(self._errors.get(name, {})),
            verdict=self._verdicts.get(name),
            transitions=self.transitions(name, with_transitions) if with_transitions else (),
        )

    def snapshot(self, with_transitions: int = 0) -> list[TargetStatus]:
        """The status of every configured target, in config order."""
        return [self.status(name, with_transitions) for name in self._targets]


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


def _init(db: sqlite3.Connection) -> sqlite3.Connection:
    # WAL + synchronous=NORMAL: every commit is atomic, so kill -9 at any moment leaves a readable file.
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    db.executescript(_SCHEMA)
    db.commit()
    return db
