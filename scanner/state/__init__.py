"""What the sweeps add up to over time: per-target status and flips (pure), policy verdicts, and the state file.

Imports config and results; never the engine.
"""
