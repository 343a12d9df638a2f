"""`giftwire demo` as the README runs it: no Redis configured, an embedded one is started."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from server.ledger.embedded import free_port
from tests.support.servers import REPO


@dataclass
class Demo:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path


def _wait_ready(demo: Demo, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert demo.process.poll() is None, f"giftwire demo exited:\n{demo.log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{demo.port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("giftwire demo never became ready")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTWIRE_")}
    env["GIFTWIRE_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "demo", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Demo(port, process, log, tmp_path / "data")
    try:
        _wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def test_demo_starts_embedded_redis_seeds_and_cleans_up(demo: Demo) -> None:
    banner = demo.log.read_text()
    token = re.search(r"viewer alice .*#token=(\S+)", banner)
    assert token is not None and "creator" in banner
    async with connect(
        f"ws://127.0.0.1:{demo.port}/ws/streams/demo",
        subprotocols=["giftwire.json", f"bearer.{token.group(1)}"],  # type: ignore[list-item]
    ) as ws:
        assert '"coins":50000' in str(await ws.recv())
        await ws.send('{"type": "send_gift", "id": "demo-1", "gift": "rose"}')
        while '"gift_ack"' not in (message := str(await ws.recv())):
            pass
        assert '"balance":49999' in message
    redis_dir = demo.data_dir / "redis"
    redis_port = int((redis_dir / "redis.port").read_text())
    assert _accepts(redis_port)
    assert any(p.name.startswith("appendonly") for p in redis_dir.iterdir()), "AOF is on"

    demo.process.terminate()
    demo.process.wait(20)
    # The embedded Redis went away with the demo: nothing listens on its port any more.
    assert not (redis_dir / "redis.port").exists()
    assert not _accepts(redis_port)
