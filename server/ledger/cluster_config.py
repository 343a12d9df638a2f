"""What the ledger needs from every primary of a Redis Cluster, checked at start and after.

The single-node rules of ``redis_config.py``, applied to each primary on its own: a
primary that evicts keys can charge a retried gift twice in its slots, whatever the
others do, so every primary must run ``maxmemory-policy noeviction``; under
``GIFTWIRE_DURABILITY=always`` (or ``always+replica``) every primary must fsync every
write (``appendonly yes``, ``appendfsync always``); under ``always+replica`` each primary
needs its replicas connected, or the gifts of its slots are ``unavailable`` (a readiness
problem, not a reason to refuse to start: a replica that reconnects makes it ready).

``ClusterWatch`` runs the same checks every ``GIFTWIRE_REDIS_CHECK_INTERVAL_S`` (a
``CONFIG SET`` at runtime, a failover to a node configured otherwise) and reports them on
``/readyz``. Each line names the primary it is about.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server.domain.errors import GiftwireError, UnavailableError
from server.domain.tasks import stop_task
from server.ledger.cluster_topology import CONNECTION_ERRORS, Address, SlotMap
from server.ledger.redis_config import (
    Durability,
    RedisConfig,
    config_problems,
    config_warnings,
    read_config,
    replica_problems,
)

log = logging.getLogger("giftwire.ledger")

MAP_READ_EVERY_CHECKS = 10
"""The watch reads the slot map itself every this many checks (else it uses the map the
runner keeps fresh), so a primary that became one without any call failing is checked."""


class UnfitClusterError(GiftwireError):
    """A primary's configuration forbids serving (the app's start refused)."""


@dataclass(slots=True)
class ClusterFindings:
    problems: list[str] = field(default_factory=list)
    """Each one is a reason not to start (and, later, not to be ready)."""
    warnings: list[str] = field(default_factory=list)
    unready: list[str] = field(default_factory=list)
    """Reasons not to acknowledge writes right now (missing replicas)."""


async def read_primaries(slots: SlotMap) -> dict[Address, RedisConfig]:
    """``read_config`` of every primary in the slot map (read first if stale or empty; a
    primary that does not answer marks it stale, so the next check reads it again)."""
    await slots.refresh_if_due()
    configs: dict[Address, RedisConfig] = {}
    for address in slots.primaries():
        try:
            configs[address] = await read_config(slots.client(address))
        except CONNECTION_ERRORS:
            slots.stale = True
            raise
    return configs


def judge_primaries(
    configs: dict[Address, RedisConfig], durability: Durability, replicas: int
) -> ClusterFindings:
    """The single-node judgement of each primary, each line prefixed with its address.
    Pure."""
    found = ClusterFindings()
    for (host, port), config in sorted(configs.items()):
        where = f"cluster primary {host}:{port}: "
        found.problems += [where + line for line in config_problems(config, durability)]
        found.warnings += [where + line for line in config_warnings(config, durability)]
        found.unready += [where + line for line in replica_problems(config, durability, replicas)]
    return found


async def check_cluster(slots: SlotMap, durability: Durability, replicas: int) -> ClusterFindings:
    return judge_primaries(await read_primaries(slots), durability, replicas)


class ClusterWatch:
    """Periodic checks of every primary's configuration, and of the catalog's version.

    ``problems`` is what ``/readyz`` reports. ``on_tick`` runs after each check (cluster
    mode follows a new catalog version there, as ``LedgerWatch`` does on one node)."""

    def __init__(
        self,
        slots: SlotMap,
        *,
        durability: Durability,
        replicas: int,
        interval_s: float,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.slots = slots
        self.durability = durability
        self.replicas = replicas
        self.interval_s = interval_s
        self.on_tick = on_tick
        self.problems: list[str] = []
        self._checks = 0
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> list[str]:
        self._checks += 1
        if self._checks % MAP_READ_EVERY_CHECKS == 0:
            # A manual failover leaves every node answering: read who is primary now.
            self.slots.stale = True
        found = await check_cluster(self.slots, self.durability, self.replicas)
        problems = found.problems + found.unready
        for line in problems:
            if line not in self.problems:
                log.error("Redis Cluster is not fit for the ledger: %s", line)
        if self.problems and not problems:
            log.warning("Redis Cluster configuration fixed; ready again")
        self.problems = problems
        return problems

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                async with asyncio.timeout(max(self.interval_s, 1.0) * 5):
                    await self.check()
                    if self.on_tick is not None:
                        await self.on_tick()
            except (*CONNECTION_ERRORS, TimeoutError, UnavailableError):
                pass  # an outage: the runner and /readyz say so already
            except Exception:
                log.exception("Redis Cluster check failed")
