"""The two stores the realtime suites run against, behind one small interface.

``single``: one redis-server, ``RedisPubSubBroker``, gifts sent through the real
``send_gift.lua``. ``cluster``: the loopback Redis Cluster, ``ShardedPubSubBroker``, gifts
sent through ``ClusterLedger`` (the debit leg, then the credit leg, which ``SPUBLISH``es).
A test asks the backend for brokers and gifts and never looks at which one it has, so a
difference between the modes shows up as a failing test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis

from server.broker.cluster_rooms import ClusterRooms
from server.broker.redis_pubsub import RedisPubSubBroker
from server.broker.redis_sharded import ShardedPubSubBroker
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.realtime.ports import Broker

GENEROUS = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000)


class Backend(Protocol):
    name: str
    server_url: str
    """``GIFTWIRE_REDIS_URL`` for a server process on this store."""
    server_env: dict[str, str]
    """The settings a server process needs beyond the URL (cluster mode)."""

    def broker(self, *, presence_ttl_s: float = 5, timeout_s: float = 2) -> Broker: ...

    async def open_stream(self, stream_id: str, creator_id: str, *, epoch: str = "ep1") -> None:
        """A live stream, with a sender who can pay for every gift the test sends."""
        ...

    async def gift(self, stream_id: str, creator_id: str, sender_id: str | None = None) -> int:
        """One committed gift: its event is in the feed and published; returns its seq."""
        ...

    async def fund(self, user_id: str, coins: int) -> None:
        """A top-up, for a sender who sends through a server."""
        ...

    async def roll_back(self, stream_id: str, creator_id: str, seq: int) -> None:
        """What a restore from an older copy does to one stream: ``seq`` and the feed go
        back to ``seq`` (the next gift reuses the numbers after it)."""
        ...

    async def aclose(self) -> None: ...


async def _roll_back(redis: Redis, stream_key: str, feed_key: str, seq: int) -> None:
    # Written again, not trimmed: a stream remembers its last id, and an older copy of the
    # store would not.
    kept = await redis.xrange(feed_key, min="-", max=f"{seq}-0")
    await redis.delete(feed_key)
    for entry_id, fields in kept:
        await redis.xadd(feed_key, fields, id=entry_id)
    await redis.hset(stream_key, "seq", seq)


class _Gifts:
    """What both backends do the same way through their ledger (``Ledger`` or
    ``ClusterLedger``, whose calls have the same contracts): streams, gifts, top-ups."""

    ledger: Ledger | ClusterLedger

    def __init__(self) -> None:
        self._ids = itertools.count()

    async def open_stream(self, stream_id: str, creator_id: str, *, epoch: str = "ep1") -> None:
        await self.ledger.start_stream(
            stream_id=stream_id, creator_id=creator_id, title="a room", epoch=epoch
        )

    async def gift(self, stream_id: str, creator_id: str, sender_id: str | None = None) -> int:
        n = next(self._ids)
        # A sender per gift: one sender's token bucket (a burst of 20) would refuse the 21st.
        sender_id = sender_id or f"fan{n}"
        await self.ledger.top_up(payment_id=f"pay-{sender_id}-{n}", user_id=sender_id, coins=1)
        receipt = await self.ledger.send_gift(
            client_id=f"g{n}",
            sender_id=sender_id,
            sender_name=sender_id.title(),
            stream_id=stream_id,
            creator_id=creator_id,
            gift_id="rose",
            count=1,
        )
        return receipt.seq

    async def fund(self, user_id: str, coins: int) -> None:
        await self.ledger.top_up(payment_id=f"fund-{user_id}", user_id=user_id, coins=coins)


class SingleBackend(_Gifts):
    name = "single"
    ledger: Ledger
    server_env: dict[str, str] = {}  # noqa: RUF012 (read only)

    def __init__(self, ledger: Ledger, url: str) -> None:
        super().__init__()
        self.ledger = ledger
        self.server_url = url

    @classmethod
    async def open(cls, url: str, keys: Keys) -> SingleBackend:
        ledger = Ledger(Redis.from_url(url), keys=keys, limits=GENEROUS)
        await ledger.prepare(load_catalog())
        return cls(ledger, url)

    def broker(self, *, presence_ttl_s: float = 5, timeout_s: float = 2) -> Broker:
        return RedisPubSubBroker(self.ledger, presence_ttl_s=presence_ttl_s, timeout_s=timeout_s)

    async def roll_back(self, stream_id: str, creator_id: str, seq: int) -> None:
        k = self.ledger.keys
        await _roll_back(self.ledger.redis, k.stream(stream_id), k.feed(stream_id), seq)

    async def aclose(self) -> None:
        await self.ledger.redis.aclose()


class ClusterBackend(_Gifts):
    name = "cluster"
    ledger: ClusterLedger
    server_env = {"GIFTWIRE_REDIS_CLUSTER": "true"}  # noqa: RUF012 (read only)

    def __init__(self, ledger: ClusterLedger, rooms: ClusterRooms, url: str) -> None:
        super().__init__()
        self.ledger = ledger
        self.rooms = rooms
        self.server_url = url

    @classmethod
    async def open(cls, startup_urls: Sequence[str], keys: Keys) -> ClusterBackend:
        runner = ClusterScriptRunner(startup_urls, timeout_s=5.0)
        cluster_keys = ClusterKeys(keys.prefix)
        ledger = ClusterLedger(runner, keys=cluster_keys, limits=GENEROUS)
        await ledger.prepare(load_catalog())
        return cls(ledger, ClusterRooms(ledger, timeout_s=5.0), startup_urls[0])

    def broker(self, *, presence_ttl_s: float = 5, timeout_s: float = 2) -> Broker:
        return ShardedPubSubBroker(self.rooms, presence_ttl_s=presence_ttl_s, timeout_s=timeout_s)

    async def roll_back(self, stream_id: str, creator_id: str, seq: int) -> None:
        k = self.rooms.keys
        stream_key, feed_key = k.stream(creator_id, stream_id), k.feed(creator_id, stream_id)
        await self.rooms.on_slot(stream_key, lambda r: _roll_back(r, stream_key, feed_key, seq))

    async def aclose(self) -> None:
        await self.ledger.aclose()  # closes the runner the rooms share
