"""What the scans found, as plain frozen values free of sslyze: sweeps (versions, client profiles) and deep scans.

The contract between the engine and its readers (state, output, web); imports only config and protocols.
"""
