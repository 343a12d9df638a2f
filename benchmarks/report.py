"""Ratios against the targets, the Markdown table, and the latency plot for docs/."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.procs import REPO

DOC = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "img" / "benchmarks-latency.png"
START, END = "<!-- results:start -->", "<!-- results:end -->"
LATENCY_RATE = 8.0


def _step_at(run: dict[str, Any], rate: float) -> dict[str, Any] | None:
    for step in run.get("steps", []):
        if step["rate_per_s"] == rate:
            return dict(step)
    return None


def _common_steps(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Steps at the same rate that both servers kept up with (90 % of the offered load)."""

    def kept_up(run: dict[str, Any], step: dict[str, Any]) -> bool:
        return bool(step["events_per_s"] >= 0.9 * step["rate_per_s"] * run["held"])

    by_rate = {s["rate_per_s"]: s for s in b.get("steps", []) if kept_up(b, s)}
    return [
        (s, by_rate[s["rate_per_s"]])
        for s in a.get("steps", [])
        if kept_up(a, s)
        and s["rate_per_s"] in by_rate
        and by_rate[s["rate_per_s"]]["latency_ms"]["p99"]
    ]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what giftwire did, the baseline, their ratio, the target."""
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, unit: str, base: Any, base_name: str, target: str,
            ok: bool | None) -> None:  # fmt: skip
        ratio = _ratio(value, base) if isinstance(value, int | float) else None
        rows.append(
            {"metric": name, "giftwire": value, "unit": unit, "baseline": base,
             "baseline_name": base_name, "ratio": ratio, "target": target, "met": ok}
        )  # fmt: skip

    hot = result.get("hot_path")
    if hot:
        gw = hot["giftwire"]
        ceiling = hot["redis_benchmark_p1"]["runs_per_s"]
        r = gw["gifts_per_s"] / ceiling
        row("end-to-end gifts/s", gw["gifts_per_s"], "gifts/s", ceiling,
            "redis-benchmark EVALSHA send_gift, 50 clients", ">= 0.5", r >= 0.5)  # fmt: skip
        piped = hot["redis_benchmark_p16"]["runs_per_s"]
        row("end-to-end gifts/s vs pipelined ceiling", gw["gifts_per_s"], "gifts/s", piped,
            "redis-benchmark EVALSHA -P 16", "(info)", None)  # fmt: skip
        asyncio_cpu = hot["asyncio_pipelines_64x4"]["client_cpu_us_per_gift"]
        r = gw["server_cpu_us_per_gift"] / asyncio_cpu
        row("server CPU per gift", gw["server_cpu_us_per_gift"], "µs", asyncio_cpu,
            "redis.asyncio client, pipelines of 64", "<= 2.5", r <= 2.5)  # fmt: skip
    fan = result.get("fanout")
    if fan and "giftwire" in fan and "bare" in fan:
        gw, bare, sio = fan["giftwire"], fan["bare"], fan.get("socketio")
        g_rate = gw["saturation"]["events_per_s"]
        b_rate = bare["saturation"]["events_per_s"]
        row("fan-out deliveries/s (frame per gift)", g_rate, "deliveries/s", b_rate,
            "websockets broadcast()", ">= 0.8", g_rate >= 0.8 * b_rate)  # fmt: skip
        g_us, b_us = (
            gw["saturation"]["server_us_per_frame"],
            bare["saturation"]["server_us_per_frame"],
        )
        if g_us and b_us:
            # The crowd's client shares the 2 cores: when it, not the server, is the limit,
            # deliveries per second of server CPU still compare the servers.
            g_cap, b_cap = round(1e6 / g_us), round(1e6 / b_us)
            row("fan-out deliveries per server CPU-second", g_cap, "deliveries/s", b_cap,
                "websockets broadcast()", ">= 0.8", g_cap >= 0.8 * b_cap)  # fmt: skip
        if sio:
            s_rate = sio["saturation"]["events_per_s"]
            row("fan-out deliveries/s vs python-socketio", g_rate, "deliveries/s", s_rate,
                "python-socketio + AsyncRedisManager", ">= 5", g_rate >= 5 * s_rate)  # fmt: skip
        g_step, b_step = _step_at(gw, LATENCY_RATE), _step_at(bare, LATENCY_RATE)
        if g_step and b_step:
            g99, b99 = g_step["latency_ms"]["p99"], b_step["latency_ms"]["p99"]
            row(f"delivery p99 at {LATENCY_RATE:g} gifts/s", g99, "ms", b99,
                "websockets broadcast()", "(one 4 s step)", None)  # fmt: skip
        pairs = _common_steps(gw, bare)
        for quantile in ("p50", "p99"):
            # Issue #10's target: at every load both servers kept up with, not the median.
            per_load = [
                (g["rate_per_s"], g["latency_ms"][quantile] / b["latency_ms"][quantile])
                for g, b in pairs
                if b["latency_ms"][quantile]
            ]
            if not per_load:
                continue
            rate, worst = max(per_load, key=lambda item: item[1])
            rows.append(
                {"metric": f"delivery {quantile} / broadcast()'s, worst of {len(per_load)} loads"
                           f" (at {rate:g} gifts/s)",
                 "giftwire": round(worst, 2), "unit": "x", "baseline": 1.0,
                 "baseline_name": "websockets broadcast() at the same load",
                 "ratio": round(worst, 2), "target": "<= 1.2", "met": worst <= 1.2}
            )  # fmt: skip
            median = statistics.median(ratio for _, ratio in per_load)
            rows.append(
                {"metric": f"delivery {quantile} / broadcast()'s, median of {len(per_load)} loads",
                 "giftwire": round(median, 2), "unit": "x", "baseline": 1.0,
                 "baseline_name": "websockets broadcast() at the same load",
                 "ratio": round(median, 2), "target": "(info)", "met": None}
            )  # fmt: skip
        g_mem, b_mem = gw["idle_bytes_per_viewer"], bare["idle_bytes_per_viewer"]
        row("memory per idle viewer", round(g_mem / 1024, 1), "KiB", round(b_mem / 1024, 1),
            "websockets server", "<= 1.5", g_mem <= 1.5 * b_mem)  # fmt: skip
        floor = fan.get("starlette_floor")
        if floor:
            row("memory per idle viewer vs Starlette's floor", round(g_mem / 1024, 1), "KiB",
                round(floor["idle_bytes_per_viewer"] / 1024, 1),
                "Starlette endpoint, same uvicorn protocol", "(info)", None)  # fmt: skip
        if sio:
            row("memory per idle viewer vs python-socketio", round(g_mem / 1024, 1), "KiB",
                round(sio["idle_bytes_per_viewer"] / 1024, 1), "python-socketio", "(info)",
                None)  # fmt: skip
        co = fan.get("giftwire_coalescing")
        if co:
            sat = max([*co["steps"], co["saturation"]], key=lambda step: step["events_per_s"])
            many = sat["events_per_s"] > 5 * b_rate
            row("coalescing: gift events delivered/s", sat["events_per_s"], "events/s", b_rate,
                "broadcast() deliveries/s (1 event each)", ">> 1", many)  # fmt: skip
            row("coalescing: frames/s at that load", sat["frames_per_s"], "frames/s", b_rate,
                "broadcast() frames/s", "(info)", None)  # fmt: skip
    gc_runs = result.get("gc")
    if gc_runs and "giftwire" in gc_runs and "bare" in gc_runs:
        g, b = gc_runs["giftwire"], gc_runs["bare"]
        n = f"{g['held']:,}"
        row(f"longest GC pause, {n} viewers connecting then idle", g["max_pause_ms"], "ms",
            b["max_pause_ms"], "websockets server, same viewers", "<= 50 ms",
            g["max_pause_ms"] <= 50)  # fmt: skip
        row("longest GC pause in CPU time (the collector's own work)", g["max_pause_cpu_ms"],
            "ms", b["max_pause_cpu_ms"], "websockets server", "(info)", None)  # fmt: skip
        row("objects tracked by the collector per idle viewer", g["objects_per_viewer"], "",
            b["objects_per_viewer"], "websockets server", "(info)", None)  # fmt: skip
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "–" if value is None else str(value)


def table(result: dict[str, Any]) -> str:
    lines = [
        "| measure | giftwire | baseline | ratio | target | met |",
        "|---|---:|---|---:|---|---|",
    ]
    for r in ratios(result):
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(
            f"| {r['metric']} | {_fmt(r['giftwire'])} {r['unit']} | {_fmt(r['baseline'])}"
            f" ({r['baseline_name']}) | {_fmt(r['ratio'])} | {r['target']} | {met} |"
        )
    return "\n".join(lines)


def steps_table(result: dict[str, Any]) -> str:
    fan = result.get("fanout") or {}
    lines = [
        "| server | gifts/s in | deliveries/s | frames/s | server CPU | µs CPU/frame "
        "| p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in fan.values():
        if "saturation" not in run:
            continue
        for step in [*run["steps"], {**run["saturation"], "saturated": True}]:
            label = f"{_fmt(step['rate_per_s'])}" + (
                " (saturating)" if step.get("saturated") else ""
            )
            lat = step["latency_ms"]
            lines.append(
                f"| {run['server']} | {label} | {_fmt(step['events_per_s'])} "
                f"| {_fmt(step['frames_per_s'])} | {step['server_cpu']:.0%} "
                f"| {_fmt(step['server_us_per_frame'])} | {lat['p50']} | {lat['p99']} |"
            )
    return "\n".join(lines)


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"Measured {result['when']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB;"
        f" Linux {m['kernel']}, Python {m['python']}, {m['redis']}; websockets"
        f" {m['websockets']}, uvicorn {m['uvicorn']}, starlette {m['starlette']}."
        f" Fan-out room: {result['viewers']:,} viewers. Whole run: {result.get('seconds')} s;"
        f" load average before and after: {_loads(result)}."
    )


def _loads(result: dict[str, Any]) -> str:
    before, after = result.get("load_average_before"), result.get("load_average_after")
    if not before or not after:
        return "not recorded"
    return f"{before[0]:.2f} and {after[0]:.2f} (1 min)"


def plot(result: dict[str, Any], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for run in (result.get("fanout") or {}).values():
        steps = run.get("steps")
        if not steps:
            continue
        x = [s["events_per_s"] for s in steps]
        (line,) = ax.plot(x, [s["latency_ms"]["p99"] for s in steps], marker="o",
                          label=f"{run['server']} p99")  # fmt: skip
        ax.plot(x, [s["latency_ms"]["p50"] for s in steps], marker=".", linestyle="--",
                color=line.get_color(), label=f"{run['server']} p50")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gift events delivered per second (one room)")
    ax.set_ylabel("delivery latency, publish to seen (ms)")
    ax.set_title(f"Fan-out latency against load, {result['viewers']:,} viewers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_docs(result: dict[str, Any]) -> None:
    """Replace the results section of docs/benchmarks.md and redraw the plot (when
    matplotlib, from the ``bench`` extra, is installed)."""
    try:
        plot(result)
    except ImportError:
        print("matplotlib is not installed: the plot was not redrawn", file=sys.stderr)
    section = "\n\n".join(
        [
            START,
            machine_line(result),
            table(result),
            "Fan-out steps (latency is from the publish on Redis to the frame read by a"
            " client; each step runs 4 s):",
            steps_table(result),
            _hot_details(result),
            END,
        ]
    )
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + section + tail)


def _hot_details(result: dict[str, Any]) -> str:
    hot = result.get("hot_path")
    if not hot:
        return ""
    gw = hot["giftwire"]
    p1, p16 = hot["redis_benchmark_p1"], hot["redis_benchmark_p16"]
    py = hot["asyncio_pipelines_64x4"]
    return (
        f"Hot path details: redis-benchmark EVALSHA ran {p1['runs_per_s']:,} runs/s unpipelined"
        f" ({p1['redis_cpu_us_per_run']} µs of Redis CPU per run) and {p16['runs_per_s']:,}"
        f" with -P 16 ({p16['redis_cpu_us_per_run']} µs); redis.asyncio pipelines of 64 from"
        f" 4 tasks ran {py['gifts_per_s']:,} gifts/s at {py['client_cpu_us_per_gift']} µs of"
        f" client CPU per gift. giftwire ran {gw['gifts_per_s']:,} gifts/s end to end"
        f" ({gw['gifters']} gifters in {gw['rooms']} rooms, {gw['acked']:,} gifts, ack p99"
        f" {gw['ack_latency_ms']['p99']} ms), its process at {gw['server_cpu']:.0%} of a core;"
        f" books reconciled: {'yes' if gw['reconciled'] else 'NO'}."
        f" Best of {len(hot.get('rounds', [])) or 1} rounds for each side."
    )
