"""The web config at work on every request: basic auth users (bcrypt, cached), extra headers, TLS rotation."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import ssl
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from scanner.errors import ConfigError, TlsContextError
from scanner.web.config import WebConfig
from scanner.web.tls import apply_policy, server_ssl_context

log = logging.getLogger(__name__)

REALM = "tls-scanner"
CACHE_SIZE = 1024


class WebGuard:
    """The current web config at work: TLS context, basic auth and extra headers; swap it with update()."""

    def __init__(self, config: WebConfig, *, cache_size: int = CACHE_SIZE) -> None:
        self._config = config
        self._outer: ssl.SSLContext | None = None
        self._inner: ssl.SSLContext | None = None
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._cache_secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        # One worker: bcrypt is CPU-bound, so wrong passwords queue up instead of taking every core.
        self._bcrypt = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webconfig-bcrypt")

    @property
    def config(self) -> WebConfig:
        """The web config in force."""
        return self._config

    def update(self, config: WebConfig) -> None:
        """Put `config` in force; raise ConfigError (keeping the old one) when the change needs a restart."""
        old = self._config
        if (old.tls is None) != (config.tls is None):
            line = config.tls.line if config.tls is not None else 1
            now = "TLS" if config.tls is not None else "plain HTTP"
            raise ConfigError(
                config.path, line, f"switching the listener to {now} needs a restart; kept the old web config"
            )
        if self._outer is not None and config.tls is not None:
            assert old.tls is not None
            if old.tls.curve is not None and config.tls.curve is None:
                raise ConfigError(
                    config.path,
                    config.tls.line,
                    "removing curve_preferences needs a restart (the curve cannot be unset); kept the old web config",
                )
            try:
                inner = server_ssl_context(config.tls)
            except TlsContextError as exc:
                raise ConfigError(config.path, config.tls.line, exc.message) from None
            # The handshake takes versions, verify mode, options and curve from the listener's context, and the
            # certificate, key, client CAs and ciphers from the one the SNI callback switches to.
            apply_policy(self._outer, config.tls)
            self._inner = inner
        self._config = config
        with self._lock:
            self._cache.clear()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's long-lived context (None without TLS); each handshake switches to the newest config's."""
        tls = self._config.tls
        if tls is None:
            return None
        if self._outer is None:
            self._outer = server_ssl_context(tls)
            self._inner = self._outer
            self._outer.sni_callback = self._on_client_hello
        return self._outer

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: basic auth (401 with WWW-Authenticate) and the extra headers on every response."""
        config = self._config
        response: web.StreamResponse
        try:
            if config.users and not await self._allowed(config, request.headers.get(hdrs.AUTHORIZATION)):
                response = web.Response(
                    status=401, text="401 Unauthorized\n", headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'}
                )
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            _set_headers(exc, config.headers)
            raise
        except Exception:
            log.exception("Error handling request %s %s", request.method, request.path)
            response = web.Response(status=500, text="500 Internal Server Error\n")
        _set_headers(response, config.headers)
        return response

    def headers(self, response: web.StreamResponse) -> None:
        """Add the configured extra headers to a response the handler streams itself (before it is prepared)."""
        _set_headers(response, self.config.headers)

    def close(self) -> None:
        """Stop the bcrypt worker thread."""
        self._bcrypt.shutdown(wait=False, cancel_futures=True)

    def _on_client_hello(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        """SNI callback (called with or without SNI): hand the handshake to the newest config's context."""
        inner = self._inner
        if inner is not None and inner is not ctx:
            sslobj.context = inner

    async def _allowed(self, config: WebConfig, authorization: str | None) -> bool:
        """Whether an Authorization header passes basic auth; a cache miss pays its bcrypt in the worker thread."""
        attempt = self._attempt(config, authorization)
        if attempt is None:
            return False
        if self._cached(attempt):
            return True
        return await asyncio.get_running_loop().run_in_executor(self._bcrypt, self._verify, attempt)

    def _attempt(self, config: WebConfig, authorization: str | None) -> _Attempt | None:
        """Parse the header and pick the hash to check against; None when malformed."""
        credentials = parse_basic_auth(authorization)
        if credentials is None:
            return None
        user, password = credentials
        hashed = config.users.get(user)
        known = hashed is not None
        if hashed is None:
            # An unknown user is checked against a configured user's hash, so the answer takes as long as for a
            # known one (no user enumeration by timing); the result is thrown away.
            hashed = next(iter(config.users.values()))
        mac = hmac.new(self._cache_secret, digestmod=hashlib.sha256)
        for part in (user.encode(), password, hashed):
            mac.update(len(part).to_bytes(4, "big") + part)
        return _Attempt(known, password, hashed, mac.digest())

    def _cached(self, attempt: _Attempt) -> bool:
        """Whether this exact user, password and hash passed before."""
        if not attempt.known:
            return False
        with self._lock:
            if attempt.key in self._cache:
                self._cache.move_to_end(attempt.key)
                return True
        return False

    def _verify(self, attempt: _Attempt) -> bool:
        """One bcrypt (constant-time compare inside checkpw); remember successes only."""
        try:
            ok = bcrypt.checkpw(attempt.password, attempt.hashed)
        except ValueError:  # e.g. a password over bcrypt's 72 bytes
            return False
        if not (ok and attempt.known):
            return False
        with self._lock:
            self._cache[attempt.key] = None
            self._cache.move_to_end(attempt.key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


@dataclass(frozen=True)
class _Attempt:
    """One basic auth try, ready to check."""

    known: bool
    password: bytes
    hashed: bytes
    key: bytes  # cache key: HMAC-SHA-256 of (user, password, hash) under a per-process secret


def parse_basic_auth(authorization: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` -> (user, password); None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _set_headers(response: web.StreamResponse, headers: tuple[tuple[str, str], ...]) -> None:
    """Add the configured headers, unless the handler already sent its headers (a streamed response)."""
    if response.prepared:
        return
    for name, value in headers:
        response.headers[name] = value
