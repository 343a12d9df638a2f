"""The two stores the realtime suites run against, behind one small interface.

``single``: one redis-server, ``RedisPubSubBroker``, gifts sent through the real
``send_gift.lua``. ``cluster``: the loopback Redis Cluster, ``ShardedPubSubBroker``, events
published as the credit leg publishes them (``cluster_feed.py``) until the two legs are
wired into the server. A test asks the backend for brokers and gifts and never looks at
which one it has, so a difference between the modes shows up as a failing test.
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
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.realtime.ports import Broker
from tests.support.cluster_feed import open_stream, publish_gift


class Backend(Protocol):
    name: str

    def broker(self, *, presence_ttl_s: float = 5, timeout_s: float = 2) -> Broker: ...

    async def open_stream(self, stream_id: str, creator_id: str, *, epoch: str = "ep1") -> None:
        """A live stream, with a sender who can pay for every gift the test sends."""
        ...

    async def gift(self, stream_id: str, creator_id: str, sender_id: str | None = None) -> int:
        """One committed gift: its event is in the feed and published; returns its seq."""
        ...

    async def aclose(self) -> None: ...


class SingleBackend:
    name = "single"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._ids = itertools.count()

    @classmethod
    async def open(cls, url: str, keys: Keys) -> SingleBackend:
        ledger = Ledger(Redis.from_url(url), keys=keys)
        await ledger.prepare(load_catalog())
        return cls(ledger)

    def broker(self, *, presence_ttl_s: float = 5, timeout_s: float = 2) -> Broker:
        return RedisPubSubBroker(self.ledger, presence_ttl_s=presence_ttl_s, timeout_s=timeout_s)

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

    async def aclose(self) -> None:
        await self.ledger.redis.aclose()


class ClusterBackend:
    name = "cluster"

    def __init__(self, rooms: ClusterRooms) -> None:
        self.rooms = rooms

    @classmethod
    async def open(cls, startup_urls: Sequence[str], keys: Keys) -> ClusterBackend:
        runner = ClusterScriptRunner(startup_urls, timeout_s=5.0)
        await runner.prepare()
        return cls(ClusterRooms(runner, ClusterKeys(keys.prefix), timeout_s=5.0))

    def broker(self, *, presence_ttl_s: float = 5, timeout_s: float = 2) -> Broker:
        return ShardedPubSubBroker(self.rooms, presence_ttl_s=presence_ttl_s, timeout_s=timeout_s)

    async def open_stream(self, stream_id: str, creator_id: str, *, epoch: str = "ep1") -> None:
        await open_stream(self.rooms, stream_id, creator_id, epoch=epoch)

    async def gift(self, stream_id: str, creator_id: str, sender_id: str | None = None) -> int:
        return await publish_gift(self.rooms, stream_id, creator_id, sender_id or "alice")

    async def aclose(self) -> None:
        await self.rooms.runner.aclose()
