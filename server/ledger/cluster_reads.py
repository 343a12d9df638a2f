"""Reads over every shard of a cluster: what the platform earned, what waits in the outboxes.

A sharded value (``cluster_keys``: ``{~N}:platform``, ``{~N}:outbox``) is summed on read.
Each key is read on the primary that owns its slot, all the keys of one primary in one
pipeline, the primaries at once: one round trip per primary for up to 16384 keys. A shard
that does not exist counts as zero.

These reads are not atomic across shards: a transfer that commits while they run may be
counted in one shard and not yet in another. Reconcile runs them on a quiet ledger, as the
single-node reconcile does (``docs/ledger.md``, "Reconciliation"). A MOVED reply (a slot
moved while reading) or a lost connection fails the whole read with ``UnavailableError``
after refreshing the slot map: a read is safe to repeat.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from redis import exceptions as redis_errors

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_runner import Address, ClusterScriptRunner

_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)


class ShardReader:
    def __init__(self, runner: ClusterScriptRunner, *, timeout_s: float) -> None:
        self._runner = runner
        self._timeout_s = timeout_s

    async def sum_field(self, keys: Sequence[str], field: str) -> int:
        """The sum of the integer ``field`` of every hash in ``keys`` (missing: 0)."""
        replies = await self._read(keys, "HGET", field)
        total = 0
        for key, value in replies.items():
            if value is None:
                continue
            if not isinstance(value, bytes) or not value.lstrip(b"-").isdigit():
                raise InvariantError(f"{key}: {field} is {value!r}, not an integer")
            total += int(value)
        return total

    async def lengths(self, keys: Sequence[str]) -> dict[str, int]:
        """XLEN of every stream in ``keys`` that has entries."""
        replies = await self._read(keys, "XLEN")
        return {
            key: int(value) for key, value in replies.items() if isinstance(value, int) and value
        }

    async def _read(self, keys: Sequence[str], command: str, *args: str) -> dict[str, object]:
        if self._runner.stale:
            await self._runner.refresh()
        by_node: dict[Address, list[str]] = defaultdict(list)
        for key in keys:
            by_node[self._runner.primary_of(slot_of(key))].append(key)
        try:
            async with asyncio.timeout(self._timeout_s):
                parts = await asyncio.gather(
                    *(self._read_on(node, part, command, args) for node, part in by_node.items())
                )
        except (*_DOWN, redis_errors.MovedError, redis_errors.ClusterDownError) as e:
            self._runner.mark_stale()
            raise UnavailableError(f"shard read failed: {type(e).__name__}: {e}") from e
        replies: dict[str, object] = {}
        for part in parts:
            replies.update(part)
        return replies

    async def _read_on(
        self, node: Address, keys: list[str], command: str, args: Sequence[str]
    ) -> dict[str, object]:
        async with self._runner.client(node).pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.execute_command(command, key, *args)
            values = await pipe.execute()
        return dict(zip(keys, values, strict=True))
