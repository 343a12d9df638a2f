"""Which Redis configurations the ledger refuses, warns about or accepts (pure)."""

from __future__ import annotations

import pytest

from server.ledger.redis_config import (
    Durability,
    RedisConfig,
    config_problems,
    config_warnings,
    replica_problems,
)

FIT = RedisConfig("noeviction", True, "everysec", 0, "7.0.15")


def _with(**changes: object) -> RedisConfig:
    fields = {
        "maxmemory_policy": FIT.maxmemory_policy,
        "aof_enabled": FIT.aof_enabled,
        "appendfsync": FIT.appendfsync,
        "connected_replicas": FIT.connected_replicas,
        "version": FIT.version,
    }
    fields.update(changes)
    return RedisConfig(**fields)  # type: ignore[arg-type]


def test_noeviction_with_aof_is_fit_for_everysec() -> None:
    assert config_problems(FIT, Durability.EVERYSEC) == []
    assert config_warnings(FIT, Durability.EVERYSEC) == []


@pytest.mark.parametrize(
    "policy", ["volatile-lru", "allkeys-lru", "volatile-ttl", "allkeys-random", "volatile-lfu"]
)
def test_every_evicting_policy_is_refused_in_one_line(policy: str) -> None:
    for durability in Durability:
        problems = config_problems(_with(maxmemory_policy=policy), durability)
        assert len(problems) == 1 or durability is not Durability.EVERYSEC
        assert f"maxmemory-policy is {policy}" in problems[0]
        assert "noeviction" in problems[0] and "\n" not in problems[0]


@pytest.mark.parametrize("durability", [Durability.ALWAYS, Durability.ALWAYS_REPLICA])
@pytest.mark.parametrize(
    "config",
    [
        _with(appendfsync="everysec"),
        _with(appendfsync="no"),
        _with(aof_enabled=False, appendfsync="always"),
        _with(appendfsync=None),
    ],
    ids=["everysec", "no", "aof-off", "config-refused"],
)
def test_always_refuses_a_redis_that_does_not_fsync_every_write(
    durability: Durability, config: RedisConfig
) -> None:
    problems = config_problems(config, durability)
    assert len(problems) == 1 and f"GIFTWIRE_DURABILITY={durability}" in problems[0]


def test_always_accepts_appendfsync_always() -> None:
    config = _with(appendfsync="always")
    assert config_problems(config, Durability.ALWAYS) == []
    assert config_problems(config, Durability.ALWAYS_REPLICA) == []


def test_everysec_only_warns_about_a_redis_without_aof_or_fsync() -> None:
    for config in (_with(aof_enabled=False), _with(appendfsync="no")):
        assert config_problems(config, Durability.EVERYSEC) == []
        assert len(config_warnings(config, Durability.EVERYSEC)) == 1


def test_aof_load_truncated_yes_is_warned_about_under_every_durability() -> None:
    loads_half_scripts = _with(appendfsync="always", aof_load_truncated=True)
    for durability in Durability:
        assert config_problems(loads_half_scripts, durability) == []
        warnings = config_warnings(loads_half_scripts, durability)
        assert len(warnings) == 1 and "aof-load-truncated yes" in warnings[0]
        # Not set (the embedded Redis), or not readable: nothing to say.
        assert (
            config_warnings(_with(appendfsync="always", aof_load_truncated=False), durability) == []
        )
        assert config_warnings(_with(appendfsync="always"), durability) == []
    without_aof = _with(aof_enabled=False, aof_load_truncated=True)
    assert "aof-load-truncated" not in " ".join(config_warnings(without_aof, Durability.EVERYSEC))


def test_replicas_are_counted_only_for_always_replica() -> None:
    config = _with(appendfsync="always", connected_replicas=1)
    assert replica_problems(config, Durability.ALWAYS_REPLICA, 1) == []
    assert (
        "needs 2 connected replica(s), Redis has 1"
        in replica_problems(config, Durability.ALWAYS_REPLICA, 2)[0]
    )
    assert replica_problems(_with(), Durability.ALWAYS, 3) == []


def test_embedded_redis_fsync_follows_the_durability() -> None:
    assert Durability.EVERYSEC.appendfsync == "everysec"
    assert Durability.ALWAYS.appendfsync == "always"
    assert Durability.ALWAYS_REPLICA.appendfsync == "always"
