"""Connections that have not finished their request yet: bounded, timed out, per address.

A connection is *pending* from the moment it is accepted (or its previous keep-alive
response went out) until its request is complete: the whole head and body of an HTTP
request, or, for a WebSocket, until the application accepted or refused the handshake.
A slowloris client sends a request a byte at a time, or never finishes it, on many
connections at once; without these bounds each costs a file descriptor for ever, and a
thousand of them exhaust the process's descriptors (``EMFILE``), after which nobody
connects at all.

The bounds, each with what happens at it:

- ``timeout_s`` per pending period: the connection is closed (an HTTP client that sent
  nothing usable yet first gets ``408 Request Timeout``).
- ``per_address_max`` per client address: one more connection from that address is closed
  at once, before anything is read from it. Other addresses are unaffected.
- ``total_max`` per process: the *oldest* pending connection is closed to make room, so
  that stale connections go first and a fresh client still gets in.

The registry lives in one process and one event loop (uvicorn's); the HTTP protocol
(``uvicorn_http.py``) and the WebSocket protocol (``uvicorn_ws.py``) share it, so a
connection that upgrades moves from one count to the other without leaving it.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass

Expire = Callable[[], None]


@dataclass(frozen=True, slots=True)
class PendingLimits:
    """The bounds above; ``Limits.pending_requests_*`` and ``request_timeout_s``."""

    total_max: int = 512
    per_address_max: int = 128
    timeout_s: float = 10.0


def _descriptors_soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft > 0 else 1 << 20


ACCEPT_BACKLOG_MAX = 2048
"""uvicorn's own default listen backlog, kept where descriptors are plentiful."""


def accept_backlog() -> int:
    """The listen backlog, which asyncio also takes as the most connections it accepts in
    one loop turn. Those are accepted before any of them reaches ``PendingRequests``, and
    closing one takes two more turns: a burst of ``2 × backlog`` sockets beside the pending
    ones must still fit the descriptor limit, or ``accept()`` fails with EMFILE and asyncio
    logs a traceback. An eighth of the limit leaves room for that and for the pending half.
    """
    return max(64, min(ACCEPT_BACKLOG_MAX, _descriptors_soft_limit() // 8))


class PendingRequests:
    """The pending connections of one process (see the module docstring)."""

    __slots__ = ("_by_address", "_entries", "limits", "total_max")

    def __init__(self, limits: PendingLimits) -> None:
        self.limits = limits
        # Half the descriptors at most: the rest are for accepted WebSockets, Redis and
        # files. A cap above the process's own limit would not prevent EMFILE.
        self.total_max = max(1, min(limits.total_max, _descriptors_soft_limit() // 2))
        # Insertion-ordered: the first entry is the oldest pending connection.
        self._entries: dict[object, tuple[str, asyncio.TimerHandle, Expire]] = {}
        self._by_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def admit(self, key: object, address: str, expire: Expire) -> bool:
        """Start a pending period for ``key``; False: its address is at its bound.

        ``expire`` is called once if the period outlasts ``timeout_s`` or the connection is
        evicted to make room; it must close the connection. It is never called after
        ``release``. A key admitted again starts a new period.
        """
        self.release(key)
        if self._by_address.get(address, 0) >= self.limits.per_address_max:
            return False
        while len(self._entries) >= self.total_max:
            oldest = next(iter(self._entries))
            evicted = self._entries[oldest][2]
            self.release(oldest)
            evicted()
        timer = asyncio.get_running_loop().call_later(self.limits.timeout_s, self._expire, key)
        self._entries[key] = (address, timer, expire)
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return True

    def release(self, key: object) -> None:
        """End ``key``'s pending period (its request is complete, or it is gone)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        address, timer, _ = entry
        timer.cancel()
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    def _expire(self, key: object) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            self.release(key)
            entry[2]()


_REGISTRIES: dict[PendingLimits, PendingRequests] = {}
_last: tuple[PendingLimits, PendingRequests] | None = None


def pending_requests(limits: PendingLimits) -> PendingRequests:
    """The process's registry for ``limits`` (one per uvicorn server in practice).

    Called on every handshake step, so the last answer is kept by identity: hashing the
    limits each time would cost more than the lookup.
    """
    global _last
    if _last is not None and _last[0] is limits:
        return _last[1]
    registry = _REGISTRIES.get(limits)
    if registry is None:
        registry = _REGISTRIES[limits] = PendingRequests(limits)
    _last = (limits, registry)
    return registry
