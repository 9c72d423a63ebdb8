"""Discovery for network ranges: one plain TCP connect per address:port (no TLS), to find the few that answer.

A blocking loop over non-blocking sockets and the kernel's poller, run in a thread of a worker process: at tens of
thousands of endpoints a second, an asyncio future and callback per connect cost more than the connect itself
(bench/README.md, "Ranges"). Endpoints are pulled from an iterator as slots free up, so a /8 costs the memory of the
window, and a silent address nothing once its connect has timed out.
"""

from __future__ import annotations

import collections
import errno
import resource
import select
import socket
import time
from collections.abc import Callable, Iterable, Iterator

from scanner.config import Politeness
from scanner.results.ranges import RangeTally

Endpoint = tuple[str, int]
# What a connect's error says about the endpoint: refused is an answer (closed); anything else, like no answer at
# all, is silent (unreachable networks and hosts, filtered ports).
_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}
_LOCAL_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS, errno.ENOMEM}
_MAX_POLL_SECONDS = 0.2  # also how soon a cancellation is seen


class _Poller:
    """epoll where there is one, else poll, behind one interface (seconds, writable-or-error events)."""

    def __init__(self) -> None:
        epoll = getattr(select, "epoll", None)
        self._epoll = epoll() if epoll is not None else None
        self._poll = select.poll() if self._epoll is None else None
        self.mask = select.POLLOUT | select.POLLERR | select.POLLHUP

    def register(self, fd: int) -> None:
        (self._epoll or self._poll).register(fd, self.mask)  # type: ignore[union-attr]

    def unregister(self, fd: int) -> None:
        (self._epoll or self._poll).unregister(fd)  # type: ignore[union-attr]

    def poll(self, seconds: float) -> list[tuple[int, int]]:
        if self._epoll is not None:
            events: list[tuple[int, int]] = self._epoll.poll(seconds)
            return events
        assert self._poll is not None
        return self._poll.poll(int(seconds * 1000))

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


