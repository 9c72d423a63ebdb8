"""Metric families and their exposition lines: what each tier renders, written in the text format by hand.

Below scanner.output.metrics (which assembles the whole exposition, formats the values and caches each target's
lines) so that a tier can name its families and label its lines without importing the output layer or
prometheus_client (`--once` starts without it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

FROM_SWEEP = "(from the last sweep, not measured at scrape time)"


@dataclass(frozen=True, eq=False)  # each family is one object: hashed by identity, fast as a dict key
class Family:
    """One metric family: its name as exposed, its type and its help text."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str

    def header(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"


def gauge(name: str, text: str) -> Family:
    """A gauge cached from the last sweep (its help says so)."""
    return Family(name, "gauge", f"{text} {FROM_SWEEP}")


def counter(name: str, text: str) -> Family:
    """A counter cached from the last sweep (its help says so)."""
    return Family(name, "counter", f"{text} {FROM_SWEEP}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def pairs(labels: Mapping[str, str]) -> str:
    """`a="1",b="2"`: the label pairs sorted by name, as prometheus_client writes them."""
    return ",".join(f'{key}="{_escape(labels[key])}"' for key in sorted(labels))


class Labels:
    """A target's labels plus each set of extra ones, written out once however many of its lines use them."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._base = dict(labels)
        self._texts: dict[tuple[tuple[str, str], ...], str] = {}

    def __call__(self, *extra: tuple[str, str]) -> str:
        text = self._texts.get(extra)
        if text is None:
            text = self._texts[extra] = pairs({**self._base, **dict(extra)})
        return text


Add = Callable[[Family, str, float], None]  # add(family, its label pairs as written by Labels, value): one line
