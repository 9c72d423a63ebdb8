"""The tiers: each kind of scan the scanner runs, one module each, and the registry the layers above iterate.

A tier says what it scans and when (with each sweep, or as a ScheduledTier on its own interval from the target's
config), what it records and how its transitions read in the log, which per-target metric families it renders, and
its JSON where it has some.

Imports config, results, engine (reached through tiers.base.Engine) and state (what tiers record into); imported
by output/, web/ and daemon/. The scheduler sweeps on the sweep tier's cadence and plans every ScheduledTier in TIERS;
the metrics render every tier's families, in registry order; report and web call the client-profile and deep
tiers' JSON helpers by name, so their keys keep their places in the documents.

A fourth tier is one module and one line below: a ScheduledTier subclass (interval, scan, record, lines, families)
that keeps its findings with ResultStore.keep() (in memory) and reads them back from TargetStatus.findings. More
only when it needs more: a table in state/statefile.py to survive restarts, a request type in daemon/pool.py to
run in the worker processes, a key in the JSON documents.
"""

from __future__ import annotations

from scanner.tiers.base import ScheduledTier, Tier
from scanner.tiers.clients import CLIENTS
from scanner.tiers.deep import DEEP
from scanner.tiers.sweep import SWEEP
from scanner.tiers.windows import WINDOWS_TIER

TIERS: tuple[Tier, ...] = (
    SWEEP,  # every `interval`: one handshake per protocol version per address
    CLIENTS,  # with each sweep: a handshake as each configured client profile
    DEEP,  # every `deep_interval`: certificates, cipher suites, Mozilla profiles
    WINDOWS_TIER,  # with each sweep and burst: refusal windows and their pattern
)

__all__ = ["TIERS", "ScheduledTier", "Tier"]
