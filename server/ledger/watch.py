"""Keep checking the Redis under the ledger: its configuration, its data, its catalog.

One ``check`` is one pipelined round trip plus an ``INFO``; a process runs it every
``GIFTWIRE_REDIS_CHECK_INTERVAL_S`` and on every ``/readyz``. It finds:

- **A configuration that breaks the ledger's guarantees**, changed at runtime
  (``CONFIG SET maxmemory-policy volatile-lru``, ``appendfsync`` under ``always``) or a
  missing replica under ``always+replica`` (``redis_config.py``). Cleared when fixed.
- **A Redis that lost data.** Two witnesses, because each misses a case the other sees:

  * the *generation marker*, a random value stored once in ``{ledger}:generation``. It is
    gone after Redis restarted empty or was flushed, different after a switch to another
    Redis, even one whose ledger log happens to look plausible;
  * the *highest ledger log id this process has seen* (every receipt's ``transfer_id``,
    and the log's last id at each check). An older snapshot, a lost ``everysec`` tail or a
    failover to a replica that lacked writes lose that entry: it is neither in the log nor
    deleted from it (``max-deleted-entry-id`` covers trimming). Checking that the entry
    itself exists, rather than comparing the log's last id, keeps the check right after
    new writes: those get new, higher ids from the clock and would hide the loss.

  A data loss is sticky: ``/readyz`` stays 503 and the reason is logged once, until the
  process is restarted, because only an operator can decide between restoring a backup
  and accepting the loss (``docs/operations.md``). The catalog is seeded again at once,
  so that gifts are not all refused meanwhile.
- **A new catalog version**, pushed by another process or ``giftwire catalog push``: it is
  read and handed to ``on_catalog`` (the hub's display names, ``/api/catalog``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any, cast

from redis import exceptions as redis_errors

from server.domain.catalog import Catalog
from server.domain.errors import InvariantError, UnavailableError
from server.domain.tasks import stop_task
from server.ledger.catalogs import VERSION_FIELD
from server.ledger.ledger import Ledger, LogPosition, log_position
from server.ledger.redis_config import (
    Durability,
    config_problems,
    read_config,
    replica_problems,
)

log = logging.getLogger("giftwire.ledger")

REDIS_FAILURES = (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError)
"""What a Redis that went away raises."""


class LedgerWatch:
    """Periodic checks of one process' Redis; ``problems`` is what ``/readyz`` reports."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        durability: Durability = Durability.EVERYSEC,
        replicas: int = 1,
        interval_s: float = 1.0,
        on_catalog: Callable[[Catalog], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.durability = durability
        self.replicas = replicas
        self.interval_s = interval_s
        self.on_catalog = on_catalog
        self.config_problems: list[str] = []
        self.data_loss: str | None = None
        self._generation: bytes | None = None
        self._run_id = ""
        self._checked: LogPosition | None = None
        """The highest log id known at the end of the last check."""
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def problems(self) -> list[str]:
        """Everything that makes this process unready, one line each."""
        return self.config_problems + ([self.data_loss] if self.data_loss else [])

    async def prime(self) -> None:
        """Set (first process) or read the generation marker; call once after prepare."""
        key = self.ledger.keys.ledger_generation()
        redis = self.ledger.redis
        await redis.set(key, secrets.token_hex(8), nx=True)
        self._generation = cast(bytes | None, await redis.get(key))

    async def check(self) -> list[str]:
        """Check once; return ``problems``. Raises ``UnavailableError`` if Redis is away.

        One check at a time (probes and the periodic loop may overlap): a loss is judged
        and logged once."""
        async with self._lock:
            return await self._check()

    async def _check(self) -> list[str]:
        try:
            async with asyncio.timeout(self.ledger.limits.redis_timeout_s):
                config = await read_config(self.ledger.redis)
                self._set_config_problems(
                    config_problems(config, self.durability)
                    + replica_problems(config, self.durability, self.replicas)
                )
                if self._run_id and config.run_id != self._run_id and self._checked is not None:
                    # Restarted or failed over since the last check, perhaps with no call
                    # of ours failing: what that check saw must have survived.
                    self.ledger.to_verify.add(self._checked)
                self._run_id = config.run_id
                await self._check_data_and_catalog()
        except REDIS_FAILURES as e:
            self.ledger.connection_broke()
            raise UnavailableError(str(e) or type(e).__name__) from e
        return self.problems

    def _set_config_problems(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self.config_problems:
                log.error("Redis is not fit for the ledger: %s", problem)
        if self.config_problems and not problems:
            log.warning("Redis configuration fixed; ready again")
        self.config_problems = problems

    async def _check_data_and_catalog(self) -> None:
        ledger, keys = self.ledger, self.ledger.keys
        highest = ledger.highest_transfer
        candidates = sorted(ledger.to_verify | ({highest} if highest else set()))
        async with ledger.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.ledger_generation())  # type: ignore[unused-awaitable]
            pipe.hget(keys.catalog(), VERSION_FIELD)  # type: ignore[unused-awaitable]
            pipe.xinfo_stream(keys.ledger())  # type: ignore[unused-awaitable]
            for position in candidates:
                entry = _entry_id(position)
                pipe.xrange(keys.ledger(), min=entry, max=entry, count=1)  # type: ignore[unused-awaitable]
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, REDIS_FAILURES):
                raise reply
        generation, version, info = replies[0], replies[1], replies[2]
        if self.data_loss is None:
            loss = judge_loss(
                self._generation, generation, info, zip(candidates, replies[3:], strict=True)
            )
            if loss is not None:
                self._lost(loss)
                await self._remark()
        ledger.to_verify.difference_update(candidates)
        if isinstance(info, dict):
            last = info.get("last-generated-id")
            if last is not None and (highest is None or log_position(last) > highest):
                ledger.highest_transfer = log_position(last)
        self._checked = ledger.highest_transfer
        await self._follow_catalog(version)

    def _lost(self, reason: str) -> None:
        self.data_loss = f"Redis lost data: {reason}"
        log.error(
            "%s; readiness stays failed until this process restarts: restore a backup "
            "or accept the loss, then restart (docs/operations.md)",
            self.data_loss,
        )

    async def _follow_catalog(self, version: object) -> None:
        ledger = self.ledger
        if ledger.catalog is None:
            return
        if version is None:
            if await ledger.restore_catalog() and self.data_loss is None:
                self._lost("the gift catalog is gone")
                await self._remark()
            return
        if int(cast(bytes, version)) != ledger.catalog.version:
            before = ledger.catalog.version
            try:
                catalog = await ledger.current_catalog()
            except InvariantError as e:
                log.error("cannot follow the gift catalog: %s; serving version %d", e, before)
                return
            log.warning("gift catalog changed: version %d -> %d", before, catalog.version)
            if self.on_catalog is not None:
                self.on_catalog(catalog)

    async def _remark(self) -> None:
        """After a loss: put a marker back, so processes started from now on have one."""
        await self.ledger.redis.set(
            self.ledger.keys.ledger_generation(), secrets.token_hex(8), nx=True
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except UnavailableError:
                pass  # an outage: /readyz says so already; check again next time
            except Exception:
                log.exception("Redis check failed")


def _entry_id(position: LogPosition) -> str:
    return f"{position[0]}-{position[1]}"


def judge_loss(
    marker_seen: bytes | None,
    marker_now: object,
    info: object,
    lookups: Iterable[tuple[LogPosition, object]],
) -> str | None:
    """Why Redis lost data, or None. Pure: decided from one check's replies.

    ``lookups`` pairs each log position this process saw with the XRANGE reply for it. An
    entry that is not there was lost unless the log was trimmed past it (its first entry
    is newer, or it is empty and was never behind) or it was deleted (XDEL).
    """
    if marker_seen is not None and marker_now != marker_seen:
        if marker_now is None:
            return "the ledger's generation marker is gone (restarted empty or flushed)"
        return "the ledger's generation marker changed (another or a restored Redis)"
    for position, found in lookups:
        if found:
            continue
        entry = _entry_id(position)
        if not isinstance(info, dict):
            return f"the ledger log is gone; this process saw entry {entry}"
        if not _removed_on_purpose(position, info):
            return (
                f"ledger entry {entry}, seen by this process, is missing (restored from an "
                "older copy, lost its last writes, or failed over to a replica that lacked "
                "them)"
            )
    return None


def _removed_on_purpose(position: LogPosition, info: dict[str, Any]) -> bool:
    last = info.get("last-generated-id")
    if last is None or log_position(last) < position:
        return False  # Redis never generated it: lost
    first = info.get("first-entry")
    if not first or first[0] is None:
        return int(info.get("length", 0)) == 0  # trimmed to nothing
    if log_position(first[0]) > position:
        return True  # trimmed past it
    deleted = info.get("max-deleted-entry-id")
    return deleted is not None and log_position(deleted) >= position
