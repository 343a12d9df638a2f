"""`giftwire demo` as the README runs it: no Redis configured, an embedded one is started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

from server.ledger.embedded import free_port, pid_alive
from tests.support.servers import REPO


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "giftwire demo exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("giftwire demo never became ready")


async def test_demo_starts_embedded_redis_seeds_and_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTWIRE_")}
    env["GIFTWIRE_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "demo", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(port, demo)
        banner = log.read_text()
        assert "viewer alice" in banner and "creator" in banner
        token = re.search(r"viewer alice .*#token=(\S+)", banner)
        assert token is not None
        async with connect(
            f"ws://127.0.0.1:{port}/ws/streams/demo",
            subprotocols=["giftwire.json", f"bearer.{token.group(1)}"],  # type: ignore[list-item]
        ) as ws:
            welcome = await ws.recv()
            assert '"coins":50000' in str(welcome)
            await ws.send('{"type": "send_gift", "id": "demo-1", "gift": "rose"}')
            while '"gift_ack"' not in (message := str(await ws.recv())):
                pass
            assert '"balance":49999' in message
        redis_pid_file = tmp_path / "data" / "redis" / "redis.port"
        assert redis_pid_file.exists()
        assert (tmp_path / "data" / "redis" / "appendonlydir").exists() or any(
            p.name.startswith("appendonly") for p in (tmp_path / "data" / "redis").iterdir()
        )
    finally:
        demo.terminate()
        demo.wait(20)
    # The embedded Redis went away with the demo.
    assert not (tmp_path / "data" / "redis" / "redis.port").exists()
    leftovers = subprocess.run(
        ["pgrep", "-f", f"redis-server.*{tmp_path}"], capture_output=True, text=True
    )
    assert not [pid for pid in leftovers.stdout.split() if pid_alive(int(pid))]
