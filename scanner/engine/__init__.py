"""The sweep engine: everything that touches the network; only its sslyze adapter and deep scan import sslyze and nassl.

Owns name resolution (resolve), per-address politeness, where a sweep goes (locate), which hellos a sweep sends and
the interface of the TLS library that sends them (attempts), the sslyze adapter behind that interface (handshake), the
sweep of a target (sweep) and the deep scan (deep). Imports config and results; hands back plain values from
scanner.results. Nothing here is imported at package import time: the daemon's main process loads only what it needs,
and sslyze only once a SweepEngine is made or a deep scan runs.
"""
