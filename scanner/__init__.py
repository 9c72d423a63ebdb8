"""tls-scanner: which SSL/TLS versions each endpoint accepts, as a Prometheus exporter and a one-shot CLI."""

__version__ = "0.1.0"
