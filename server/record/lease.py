"""A lease in Redis: at most one holder at a time, for at most ``ttl_ms`` without renewal.

The archiver holds one per log so that one process archives while the others stand by.
The lease is an optimisation, not what makes archiving exactly once (the entry id as the
record's key does that): two holders at once, after a holder stalled past its lease,
only archive the same entries twice, and the second insert of each is a replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.domain.errors import UnavailableError

Locate = Callable[[], Awaitable[Redis]]
"""Finds the client of the node that holds the lease key now (cluster mode: the primary of
its slot, after a failover or a slot migration)."""

_MOVED_OR_GONE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.AskError,  # and MovedError: the slot is served by another node now
    redis_errors.ClusterDownError,
    redis_errors.ReadOnlyError,  # the node was demoted to a replica
)


class Lease:
    """``acquire_or_renew()`` before each round of work; ``release()`` when done.

    A failed command raises (the caller retries later). With ``locate`` (cluster mode), a
    connection error, a timeout or a redirection (``MOVED``: the slot has another primary)
    also looks the lease's node up again, so that the next attempt goes to the key's
    current primary instead of the one found at start.
    """

    def __init__(
        self, redis: Redis, key: str, holder: str, *, ttl_ms: int, locate: Locate | None = None
    ) -> None:
        self.redis = redis
        self.key = key
        self.holder = holder.encode()
        self.ttl_ms = ttl_ms
        self.locate = locate

    async def acquire_or_renew(self) -> bool:
        """True if we hold the lease for another ``ttl_ms`` from now."""
        try:
            if await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms):
                return True
            return await self._if_ours(renew=True)
        except _MOVED_OR_GONE:
            await self._relocate()
            raise

    async def release(self) -> None:
        await self._if_ours(renew=False)

    async def _relocate(self) -> None:
        if self.locate is not None:
            # A failure to find it is the next attempt's to report: keep the old client.
            with contextlib.suppress(redis_errors.RedisError, OSError, UnavailableError):
                self.redis = await self.locate()

    async def _if_ours(self, *, renew: bool) -> bool:
        # WATCH makes the check and the write one step: if the key changes in between (it
        # expired and another process took it), EXEC does nothing. No Lua needed for a lease
        # that moves no money.
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.key)
                if await pipe.get(self.key) != self.holder:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                if renew:
                    pipe.pexpire(self.key, self.ttl_ms)  # type: ignore[unused-awaitable]
                else:
                    pipe.delete(self.key)  # type: ignore[unused-awaitable]
                await pipe.execute()
                return True
            except redis_errors.WatchError:
                return False
