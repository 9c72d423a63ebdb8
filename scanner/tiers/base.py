"""The Tier interface: one kind of scan, and what follows from it in every layer above, in one place."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

from scanner.config import TargetConfig
from scanner.results.deep import DeepResult
from scanner.state.status import TargetStatus, Transition, TransitionKind
from scanner.tiers.series import Add, Family, Labels

if TYPE_CHECKING:  # only named in hints: the store (and sqlite3) stays out of `--once`'s imports
    from scanner.state.store import ResultStore

# Transitions and sweep errors keep the logger they were always logged under: log filters select on its name.
log = logging.getLogger("scanner.daemon.scheduler")

Result = TypeVar("Result")


class Engine(Protocol):
    """What scheduled tiers scan with (scanner.daemon.pool.Sweeper is one: the in-process engine or the workers)."""

    async def deep(self, target: TargetConfig, addresses: Sequence[str]) -> DeepResult: ...


class Tier(ABC):
    """One kind of scan: the transitions it records and how they read in the log, the metric series it renders."""

    name: ClassVar[str]  # in the log and in task names ("sweep", "deep scan")
    families: ClassVar[tuple[Family, ...]] = ()  # its per-target families, in the order they are exposed
    kinds: ClassVar[tuple[TransitionKind, ...]] = ()  # the transitions it records
    daemon_only: ClassVar[bool] = False  # its families need the daemon's history: not in `--once` nor /probe

    def log_transition(self, t: Transition) -> None:
        """Log one of its transitions (a kind in `kinds`), at warning: a change is news."""
        log.warning("%s %s changed: %s -> %s", t.target, t.protocol.value, t.old, t.new)

    @abstractmethod
    def lines(self, status: TargetStatus, at: Labels, add: Add) -> None:
        """Add its metric lines of one target (never called for a range endpoint closed to TCP: those are counted)."""


class ScheduledTier(Tier, Generic[Result]):
    """A tier with a schedule of its own per target, planned in the scheduler's one heap beside the sweeps.

    The first run comes at random within its interval (or keeps the cadence of the last run kept in the store) once
    a sweep found the target's addresses; then every interval, jittered, counted from the start of the last run.
    Runs are cancelled on shutdown: nothing they find is urgent.
    """

    concurrency: ClassVar[int] = 1  # runs in flight at once across all targets

    @abstractmethod
    def interval(self, target: TargetConfig) -> float:
        """Seconds between runs on the target, from its config; 0: off for it."""

    def ready(self, store: ResultStore, name: str) -> bool:
        """Whether it can run on the target yet (the deep scan needs the addresses a sweep found)."""
        return True

    def last_ended_at(self, store: ResultStore, name: str) -> float | None:
        """When its last run on the target ended, as kept in the store (across restarts); None before any."""
        return None

    @abstractmethod
    async def scan(self, engine: Engine, store: ResultStore, target: TargetConfig) -> Result:
        """One run on the target."""

    @abstractmethod
    def record(self, store: ResultStore, result: Result) -> list[Transition]:
        """Keep the run's result in the store; the transitions it showed."""

    def report(self, result: Result, transitions: list[Transition], error: str | None) -> str | None:
        """Log the run (its transitions, its error when it differs from `error`, the one last logged); the error now."""
        for t in transitions:
            self.log_transition(t)
        return None


def log_transitions(tiers: Iterable[Tier], transitions: Iterable[Transition]) -> None:
    """Log each transition in the words of the tier that records its kind (the first tier's for any other)."""
    tiers = list(tiers)
    owners = {kind: tier for tier in tiers for kind in tier.kinds}
    for t in transitions:
        owners.get(t.kind, tiers[0]).log_transition(t)
