"""Helpers of the goal and level tests: catching what a script publishes to the room."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from server.ledger.keys import Keys
from tests.integration.helpers import STREAM

T = TypeVar("T")


async def published(redis: Redis, keys: Keys, action: Awaitable[T]) -> tuple[T, list[Any]]:
    """Run ``action`` and return its result with every room event published meanwhile."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.room_channel(STREAM))
    await pubsub.get_message(timeout=1)
    try:
        result = await action
    finally:
        out = []
        while message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
            out.append(orjson.loads(message["data"]))
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return result, out


def of_type(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if e["type"] == kind]
