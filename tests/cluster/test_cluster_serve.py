"""``giftwire serve`` in cluster mode: it starts, reaches every primary, and refuses the
ledger with ``unavailable`` and a reason until the two-leg scripts exist."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.domain.accounts import Role
from server.ledger.keys import Keys
from server.ledger.scripts import load_scripts
from server.web.cluster_app import NOT_YET_SUPPORTED
from tests.support.cluster import RedisCluster
from tests.support.servers import REPO, ServerProcess, http_json, token


def _wait_healthy(server: ServerProcess, timeout_s: float = 20.0) -> None:
    """Like ``ServerProcess.start``, but up means /healthz: /readyz stays 503 by design."""
    server.process = None
    with server.log_path.open("wb") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(server.port)],
            env=server.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.http + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not up:\n{server.log()}")


@pytest.fixture
def cluster_server(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        redis_cluster.startup_urls[0], keys.prefix, tmp_path, GIFTWIRE_REDIS_CLUSTER="true"
    )
    _wait_healthy(server)
    yield server
    server.stop()
    assert "Traceback" not in server.log()


async def test_cluster_mode_starts_and_refuses_the_ledger_with_a_reason(
    cluster_server: ServerProcess, redis_cluster: RedisCluster, keys: Keys
) -> None:
    status, body = http_json("GET", cluster_server.http + "/readyz")
    assert status == 503
    assert body == {"redis": True, "cluster": True, "ready": False, "reason": NOT_YET_SUPPORTED}

    creator = token("creator1", Role.CREATOR)
    status, body = http_json(
        "POST", cluster_server.http + "/api/streams", {"stream_id": "s1"}, bearer=creator
    )
    assert status == 503
    assert body["error"] == {"code": "unavailable", "message": NOT_YET_SUPPORTED}

    protocols = ["giftwire.json", f"bearer.{token('viewer1')}"]
    async with connect(cluster_server.ws_url("s1"), subprotocols=protocols) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001 and closed.value.rcvd.reason == NOT_YET_SUPPORTED

    # The server loaded the scripts on every primary, and wrote nothing under its prefix.
    shas = [script.sha for script in load_scripts().values()]
    for primary in redis_cluster.primaries():
        client = Redis(port=primary.port)
        try:
            assert all(await client.script_exists(*shas))
            assert [key async for key in client.scan_iter(match=f"{keys.prefix}*")] == []
        finally:
            await client.aclose()
