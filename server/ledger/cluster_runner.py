"""Run Lua scripts on a Redis Cluster: each call on its slot's primary, pipelined and ordered.

The same coalescing as ``runner.ScriptRunner`` (``docs/ledger.md``, "The script runner on a
cluster"): calls made in the same event-loop moment share pipelines of at most
``calls_per_pipeline_max`` per primary; ``pipelines_in_flight_max`` lanes by ``order_key``
each keep one batch in flight, so one account's calls reach Redis in the order they were
made. A lane's batch is split by primary and the parts are sent at once, one pipeline per
primary (a connection of that primary's pool). A call goes to the primary of its first key's slot;
every key of one call must share that slot, or the call is refused before it is sent.

What each reply means, and what the runner does with it:

* ``MOVED``: the script did not run (the slot has another owner). The slot map is read
  again (``CLUSTER SLOTS``) and the call re-sent to the new owner, within its lane, so the
  account's later calls stay behind it. At most ``REDIRECTS_MAX`` times.
* ``ASK``: the slot is being migrated and the key is on the target: re-sent there after
  ``ASKING``.
* ``NOSCRIPT``: that node has no scripts (a promoted replica, a restart): they are loaded
  on that node, and the call is re-sent there.
* ``CLUSTERDOWN``, ``TRYAGAIN``, and the refusals of the single-node runner (OOM, BUSY,
  LOADING, MASTERDOWN, READONLY): Redis did not run the script; ``UnavailableError``.
* A connection error or timeout: the outcome is *unknown*. The calls fail with
  ``UnavailableError`` and are never re-sent here; the slot map is read again before the
  next batch, so a retry with the same client id reaches the promoted replica.

With ``wait_replicas`` (``GIFTWIRE_DURABILITY=always+replica``) every per-primary pipeline
ends as the single-node runner's does: a write to that primary's fence key
(``{~N}:fence``, N a slot the primary serves, found again when the slot moves) and
``WAIT replicas timeout``; no reply of the pipeline is handed back before WAIT counted
enough replicas of *that* primary. Fewer in time: every call of that pipeline fails with
``UnavailableError`` (applied on the primary, perhaps not on its replicas), and the
client's retry with the same id is acknowledged once they have it. A fence refused (its
slot moved under it) fails the pipeline the same way: WAIT would then cover only the
connection's earlier writes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_topology import CONNECTION_ERRORS, Address, SlotMap, retrieve
from server.ledger.runner import (
    Reply,
    _bulk,
    _Call,
    _is_noscript,
    _Lane,
    _NotReplicated,
    _pack_evalsha,
    _settle,
)
from server.ledger.scripts import LuaScript, ScriptName, load_scripts

log = logging.getLogger("giftwire.ledger")

REDIRECTS_MAX = 5
"""MOVED/ASK replies followed for one call before it fails as unavailable: one for a
failover or a finished migration, one for a migration under way, and three to spare,
because a slot map read from a node that has not yet heard of a migration's end still
names the old owner (3 ran out once under load in CI)."""
_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_NOT_RUN = (redis_errors.ClusterDownError, redis_errors.TryAgainError)


class ClusterScriptRunner:
    """Runs the ledger's scripts on a cluster; the only object that sends them EVALSHA."""

    def __init__(
        self,
        startup_urls: Sequence[str],
        *,
        timeout_s: float,
        calls_per_pipeline_max: int = 64,
        pipelines_in_flight_max: int = 4,
        pool_max: int = 64,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        fence_keys: ClusterKeys | None = None,
    ) -> None:
        self.slots = SlotMap(startup_urls, timeout_s=timeout_s, pool_max=pool_max)
        self.wait_replicas = wait_replicas
        self._wait = (
            b"*3\r\n$4\r\nWAIT\r\n" + _bulk(str(wait_replicas).encode())
            + _bulk(str(wait_timeout_ms).encode())
            if wait_replicas > 0
            else b""
        )  # fmt: skip
        self._fence_keys = fence_keys or ClusterKeys()
        self._fences: dict[int, bytes] = {}
        self._timeout_s = timeout_s
        self._calls_max = calls_per_pipeline_max
        self._lanes = [_Lane() for _ in range(max(1, pipelines_in_flight_max))]
        self._next_lane = itertools.cycle(self._lanes)
        self._reloading: dict[Address, asyncio.Task[None]] = {}
        self.scripts: dict[str, LuaScript] = _by_name(load_scripts())
        self._extra: list[LuaScript] = []
        self.on_reload: Callable[[], Awaitable[None]] | None = None
        """Called after the scripts were loaded again on a node."""

    def client(self, address: Address) -> Redis:
        return self.slots.client(address)

    def primary_of(self, slot: int) -> Address:
        """The primary serving ``slot`` in the slot map as last read."""
        return self.slots.owners[slot]

    def primaries(self) -> list[Address]:
        return self.slots.primaries()

    async def refresh(self) -> None:
        await self.slots.refresh()

    # Scripts

    async def prepare(self) -> None:
        """Read the slot map, pick the script dialect, load every script on every primary."""
        await self.refresh()
        first = self.client(self.primaries()[0])
        info = await first.info("server")
        major = int(str(info.get("redis_version", "7")).split(".")[0])
        self.scripts = _by_name(load_scripts(shebang=major >= 7))
        self.scripts.update((script.name, script) for script in self._extra)
        for address in self.primaries():
            await self._load_on(address)

    async def _load_on(self, address: Address) -> None:
        client = self.client(address)
        for script in self.scripts.values():
            sha = await client.script_load(script.source)
            if sha != script.sha:
                raise InvariantError(f"Redis hashed {script.name} as {sha}, expected {script.sha}")

    async def scripts_loaded(self) -> bool:
        """True when every primary holds every script."""
        shas = [script.sha for script in self.scripts.values()]
        for address in self.primaries():
            if not all(await self.client(address).script_exists(*shas)):
                return False
        return True

    async def ensure_loaded(self) -> bool:
        await self.refresh()
        for address in self.primaries():
            shas = [script.sha for script in self.scripts.values()]
            if not all(await self.client(address).script_exists(*shas)):
                await self._reloaded(address)
        return await self.scripts_loaded()

    async def _reloaded(self, address: Address) -> None:
        """Load the scripts on ``address`` again; lanes that meet NOSCRIPT there at the same
        moment (every lane, after a promotion) share one load."""
        task = self._reloading.get(address)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._reload_on(address))
            task.add_done_callback(retrieve)
            self._reloading[address] = task
        await asyncio.shield(task)

    async def _reload_on(self, address: Address) -> None:
        log.warning("cluster node %s:%d had no scripts (promoted or restarted)", *address)
        await self._load_on(address)
        if self.on_reload is not None:
            await self.on_reload()

    def script(self, name: ScriptName) -> LuaScript:
        return self.scripts[name]

    def register(self, script: LuaScript) -> None:
        """Add a script beyond the ledger's own (the tests' probes), loaded and reloaded
        with them; call before ``prepare``."""
        self._extra.append(script)
        self.scripts[str(script.name)] = script

    async def aclose(self) -> None:
        await self.slots.aclose()

    # Calls

    async def run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        order_key: str = "",
    ) -> Reply:
        """Run one script on its slot's primary; the reply is the script's table.

        Calls with the same ``order_key`` whose keys are in one slot reach Redis in the
        order they were made.
        """
        if not keys:
            raise InvariantError(f"{name}: a cluster call needs a key to route by")
        slot = slot_of(keys[0])
        if any(slot_of(key) != slot for key in keys[1:]):
            raise InvariantError(f"{name}: keys in more than one slot: {list(keys)}")
        loop = asyncio.get_running_loop()
        call = _Call(self.scripts[name], keys, args, loop.create_future())
        lane = (
            self._lanes[hash(order_key) % len(self._lanes)] if order_key else next(self._next_lane)
        )
        lane.pending.append(call)
        if not lane.busy and not lane.scheduled:
            lane.scheduled = True
            loop.call_soon(self._flush, lane)
        return await call.future

    async def run_now(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Reply:
        """``run``: the single-node runner's escape from its lanes for calls made from
        ``on_reload`` is not needed here (cluster mode seeds nothing from that hook)."""
        return await self.run(name, keys, args)

    def _flush(self, lane: _Lane) -> None:
        lane.scheduled = False
        if lane.busy or not lane.pending:
            return
        batch = self._take(lane)
        lane.busy = True
        task = asyncio.get_running_loop().create_task(self._send(batch))
        task.add_done_callback(functools.partial(self._sent, lane))

    def _take(self, lane: _Lane) -> list[_Call]:
        """The lane's next batch: up to ``calls_per_pipeline_max`` calls for each primary.

        A batch split over three primaries would otherwise send pipelines a third as long,
        and pay a pipeline's fixed cost three times as often. A call whose primary is full
        stays queued, ahead of the calls left behind it, so the calls of one slot keep their
        order. The scan is bounded, so a lane full of one primary's calls costs no more.
        """
        pending = lane.pending
        if self.slots.primary_count <= 1:
            return [pending.popleft() for _ in range(min(self._calls_max, len(pending)))]
        room = self._calls_max * self.slots.primary_count
        per_node: dict[Address, int] = defaultdict(int)
        batch: list[_Call] = []
        skipped: list[_Call] = []
        for _ in range(min(len(pending), 2 * room)):
            call = pending.popleft()
            node = self.slots.owners[slot_of(call.keys[0])]
            if per_node[node] < self._calls_max:
                per_node[node] += 1
                batch.append(call)
                if len(batch) == room:
                    break
            else:
                skipped.append(call)
        pending.extendleft(reversed(skipped))
        return batch

    def _sent(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        lane.busy = False
        if lane.pending:
            self._flush(lane)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.slots.refresh_if_due()
                await self._route(batch, REDIRECTS_MAX)
        except (*CONNECTION_ERRORS, TimeoutError, UnavailableError) as e:
            self.slots.stale = True
            _fail(batch, UnavailableError(str(e) or type(e).__name__))
        except BaseException as e:  # never leave a caller waiting forever
            _fail(batch, e)
            if not isinstance(e, Exception):
                raise

    async def _route(self, calls: list[_Call], redirects_left: int) -> None:
        """Send each call to its slot's primary, one pipeline per primary, all at once.

        Returns only when every part is done, so the lane keeps its order even when one
        primary fails and the others answer.
        """
        by_node: dict[Address, list[_Call]] = defaultdict(list)
        for call in calls:
            by_node[self.slots.owners[slot_of(call.keys[0])]].append(call)
        parts = list(by_node.items())
        results = await asyncio.gather(
            *(self._on_node(node, part, redirects_left) for node, part in parts),
            return_exceptions=True,
        )
        for (node, part), result in zip(parts, results, strict=True):
            if isinstance(result, _NotReplicated):
                # Applied on the primary, not known on its replicas: unknown to the client,
                # as in single-node mode. The node answers, so the map is not stale.
                log.warning("cluster node %s:%d: %s", *node, result)
                _fail(part, UnavailableError(str(result)))
            elif isinstance(result, (*CONNECTION_ERRORS, UnavailableError)):
                # Unknown outcome: these calls are not sent again; the next batch reads
                # the slot map again (a failover may be under way).
                self.slots.stale = True
                if node not in self.slots.failing:
                    self.slots.failing.add(node)
                    log.warning(
                        "cluster node %s:%d failed: %s: %s", *node, type(result).__name__, result
                    )
                _fail(part, UnavailableError(str(result) or type(result).__name__))
            elif isinstance(result, BaseException):
                _fail(part, result)
                if not isinstance(result, Exception):
                    raise result

    async def _on_node(self, node: Address, calls: list[_Call], redirects_left: int) -> None:
        noscript: list[_Call] = []
        moved: list[tuple[_Call, redis_errors.MovedError]] = []
        asked: dict[Address, list[_Call]] = defaultdict(list)
        replies = await self._pipeline(node, calls)
        if node in self.slots.failing:
            self.slots.failing.discard(node)
            log.warning("cluster node %s:%d answers again", *node)
        for call, reply in zip(calls, replies, strict=True):
            if _is_noscript(reply):
                noscript.append(call)
            elif isinstance(reply, redis_errors.MovedError):
                moved.append((call, reply))
            elif isinstance(reply, redis_errors.AskError):
                asked[(reply.host, reply.port)].append(call)
            else:
                _settle_on_cluster(call, reply)
        if not (noscript or moved or asked):
            return
        if redirects_left <= 0:
            again = [*noscript, *(call for call, _ in moved), *itertools.chain(*asked.values())]
            _fail(again, UnavailableError("too many cluster redirections"))
            return
        if noscript:
            await self._reloaded(node)
            await self._on_node(node, noscript, redirects_left - 1)
        for target, part in asked.items():
            await self._on_node_asking(target, part)
        if moved:
            await self.refresh()
            for _, reply in moved:  # newer than a map read from a node that lags behind
                self.slots.owners[reply.slot_id] = (reply.host, reply.port)
            await self._route([call for call, _ in moved], redirects_left - 1)

    async def _on_node_asking(self, node: Address, calls: list[_Call]) -> None:
        for call, reply in zip(calls, await self._pipeline(node, calls, asking=True), strict=True):
            if isinstance(reply, redis_errors.AskError) or _is_noscript(reply):
                # Rare enough (a second migration, or a script flush, at once) to be left to
                # the client's retry with the same id.
                _fail([call], UnavailableError(f"cluster redirection: {reply}"))
            else:
                _settle_on_cluster(call, reply)

    async def _pipeline(
        self, node: Address, calls: list[_Call], *, asking: bool = False
    ) -> list[object]:
        """Send the calls' EVALSHAs to ``node`` in one write, read one reply per call.

        As ``ScriptRunner._pipeline``: no automatic retry, and a connection whose state
        is unknown after an error is closed rather than reused. With ``asking`` each
        EVALSHA is preceded by ASKING, whose +OK reply is read and dropped.
        """
        pool = self.client(node).connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            packed = [(_ASKING if asking else b"") + _pack_evalsha(call) for call in calls]
            if self._wait:
                packed.append(self._fence(node) + self._wait)
            await connection.send_packed_command(b"".join(packed), check_health=False)
            replies: list[object] = []
            for _ in calls:
                if asking:
                    await connection.read_response(timeout=math.inf)
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except redis_errors.ResponseError as error:
                    replies.append(error)
            if self._wait:
                await self._replicated(connection)
            return replies
        except _NotReplicated:
            raise  # the connection is in a known state: keep it
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    def _fence(self, node: Address) -> bytes:
        """``SET fence 1`` for a slot ``node`` serves: WAIT then covers every write the
        primary made before it, a replay's receipt written by an earlier call included."""
        slot = self.slots.fence_slot(node)
        packed = self._fences.get(slot)
        if packed is None:
            key = self._fence_keys.fence_shard(slot).encode()
            packed = b"*3\r\n$3\r\nSET\r\n" + _bulk(key) + _bulk(b"1")
            self._fences[slot] = packed
        return packed

    async def _replicated(self, connection: Connection) -> None:
        """Read the fence's and WAIT's replies; ``_NotReplicated`` unless enough replicas."""
        refused: list[str] = []
        replies: list[object] = []
        for _ in range(2):
            try:
                replies.append(await connection.read_response(timeout=math.inf))
            except redis_errors.ResponseError as error:  # MOVED: the fence's slot moved
                refused.append(str(error))
        if refused:
            self.slots.stale = True
            raise _NotReplicated(f"durability fence or WAIT refused: {refused[0]}")
        replicas = replies[1]
        if not isinstance(replicas, int) or replicas < self.wait_replicas:
            raise _NotReplicated(
                f"applied, but on {replicas} of {self.wait_replicas} replicas in time"
            )


def _settle_on_cluster(call: _Call, reply: object) -> None:
    if isinstance(reply, _NOT_RUN):
        # The cluster refused to run the script (a slot without a primary, a migration
        # between two keys): nothing was written.
        _fail([call], UnavailableError(f"cluster: {type(reply).__name__}: {reply}"))
    else:
        _settle(call, reply)


def _by_name(scripts: Mapping[ScriptName, LuaScript]) -> dict[str, LuaScript]:
    return {str(name): script for name, script in scripts.items()}


def _fail(calls: Sequence[_Call], error: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(error)
