"""`giftwire serve` refuses a Redis unfit for the ledger, and /readyz notices one at runtime."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from server.ledger.embedded import RedisProcess, free_port
from tests.support.servers import JWT_SECRET, REPO, ServerProcess


def _serve_once(redis_url: str, prefix: str, **env: str) -> tuple[int, str]:
    """Run `giftwire serve` against ``redis_url`` until it exits; (exit code, output)."""
    process = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port())],
        cwd=REPO,
        env={
            **os.environ,
            "GIFTWIRE_REDIS_URL": redis_url,
            "GIFTWIRE_KEY_PREFIX": prefix,
            "GIFTWIRE_JWT_SECRET": JWT_SECRET,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return process.returncode, process.stdout + process.stderr


def readyz(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.http + "/readyz", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def test_serve_refuses_an_evicting_redis_in_one_line(tmp_path: Path) -> None:
    with RedisProcess(
        tmp_path / "redis", extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru")
    ) as redis:
        code, output = _serve_once(redis.url, "fit1:")
    assert code == 4, output
    refusals = [line for line in output.splitlines() if "refusing to start" in line]
    assert len(refusals) == 1, output
    assert "maxmemory-policy is volatile-lru" in refusals[0] and "noeviction" in refusals[0]
    assert "Traceback" not in output


def test_serve_with_durability_always_refuses_a_redis_without_fsync(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis", appendfsync="everysec") as redis:
        code, output = _serve_once(redis.url, "fit2:", GIFTWIRE_DURABILITY="always")
    assert code == 4, output
    assert "GIFTWIRE_DURABILITY=always but Redis runs appendonly yes with appendfsync everysec" in (
        output
    )
    assert "Traceback" not in output


def test_readyz_fails_while_the_policy_is_changed_at_runtime(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis") as redis:
        server = ServerProcess(redis.url, "fit3:", tmp_path)
        admin = Redis.from_url(redis.url)
        try:
            server.start()
            assert readyz(server) == (200, {"redis": True, "pubsub": True, "problems": []})
            admin.config_set("maxmemory-policy", "volatile-lru")
            status, body = readyz(server)
            assert status == 503 and body["redis"] is True
            assert len(body["problems"]) == 1
            assert "maxmemory-policy is volatile-lru" in body["problems"][0]
            admin.config_set("maxmemory-policy", "noeviction")
            assert readyz(server)[0] == 200
        finally:
            admin.close()
            server.stop()
    assert "maxmemory-policy is volatile-lru" in server.log()


def test_the_embedded_redis_fsyncs_every_write_by_default(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIFTWIRE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env={**env, "GIFTWIRE_JWT_SECRET": JWT_SECRET, "GIFTWIRE_DATA_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = tmp_path / "redis" / "redis.port"
        for _ in range(400):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, "giftwire serve exited"
            time.sleep(0.05)
        admin = Redis(port=int(port_file.read_text()))
        try:
            assert admin.config_get("appendfsync") == {"appendfsync": "always"}
            assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        finally:
            admin.close()
    finally:
        process.terminate()
        process.wait(30)
