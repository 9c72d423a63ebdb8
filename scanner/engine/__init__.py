"""The sweep engine: everything that touches the network, and the only package that imports sslyze and nassl.

Owns name resolution, per-address politeness, where a sweep goes (locate), the sslyze adapter (one handshake), the
sweep of a target and the deep scan. Imports config and results; hands back plain values from scanner.results.
Nothing here is imported at package import time: the daemon's main process loads only what it needs.
"""
