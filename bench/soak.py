"""Soak: a devnet training back to back; each node's RSS, fds, tasks and threads over time.

Run: ``python -m bench.soak`` (30 minutes, the manual run; ``--minutes 3`` is the CI-size variant,
``--every 10`` the sampling period in seconds, ``--devices 8 --miners 4`` the layout, ``--rounds 3``
the rounds per training task, ``--name soak`` the result's name).

It brings up a devnet of real ``flnode start`` processes (1 manufacturer, ``--miners`` miners,
``--devices`` devices, no edge) in a temporary directory and publishes the default
``flnode devnet run`` task (MNIST, DP-SGD) with ``--rounds`` rounds and ``updates_per_round`` =
devices, again and again, each as soon as the previous one has finished. The first
``--warmup-tasks`` (default 1) tasks run before the clock starts: the first task is when every
process loads torch's kernels, the data set and the model, sets up DP-SGD and, on the miners, the
evaluation set, so memory climbs by hundreds of MB per process there by design. Then the timed
window of ``--minutes`` begins; a task still running at its end is abandoned (the client stops
following it). From the moment the devnet is up it scrapes every node's Prometheus endpoint every
``--every`` seconds and keeps ``flnode_process_resident_bytes``, ``flnode_process_open_fds``,
``flnode_trio_tasks``, ``flnode_process_threads`` and ``flnode_chain_height``.

Verdict, per node and series, over the timed window only: its first 20 % is warm-up as well and
left out; the rest is cut into thirds, and the median of the last third is compared with the
median of the first third:

* resident memory is ``bounded`` when last <= 1.25 x first;
* open fds, trio tasks and threads are ``bounded`` when last <= first + max(5, 20 % of first)
  (these move by a few with every round: connections, fetches, a worker thread);
* the chain height is expected to grow and is not judged.

Medians, not the last sample, because tasks and fds rise and fall within every round. Also reported:
the growth ratio (last / first) and the slope per hour of a least-squares line through the samples
after warm-up (also as a percentage of the first-third median). ``all_bounded`` is true when every
judged series of every node is bounded. A 3- or 4-minute window holds a task or two and only shows
gross leaks; the 30-minute run is the real test.

Writes ``bench/results/<name>.json`` (the samples per node, the analysis, the thresholds, the tasks
run) and ``bench/results/<name>.png`` (RSS per node over time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from bench._common import RESULTS_DIR, write_result
from bench.round import task_spec
from flnode.devnet import down, layout_from_counts, prepare, up
from flnode.devnet.errors import DevnetError
from flnode.devnet.network import Network
from flnode.devnet.training import run_task

SERIES = (
    "flnode_process_resident_bytes",
    "flnode_process_open_fds",
    "flnode_trio_tasks",
    "flnode_process_threads",
    "flnode_chain_height",
)
WARMUP_FRACTION = 0.2
RSS_MAX_RATIO = 1.25
COUNT_MAX_ABS = 5.0
COUNT_MAX_FRACTION = 0.2
UNJUDGED = ("flnode_chain_height",)
THRESHOLDS = {
    "warmup_fraction": WARMUP_FRACTION,
    "compare": "median of the last third vs median of the first third, after warm-up",
    "flnode_process_resident_bytes": f"last <= {RSS_MAX_RATIO} x first",
    "flnode_process_open_fds": f"last <= first + max({COUNT_MAX_ABS:g}, {COUNT_MAX_FRACTION:.0%} of first)",
    "flnode_trio_tasks": f"last <= first + max({COUNT_MAX_ABS:g}, {COUNT_MAX_FRACTION:.0%} of first)",
    "flnode_process_threads": f"last <= first + max({COUNT_MAX_ABS:g}, {COUNT_MAX_FRACTION:.0%} of first)",
    "flnode_chain_height": "not judged (grows by design)",
}


def scrape(url: str) -> dict[str, float]:
    """The unlabelled values of :data:`SERIES` at ``url`` ({} when the node does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in SERIES and not s.labels
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def slope_per_hour(ts: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per hour."""
    if len(ts) < 2:
        return None
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return None
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 3600.0


def judge(series: str, first: float, last: float) -> bool | None:
    if series in UNJUDGED:
        return None
    if series == "flnode_process_resident_bytes":
        return last <= RSS_MAX_RATIO * first
    return last <= first + max(COUNT_MAX_ABS, COUNT_MAX_FRACTION * first)


def analyse(
    series: str, ts: list[float], values: list[float | None], begin_s: float, end_s: float
) -> dict[str, Any]:
    """Warm-up, thirds, medians, ratio, slope and verdict of one node's series over the timed
    window ``[begin_s, end_s]``."""
    start = begin_s + WARMUP_FRACTION * (end_s - begin_s)
    third = (end_s - start) / 3
    points = [
        (t, v) for t, v in zip(ts, values, strict=True) if v is not None and start <= t <= end_s
    ]
    first = _median([v for t, v in points if t < start + third])
    last = _median([v for t, v in points if t >= end_s - third])
    out: dict[str, Any] = {
        "first_third_median": first,
        "last_third_median": last,
        "growth_ratio": None if not first or last is None else round(last / first, 4),
        "slope_per_hour": slope_per_hour([t for t, _ in points], [v for _, v in points]),
        "min": min((v for _, v in points), default=None),
        "max": max((v for _, v in points), default=None),
        "slope_per_hour_pct_of_first": None,
        "bounded": None,
    }
    if out["slope_per_hour"] is not None:
        if first:
            out["slope_per_hour_pct_of_first"] = round(100 * out["slope_per_hour"] / first, 1)
        out["slope_per_hour"] = round(out["slope_per_hour"], 3)
    if first is not None and last is not None:
        out["bounded"] = judge(series, first, last)
    return out


def analyse_node(samples: dict[str, Any], begin_s: float, end_s: float) -> dict[str, Any]:
    return {name: analyse(name, samples["t"], samples[name], begin_s, end_s) for name in SERIES}


async def sample_loop(
    network: Network, every_s: float, t0: float, samples: dict[str, dict[str, Any]]
) -> None:
    while True:
        t = trio.current_time() - t0
        values = await trio.to_thread.run_sync(
            lambda: [scrape(node.metrics_url) for node in network.nodes]
        )
        for node, v in zip(network.nodes, values, strict=True):
            s = samples[node.name]
            s["t"].append(round(t, 2))
            for name in SERIES:
                s[name].append(v.get(name))
        await trio.sleep_until(t0 + (int(t / every_s) + 1) * every_s)


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    layout = layout_from_counts(miners=args.miners, devices=args.devices, edges=0, manufacturers=1)
    network = prepare(workdir / "devnet", layout, reset=True)
    print(f"starting {len(network.nodes)} processes", flush=True)
    started = time.monotonic()
    await up(network, timeout_s=600.0)
    up_s = time.monotonic() - started
    print(f"up in {up_s:.1f} s; warm-up, then {args.minutes:g} min timed", flush=True)
    samples: dict[str, dict[str, Any]] = {
        n.name: {"roles": list(n.roles), "t": [], **{s: [] for s in SERIES}} for n in network.nodes
    }
    tasks: list[dict[str, Any]] = []
    spec = task_spec(args.devices, args.rounds)
    duration_s = args.minutes * 60.0
    window: list[float] = []
    try:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_loop, network, args.every, t0, samples)
            for _ in range(args.warmup_tasks):
                await _one_task(network, spec, t0, tasks, warmup=True)
            window.append(trio.current_time() - t0)
            print(f"[{window[0] / 60:5.1f} min] timed window of {args.minutes:g} min", flush=True)
            with trio.move_on_at(t0 + window[0] + duration_s):
                while True:
                    await _one_task(network, spec, t0, tasks, warmup=False)
            window.append(trio.current_time() - t0)
            await trio.sleep(0.5)  # let a sample due at the very end be taken
            nursery.cancel_scope.cancel()
    finally:
        down(network)
    return {
        "up_s": round(up_s, 1),
        "samples": samples,
        "tasks": tasks,
        "window_s": [round(w, 1) for w in window],
    }


async def _one_task(
    network: Network, spec: str, t0: float, tasks: list[dict[str, Any]], *, warmup: bool
) -> None:
    """Publish one task and follow it to its end (or a failure, recorded), updating its record."""
    begun = trio.current_time() - t0
    record: dict[str, Any] = {"warmup": warmup, "started_s": round(begun, 1), "finished": False}
    tasks.append(record)
    label = "warm-up task" if warmup else "task"
    print(f"[{begun / 60:5.1f} min] {label} {len(tasks)}", flush=True)

    def follow(event: dict[str, Any]) -> None:
        if event.get("stage") == "running" and event.get("round") != record.get("round"):
            record["round"] = event.get("round")
            now = (trio.current_time() - t0) / 60
            print(
                f"[{now:5.1f} min]   round {event.get('round')}/{event.get('rounds')}", flush=True
            )

    try:
        result = await run_task(network, spec, timeout_s=1800.0, on_progress=follow)
    except DevnetError as exc:  # recorded; the soak goes on with the next task
        record["error"] = str(exc)
        print(f"  task {len(tasks)} failed: {exc}", flush=True)
        await trio.sleep(5.0)
        return
    report = result.report
    record.update(
        finished=True,
        took_s=round(trio.current_time() - t0 - begun, 1),
        rounds=len(report.get("rounds", [])),
        final_accuracy=report.get("final_accuracy"),
        all_nodes_agree=report.get("all_nodes_agree_on_final_model"),
    )


def plot(
    samples: dict[str, dict[str, Any]], path: Path, title: str, begin_s: float, end_s: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"miner": "tab:red", "device": "tab:blue", "manufacturer": "tab:green"}
    fig, ax = plt.subplots(figsize=(9, 5))
    seen: set[str] = set()
    for s in samples.values():
        role = s["roles"][0]
        pts = [
            (t / 60, v / 2**20)
            for t, v in zip(s["t"], s["flnode_process_resident_bytes"], strict=True)
            if v is not None
        ]
        if not pts:
            continue
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=colours.get(role, "tab:gray"),
            alpha=0.7,
            linewidth=1,
            label=role if role not in seen else None,
        )
        seen.add(role)
    warm = begin_s + WARMUP_FRACTION * (end_s - begin_s)
    ax.axvspan(0, warm / 60, color="0.9", label="warm-up (not judged)")
    third = (end_s - warm) / 3
    ax.axvspan(warm / 60, (warm + third) / 60, color="tab:olive", alpha=0.12, label="first third")
    ax.axvspan((end_s - third) / 60, end_s / 60, color="tab:purple", alpha=0.12, label="last third")
    ax.set_xlabel("minutes since the devnet was up")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(series: str, value: float | None) -> str:
    if value is None:
        return "-"
    if series == "flnode_process_resident_bytes":
        return f"{value / 2**20:.0f}M"
    return f"{value:g}"


def print_table(analysis: dict[str, dict[str, Any]]) -> None:
    short = {
        "flnode_process_resident_bytes": "rss",
        "flnode_process_open_fds": "fds",
        "flnode_trio_tasks": "tasks",
        "flnode_process_threads": "threads",
        "flnode_chain_height": "height",
    }
    print(f"{'node':16}" + "".join(f"{short[s]:>22}" for s in SERIES))
    print(f"{'':16}" + "".join(f"{'first -> last  ok':>22}" for _ in SERIES))
    for name, node in analysis.items():
        cells = []
        for s in SERIES:
            a = node[s]
            mark = {True: "ok", False: "GROW", None: ""}[a["bounded"]]
            text = f"{_fmt(s, a['first_third_median'])} -> {_fmt(s, a['last_third_median'])}"
            cells.append(f"{text + '  ' + mark:>22}")
        print(f"{name:16}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--miners", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per training task")
    parser.add_argument(
        "--warmup-tasks", type=int, default=1, help="tasks run before the timed window"
    )
    parser.add_argument("--name", default="soak", help="result name (bench/results/NAME.json)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the devnet here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.every <= 0:
        parser.error("--minutes and --every must be positive")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="flnode-bench-soak-") as tmp:
        run = trio.run(soak, args, args.dir or Path(tmp))
    begin_s, end_s = run["window_s"]
    analysis = {name: analyse_node(s, begin_s, end_s) for name, s in run["samples"].items()}
    judged = [
        a["bounded"]
        for node in analysis.values()
        for a in node.values()
        if a["bounded"] is not None
    ]
    all_bounded = bool(judged) and all(judged)
    grew = [
        f"{name}:{series}"
        for name, node in analysis.items()
        for series, a in node.items()
        if a["bounded"] is False
    ]
    payload = {
        "benchmark": "soak",
        "layout": {"manufacturers": 1, "miners": args.miners, "devices": args.devices},
        "minutes": args.minutes,
        "timed_window_s": run["window_s"],
        "warmup_tasks": args.warmup_tasks,
        "every_s": args.every,
        "rounds_per_task": args.rounds,
        "devnet_up_s": run["up_s"],
        "tasks_started": sum(1 for t in run["tasks"] if not t["warmup"]),
        "tasks_finished": sum(1 for t in run["tasks"] if t["finished"] and not t["warmup"]),
        "tasks": run["tasks"],
        "thresholds": THRESHOLDS,
        "all_bounded": all_bounded,
        "grew": grew,
        "analysis": analysis,
        "samples": run["samples"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    path = write_result(args.name, payload)
    png = RESULTS_DIR / f"{args.name}.png"
    plot(run["samples"], png, f"flnode soak, {args.minutes:g} min: RSS per node", begin_s, end_s)
    print_table(analysis)
    print(
        f"{payload['tasks_finished']} tasks finished of {payload['tasks_started']} started; "
        f"all_bounded = {all_bounded}" + (f"; grew: {', '.join(grew)}" if grew else "")
    )
    print(f"wrote {path} and {png}")
    print(json.dumps({"all_bounded": all_bounded, "grew": grew}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
