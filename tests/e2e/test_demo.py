"""`giftwire demo` as a user runs it: no Redis configured, an embedded one is started.

The demo runs from a folder other than the checkout, with a *relative* data folder: the
case that broke (redis-server changes into its data folder before it opens its log file).
It is stopped the way Ctrl+C stops it, with SIGINT to its whole process group.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from client_demo.wire import subprotocols
from server.ledger.embedded import free_port

CLEAN_STOP_NEVER = (
    "Traceback",
    "pub/sub connection lost",
    "ASGI callable returned without completing handshake",
)


@dataclass
class Demo:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path

    def banner(self) -> str:
        return self.log.read_text(errors="replace")

    def token(self, page: str) -> str:
        found = re.search(rf"{page} .*#token=(\S+)", self.banner())
        assert found is not None, self.banner()
        return found.group(1)

    def stop(self) -> None:
        """What Ctrl+C does: SIGINT to every process of the terminal's foreground group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(30)


StartDemo = Callable[..., Demo]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTWIRE_")}
    return env | extra


def _module(
    module: str, cwd: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` in ``cwd``, as a user would type it there."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _giftwire(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _module("server.cli", cwd, env, *args)


def _wait_ready(demo: Demo, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert demo.process.poll() is None, f"giftwire demo exited:\n{demo.banner()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{demo.port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("giftwire demo never became ready")


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder that is not the checkout, where the user happens to stand."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


@pytest.fixture
def start_demo(tmp_path: Path, elsewhere: Path) -> Iterator[StartDemo]:
    demos: list[Demo] = []

    def start(*args: str) -> Demo:
        port = free_port()
        log = tmp_path / f"demo-{len(demos)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "demo", "--port", str(port), *args],
                cwd=elsewhere,
                env=_env(GIFTWIRE_DATA_DIR="data"),  # relative, on purpose
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a terminal's job
            )
        demo = Demo(port, process, log, elsewhere / "data")
        demos.append(demo)
        _wait_ready(demo)
        return demo

    yield start
    for demo in demos:
        demo.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _send_rose(port: int, token: str, client_id: str) -> tuple[int, dict[str, object]]:
    """Join, send one rose; the welcome's coins and the gift_ack."""
    async with connect(
        f"ws://127.0.0.1:{port}/ws/streams/demo",
        subprotocols=[Subprotocol(p) for p in subprotocols(token)],
    ) as ws:
        welcome = orjson.loads(await ws.recv())
        await ws.send(orjson.dumps({"type": "send_gift", "id": client_id, "gift": "rose"}).decode())
        while (answer := orjson.loads(await ws.recv()))["type"] not in ("gift_ack", "error"):
            pass
    return int(welcome["balance"]["coins"]), answer


async def test_demo_runs_from_any_folder_and_stops_cleanly(
    start_demo: StartDemo, elsewhere: Path, tmp_path: Path
) -> None:
    demo = start_demo()
    assert "coins: alice 50,000, bob 50,000, carol 50,000" in demo.banner()
    coins, ack = await _send_rose(demo.port, demo.token("viewer alice"), "demo-1")
    assert coins == 50_000 and ack["type"] == "gift_ack" and ack["balance"] == 49_999

    # Everything lives in the data folder the relative setting named, nothing elsewhere.
    data = (elsewhere / "data").resolve()
    assert (data / "demo-secrets.json").exists()
    redis_dir = data / "redis"
    assert any(p.name.startswith("appendonly") for p in redis_dir.iterdir()), "AOF is on"
    redis_port = int((redis_dir / "redis.port").read_text())
    assert _accepts(redis_port)
    assert os.listdir(elsewhere) == ["data"]

    # From yet another folder, with the data folder given absolutely: the same secrets and
    # the same, running Redis.
    other = tmp_path / "other"
    other.mkdir()
    env = _env(GIFTWIRE_DATA_DIR=str(data))
    minted = _giftwire(other, env, "token", "--user", "bob")
    assert minted.returncode == 0, minted.stderr
    coins, ack = await _send_rose(demo.port, minted.stdout.strip(), "demo-2")
    assert coins == 50_000 and ack["balance"] == 49_999
    checked = _giftwire(other, env, "reconcile", "--json")
    assert checked.returncode == 0, checked.stderr
    assert orjson.loads(checked.stdout)["ok"] is True

    # The load generator finds the demo's secrets the same way, and reconciles against the
    # running demo's Redis afterwards, with nothing set but where the data folder is.
    loaded = _module(
        "loadtest", other, env, "run", "--url", f"http://127.0.0.1:{demo.port}",
        "--hot-rooms", "1", "--cold-rooms", "0", "--viewers", "4", "--gifters", "2",
        "--gifts", "20", "--duration", "15", "--drain", "3", "--probes", "2", "--quiet",
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    result = orjson.loads(loaded.stdout)
    assert result["gifts"]["acked"] == 20 and result["reconcile"]["ok"] is True
    assert os.listdir(other) == []


async def test_a_refused_handshake_logs_no_error(start_demo: StartDemo) -> None:
    demo = start_demo()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"ws://127.0.0.1:{demo.port}/ws/streams/no-such-stream",
            subprotocols=[Subprotocol(p) for p in subprotocols(demo.token("viewer alice"))],
        ):
            pass
    assert refused.value.response.status_code == 404
    assert orjson.loads(refused.value.response.body or b"")["error"]["code"] == "unknown_stream"
    redis_dir = demo.data_dir / "redis"
    redis_port = int((redis_dir / "redis.port").read_text())
    demo.stop()
    log = demo.banner()
    assert demo.process.returncode == 0, log
    for line in CLEAN_STOP_NEVER:
        assert line not in log
    # The embedded Redis went away with the demo, after it: nothing listens on its port.
    assert not (redis_dir / "redis.port").exists()
    assert not _accepts(redis_port)


async def test_a_second_run_shows_real_balances_and_reset_starts_over(
    start_demo: StartDemo, elsewhere: Path
) -> None:
    first = start_demo()
    _, ack = await _send_rose(first.port, first.token("viewer alice"), "demo-1")
    assert ack["balance"] == 49_999
    first.stop()

    # The demo is stopped: reconcile reads its data with a Redis of its own, no traceback.
    env = _env(GIFTWIRE_DATA_DIR="data")
    checked = _giftwire(elsewhere, env, "reconcile")
    assert checked.returncode == 0, checked.stderr
    assert "books reconcile: OK" in checked.stdout and "Traceback" not in checked.stderr

    second = start_demo()
    assert "coins: alice 49,999, bob 50,000" in second.banner()
    refused = _giftwire(elsewhere, env, "demo", "--reset", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "stop it first" in refused.stderr and "Traceback" not in refused.stderr
    second.stop()

    third = start_demo("--reset")
    assert "demo data wiped" in third.banner()
    assert "coins: alice 50,000, bob 50,000, carol 50,000" in third.banner()
