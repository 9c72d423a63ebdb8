"""The long-running daemon: scheduled sweeps, the HTTP server, SIGHUP reload and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import replace

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector, generate_latest

from scanner.config import AddressMode, Config, SafeConfig, TargetConfig, is_ip
from scanner.daemon.memory import trim_periodically
from scanner.daemon.pool import make_sweeper, worker_count
from scanner.daemon.ranges import Discovery, RangeWatcher, workload
from scanner.daemon.scheduler import Scheduler
from scanner.daemon.watch import Reload, watch_files
from scanner.engine.resolve import resolve
from scanner.engine.sweep import DEADLINE_GRACE_SECONDS
from scanner.errors import ConfigError, ResolveError
from scanner.hostport import join_host_port, parse_host_port, parse_port, split_host_port
from scanner.output.metrics import ScannerMetrics, render_probe
from scanner.state.store import ResultStore
from scanner.targets import ALL, Shard, expand, find_configured, probe_refusal
from scanner.web.app import WebState, make_app, make_runner
from scanner.web.config import WebConfig, load_web_config
from scanner.web.guard import WebGuard

log = logging.getLogger(__name__)

PROBE_DEFAULT_TIMEOUT = 10.0  # seconds, when Prometheus does not say (it sends X-Prometheus-Scrape-Timeout-Seconds)
PROBE_DEADLINE_MARGIN = 0.5
# Connections the kernel queues for accept(): a burst of scrapes beyond the default 128 would drop SYNs, and a
# health check caught in the drop waits a second for its retransmission (the kernel caps it at somaxconn).
LISTEN_BACKLOG = 4096
LOOP_LAG_PROBE_SECONDS = 0.05
LOOP_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`:9913`, `0.0.0.0:9913`, `[::1]:9913` -> (host or None for all interfaces, port)."""
    try:
        host, port = split_host_port(address)
        if port is None:
            raise ValueError("no port")
        return (host or None), parse_port(port)
    except ValueError:
        raise ValueError(f"invalid --web.listen-address {address!r}: expected [HOST]:PORT") from None


