"""Before serving: is this Redis fit to hold the ledger, and whose catalog does it hold?

``giftwire serve`` runs ``preflight`` before it starts uvicorn and, on a problem, prints
one line per problem and exits (no traceback); the app's lifespan runs the same checks
(``startup_problems``) for any other way of starting it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from server.domain.catalog import CatalogError, load_catalog
from server.ledger.cluster_config import check_cluster
from server.ledger.cluster_topology import SlotMap
from server.ledger.connection import make_client
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.redis_config import (
    Durability,
    config_problems,
    config_warnings,
    read_config,
    replica_problems,
)
from server.settings import Settings, env_name

log = logging.getLogger("giftwire")


@dataclass(slots=True)
class Findings:
    problems: list[str] = field(default_factory=list)
    """Each one is a reason not to start."""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_ledger(settings: Settings, redis_url: str, *, timeout_s: float | None = None) -> Ledger:
    """The ledger of a server process, with its durability settings."""
    redis = make_client(redis_url, timeout_s=timeout_s or settings.limits.redis_timeout_s)
    replicated = settings.durability_mode is Durability.ALWAYS_REPLICA
    return Ledger(
        redis,
        keys=Keys(settings.key_prefix),
        limits=settings.limits,
        economics=settings.economics,
        wait_replicas=settings.durability_replicas if replicated else 0,
        wait_timeout_ms=settings.durability_wait_ms,
    )


async def startup_problems(ledger: Ledger, settings: Settings) -> Findings:
    """Check Redis' configuration, then load the scripts and settle the catalog.

    The catalog: Redis' wins. A file named by ``GIFTWIRE_CATALOG_PATH`` seeds an empty
    Redis; if Redis already holds different gifts, that is a problem (start refused),
    because this process would otherwise advertise prices it does not charge. Without a
    file, the built-in catalog only seeds; whatever Redis holds is served.
    """
    found = Findings()
    durability = settings.durability_mode
    config = await read_config(ledger.redis)
    found.problems += config_problems(config, durability)
    found.warnings += config_warnings(config, durability)
    found.warnings += replica_problems(config, durability, settings.durability_replicas)
    if found.problems:
        return found
    try:
        wanted = load_catalog(settings.catalog_path)
    except CatalogError as e:
        found.problems.append(f"{env_name('catalog_path')}={settings.catalog_path}: {e}")
        return found
    held = await ledger.prepare(wanted)
    if held.same_gifts(wanted):
        return found
    if settings.catalog_path is not None:
        found.problems.append(
            f"the gift catalog in Redis (version {held.version}) differs from "
            f"{settings.catalog_path}: to make the file current run `giftwire catalog push "
            f"{settings.catalog_path}`, or unset {env_name('catalog_path')} to serve "
            f"version {held.version}"
        )
    else:
        found.notes.append(f"serving gift catalog version {held.version} from Redis")
    return found


async def preflight(settings: Settings, redis_url: str, *, embedded: bool) -> Findings:
    """``startup_problems`` on a connection of its own, for ``giftwire serve``."""
    if embedded and settings.durability_mode is Durability.ALWAYS_REPLICA:
        return Findings(
            problems=[
                f"{env_name('durability')}=always+replica needs a Redis with replicas "
                f"({env_name('redis_url')}); the embedded Redis has none"
            ]
        )
    ledger = make_ledger(settings, redis_url, timeout_s=10)
    try:
        return await startup_problems(ledger, settings)
    finally:
        await ledger.redis.aclose()


async def cluster_preflight(settings: Settings, node_url: str) -> Findings:
    """Every primary of the cluster at ``node_url`` against the single-node rules
    (``cluster_config.py``): eviction policy and fsync refuse the start, missing replicas
    only warn (the server is unready until they are back)."""
    slots = SlotMap([node_url], timeout_s=10, pool_max=2)
    try:
        found = await check_cluster(slots, settings.durability_mode, settings.durability_replicas)
    finally:
        await slots.aclose()
    return Findings(problems=found.problems, warnings=found.warnings + found.unready)
