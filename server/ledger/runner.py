"""Run Lua scripts with EVALSHA, sharing Redis round trips between concurrent callers.

Calls that arrive in the same event-loop moment are sent together in one non-transactional
pipeline (at most ``calls_per_pipeline_max``). Calls are spread over
``pipelines_in_flight_max`` lanes by account, each lane with one pipeline in flight, so
one account's calls keep their order while lanes run in parallel. Each script stays atomic
on its own; the pipeline only saves round trips and client CPU (about 110 µs per singly
awaited call against about 40 µs pipelined, see ``docs/architecture.md``). A reply of
NOSCRIPT (Redis restarted or flushed its script cache) means that script did not run: it is
loaded again and only those calls are re-sent.

A connection error or timeout fails every call of the pipeline with ``UnavailableError``:
the scripts may or may not have run, and a retry with the same client id says which.

With ``wait_replicas`` (``GIFTWIRE_DURABILITY=always+replica``) each pipeline ends with a
write to a fence key and ``WAIT replicas timeout``, and no reply of the pipeline is handed
back before WAIT counted enough replicas. WAIT waits for the writes of its own connection;
the fence makes that include every write Redis made before it, which matters for a replay:
a replay writes nothing, and its receipt may be the one a replica has not got yet. When
fewer replicas answer in time, every call of the pipeline fails with ``UnavailableError``
(applied on the primary, not yet on the replicas): the client retries with the same id,
and the replay is acknowledged once the replicas have it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.scripts import LuaScript, ScriptName, load_scripts

log = logging.getLogger("giftwire.ledger")

Reply = list[bytes]
StreamRows = list[tuple[bytes, dict[bytes, bytes]]]
"""XRANGE rows as the bytes-mode client returns them."""
_NOSCRIPT = "NOSCRIPT"
# Replies by which Redis refuses to run a script at all, so that nothing was written. The
# client strips the code from the message of the errors it knows by class, so both are checked.
_REFUSED_TO_RUN = ("OOM", "BUSY", "LOADING", "MASTERDOWN", "READONLY")
_REFUSED_TO_RUN_ERRORS = (
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
)


class _NotReplicated(Exception):
    """WAIT counted fewer replicas than asked for: the outcome is unknown to the caller."""


class _Lane:
    """One ordered stream of pipelines: at most one in flight, so calls keep their order."""

    __slots__ = ("busy", "pending", "scheduled")

    def __init__(self) -> None:
        self.pending: deque[_Call] = deque()
        self.busy = False
        self.scheduled = False


@dataclass(slots=True)
class _Call:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[str | int]
    future: asyncio.Future[Reply] = field(repr=False)


def _is_noscript(reply: object) -> bool:
    # redis-py turns "NOSCRIPT No matching script…" into NoScriptError("No matching script…").
    return isinstance(reply, redis_errors.NoScriptError) or (
        isinstance(reply, redis_errors.ResponseError) and str(reply).startswith(_NOSCRIPT)
    )


class ScriptRunner:
    """Runs the ledger's scripts; the only object that sends EVALSHA."""

    def __init__(
        self,
        redis: Redis,
        *,
        timeout_s: float,
        calls_per_pipeline_max: int = 64,
        pipelines_in_flight_max: int = 4,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        fence_key: str = "{ledger}:fence",
    ) -> None:
        self.redis = redis
        self._wait = (
            b"*3\r\n$3\r\nSET\r\n" + _bulk(fence_key.encode()) + _bulk(b"1")
            + b"*3\r\n$4\r\nWAIT\r\n" + _bulk(str(wait_replicas).encode())
            + _bulk(str(wait_timeout_ms).encode())
            if wait_replicas > 0
            else b""
        )  # fmt: skip
        self._wait_replicas = wait_replicas
        self._timeout_s = timeout_s
        self._calls_max = calls_per_pipeline_max
        self._lanes = [_Lane() for _ in range(max(1, pipelines_in_flight_max))]
        self._next_lane = itertools.cycle(self._lanes)
        self.scripts = load_scripts()
        self.on_reload: Callable[[], Awaitable[None]] | None = None
        """Called after the scripts were loaded again (Redis restarted or was flushed)."""
        self.on_unavailable: Callable[[], None] | None = None
        """Called when a pipeline failed for want of Redis (connection lost, timeout)."""

    async def prepare(self) -> None:
        """Pick the script dialect for this server and load every script (SCRIPT LOAD)."""
        info = await self.redis.info("server")
        major = int(str(info.get("redis_version", "7")).split(".")[0])
        self.scripts = load_scripts(shebang=major >= 7)
        for script in self.scripts.values():
            await self._load(script)

    async def _load(self, script: LuaScript) -> None:
        sha = await self.redis.script_load(script.source)
        if sha != script.sha:
            raise InvariantError(f"Redis hashed {script.name} as {sha}, expected {script.sha}")

    async def scripts_loaded(self) -> bool:
        shas = [script.sha for script in self.scripts.values()]
        exists = await self.redis.script_exists(*shas)
        return all(exists)

    async def ensure_loaded(self) -> bool:
        """Load every script again if Redis lost its script cache (a restart, SCRIPT FLUSH).

        Calls reload on NOSCRIPT by themselves; this lets a readiness check turn green again
        after a restart even when no call has been made since. True when all are loaded.
        """
        if await self.scripts_loaded():
            return True
        log.warning("Redis lost the ledger scripts (restarted?); loading them again")
        await self._reload_all()
        return await self.scripts_loaded()

    async def _reload_all(self) -> None:
        for script in self.scripts.values():
            await self._load(script)
        if self.on_reload is not None:
            await self.on_reload()

    def script(self, name: ScriptName) -> LuaScript:
        return self.scripts[name]

    async def run(
        self,
        name: ScriptName,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        order_key: str = "",
    ) -> Reply:
        """Run one script; its reply is the script's table as a list of bytes.

        Calls with the same ``order_key`` (the account whose order matters) reach Redis in
        the order they were made; others may be reordered against them.
        """
        loop = asyncio.get_running_loop()
        call = _Call(self.scripts[name], keys, args, loop.create_future())
        lane = (
            self._lanes[hash(order_key) % len(self._lanes)] if order_key else next(self._next_lane)
        )
        lane.pending.append(call)
        if not lane.busy and not lane.scheduled:
            # Wait one loop turn so that every call made in this moment joins the pipeline.
            lane.scheduled = True
            loop.call_soon(self._flush, lane)
        return await call.future

    async def run_now(
        self, name: ScriptName, keys: Sequence[str], args: Sequence[str | int]
    ) -> Reply:
        """Run one script at once on a connection of its own, outside the lanes.

        For rare calls that may be made from ``on_reload`` (seeding the catalog): that hook
        runs while a lane waits for it, and a call queued behind that lane would wait for
        ever. Loads the script on NOSCRIPT (without calling ``on_reload`` again).
        """
        script = self.scripts[name]
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            try:
                reply = await self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
            except redis_errors.NoScriptError:
                await self._load(script)
                reply = await self.redis.execute_command(*command)  # type: ignore[no-untyped-call]
        except redis_errors.ResponseError as error:
            raise _script_error(script.name, error) from error
        if not isinstance(reply, list):
            raise InvariantError(f"{script.name} replied {reply!r}")
        return cast(Reply, reply)

    def _flush(self, lane: _Lane) -> None:
        lane.scheduled = False
        if lane.busy or not lane.pending:
            return
        pending = lane.pending
        batch = [pending.popleft() for _ in range(min(self._calls_max, len(pending)))]
        lane.busy = True
        task = asyncio.get_running_loop().create_task(self._send(batch))
        task.add_done_callback(functools.partial(self._sent, lane))

    def _sent(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        lane.busy = False
        if lane.pending:
            self._flush(lane)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._execute(batch)
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            TimeoutError,
            OSError,
            _NotReplicated,
        ) as e:
            log.warning("ledger call failed: %s: %s", type(e).__name__, e)
            if self.on_unavailable is not None:
                self.on_unavailable()
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(UnavailableError(str(e) or type(e).__name__))
        except BaseException as e:  # never leave a caller waiting forever
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(e)
            if not isinstance(e, Exception):
                raise

    async def _execute(self, batch: list[_Call]) -> None:
        retry: list[_Call] = []
        for call, reply in zip(batch, await self._pipeline(batch), strict=True):
            if _is_noscript(reply):
                retry.append(call)
            else:
                _settle(call, reply)
        if retry:
            # NOSCRIPT means Redis lost its whole script cache (a restart, SCRIPT FLUSH): load
            # every script again, not only these, so that scripts_loaded() (the readiness
            # check) holds again without waiting for a call of each script.
            await self._reload_all()
            for call, reply in zip(retry, await self._pipeline(retry), strict=True):
                _settle(call, reply)

    async def _pipeline(self, batch: list[_Call]) -> list[object]:
        """Send the batch's EVALSHAs in one write, read one reply (or error) per call.

        This is what a redis-py pipeline does, without its per-argument encoder (about
        19 µs per send_gift call against 7 µs here, measured for ``docs/benchmarks.md``)
        and without its automatic retry: a connection error or timeout fails the batch
        (the caller's ``asyncio.timeout`` bounds the whole exchange) and the connection,
        whose state is then unknown, is closed rather than reused.
        """
        pool = self.redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(
                b"".join([_pack_evalsha(call) for call in batch]) + self._wait,
                check_health=False,
            )
            replies: list[object] = []
            for _ in batch:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except redis_errors.ResponseError as error:
                    replies.append(error)
            if self._wait:
                await connection.read_response(timeout=math.inf)  # the fence's OK
                replicas = await connection.read_response(timeout=math.inf)
                if not isinstance(replicas, int) or replicas < self._wait_replicas:
                    raise _NotReplicated(
                        f"applied, but on {replicas} of {self._wait_replicas} replicas in time"
                    )
            return replies
        except _NotReplicated:
            raise  # the connection is in a known state: keep it
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)


