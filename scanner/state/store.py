"""What the scanner knows now: latest state per target, transitions, history, deep results, in memory.

Its durable part goes to (and comes back from) the state file, scanner.state.statefile.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from scanner.config import TargetConfig
from scanner.protocols import Protocol
from scanner.results.deep import DeepResult, DeepState, deep_changes
from scanner.results.sweep import ErrorReason, ProtocolResult, SweepResult
from scanner.state.statefile import (
    HISTORY_PER_TARGET,
    ClientRow,
    Known,
    KnownClients,
    ProtocolRow,
    SavedDeep,
    StateFile,
    restored_deep,
)
from scanner.state.status import (
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
from scanner.state.windows import WindowBook, observations

__all__ = ["HISTORY_PER_TARGET", "MAX_UNWRITTEN_TRANSITIONS", "ResultStore"]

log = logging.getLogger(__name__)

# Writes that fail (disk full) are kept for later, up to this many transitions; the latest state per series is
# always kept, so a long outage loses only the oldest history.
MAX_UNWRITTEN_TRANSITIONS = 10_000


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
    findings: dict[str, object] | None = None  # tier name -> its last result, for tiers kept with keep()
    kept: int = 0  # results kept with keep()
    bursts: int = 0  # burst re-probes recorded


class ResultStore:
    """Keeps the latest results in memory, and their durable part in a SQLite file (or nowhere with path=None)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._file = StateFile(path)
        self._records: dict[str, _Record] = {}
        self.generation = 0  # changes whenever anything a reader sees changes
        # target -> address -> protocol -> status; kept for targets not (yet) configured, as in the file
        self._known: Known = self._file.protocols()
        # target -> address -> client profile -> status (accepted: it can connect)
        self._known_clients: KnownClients = self._file.clients()
        self._unwritten_client_rows: dict[tuple[str, str, str], ClientRow] = {}
        self.writable = True  # whether the last write to the state file succeeded
        self.write_errors = 0  # writes that failed (disk full, I/O error): sweeping goes on in memory
        self._unwritten_rows: dict[tuple[str, str, str], ProtocolRow] = {}
        self._unwritten_transitions: collections.deque[Transition] = collections.deque(maxlen=MAX_UNWRITTEN_TRANSITIONS)
        self._deep: dict[str, dict[str, DeepState]] = self._file.deep_states()  # target -> address -> deep findings
        self._answers = _Answers()
        # target -> its last deep scan as read from the file, until the target is configured
        self._saved_deep: dict[str, SavedDeep] = self._file.deep_scans()
        self._windows = WindowBook()  # refusal windows, every target's
        self._windows.restore(*self._file.refusals())

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
        for address in result.addresses:
            state, changes = deep_changes(known.get(address.address), address)
            known[address.address] = state
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
            self._file.write_deep(result, known)
        except sqlite3.Error as exc:  # the in-memory state goes on; the next deep scan writes it again
            self.write_errors += 1
            log.error("cannot write the deep scan of %s to the state file %s: %s", name, self.path, exc)
        self._unwritten_transitions.extend(transitions)
        if self._unwritten_transitions:
            self._write()
        return transitions

    def close(self) -> None:
        self._windows.flush()  # the open windows' last refusals, written at most once a minute while running
        self._write_pending()
        self._file.close()

    def set_targets(self, targets: Iterable[TargetConfig]) -> None:
        """Declare the configured targets; results of targets no longer configured stop being reported."""
        records = {}
        for target in targets:
            record = self._records.get(target.name) or _Record(target)
            record.target = target
            if record.deep is None and target.name in self._saved_deep:
                record.deep = restored_deep(target, self._saved_deep.pop(target.name))
            records[target.name] = record
        self._records = records
        self.generation += 1

    def remembered(self) -> set[str]:
        """Names with state kept (from the file or this run) that are not configured targets now."""
        held = set(self._known) | set(self._known_clients) | set(self._deep) | set(self._saved_deep)
        return {name for name in held if name not in self._records}

    def forget(self, names: Iterable[str]) -> None:
        """Drop what is known of these targets, in memory and in the state file: range endpoints that no longer
        accept TCP are retired with their state, so the file does not grow with every address ever seen."""
        names = [n for n in names if n not in self._records]
        for name in names:
            for held in (self._known, self._known_clients, self._deep, self._saved_deep):
                held.pop(name, None)
        self._windows.forget(names)
        for key in [k for k in self._unwritten_rows if k[0] in names]:
            del self._unwritten_rows[key]
        for key in [k for k in self._unwritten_client_rows if k[0] in names]:
            del self._unwritten_client_rows[key]
        if not names:
            return
        try:
            self._file.forget(names)
        except sqlite3.Error as exc:
            log.warning("state file: cannot delete the rows of %d retired targets: %s", len(names), exc)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def names(self) -> list[str]:
        """The configured targets' names, in config order."""
        return list(self._records)

    def target(self, name: str) -> TargetConfig:
        return self._records[name].target

    def version(self, name: str) -> int:
        """Changes whenever a result of any tier is recorded for the target."""
        record = self._records[name]
        return record.sweeps + record.deep_scans + record.kept + record.bursts

    def keep(self, tier: str, target: TargetConfig, result: object) -> None:
        """Keep a tier's latest result for the target, in memory (TargetStatus.findings): a tier without tables."""
        record = self._record(target)
        if record.findings is None:
            record.findings = {}
        record.findings[tier] = result
        record.kept += 1
        self.generation += 1

    def last_addresses(self, name: str) -> list[str] | None:
        """The addresses the target's last sweep probed (kept through a DNS outage); None before any."""
        record = self._records.get(name)
        return None if record is None or record.addresses is None else list(record.addresses)

    def record(self, sweep: SweepResult) -> list[Transition]:
        """Take in one sweep: update the determined states, count flips, and persist them."""
        name = sweep.target.name
        record = self._record(sweep.target)
        previous = record.last_sweep
        record.last_sweep = self._answers.sweep(sweep)
        record.sweeps += 1
        self.generation += 1
        if sweep.addresses:
            record.addresses = [a.address for a in sweep.addresses]
        if sweep.complete:
            record.last_success_at = ended_at(sweep)
        record.errors.update(error_reasons(sweep))
        record.retries += retries(sweep)
        transitions = self._advance(sweep, previous)
        known_clients = self._known_clients.setdefault(name, {})
        changed_clients, client_transitions = advance_clients(known_clients, sweep)
        for address, by_client in changed_clients.items():
            known_clients.setdefault(address, {}).update(by_client)
            for client, s in by_client.items():
                row = (name, address, client, s.state.value, s.last_change, s.changes)
                self._unwritten_client_rows[(name, address, client)] = row
        transitions += client_transitions
        self._unwritten_transitions.extend(transitions)
        self._write_pending()
        return transitions

    def record_burst(self, sweep: SweepResult) -> list[Transition]:
        """Take in a burst re-probe (a sweep of one version on one address): its flips and refusal windows count
        like a sweep's; the last sweep, its errors and the per-sweep figures stay those of the last full sweep."""
        record = self._record(sweep.target)
        record.bursts += 1
        self.generation += 1
        transitions = self._advance(sweep, None, burst=True)
        self._unwritten_transitions.extend(transitions)
        self._write_pending()
        return transitions

    def _advance(self, sweep: SweepResult, previous: SweepResult | None, burst: bool = False) -> list[Transition]:
        """The determined states and refusal windows after `sweep` (rows left to write); its transitions."""
        name = sweep.target.name
        known = self._known.setdefault(name, {})
        changed, transitions = advance(known, sweep)
        self._windows.observe(name, observations(known, changed, sweep, previous), burst)
        for address, statuses in changed.items():
            known.setdefault(address, {}).update(statuses)
            for p, s in statuses.items():
                self._unwritten_rows[(name, address, p.value)] = (
                    name, address, p.value, s.state.value, s.last_change, s.changes,
                    s.http_status, s.http_last_change, s.http_changes,
                )  # fmt: skip
        return transitions

    def _write_pending(self) -> None:
        if (
            self._unwritten_rows
            or self._unwritten_client_rows
            or self._unwritten_transitions
            or self._windows.unwritten_series
        ):
            self._write()

    def _write(self) -> None:
        """Write what is pending; on failure keep it for the next sweep, and say so once per change of state."""
        rows, transitions = list(self._unwritten_rows.values()), list(self._unwritten_transitions)
        try:
            self._file.write(
                rows,
                self._unwritten_client_rows.values(),
                transitions,
                self._windows.unwritten_series.values(),
                self._windows.unwritten_windows,
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
        self._windows.unwritten_series.clear()
        self._windows.unwritten_windows.clear()

    def transitions(self, limit: int = 20) -> dict[str, tuple[Transition, ...]]:
        """The most recent transitions of every target that has some, newest first, in one query."""
        return self._file.transitions(limit)

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
            findings=dict(record.findings or {}),
            windows=self._windows.history(name),
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
