"""The live-features benchmark's arguments and its summary (no servers, no timing)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import live
from benchmarks.__main__ import sections


def _round(gifts_per_s: float, server_us: float, evalsha_us: float) -> dict[str, Any]:
    return {
        "gifts_per_s": gifts_per_s,
        "server_cpu_us_per_gift": server_us,
        "redis_cpu_us_per_gift": 20.0,
        "evalsha_usec_per_call": evalsha_us,
        "reconciled": True,
        "refused": {},
    }


def test_only_live_is_a_section_of_its_own() -> None:
    assert sections("live") == {"live"}
    assert sections("hot,live") == {"hot", "live"}
    assert "live" not in sections("fanout")


@pytest.mark.parametrize("rounds", [0, -1, 21])
def test_live_rounds_out_of_range_are_refused(rounds: int) -> None:
    with pytest.raises(SystemExit, match="--live-rounds"):
        live.check_rounds(rounds)


def test_live_rounds_in_range_pass() -> None:
    assert live.check_rounds(1) == 1
    assert live.check_rounds(20) == 20


def test_both_sides_run_the_features_the_issue_names() -> None:
    assert live.SIDES["plain"] == {}
    assert live.SIDES["live"] == {"battle_s": live.BATTLE_S, "goals_per_room": 5}


def test_summary_pairs_rounds_and_takes_the_median() -> None:
    measured = {
        "plain": [_round(1000, 100, 10), _round(800, 110, 10), _round(900, 100, 12)],
        "live": [_round(950, 105, 11), _round(880, 110, 12), _round(810, 120, 12)],
    }
    summary = live.summarize(measured)
    gifts = summary["ratios"]["gifts_per_s"]
    assert gifts["pairs"] == [0.95, 1.1, 0.9]
    assert (gifts["median"], gifts["min"], gifts["max"]) == (0.95, 0.9, 1.1)
    assert gifts["plain_median"] == 900 and gifts["live_median"] == 880
    assert summary["ratios"]["evalsha_usec_per_call"]["pairs"] == [1.1, 1.2, 1.0]
    assert summary["meets_target"] is True
    assert summary["reconciled"] is True and summary["refused"] is False
    assert "0.950×" in live.table(summary)


def test_summary_misses_the_target_on_the_median() -> None:
    measured = {"plain": [_round(1000, 100, 10)], "live": [_round(850, 120, 14)]}
    assert live.summarize(measured)["meets_target"] is False


def test_summary_refuses_unpaired_rounds() -> None:
    with pytest.raises(ValueError, match="same number of rounds"):
        live.summarize({"plain": [_round(1, 1, 1)], "live": []})
    with pytest.raises(ValueError, match="same number of rounds"):
        live.summarize({"plain": [], "live": []})


def test_summary_skips_measures_a_round_lacks() -> None:
    plain, other = _round(1000, 100, 10), _round(1000, 100, 10)
    del plain["evalsha_usec_per_call"]
    summary = live.summarize({"plain": [plain], "live": [other]})
    assert "evalsha_usec_per_call" not in summary["ratios"]
    assert "gifts_per_s" in summary["ratios"]


def test_summary_splits_send_gift_alone_by_feature() -> None:
    def run(cpu_us: float) -> dict[str, Any]:
        return {"runs_per_s": 1e6 / cpu_us, "redis_cpu_us_per_run": cpu_us,
                "evalsha_usec_per_call": cpu_us}  # fmt: skip

    e2e = {"plain": [_round(1000, 100, 10)], "live": [_round(950, 105, 11)]}
    script = {
        "plain": [run(40), run(44)],
        "battle": [run(44), run(44)],
        "goals": [run(48), run(55)],
        "live": [run(52), run(66)],
    }
    summary = live.summarize(e2e, script)
    by_side = summary["script"]["ratios"]
    assert set(by_side) == {"battle", "goals", "live"}
    assert by_side["battle"]["redis_cpu_us_per_run"]["pairs"] == [1.1, 1.0]
    assert by_side["goals"]["redis_cpu_us_per_run"]["pairs"] == [1.2, 1.25]
    assert by_side["live"]["redis_cpu_us_per_run"]["median"] == 1.4
    assert summary["script"]["rounds"] is script
    text = live.table(summary)
    assert "battle + goals" in text and "(1.400×)" in text


def test_pieces_loop_is_built_on_the_real_fragments() -> None:
    from benchmarks import live_pieces

    source = live_pieces.loop_source()
    for function in ("local function goals_for_gift", "local function goals_advance",
                     "local function battle_scoring", "local function stored_int"):  # fmt: skip
        assert function in source
    for piece in live_pieces.PIECES[1:]:
        assert f"'{piece}'" in source


@pytest.mark.parametrize("argv", [["--runs", "0"], ["--rounds", "0"]])
def test_pieces_refuse_empty_runs(argv: list[str]) -> None:
    from benchmarks import live_pieces

    with pytest.raises(SystemExit, match="at least 1"):
        live_pieces.main(argv)
