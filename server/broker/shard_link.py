"""One node's pub/sub connection of ``ShardedPubSubBroker`` (``redis_sharded.py``): the
room channels a process reads on that node, ``SSUBSCRIBE`` and ``SUBSCRIBE`` on each, and
the replies read back and handed to the broker (events, the ``sunsubscribe`` of a slot
that moved, the connection lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.domain.limits import PUBSUB_DRAIN_MAX
from server.domain.tasks import stop_tasks
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_topology import Address

if TYPE_CHECKING:
    from server.broker.redis_sharded import ShardedPubSubBroker

DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)
"""What a lost or unreachable node raises."""
_SMESSAGE, _MESSAGE = b"smessage", b"message"
LINK_NAME_PREFIX = "giftwire-broker-"
"""Each link's ``CLIENT SETNAME``: this prefix and the broker's process id."""


class ShardLink:
    """One node's pub/sub connection and the room channels this process reads there.

    Its own client, with no retries: redis-py would otherwise reconnect a broken pub/sub
    connection by itself, to the same address (maybe a demoted or restarted node), and the
    broker would never learn that events were lost.
    """

    def __init__(self, broker: ShardedPubSubBroker, node: Address, timeout_s: float) -> None:
        self.broker = broker
        self.node = node
        self.client = Redis(
            host=node[0],
            port=node[1],
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            # CLIENT LIST on a node shows which process reads which rooms there.
            client_name=f"{LINK_NAME_PREFIX}{broker.process_id}",
        )
        self.pubsub: PubSub = self.client.pubsub()
        self.channels: set[bytes] = set()
        """Rooms subscribed (or being subscribed) here."""
        self.pending: dict[bytes, asyncio.Future[None]] = {}
        self.leaving: dict[bytes, int] = {}
        """Our own SUNSUBSCRIBEs not yet confirmed, per channel: any other ``sunsubscribe``
        is Redis telling us the slot moved away."""
        self.reader: asyncio.Task[None] | None = None
        self.connected = False
        self.closed = False

    async def subscribe(self, channel: bytes, timeout_s: float) -> None:
        """Subscribe ``channel`` here; raises ``MovedError`` (another node owns the slot) or
        a connection error (the link is then lost)."""
        future = asyncio.get_running_loop().create_future()
        self.pending[channel] = future
        self.channels.add(channel)
        try:
            # Classic first: its confirmation comes first, so the shard one covers both.
            await self.pubsub.execute_command("SUBSCRIBE", channel)
            await self.pubsub.execute_command("SSUBSCRIBE", channel)
            if self.reader is None:
                self.reader = asyncio.get_running_loop().create_task(self._read_forever())
            async with asyncio.timeout(timeout_s):
                await future
        except BaseException:
            self.channels.discard(channel)
            if not self.closed:
                with contextlib.suppress(*DOWN):
                    await self.pubsub.execute_command("UNSUBSCRIBE", channel)
            raise
        finally:
            if self.pending.get(channel) is future:
                del self.pending[channel]

    async def leave(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self.leaving[channel] = self.leaving.get(channel, 0) + 1
        with contextlib.suppress(*DOWN):
            await self.pubsub.execute_command("SUNSUBSCRIBE", channel)
            await self.pubsub.execute_command("UNSUBSCRIBE", channel)

    async def close(self) -> None:
        self.closed = True
        await stop_tasks(self.reader)
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def _read_forever(self) -> None:
        try:
            while True:
                try:
                    reply = await self.pubsub.parse_response(block=False, timeout=1.0)
                except redis_errors.ResponseError as e:
                    self._error(e)  # a MOVED answer to a SSUBSCRIBE: the link reads on
                    continue
                self.connected = True
                if reply is not None:
                    self._reply(reply)
                    self._drain()
        except (*DOWN, RuntimeError) as e:
            self.connected = False
            if not self.closed:
                self.broker._link_lost(self, e)

    def _drain(self) -> None:
        """Handle the replies the parser (hiredis) already holds, without a read each
        (``RedisPubSubBroker._dispatch_buffered``: ``get_message`` costs ~15 µs each)."""
        parser = getattr(self.pubsub.connection, "_parser", None)
        gets = getattr(getattr(parser, "_reader", None), "gets", None)
        if gets is None:
            return
        for _ in range(PUBSUB_DRAIN_MAX):
            reply = gets()
            if isinstance(reply, Exception):
                self._error(reply)  # redis-py's own class (MovedError...): its replyError
                continue
            if not isinstance(reply, list):
                return  # no whole reply buffered
            self._reply(reply)

    def _reply(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind in (_SMESSAGE, _MESSAGE) and len(reply) == 3:
            self.broker._event(reply[1], reply[2])
        elif kind == b"ssubscribe":
            future = self.pending.get(reply[1])
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == b"sunsubscribe":
            channel = cast(bytes, reply[1])
            if self.leaving.get(channel, 0) > 0:
                self.leaving[channel] -= 1
                if not self.leaving[channel]:
                    del self.leaving[channel]
            elif channel in self.channels:
                self.channels.discard(channel)
                self.broker._slot_moved(self, channel)

    def _error(self, error: Exception) -> None:
        """An error reply: it answers a pending SSUBSCRIBE (the only command that can fail
        here); a MOVED names its slot, anything else fails every pending one."""
        slot = error.slot_id if isinstance(error, redis_errors.MovedError) else None
        for channel, future in list(self.pending.items()):
            if not future.done() and (slot is None or slot_of(channel.decode()) == slot):
                future.set_exception(error)
