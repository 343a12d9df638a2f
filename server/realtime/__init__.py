"""Rooms, fan-out from Redis pub/sub, per-connection bounded send queues, coalescing."""
