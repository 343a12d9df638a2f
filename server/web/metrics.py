"""Prometheus metrics. With several workers, prometheus-client's multiprocess mode is used
(``PROMETHEUS_MULTIPROC_DIR``, set by ``giftwire serve --workers N``)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CONNECTIONS = Gauge(
    "giftwire_connections", "Open WebSocket connections", multiprocess_mode="livesum"
)
GIFTS = Counter("giftwire_gifts_total", "send_gift calls by outcome", ["outcome"])
ERRORS = Counter("giftwire_errors_total", "Errors sent to clients, by code", ["code"])
GIFT_SECONDS = Histogram(
    "giftwire_gift_seconds",
    "Hot path: send_gift from frame received to ack queued",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FANOUT_DROPS = Counter("giftwire_fanout_dropped_total", "Frames dropped for slow viewers")
SLOW_CLOSES = Counter("giftwire_slow_consumer_closes_total", "Viewers closed with 4008")
RELAY_PENDING = Gauge(
    "giftwire_relay_pending_transfers",
    "Cluster mode: gifts debited and not yet credited, in the outboxes the relay watches",
    multiprocess_mode="max",
)
RELAY_LAG = Gauge(
    "giftwire_relay_lag_seconds",
    "Cluster mode: age of the oldest gift debited and not yet credited",
    multiprocess_mode="max",
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
