"""A Redis Cluster on loopback for the tests: 3 primaries + 3 replicas of the local redis-server.

Each node is a ``RedisProcess`` (its own temp folder, free port, AOF on) started with
``--cluster-enabled yes`` and its own ``nodes.conf``; ``redis-cli --cluster create`` forms
the cluster and assigns the 16384 slots. The fixture waits until every node says
``cluster_state:ok`` and every slot is served, so a test never meets a half-formed cluster.

Faults: ``kill(node)`` is a SIGKILL (what a crash looks like), ``wait_promoted(node)``
waits until a replica took over the dead primary's slots and the cluster is ``ok`` again,
``restart(node)`` starts the node again on its port and folder: it reads its ``nodes.conf``,
rejoins and becomes a replica of whoever serves its old slots now.

Never the machine's shared Redis: every node is a child process of the test run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis as SyncRedis
from redis import exceptions as redis_errors

from server.ledger.embedded import EmbeddedRedisError, RedisProcess, find_redis_server, free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 2000
"""How long a primary may be silent before the others count it as failed. Short so that
a failover test takes seconds, long enough that two busy CPU cores do not cause one."""


class ClusterError(RuntimeError):
    """The test cluster could not be formed or did not reach the expected state in time."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One line of CLUSTER NODES, as far as the tests need it."""

    node_id: str
    port: int
    is_primary: bool
    failed: bool
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]


def _parse_nodes(text: str) -> list[NodeInfo]:
    nodes: list[NodeInfo] = []
    for line in text.strip().splitlines():
        fields = line.split()
        node_id, address, flags, primary = fields[0], fields[1], fields[2].split(","), fields[3]
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        ranges: list[tuple[int, int]] = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot being migrated: not owned yet
                continue
            low, _, high = part.partition("-")
            ranges.append((int(low), int(high or low)))
        nodes.append(
            NodeInfo(
                node_id=node_id,
                port=port,
                is_primary="master" in flags,
                failed="fail" in flags or "fail?" in flags,
                primary_id=None if primary == "-" else primary,
                slots=tuple(ranges),
            )
        )
    return nodes


