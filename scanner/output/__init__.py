"""Rendering results for people and Prometheus: the /metrics collector and the `--once` table, JSON and text.

Imports config, results and state; never the engine, the daemon or the web.
"""