def _pack_evalsha(call: _Call) -> bytes:
    """The RESP encoding of ``EVALSHA sha numkeys key... arg...``."""
    keys, args = call.keys, call.args
    parts = [
        b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n"
        % (3 + len(keys) + len(args), call.script.sha.encode()),
        _bulk(str(len(keys)).encode()),
    ]
    for item in (*keys, *args):
        packed = _packed.get(item)
        if packed is None:
            packed = _bulk(item.encode() if isinstance(item, str) else str(item).encode())
            if len(_packed) < PACKED_CACHE_MAX:
                _packed[item] = packed
        parts.append(packed)
    return b"".join(parts)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


PACKED_CACHE_MAX = 4096
_packed: dict[str | int, bytes] = {}
"""Encoded arguments seen first, kept while there is room: the limits, the platform,
ledger and catalog keys and the live streams' keys repeat on every call (a client id
never does, and only costs a lookup)."""


def _settle(call: _Call, reply: object) -> None:
    if call.future.done():  # the caller was cancelled
        return
    if isinstance(reply, redis_errors.ResponseError):
        call.future.set_exception(_script_error(call.script.name, reply))
    elif isinstance(reply, list):
        call.future.set_result(reply)
    else:
        call.future.set_exception(InvariantError(f"{call.script.name} replied {reply!r}"))


def _script_error(name: ScriptName, error: redis_errors.ResponseError) -> Exception:
    message = str(error)
    if isinstance(error, _REFUSED_TO_RUN_ERRORS) or message.startswith(_REFUSED_TO_RUN):
        # Redis refused to run the script at all: nothing was written.
        return UnavailableError(message)
    log.error("script %s failed: %s", name, message)
    return InvariantError(f"script {name} failed: {message}")
