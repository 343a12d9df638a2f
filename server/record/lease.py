"""A lease in Redis: at most one holder at a time, for at most ``ttl_ms`` without renewal.

The archiver holds one per log so that one process archives while the others stand by.
The lease is an optimisation, not what makes archiving exactly once (the entry id as the
record's key does that): two holders at once, after a holder stalled past its lease,
only archive the same entries twice, and the second insert of each is a replay.
"""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import Redis


class Lease:
    """``acquire_or_renew()`` before each round of work; ``release()`` when done."""

    def __init__(self, redis: Redis, key: str, holder: str, *, ttl_ms: int) -> None:
        self.redis = redis
        self.key = key
        self.holder = holder.encode()
        self.ttl_ms = ttl_ms

    async def acquire_or_renew(self) -> bool:
        """True if we hold the lease for another ``ttl_ms`` from now."""
        if await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            return True
        return await self._if_ours(renew=True)

    async def release(self) -> None:
        await self._if_ours(renew=False)

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
