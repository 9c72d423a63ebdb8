"""The daemon's HTTP side: the aiohttp app (metrics, status page, API, /probe, health), the web config and its guard.

Imports config, results, state and output; never the engine or the daemon.
"""
