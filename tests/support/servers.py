"""Real giftwire server processes for end-to-end tests, and clients that talk to them."""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from client_demo.http import http_exchange as http_exchange  # re-exported for the tests
from client_demo.http import http_json as http_json
from client_demo.http import post_webhook
from client_demo.wire import decode, encode, subprotocols
from server.domain.accounts import Role
from server.ledger.embedded import free_port
from server.web.auth import issue_token

JWT_SECRET = "test-secret-" + "x" * 40
WEBHOOK_SECRET = "webhook-secret-for-tests"
REPO = Path(__file__).resolve().parents[2]


def _files_max(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


class ServerProcess:
    """``giftwire serve`` in a child process on a free port."""

    def __init__(self, redis_url: str, key_prefix: str, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.log_path = log_dir / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "GIFTWIRE_REDIS_URL": redis_url,
            "GIFTWIRE_KEY_PREFIX": key_prefix,
            "GIFTWIRE_JWT_SECRET": JWT_SECRET,
            "GIFTWIRE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GIFTWIRE_STATS_INTERVAL_S": "0.5",
            "GIFTWIRE_LOG_LEVEL": "warning",
            # No payout hold unless a test asks for one: tests of payouts earn and cash out
            # at once (tests/integration/test_hold.py tests the hold).
            "GIFTWIRE_PAYOUT_HOLD_DAYS": "0",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.cwd = REPO

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, stream_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/streams/{stream_id}"

    def start(self, timeout_s: float = 20.0, *, files_max: int | None = None) -> None:
        """``files_max``: the child's soft limit of open files (``ulimit -n``)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if files_max is None else functools.partial(_files_max, files_max),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(
    redis_url: str, key_prefix: str, log_dir: Path, *, count: int = 1, **env: str
) -> Iterator[list[ServerProcess]]:
    """``count`` server processes on one Redis with the same settings, started in turn;
    every one started is stopped at the end, also when a later one fails to start."""
    servers = [ServerProcess(redis_url, key_prefix, log_dir, **env) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def token(
    user: str, role: Role = Role.VIEWER, *, ttl_s: int = 3600, name: str | None = None
) -> str:
    return issue_token(JWT_SECRET, user, role, name=name or user.title(), ttl_s=ttl_s)


def signed_webhook(
    server: ServerProcess, event: dict[str, object], secret: str = WEBHOOK_SECRET
) -> tuple[int, Any]:
    return post_webhook(server.http, secret, event)


class Client:
    """A WebSocket client speaking JSON or msgpack, with helpers to wait for messages."""

    def __init__(self, ws: ClientConnection, fmt: str) -> None:
        self.ws = ws
        self.fmt = fmt
        self.welcome: dict[str, Any] = {}
        self.backlog: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(encode(message, "msgpack" if self.fmt == "msgpack" else "json"))

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next message: first any that ``recv_type`` set aside, then from the socket."""
        if self.backlog:
            return self.backlog.pop(0)
        return await self._read(timeout_s)

    async def _read(self, timeout_s: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout_s)
        if self.fmt == "msgpack":
            assert isinstance(raw, bytes), "msgpack connections get binary frames"
            return decode(raw, "msgpack")
        assert isinstance(raw, str), "JSON connections get text frames"
        return decode(raw, "json")

    async def recv_type(self, *types: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next message of one of ``types``; others are set aside for later, not lost
        (stats and leaderboard updates are simply dropped, they come again)."""
        for i, message in enumerate(self.backlog):
            if message["type"] in types:
                return self.backlog.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            message = await self._read(max(left, 0.01))
            if message["type"] in types:
                return message
            if message["type"] not in ("stats", "leaderboard"):
                self.backlog.append(message)

    async def gifts(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Collect ``count`` gift events, unpacking coalesced ``gifts`` frames."""
        events: list[dict[str, Any]] = []
        while len(events) < count:
            message = await self.recv_type("gift", "gifts", timeout_s=timeout_s)
            events.extend(message["events"] if message["type"] == "gifts" else [message])
        return events


@asynccontextmanager
async def client(
    server: ServerProcess,
    stream_id: str,
    bearer: str,
    *,
    fmt: str = "json",
    extra_protocols: Sequence[str] = (),
) -> AsyncIterator[Client]:
    protocols = [*subprotocols(bearer, fmt), *extra_protocols]
    async with connect(
        server.ws_url(stream_id),
        subprotocols=[Subprotocol(p) for p in protocols],
        compression=None,  # type: ignore[arg-type]
        open_timeout=10,
        close_timeout=2,
    ) as ws:
        c = Client(ws, fmt)
        c.welcome = await c.recv_type("welcome")
        yield c
