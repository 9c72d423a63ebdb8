"""What the scans found, as plain frozen values free of sslyze: sweeps (versions, client profiles) and deep scans.

The contract between the engine and its readers (state, output, web); the engine builds a sweep's result here
(results.sweep.ended_sweep). Imports only config and protocols.
"""