def fd_budget() -> int:
    """Sockets this process may open for discovery: half its file descriptor limit, the rest for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // 2)


def discover(
    endpoints: Iterable[Endpoint],
    window: int,
    timeout: float,
    politeness: Politeness,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[list[Endpoint], RangeTally]:
    """Connect to each endpoint once, at most `window` connects in flight and the politeness caps per address;
    return those that accepted, and the tally. Stops early (what was not tried is not counted) once `cancelled()`."""
    run = _Run(window, timeout, politeness)
    try:
        run.run(iter(endpoints), cancelled)
    finally:
        run.close()
    return run.responders, RangeTally(len(run.responders), run.closed, run.silent)


class _Run:
    """One discovery pass: the sockets in flight, the endpoints held back by politeness, and the counts."""

    def __init__(self, window: int, timeout: float, politeness: Politeness) -> None:
        self.window = max(1, min(window, fd_budget()))
        self.timeout = timeout
        self.per_address = politeness.connections_per_address
        self.gap = 1.0 / politeness.connections_per_second if politeness.connections_per_second > 0 else 0.0
        self.poller = _Poller()
        # fd -> (socket, host, port, deadline), oldest first: one timeout for all, so the first is the next to expire
        self.in_flight: collections.OrderedDict[int, tuple[socket.socket, str, int, float]] = collections.OrderedDict()
        self.busy: dict[str, int] = {}  # host -> its connects in flight
        self.turns: dict[str, float] = {}  # host -> monotonic time of its next connect under the rate limit
        self._prune_turns_at = 1024  # past turns are dropped when the table grows past this (amortised O(1))
        self.held: collections.deque[Endpoint] = collections.deque()  # waiting for their address's turn
        self.responders: list[Endpoint] = []
        self.closed = 0
        self.silent = 0

    def run(self, endpoints: Iterator[Endpoint], cancelled: Callable[[], bool]) -> None:
        exhausted = False
        while not cancelled():
            now = time.monotonic()
            self._release_held(now)
            # Pull new endpoints while there is room; the held ones are bounded by the window too.
            while not exhausted and len(self.in_flight) < self.window and len(self.held) < self.window:
                endpoint = next(endpoints, None)
                if endpoint is None:
                    exhausted = True
                elif self._may_start(endpoint[0], now):
                    self._start(endpoint, now)
                else:
                    self.held.append(endpoint)
            if exhausted and not self.in_flight and not self.held:
                return
            self._wait(now)

    def _may_start(self, host: str, now: float) -> bool:
        if self.busy.get(host, 0) >= self.per_address:
            return False
        return not self.gap or self.turns.get(host, 0.0) <= now

    def _release_held(self, now: float) -> None:
        for _ in range(len(self.held)):
            if len(self.in_flight) >= self.window:
                return
            endpoint = self.held.popleft()
            if self._may_start(endpoint[0], now):
                self._start(endpoint, now)
            else:
                self.held.append(endpoint)
        if len(self.turns) > self._prune_turns_at:
            for host in [h for h, at in self.turns.items() if at <= now and h not in self.busy]:
                del self.turns[host]
            self._prune_turns_at = max(1024, 2 * len(self.turns))

    def _start(self, endpoint: Endpoint, now: float) -> None:
        host, port = endpoint
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self._shortage(endpoint, exc.errno)
            return
        sock.setblocking(False)
        code = sock.connect_ex((host, port))
        if code == errno.EINPROGRESS:
            fd = sock.fileno()
            self.in_flight[fd] = (sock, host, port, now + self.timeout)
            self.poller.register(fd)
            self.busy[host] = self.busy.get(host, 0) + 1
            if self.gap:
                self.turns[host] = now + self.gap
            return
        sock.close()
        if code in _LOCAL_SHORTAGE:
            self._shortage(endpoint, code)
            return
        if self.gap:
            self.turns[host] = now + self.gap
        self._count(host, port, code)

    def _shortage(self, endpoint: Endpoint, code: int | None) -> None:
        """Out of sockets or local ports: our limit, not the endpoint's answer. Try it again with a smaller window."""
        if not self.in_flight:
            raise OSError(code, f"cannot open a socket for discovery: {errno.errorcode.get(code or 0, code)}")
        self.window = max(1, len(self.in_flight))
        self.held.appendleft(endpoint)

    def _count(self, host: str, port: int, code: int) -> None:
        if code == 0:
            self.responders.append((host, port))
        elif code in _REFUSED:
            self.closed += 1
        else:
            self.silent += 1

    def _finish(self, fd: int, code: int | None) -> None:
        """The connect on `fd` ended with `code` (None: timed out)."""
        sock, host, port, _ = self.in_flight.pop(fd)
        self.poller.unregister(fd)
        sock.close()
        left = self.busy[host] - 1
        if left:
            self.busy[host] = left
        else:
            del self.busy[host]
        if code is None:
            self.silent += 1
        else:
            self._count(host, port, code)

    def _wait(self, now: float) -> None:
        """Poll until some connect ends, the first deadline passes, or a held endpoint's turn may have come."""
        wait = _MAX_POLL_SECONDS
        if self.in_flight:
            wait = min(wait, max(0.0, self.in_flight[next(iter(self.in_flight))][3] - now))
        if self.held and self.gap:
            wait = min(wait, self.gap)  # a held endpoint's address may have its turn by then
        for fd, _ in self.poller.poll(wait):
            entry = self.in_flight.get(fd)
            if entry is not None:
                self._finish(fd, entry[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        now = time.monotonic()
        while self.in_flight and self.in_flight[fd := next(iter(self.in_flight))][3] <= now:
            self._finish(fd, None)

    def close(self) -> None:
        for sock, *_ in self.in_flight.values():
            sock.close()
        self.in_flight.clear()
        self.poller.close()