class RedisCluster:
    """``primaries`` + ``primaries × replicas`` redis-server processes forming one cluster."""

    def __init__(
        self,
        base_dir: Path,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        self.base_dir = base_dir
        self.primary_count = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self._ports_taken: set[int] = set()
        self.nodes = [self._new_node(index) for index in range(primaries * (1 + replicas))]

    def _free_port(self) -> int:
        """A free port not already given to a node or bus of this cluster: ``free_port``
        may hand out a port it just returned."""
        while True:
            port = free_port()
            if port not in self._ports_taken:
                self._ports_taken.add(port)
                return port

    def _new_node(self, index: int) -> RedisProcess:
        node_dir = self.base_dir / f"node{index}"
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            # An explicit bus port: the default (port + 10000) does not exist for the
            # high ephemeral ports that free_port() hands out.
            "--cluster-port", str(self._free_port()),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica may take over however long it was cut off: the tests kill
            # primaries right after writing to them.
            "--cluster-replica-validity-factor", "0",
        )  # fmt: skip
        return RedisProcess(node_dir, port=self._free_port(), extra_args=args)

    def _start_node(self, index: int, attempts: int = 3) -> None:
        """Start a node of a cluster not yet formed; on a port taken meanwhile by another
        process of the machine, try again on new ports."""
        for attempt in range(attempts):
            try:
                self.nodes[index].start()
                return
            except EmbeddedRedisError as e:
                if "Address already in use" not in str(e) or attempt == attempts - 1:
                    raise
                self.nodes[index].stop()  # reaps it and closes its stderr pipe
                shutil.rmtree(self.nodes[index].data_dir, ignore_errors=True)
                self.nodes[index] = self._new_node(index)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def startup_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout_s: float = 30.0) -> None:
        try:
            self._form(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _form(self, timeout_s: float) -> None:
        for index in range(len(self.nodes)):
            self._start_node(index)
        redis_cli = shutil.which("redis-cli") or str(
            Path(find_redis_server()).with_name("redis-cli")
        )
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [redis_cli, "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise ClusterError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        self.wait_ok(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def alive(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.process is not None and node._ping()]

    def _query(self, port: int, *command: str) -> str:
        client = SyncRedis(port=port, socket_timeout=2, socket_connect_timeout=2)
        try:
            reply = client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def _replication(self, port: int) -> dict[str, object]:
        client = SyncRedis(
            port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
        )
        try:
            info: dict[str, object] = client.info("replication")
        finally:
            client.close()
        return info

    def shard_channels(self, client_name_prefix: str) -> dict[int, int]:
        """Port -> the shard channels (``CLIENT LIST``'s ``ssub``) that clients whose name
        starts with ``client_name_prefix`` hold there, over every live node."""
        found: dict[int, int] = {}
        for node in self.alive():
            client = SyncRedis(port=node.port, socket_timeout=2, decode_responses=True)
            try:
                listed = client.client_list()
            finally:
                client.close()
            for entry in listed:
                held = int(entry.get("ssub", 0))
                if entry.get("name", "").startswith(client_name_prefix) and held:
                    found[node.port] = found.get(node.port, 0) + held
        return found

    def topology(self, port: int | None = None) -> list[NodeInfo]:
        """CLUSTER NODES as one live node sees it (the first live one unless ``port``)."""
        ask = port if port is not None else self.alive()[0].port
        return _parse_nodes(self._query(ask, "CLUSTER", "NODES"))

    def primaries(self) -> list[NodeInfo]:
        return [n for n in self.topology() if n.is_primary and not n.failed and n.slots]

    def primary_for_slot(self, slot: int) -> NodeInfo:
        for node in self.primaries():
            if any(low <= slot <= high for low, high in node.slots):
                return node
        raise ClusterError(f"no primary serves slot {slot}")

    def _healthy(self) -> bool:
        """Every live node: state ok, all slots served, the same primaries, every live node
        known and not failed, no primary without slots, every replica in sync."""
        alive = sorted(node.port for node in self.alive())
        views: set[tuple[int, ...]] = set()
        for port in alive:
            info = self._query(port, "CLUSTER", "INFO")
            fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
            if fields.get("cluster_state") != "ok":
                return False
            if int(fields.get("cluster_slots_ok", 0)) != SLOTS:
                return False
            live = [n for n in self.topology(port) if not n.failed]
            if sorted(n.port for n in live) != alive:
                return False
            primaries = [n for n in live if n.is_primary]
            if len(primaries) != self.primary_count or any(not n.slots for n in primaries):
                return False
            me = next(n for n in live if n.port == port)
            if not me.is_primary and self._replication(port).get("master_link_status") != "up":
                return False
            views.add(tuple(sorted(n.port for n in primaries)))
        return len(views) == 1

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Block until the cluster is healthy as seen from every live node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self._healthy():
                    return
            except (redis_errors.RedisError, OSError, IndexError):
                pass
            time.sleep(0.05)
        raise ClusterError(f"cluster not ok after {timeout_s} s")

    def kill(self, port: int) -> None:
        """SIGKILL one node."""
        self.node(port).kill()

    def wait_promoted(self, dead_port: int, timeout_s: float = 30.0) -> NodeInfo:
        """After ``kill`` of a primary: wait until another node serves its slots; return it."""
        dead = next(n for n in self.topology() if n.port == dead_port)
        if not dead.slots:
            raise ClusterError(f"node {dead_port} served no slots")
        first_slot = dead.slots[0][0]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self._healthy():
                    promoted = self.primary_for_slot(first_slot)
                    if promoted.port != dead_port:
                        return promoted
            except (redis_errors.RedisError, OSError, IndexError, ClusterError):
                pass
            time.sleep(0.05)
        raise ClusterError(f"no replica took over from {dead_port} within {timeout_s} s")

    def restart(self, port: int, timeout_s: float = 30.0) -> None:
        """Start a killed node again (same port and folder) and wait until it rejoined."""
        node = self.node(port)
        node.stop()  # reap the killed process
        node.start()
        self.wait_ok(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = [n for n in self.topology(port) if n.port == port]
            if view and not view[0].failed:
                others = [n for n in self.topology() if n.port == port]
                if others and not others[0].failed:
                    return
            time.sleep(0.05)
        raise ClusterError(f"node {port} did not rejoin within {timeout_s} s")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate one slot, keys and all, to the primary on ``to_port`` (what
        ``redis-cli --cluster reshard`` does for one slot), and wait until every node
        agrees."""
        source = self.primary_for_slot(slot)
        target = next(n for n in self.primaries() if n.port == to_port)
        if source.port == target.port:
            return
        self._query(target.port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source.node_id)
        self._query(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target.node_id)
        client = SyncRedis(port=source.port, socket_timeout=5, socket_connect_timeout=2)
        try:
            while True:
                moving = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)  # type: ignore[no-untyped-call]
                if not moving:
                    break
                client.execute_command(  # type: ignore[no-untyped-call]
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving
                )
        finally:
            client.close()
        # The target first, then the source (as redis-cli does), then everyone else.
        ordered = [target.port, source.port]
        ordered += [n.port for n in self.primaries() if n.port not in ordered]
        for port in ordered:
            self._query(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target.node_id)
        self.wait_ok()
        deadline = time.monotonic() + 30
        while self.primary_for_slot(slot).port != target.port:
            if time.monotonic() > deadline:
                raise ClusterError(f"slot {slot} did not move to {to_port}")
            time.sleep(0.05)

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
