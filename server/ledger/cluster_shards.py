"""Reads and writes over every per-slot shard of a cluster (``cluster_keys``: ``{~N}:...``).

Reads: what the platform earned, what waits in the outboxes. Writes: the same hash into
every slot (the catalog copy that the debit leg reads next to the sender's account).

A sharded value (``cluster_keys``: ``{~N}:platform``, ``{~N}:outbox``) is summed on read.
Each key is read on the primary that owns its slot, all the keys of one primary in one
pipeline, the primaries at once: one round trip per primary for up to 16384 keys. A shard
that does not exist counts as zero.

These reads are not atomic across shards: a transfer that commits while they run may be
counted in one shard and not yet in another. Reconcile runs them on a quiet ledger, as the
single-node reconcile does (``docs/ledger.md``, "Reconciliation"). A MOVED or ASK reply (a
slot moved while reading), CLUSTERDOWN or a lost connection fails the whole command with
``UnavailableError`` and marks the slot map stale, so that the next one reads it again:
every read, and every write here, is safe to repeat.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from redis import exceptions as redis_errors

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_topology import Address, SlotMap
from server.ledger.runner import _bulk

_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)
_NOT_SERVED = (
    redis_errors.AskError,  # MOVED too (a subclass): the slot map is stale
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
)


class Shards:
    def __init__(self, slots: SlotMap, *, timeout_s: float) -> None:
        self._slots = slots
        self._timeout_s = timeout_s

    async def sum_field(self, keys: Sequence[str], field: str) -> int:
        """The sum of the integer ``field`` of every hash in ``keys`` (missing: 0)."""
        replies = await self._each(keys, "HGET", field)
        total = 0
        for key, value in replies.items():
            if value is None:
                continue
            if not isinstance(value, bytes) or not value.lstrip(b"-").isdigit():
                raise InvariantError(f"{key}: {field} is {value!r}, not an integer")
            total += int(value)
        return total

    async def field_of_each(self, keys: Sequence[str], field: str) -> dict[str, bytes | None]:
        """HGET ``field`` of every hash in ``keys`` (None where missing)."""
        replies = await self._each(keys, "HGET", field)
        return {key: value if isinstance(value, bytes) else None for key, value in replies.items()}

    async def lengths(self, keys: Sequence[str]) -> dict[str, int]:
        """XLEN of every stream in ``keys`` that has entries."""
        replies = await self._each(keys, "XLEN")
        return {
            key: int(value) for key, value in replies.items() if isinstance(value, int) and value
        }

    async def script_on_each(
        self, keys: Sequence[str], sha: str, args: Sequence[str | int]
    ) -> dict[str, object]:
        """``EVALSHA sha 1 key *args`` for every key (a one-key script in each slot); the
        reply of each. ``NoScriptError`` when a primary lacks the script (load, repeat)."""
        return await self._each(keys, "EVALSHA", *args, before=(sha, 1))

    async def delete_entries(self, entries: Mapping[str, Sequence[str]]) -> None:
        """``XDEL key id...`` for each stream of ``entries``, one pipeline per primary, all
        at once: the outbox entries the fast path settled, from many slots per batch."""
        await self._each(list(entries), "XDEL", per_key=entries)

    async def _each(
        self,
        keys: Sequence[str],
        command: str,
        *args: str | int,
        before: Sequence[str | int] = (),
        per_key: Mapping[str, Sequence[str | int]] | None = None,
    ) -> dict[str, object]:
        """Send ``command *before key *args`` (or ``command key *per_key[key]``) for every
        key, one pipeline per primary, all at once."""
        await self._slots.refresh_if_due()
        by_node: dict[Address, list[str]] = defaultdict(list)
        for key in keys:
            by_node[self._slots.owners[slot_of(key)]].append(key)
        try:
            async with asyncio.timeout(self._timeout_s):
                parts = await asyncio.gather(
                    *(
                        self._on_node(node, part, command, args, before, per_key)
                        for node, part in by_node.items()
                    )
                )
        except (*_DOWN, *_NOT_SERVED) as e:
            self._slots.stale = True
            if isinstance(e, redis_errors.MovedError):  # the new owner, sooner than a re-read
                self._slots.owners[e.slot_id] = (e.host, e.port)
            raise UnavailableError(f"shard command failed: {type(e).__name__}: {e}") from e
        except redis_errors.NoScriptError:
            raise
        except redis_errors.ResponseError as e:  # WRONGTYPE and the like: a broken shard
            raise InvariantError(f"shard command {command} failed: {e}") from e
        replies: dict[str, object] = {}
        for part in parts:
            replies.update(part)
        return replies

    async def copy_to_every_shard(
        self, keys: Sequence[str], fields: Mapping[str, str | int], removed: Sequence[str] = ()
    ) -> None:
        """Write ``fields`` into every hash of ``keys`` (one HSET each, so a reader of a shard
        sees all of the new fields or none), then HDEL ``removed`` (fields that left).

        Not atomic across shards: while it runs, some slots have the new copy and some the
        old. A script that must not mix the two checks a version field against its ARGV.
        Safe to repeat after a failure (``UnavailableError``): every write is idempotent.
        """
        flat: list[str | int] = [item for pair in fields.items() for item in pair]
        await self._each(keys, "HSET", *flat)
        if removed:
            await self._each(keys, "HDEL", *removed)

    async def _on_node(
        self,
        node: Address,
        keys: list[str],
        command: str,
        args: Sequence[str | int],
        before: Sequence[str | int] = (),
        per_key: Mapping[str, Sequence[str | int]] | None = None,
    ) -> dict[str, object]:
        """One write of every command for ``node``, then one reply each.

        Packed by hand as the script runner does: with redis-py's pipeline a sum over 16384
        shards took about 1 s here, packed 0.2-0.4 s (the catalog copy: 3 s, then 1.5-2 s,
        bound by Redis). An error reply
        (MOVED: the map is stale) is raised once every reply is read, so the connection
        goes back to the pool clean.
        """
        if per_key is None:
            tail = [_bulk(str(arg).encode()) for arg in args]
            head = b"*%d\r\n%b" % (2 + len(before) + len(args), _bulk(command.encode()))
            head += b"".join(_bulk(str(arg).encode()) for arg in before)
            packed = b"".join(head + _bulk(key.encode()) + b"".join(tail) for key in keys)
        else:
            name = _bulk(command.encode())
            packed = b"".join(
                b"*%d\r\n%b%b" % (2 + len(per_key[key]), name, _bulk(key.encode()))
                + b"".join(_bulk(str(arg).encode()) for arg in per_key[key])
                for key in keys
            )
        pool = self._slots.client(node).connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed, check_health=False)
            values: list[object] = []
            for _ in keys:
                try:
                    values.append(await connection.read_response(timeout=math.inf))
                except redis_errors.ResponseError as error:
                    values.append(error)
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        for value in values:
            if isinstance(value, redis_errors.ResponseError):
                raise value
        return dict(zip(keys, values, strict=True))
