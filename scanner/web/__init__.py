"""The daemon's HTTP side: the aiohttp app (app: metrics, status page, API, /probe, health; sd: the http_sd list of
targets) and the web config.

The web config (exporter-toolkit's --web.config.file) is read into a frozen WebConfig by config, with the config
layer's node helpers; tls makes its server SSLContext; guard puts it to work (basic auth users, extra headers, TLS
rotation on reload). Imports config, results, state and output; never the engine or the daemon.
"""
