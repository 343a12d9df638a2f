"""What the ledger needs from the Redis it runs on, checked at start and by ``/readyz``.

Two settings of Redis decide whether an acknowledged transfer stays applied exactly once:

- ``maxmemory-policy`` must be ``noeviction``. Under any other policy Redis deletes keys
  when it is full; the gift receipts are the only keys with a TTL, so ``volatile-*``
  policies delete them first, and a retry of an acknowledged gift id is then charged again
  as a new gift. ``noeviction`` makes a full Redis refuse writes instead (the scripts are
  then refused as a whole, ``OOM``, and the client is told ``unavailable``).
- ``appendonly`` / ``appendfsync`` decide what an acknowledgement survives
  (``docs/operations.md``). ``GIFTWIRE_DURABILITY`` says what the operator asked for: with
  ``always`` (or ``always+replica``) a Redis that does not fsync every write is refused;
  with ``everysec`` a Redis without AOF only gets a warning.

One more only gets a warning, whatever the durability: ``aof-load-truncated yes`` (Redis'
default) lets Redis 7.0 load an AOF that a crash cut inside a script's ``MULTI`` and leave
that ``MULTI`` open in the file, so that a later start applies half the script
(``docs/operations.md``, "A crash in the middle of a script's write").

The functions that judge a configuration are pure; only ``read_config`` talks to Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis

REQUIRED_POLICY = "noeviction"


class Durability(StrEnum):
    """When a write is acknowledged (``GIFTWIRE_DURABILITY``)."""

    EVERYSEC = "everysec"
    """After Redis applied it; the AOF is fsynced about once a second."""
    ALWAYS = "always"
    """After Redis applied it and fsynced the AOF (Redis replies only after the fsync)."""
    ALWAYS_REPLICA = "always+replica"
    """As ``always``, and after ``GIFTWIRE_DURABILITY_REPLICAS`` replicas acknowledged it
    (``WAIT`` after each pipeline, before any of its replies is passed on)."""

    @property
    def appendfsync(self) -> str:
        """The ``appendfsync`` an embedded Redis runs with for this durability."""
        return "everysec" if self is Durability.EVERYSEC else "always"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """The parts of a Redis server's configuration the ledger depends on."""

    maxmemory_policy: str
    aof_enabled: bool
    appendfsync: str | None
    """None when ``CONFIG GET`` is refused (renamed or disabled on managed services)."""
    connected_replicas: int
    version: str
    run_id: str = ""
    """Changes with every restart of Redis (and with a failover to another server)."""
    aof_load_truncated: bool | None = None
    """``aof-load-truncated``; None when ``CONFIG GET`` is refused."""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_config(redis: Redis) -> RedisConfig:
    """One ``INFO`` and one ``CONFIG GET``: what ``config_problems`` judges."""
    info = cast(dict[str, object], await redis.info())
    appendfsync: str | None = None
    load_truncated: str | None = None
    try:
        appendfsync = await _config_value(redis, "appendfsync")
        load_truncated = await _config_value(redis, "aof-load-truncated")
    except redis_errors.ResponseError:
        pass
    return RedisConfig(
        maxmemory_policy=_text(info.get("maxmemory_policy", "unknown")),
        aof_enabled=str(info.get("aof_enabled", "0")) == "1",
        appendfsync=appendfsync,
        connected_replicas=int(str(info.get("connected_slaves", "0"))),
        version=_text(info.get("redis_version", "unknown")),
        run_id=_text(info.get("run_id", "")),
        aof_load_truncated=None if load_truncated is None else load_truncated == "yes",
    )


async def _config_value(redis: Redis, name: str) -> str | None:
    raw = cast(dict[object, object], await redis.config_get(name))
    found = raw.get(name, raw.get(name.encode()))
    return _text(found) if found is not None else None


def config_problems(config: RedisConfig, durability: Durability) -> list[str]:
    """Why this Redis must not hold the ledger under ``durability``: one line each."""
    problems: list[str] = []
    if config.maxmemory_policy != REQUIRED_POLICY:
        problems.append(
            f"Redis maxmemory-policy is {config.maxmemory_policy}, giftwire needs "
            f"{REQUIRED_POLICY} (an evicted receipt lets a retried gift be charged twice): "
            f"run CONFIG SET maxmemory-policy {REQUIRED_POLICY} and set it in redis.conf"
        )
    if durability is not Durability.EVERYSEC:
        if config.appendfsync is None:
            problems.append(
                f"GIFTWIRE_DURABILITY={durability} but Redis refuses CONFIG GET appendfsync, "
                "so fsync on every write cannot be checked: allow CONFIG or choose everysec"
            )
        elif not config.aof_enabled or config.appendfsync != "always":
            problems.append(
                f"GIFTWIRE_DURABILITY={durability} but Redis runs appendonly "
                f"{'yes' if config.aof_enabled else 'no'} with appendfsync "
                f"{config.appendfsync}: set appendonly yes and appendfsync always, "
                "or choose GIFTWIRE_DURABILITY=everysec"
            )
    return problems


def replica_problems(config: RedisConfig, durability: Durability, replicas: int) -> list[str]:
    """Why writes cannot be acknowledged right now (not a reason to refuse to start:
    a replica that reconnects makes the server ready again)."""
    if durability is Durability.ALWAYS_REPLICA and config.connected_replicas < replicas:
        return [
            f"GIFTWIRE_DURABILITY={durability} needs {replicas} connected replica(s), "
            f"Redis has {config.connected_replicas}"
        ]
    return []


def config_warnings(config: RedisConfig, durability: Durability) -> list[str]:
    """What is allowed but loses acknowledged writes, or applies half a script, after a
    crash: logged at start."""
    warnings: list[str] = []
    if config.aof_enabled and config.aof_load_truncated:
        warnings.append(
            "Redis runs aof-load-truncated yes: after a crash in the middle of an AOF write "
            "a later restart can apply half a script; set aof-load-truncated no and run "
            "redis-check-aof --fix when Redis then refuses to start (docs/operations.md)"
        )
    if durability is not Durability.EVERYSEC:
        return warnings
    if not config.aof_enabled:
        warnings.append(
            "Redis runs without AOF (appendonly no): a Redis restart loses every balance "
            "since its last snapshot; set appendonly yes"
        )
    elif config.appendfsync == "no":
        warnings.append(
            "Redis runs appendfsync no: a machine crash loses the acknowledged writes of "
            "up to about 30 s; set appendfsync everysec or always"
        )
    return warnings
