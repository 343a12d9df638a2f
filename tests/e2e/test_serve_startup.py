"""`giftwire serve` before its Redis: it waits, says so, and gives up cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from server.ledger.embedded import RedisProcess, free_port
from tests.support.servers import JWT_SECRET, REPO


def _serve(redis_port: int, port: int, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "GIFTWIRE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GIFTWIRE_JWT_SECRET": JWT_SECRET,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_unreachable_redis_is_reported_without_a_traceback() -> None:
    process = _serve(free_port(), free_port(), "--wait-redis-s", "1")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 3
    assert "unreachable" in output and "giving up" in output
    assert "Traceback" not in output


def test_server_waits_for_a_late_redis_then_serves(tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    process = _serve(redis_port, port)
    redis = RedisProcess(tmp_path / "redis", port=redis_port)
    try:
        time.sleep(1.5)  # the server is waiting for Redis now
        assert process.poll() is None
        redis.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("never became ready after Redis came up")
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        redis.stop()
    assert "waiting for Redis" in output
