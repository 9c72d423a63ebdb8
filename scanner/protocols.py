"""The SSL/TLS protocol versions the scanner knows, named once for config, JSON and metric labels."""

from __future__ import annotations

import enum


class Protocol(enum.StrEnum):
    """A protocol version, by the name users write in config and read in output."""

    SSLv2 = "SSLv2"
    SSLv3 = "SSLv3"
    TLSv1_0 = "TLSv1.0"
    TLSv1_1 = "TLSv1.1"
    TLSv1_2 = "TLSv1.2"
    TLSv1_3 = "TLSv1.3"


ALL_PROTOCOLS: tuple[Protocol, ...] = tuple(Protocol)
