"""read_config against real redis-servers: the embedded one is fit, others are judged."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from server.ledger.embedded import RedisProcess
from server.ledger.redis_config import Durability, config_problems, config_warnings, read_config


async def test_the_embedded_redis_never_evicts_and_fsyncs_as_configured(tmp_path: Path) -> None:
    for appendfsync, durability in (
        ("everysec", Durability.EVERYSEC),
        ("always", Durability.ALWAYS),
    ):
        with RedisProcess(tmp_path / appendfsync, appendfsync=appendfsync) as server:
            client = Redis.from_url(server.url)
            try:
                config = await read_config(client)
            finally:
                await client.aclose()
        assert config.maxmemory_policy == "noeviction"
        assert config.aof_enabled and config.appendfsync == appendfsync
        assert config.aof_load_truncated is False
        assert config_problems(config, durability) == []
        assert config_warnings(config, durability) == []


async def test_a_redis_started_with_volatile_lru_is_refused(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "r", extra_args=("--maxmemory-policy", "volatile-lru")) as server:
        client = Redis.from_url(server.url)
        try:
            config = await read_config(client)
            assert config.maxmemory_policy == "volatile-lru"
            assert len(config_problems(config, Durability.EVERYSEC)) == 1
            await client.config_set("appendonly", "no")
            config = await read_config(client)
        finally:
            await client.aclose()
    assert not config.aof_enabled
    assert len(config_problems(config, Durability.ALWAYS)) == 2


async def test_a_redis_that_loads_truncated_aofs_is_warned_about(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "r", extra_args=("--aof-load-truncated", "yes")) as server:
        client = Redis.from_url(server.url)
        try:
            config = await read_config(client)
        finally:
            await client.aclose()
    assert config.aof_load_truncated is True
    assert config_problems(config, Durability.EVERYSEC) == []
    assert "aof-load-truncated yes" in config_warnings(config, Durability.EVERYSEC)[0]
