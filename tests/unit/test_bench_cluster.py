"""The single-node-vs-cluster benchmark's section and summary (no servers, no timing)."""

from __future__ import annotations

from typing import Any

from benchmarks import cluster_scale
from benchmarks.__main__ import sections


def _round(gifts_per_s: int, redis_us: float, shares: list[float]) -> dict[str, Any]:
    return {
        "gifts_per_s": gifts_per_s,
        "redis_cpu_us_per_gift": redis_us,
        "primary_cpu_shares": shares,
        "client_cpu_us_per_gift": 50.0,
    }


def test_only_cluster_is_a_section_of_its_own() -> None:
    assert sections("cluster") == {"cluster"}
    assert "cluster" not in sections("fanout")


def test_the_summary_keeps_each_sides_best_round_and_the_models_ceilings() -> None:
    result = cluster_scale.summarize(
        {
            "single": [_round(2000, 100.0, [1.0]), _round(2500, 110.0, [1.0])],
            "cluster": [_round(1000, 160.0, [0.3, 0.3, 0.4]), _round(500, 150.0, [0.3] * 3)],
        }
    )
    assert result["best"]["single"]["gifts_per_s"] == 2500
    assert result["best"]["cluster"]["gifts_per_s"] == 1000
    assert result["gifts_per_s_ratio"] == 0.4
    # The lowest CPU per gift of each side: the least disturbed by the neighbours.
    assert result["redis_cpu_ratio"] == 1.5
    assert result["model"]["single_core_ceiling_gifts_per_s"] == 10_000
    assert result["model"]["three_primaries_ceiling_gifts_per_s"] == 20_000
    assert "| cluster | 1,000 |" in cluster_scale.table(result)
