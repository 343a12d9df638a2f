"""Guests on stage: the Python side of invite_guest, join_stage and leave_stage, and the
recipients of a gift to guests (``send_gift.lua``, ``_guests.lua``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from server.domain.limits import GUESTS_MAX, GUESTS_REMEMBERED_MAX
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName

ALL_GUESTS = "*"
"""A gift's ``to`` naming every guest on stage: split between them."""
STAGE_SEPARATOR = "|"
"""Between a field's kind and the guest id in the stage hash (outside the id alphabet)."""


def stage_rows(fields: dict[str, str]) -> list[dict[str, Any]]:
    """The stage hash's fields as rows: invited and on-stage guests, id order."""
    rows = []
    for guest in sorted(k for k in fields if STAGE_SEPARATOR not in k):
        if fields[guest] == "left":
            continue
        rows.append(
            {
                "user_id": guest,
                "name": fields.get(f"n|{guest}", guest),
                "state": fields[guest],
                "coins": int(fields.get(f"c|{guest}", 0)),
                "diamonds": int(fields.get(f"d|{guest}", 0)),
            }
        )
    return rows


class Guests:
    """The stage of a stream: who is invited, who is on, what each received."""

    def __init__(
        self,
        redis: Redis,
        runner: ScriptRunner,
        keys: Keys,
        redis_errors: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self.redis = redis
        self.runner = runner
        self.keys = keys
        self._redis_errors = redis_errors

    async def _run(self, name: ScriptName, stream_id: str, args: list[str | int]) -> dict[str, Any]:
        k = self.keys
        keys = [k.stream(stream_id), k.guests(stream_id), k.room_channel(stream_id)]
        reply = await self.runner.run(name, keys, [stream_id, *args], order_key=stream_id)
        body, _ = unpack(reply)
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    async def invite(self, *, stream_id: str, creator_id: str, guest_id: str) -> dict[str, Any]:
        """The creator invites ``guest_id``; the ``guests`` event (the stage after)."""
        return await self._run(
            ScriptName.INVITE_GUEST,
            stream_id,
            [creator_id, guest_id, GUESTS_MAX, GUESTS_REMEMBERED_MAX],
        )

    async def join(self, *, stream_id: str, guest_id: str, name: str) -> dict[str, Any]:
        """An invited user goes on stage under ``name``."""
        return await self._run(ScriptName.JOIN_STAGE, stream_id, [guest_id, name])

    async def leave(self, *, stream_id: str, actor_id: str, guest_id: str) -> dict[str, Any]:
        """A guest leaves (``actor_id`` = ``guest_id``), or the creator takes them off."""
        return await self._run(ScriptName.LEAVE_STAGE, stream_id, [actor_id, guest_id])

    async def stage(self, stream_id: str) -> list[dict[str, Any]]:
        """Invited and on-stage guests, id order: {user_id, name, state, coins, diamonds}."""
        async with self._redis_errors():
            raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.guests(stream_id)))
        return stage_rows({key.decode(): value.decode() for key, value in raw.items()})

    async def recipients(self, stream_id: str, to: str) -> list[str]:
        """The guest ids a gift to ``to`` goes to, as the stage reads now (the script checks
        them again: ``guests_changed`` if the stage changed in between)."""
        if to != ALL_GUESTS:
            return [to]
        return [g["user_id"] for g in await self.stage(stream_id) if g["state"] == "on"]
