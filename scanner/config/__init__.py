"""The config layer: the endpoints file and the web config read, validated and frozen, or refused with `PATH:LINE:`.

Owns the config model (frozen dataclasses), the hardened YAML reader and its node helpers, the validation rules,
the client profiles, and SafeConfig (the live config and its reload status). Imports only the top-level helpers
(errors, protocols, hostport); nothing else in the program is imported here.
"""