class Service:
    """Owns the stages for the daemon's lifetime and swaps the config in on reload."""

    def __init__(
        self, config: Config, state_file: str, shard: Shard | None = None, web_config: WebConfig | None = None
    ) -> None:
        self.safe_config = SafeConfig(config)
        self.web = WebGuard(web_config or WebConfig(path=""))
        self.shard = shard
        self.store = ResultStore(state_file)
        self.workers = worker_count(config.workers, workload(config, shard or ALL))
        self.engine = make_sweeper(self.workers, config.concurrency, config.politeness, config.resolver)
        self.scheduler = Scheduler(self.engine, self.store)
        discovery = Discovery(self.engine, config.concurrency, config.politeness)
        self.ranges = RangeWatcher(discovery, config, shard or ALL, changed=self._apply_targets)
        self._ranged: set[str] = set()  # names of the range endpoints that are targets now
        self.process_registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process_registry)
        PlatformCollector(registry=self.process_registry)
        self.loop_lag = Histogram(
            "tls_scanner_event_loop_lag_seconds",
            "How late the daemon's event loop ran a timer due every 50 ms: a stall holds health checks and scrapes",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.process_registry,
        )
        self.metrics = ScannerMetrics(
            self.store,
            self.safe_config,
            shard,
            also=lambda: generate_latest(self.process_registry),
            ranges=self.ranges.passes,
        )
        self._probes = asyncio.Semaphore(config.probe.max_concurrent)

    @property
    def config(self) -> Config:
        return self.safe_config.config

    @property
    def targets(self) -> tuple[TargetConfig, ...]:
        """The explicit targets of this shard, then the range endpoints found open (a name once)."""
        explicit = expand(self.config, self.shard or ALL)
        names = {t.name for t in explicit}
        found = {t.name: t for t in self.ranges.targets() if t.name not in names}
        return (*explicit, *found.values())

    def _apply_targets(self) -> tuple[TargetConfig, ...]:
        """Hand the targets to the store and the scheduler; range endpoints no longer open are retired with their
        series and state."""
        targets = self.targets
        self.store.set_targets(targets)
        self.scheduler.apply(targets)
        ranged = {t.name for t in targets if t.range is not None}
        # Also what an earlier run kept of endpoints a pass has now found closed or silent (state file rows).
        retired = (self._ranged - ranged) | {n for n in self.store.remembered() if self.ranges.covers(n)}
        self._ranged = ranged
        if retired:
            self.store.forget(retired)
            log.info("retired %d range endpoints that no longer accept TCP", len(retired))
        return targets

    def start(self) -> None:
        _warn_if_open(self.config)
        targets = self._apply_targets()
        self.ranges.start()
        where = f"{self.workers} worker processes" if self.workers else "this process"
        ranges = f" and {len(self.config.ranges)} ranges to discover" if self.config.ranges else ""
        log.info("scanning %d targets%s from %s, handshakes in %s", len(targets), ranges, self.config.path, where)

    def reload(self) -> str | None:
        """Re-read the config and the web config; a bad one changes nothing. Returns the errors, or None."""
        errors = [error for error in (self._reload_web(), self._reload_config()) if error is not None]
        return "; ".join(errors) or None

    def watched_files(self) -> dict[str, Reload]:
        """What --config.watch reloads on a change: the config; the web config and the TLS files it names."""
        files = {self.config.path: self._reload_config}
        web, tls = self.web.config, self.web.config.tls
        named = [] if tls is None else [tls.cert_file, tls.key_file, tls.client_ca_file]
        for path in (web.path, *named):
            if path:
                files[path] = self._reload_web
        return files

    def _reload_web(self) -> str | None:
        path = self.web.config.path
        if not path:
            return None
        try:
            self.web.update(load_web_config(path))
        except ConfigError as exc:
            self.safe_config.web_config_loaded = False
            log.error("web config reload failed, keeping the old web config: %s", exc)
            return str(exc)
        self.safe_config.web_config_loaded = True
        log.info("web config reloaded from %s", path)
        return None

    def _reload_config(self) -> str | None:
        old = self.config
        try:
            config = self.safe_config.reload()
        except ConfigError as exc:
            log.error("config reload failed, keeping the old config: %s", exc)
            return str(exc)
        for key in ("concurrency", "politeness"):
            if getattr(config, key) != getattr(old, key):
                log.warning("%s changes take effect on restart", key)
        if config.probe.max_concurrent != old.probe.max_concurrent:
            self._probes = asyncio.Semaphore(config.probe.max_concurrent)
        self.engine.resolver = config.resolver
        _warn_if_open(config)
        self.ranges.update(config)
        targets = self._apply_targets()
        workers = worker_count(config.workers, workload(config, self.shard or ALL))
        if workers != self.workers:
            log.warning(
                "%d targets call for %d worker processes (%d now): that takes a restart",
                len(targets),
                workers,
                self.workers,
            )
        log.info("config reloaded: %d targets", len(targets))
        return None

    async def probe(self, spec: str, scrape_timeout: float | None) -> tuple[int, str]:
        """Sweep `spec` now for /probe: (HTTP status, metrics text or the reason for refusing)."""
        try:
            target = find_configured(self.config, spec)
            host, port = parse_host_port(spec, default_port=443)
        except ValueError as exc:
            return 400, f"bad target: {exc}\n"
        if target is None and not host:
            return 400, "bad target: empty host\n"
        if self._probes.locked():
            return 429, f"too many probes at once (probe.max_concurrent = {self.config.probe.max_concurrent})\n"
        async with self._probes:
            clock = time.monotonic()
            deadline = (PROBE_DEFAULT_TIMEOUT if scrape_timeout is None else scrape_timeout) - PROBE_DEADLINE_MARGIN
            addresses: list[str] | None = None
            if target is None:
                # Refuse by name before anything is looked up: a refused name costs no DNS query.
                refusal = probe_refusal(self.config.probe.allow, host, None)
                if refusal is None:
                    try:
                        addresses = (
                            await resolve(host, AddressMode.ALL, self.config.resolver, max(deadline, 0.5))
                        ).addresses
                    except ResolveError as exc:
                        refusal = f"cannot resolve {host}: {exc}"
                    else:
                        refusal = probe_refusal(self.config.probe.allow, host, addresses)
                if refusal is not None:
                    return 403, f"refused: {refusal}\n"
                assert port is not None
                target = TargetConfig(
                    name=join_host_port(host, port), host=host, port=port, sni=None if is_ip(host) else host
                )
            # The sweep ends by its timeout + grace, so fit that inside the scrape's deadline.
            left = deadline - (time.monotonic() - clock)
            timeout = max(0.5, min(target.timeout, left - DEADLINE_GRACE_SECONDS))
            sweep = await self.engine.sweep(replace(target, timeout=timeout), addresses)
        return 200, render_probe(sweep)

    async def stop_scanning(self) -> None:
        await self.ranges.stop()
        self.engine.stop()
        await self.scheduler.stop()
        await self.engine.shutdown()


