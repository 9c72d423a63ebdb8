"""The long-running service: the scheduler, the worker processes that run sweeps, reloads (on a signal, or when
watch sees a config file change) and a clean shutdown.

Wires every layer below it together (config → targets → scheduler → engine → state → output/web); nothing imports it
but the CLI.
"""
