"""Redis going back in time for one stream, the way a restore from an older copy does."""

from __future__ import annotations

from redis.asyncio import Redis

from server.ledger.keys import Keys


class StreamBackup:
    """The stream's hash and feed as they are at ``take``, put back by ``restore``
    (``DUMP``/``RESTORE``, so the feed's last id goes back too). New gifts after the restore
    reuse the sequence numbers given since the copy, as after a real restore."""

    def __init__(self, redis: Redis, keys: Keys, stream_id: str) -> None:
        self.redis = redis
        self.names = [keys.stream(stream_id), keys.feed(stream_id)]
        self.dumps: list[bytes] = []

    async def take(self) -> None:
        self.dumps = [await self.redis.dump(name) for name in self.names]

    async def restore(self) -> None:
        for name, dump in zip(self.names, self.dumps, strict=True):
            await self.redis.restore(name, 0, dump, replace=True)