async def _watch_loop_lag(histogram: Histogram) -> None:
    """Observe how late a timer fires, every LOOP_LAG_PROBE_SECONDS: the event loop's stalls, as its users feel them."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_LAG_PROBE_SECONDS
        await asyncio.sleep(LOOP_LAG_PROBE_SECONDS)
        histogram.observe(max(0.0, loop.time() - due))


async def _freeze_long_lived(first_round_done: asyncio.Event) -> None:
    """Exempt what lives as long as the daemon from the garbage collector's full collections: now (modules, the
    config, the targets) and after the first round (each target's record, states and schedule).

    A full collection walks every tracked object and holds the event loop meanwhile: at 10,000 targets 350,000 of them
    took 130-150 ms (health checks and scrapes waiting), though almost none is ever garbage. Frozen objects are still
    freed when their last reference goes; only a reference cycle among them would never be collected."""
    gc.freeze()
    await first_round_done.wait()
    gc.freeze()


def _warn_if_open(config: Config) -> None:
    if config.probe.open_to_everything:
        log.warning(
            "probe.allow in %s opens /probe to every address: whoever reaches this port can make it scan anything"
            " (tls_scanner_probe_open_to_everything 1); narrow it, or protect the endpoint (--web.config.file)",
            config.path,
        )


async def _serve(
    config: Config,
    listen_address: str,
    state_file: str,
    shard: Shard | None,
    web_config: WebConfig | None,
    watch: bool,
) -> None:
    import socket  # kept here: this function is the only user

    host, port = parse_listen_address(listen_address)
    # The port first: a daemon that cannot listen exits before it creates or touches the state file. Bound as
    # asyncio's create_server would (every address of the host, IPv6 sockets v6-only), then served by SockSites.
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise OSError(f"cannot listen on {listen_address}: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # an address family this host cannot use
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(f"cannot listen on {listen_address}: {exc.strerror or exc}") from None
            sock.listen(LISTEN_BACKLOG)
        if not sockets:
            raise OSError(f"cannot listen on {listen_address}: no usable address")
        service = Service(config, state_file, shard, web_config)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise

    state = WebState(
        store=service.store,
        metrics=service.metrics.exposition,
        reload=service.reload,
        ready=lambda: service.scheduler.running,
        probe=service.probe,
        configured=lambda: (*expand(service.config), *service.ranges.targets()),
    )
    runner = make_runner(make_app(state, service.web))
    try:
        await runner.setup()
        ssl_context = service.web.ssl_context()
        for sock in sockets:
            await web.SockSite(runner, sock, ssl_context=ssl_context, backlog=LISTEN_BACKLOG).start()
    except BaseException:
        await runner.cleanup()
        for sock in sockets:
            sock.close()
        service.store.close()
        service.web.close()
        raise
    log.info("listening on %s", listen_address)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    service.start()
    freezer = asyncio.create_task(_freeze_long_lived(service.scheduler.first_round_done))
    trimmer = asyncio.create_task(trim_periodically())
    lag = asyncio.create_task(_watch_loop_lag(service.loop_lag))
    watcher = asyncio.create_task(watch_files(service.watched_files if watch else dict))
    await stop.wait()
    for task in (freezer, trimmer, lag, watcher):
        task.cancel()
    log.info("stopping: waiting for sweeps in flight")
    await service.stop_scanning()
    await runner.cleanup()
    service.store.close()
    service.web.close()
    log.info("stopped")


def serve(
    config: Config,
    listen_address: str,
    state_file: str,
    shard: Shard | None = None,
    web_config: WebConfig | None = None,
    watch: bool = True,
) -> None:
    """Run the daemon until SIGTERM/SIGINT (with `watch`, reloading changed config files); ValueError/OSError when it
    cannot listen."""
    parse_listen_address(listen_address)
    asyncio.run(_serve(config, listen_address, state_file, shard, web_config, watch))
