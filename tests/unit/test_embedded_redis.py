"""The embedded Redis refuses a data folder its binary cannot read (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.ledger.embedded import EmbeddedRedisError, check_data_readable, server_major_version


def _fake_server(tmp_path: Path, version: str) -> str:
    binary = tmp_path / f"redis-server-{version}"
    binary.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=0 malloc=libc bits=64'\n")
    binary.chmod(0o755)
    return str(binary)


def test_the_version_is_read_from_the_binary(tmp_path: Path) -> None:
    assert server_major_version(_fake_server(tmp_path, "6.2.14")) == 6
    assert server_major_version(_fake_server(tmp_path, "7.0.15")) == 7
    assert server_major_version(str(tmp_path / "missing")) == 0


def test_redis_6_is_refused_on_a_folder_redis_7_wrote(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    (data / "appendonlydir").mkdir(parents=True)
    with pytest.raises(EmbeddedRedisError, match="cannot read") as refused:
        check_data_readable(data, _fake_server(tmp_path, "6.2.14"))
    assert len(str(refused.value).splitlines()) == 1
    check_data_readable(data, _fake_server(tmp_path, "7.0.15"))


def test_an_empty_or_redis_6_folder_is_fine_for_either(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    (data / "appendonly.aof").write_text("")
    for version in ("6.2.14", "7.0.15"):
        check_data_readable(data, _fake_server(tmp_path, version))
