"""The tiers: each kind of scan the scanner runs, one module each, and the registry the layers above iterate.

A tier says what it scans and when (with each sweep, or on its own interval from the target's config), what it
records and how its transitions read in the log, which per-target metric series it renders, and its JSON where it has
some. The scheduler plans every ScheduledTier from this registry; the metrics render every tier's families.

Layering: above engine/ (which does the handshakes and scan commands), results/ and state/ (what they record in);
below output/, web/ and daemon/, which iterate TIERS and import nothing tier-specific beyond a tier's JSON helpers.

A fourth tier is a module with a Tier (or ScheduledTier) subclass and one line here. It keeps its findings with
ResultStore.keep() (in memory; a tier whose findings must survive a restart adds its table to state/statefile.py)
and reads them back from TargetStatus.findings; a scan that needs a worker process's sslyze adds an Engine method.
"""

from __future__ import annotations

from scanner.tiers.base import ScheduledTier, Tier
from scanner.tiers.clients import CLIENTS
from scanner.tiers.deep import DEEP
from scanner.tiers.sweep import SWEEP

TIERS: tuple[Tier, ...] = (
    SWEEP,  # every `interval`: one handshake per protocol version per address
    CLIENTS,  # with each sweep: a handshake as each configured client profile
    DEEP,  # every `deep_interval`: certificates, cipher suites, Mozilla profiles
)

__all__ = ["TIERS", "ScheduledTier", "Tier"]
