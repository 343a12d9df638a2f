"""Brokers: the store side of realtime (``server.realtime.ports.Broker``).

``redis_pubsub.RedisPubSubBroker`` serves one Redis (or a primary with replicas) over plain
pub/sub. Redis Cluster needs sharded pub/sub (``SSUBSCRIBE`` on the shard that owns each
room's hash tag): that is another class here with the same methods, and no change to
``server/realtime``.
"""
