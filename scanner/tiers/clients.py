"""Client profiles: a handshake as each configured client (its versions, suites, SNI) on each address, with each sweep.

Rides along with the sweep (SweepEngine does both; ResultStore.record keeps both in one commit): no schedule of its
own. Records whether each profile can connect and when that changed; logs a profile losing or regaining an address.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from scanner.results.sweep import ProtocolResult, ProtocolState, SweepResult
from scanner.state.status import TargetStatus, Transition, TransitionKind
from scanner.tiers.base import Tier, log
from scanner.tiers.series import Add, Family, Labels, counter, gauge

CLIENT_COMPATIBLE = gauge(
    "tls_scanner_client_compatible", "1 if the client profile can connect to the address, 0 if it cannot"
)
CLIENT_CHANGES = counter(
    "tls_scanner_client_compatibility_changes_total", "Times the client profile gained or lost the address"
)
CLIENT_LAST_CHANGE = gauge(
    "tls_scanner_client_compatibility_last_change_timestamp_seconds",
    "When the client profile last gained or lost the address, or was first checked",
)


class ClientsTier(Tier):
    """Whether each client profile of a target can connect to each of its addresses."""

    name = "client profiles"
    families: ClassVar[tuple[Family, ...]] = (CLIENT_COMPATIBLE, CLIENT_CHANGES, CLIENT_LAST_CHANGE)
    kinds = (TransitionKind.CLIENT,)

    def log_transition(self, t: Transition) -> None:
        where = f"{t.target} ({t.address})" if t.address else t.target
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t.at))
        if t.new == ProtocolState.REJECTED.value:
            log.warning("%s can no longer connect to %s since %s", t.client, where, since)
        else:
            log.warning("%s can connect to %s again since %s", t.client, where, since)

    def lines(self, status: TargetStatus, at: Labels, add: Add) -> None:
        for address, by_client in status.clients.items():
            for client, state in by_client.items():
                labels = at(("address", address), ("client", client))
                add(CLIENT_COMPATIBLE, labels, 1.0 if state.state is ProtocolState.ACCEPTED else 0.0)
                add(CLIENT_CHANGES, labels, state.changes)
                add(CLIENT_LAST_CHANGE, labels, state.last_change)


CLIENTS = ClientsTier()


def result_json(result: ProtocolResult) -> dict[str, Any]:
    """One profile's answer on one address, for `--once` JSON: can it connect (None: not determined), and why."""
    compatible = None if result.state is ProtocolState.ERROR else result.state is ProtocolState.ACCEPTED
    return {"compatible": compatible, "detail": result.detail}


def verdicts(sweep: SweepResult) -> dict[str, bool | None]:
    """Per client profile, for the target: connects to every address (True), to none or only some (False)."""
    found: dict[str, bool | None] = {}
    for address in sweep.addresses:
        for name, result in address.clients.items():
            ok = None if result.state is ProtocolState.ERROR else result.state is ProtocolState.ACCEPTED
            previous = found.get(name, True)
            found[name] = False if previous is False or ok is False else (None if ok is None else previous)
    return found


def states_json(status: TargetStatus) -> dict[str, Any]:
    """Per address and profile, for the API: whether it can connect, since when, how often that changed."""
    return {
        address: {
            client: {
                "compatible": s.state is ProtocolState.ACCEPTED,
                "last_change": s.last_change,
                "changes": s.changes,
            }
            for client, s in by_client.items()
        }
        for address, by_client in status.clients.items()
    }
