"""How a devnet of real processes scales on one machine: round time against the number of devices.

Run: ``python -m bench.scale`` (``--devices 10 25 50``, ``--rounds 3``, ``--shards 120``;
``--name scale_smoke`` writes ``bench/results/scale_smoke.json`` instead of ``scale.json``;
``--stop-at 02:40`` starts no size after that UTC time and stops a running one there). For each
device count it brings up a fresh devnet of real ``flnode start`` processes (1 manufacturer,
4 miners, N devices, no edge) in a temporary directory, runs the default ``flnode devnet run``
task (MNIST, DP-SGD on every device, per-sample epsilon = 10) with ``rounds`` rounds and
``updates_per_round = N``, and records:

* ``startup_s``: from starting the processes to the devnet passing its readiness checks (every
  node up, connected, the chain producing blocks);
* ``round_s``, ``train_s``, ``overhead_s`` and the overhead's parts: the split of
  ``bench.round`` (:func:`flnode.devnet.training.critical_path`, summarised by
  :func:`bench.round.summarise`): the median over the rounds after the first (which includes each
  device loading its shard and setting up DP-SGD);
* ``peak_rss_gib``: the peak, over samples taken every second while the devnet runs, of the
  resident memory summed over all node processes; ``peak_pss_gib`` the same for the proportional
  set size (shared library pages counted once across processes: what the devnet really takes
  from the machine's memory); per role, the largest process;
* ``final_accuracy`` and ``all_nodes_agree`` (every live node holds the same final model).

The private part of MNIST is split into ``--shards`` shards whatever the device count (device
``i`` trains shard ``i``, about 500 images at the default 120), so each device's training is the
same at every size and the work per round grows with the number of devices, as it must on one
machine. Every process shares the 2 cores (and whatever else runs on the machine: the load
averages are recorded), so ``train_s`` grows with the device count too.

Before each size it estimates the memory the devnet needs (per process: the largest process of
that role measured at the previous size, or a default from a measured 3-device run) and skips the
size, recorded with the reason, when that exceeds the memory available minus ``--reserve-gib``;
it also skips sizes beyond the devnet's node limit. While a size runs, it stops it (recorded as
failed) if the machine's available memory falls below ``--min-free-gib``, so that the benchmark
does not bring the out-of-memory killer onto other processes. A failed size stops the sizes
after it. After the listed sizes it runs one more (unless ``--no-fill``): the largest device
count the memory estimate allows then, if that is larger than every size that ran: the largest
devnet of processes this machine holds (recorded with ``chosen``). ``--merge FILE`` adds the
records of an earlier result file (each tagged ``run`` with that run's date and command; sizes
measured again replace them), so that sizes measured at different times share one fit. Ctrl-C
stops the running devnet and writes nothing.

Finally it fits ``round_s``, ``overhead_s`` and ``train_s`` against the device count: a
least-squares line (seconds per added device) and the slope of the log-log line (the growth
exponent: 1 = linear, 0 = constant). Writes ``bench/results/<name>.json`` and
``bench/results/<name>.png`` (round time, training and overhead against devices, with the fitted
lines; peak memory against devices).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench._common import RESULTS_DIR, round_printer, write_result
from bench.round import PARTS, summarise, task_spec
from flnode.devnet import Network, down, layout_from_counts, prepare, up
from flnode.devnet.errors import DevnetError
from flnode.devnet.layout import MAX_NODES, Layout, NodeSpec
from flnode.devnet.processes import is_alive, node_pid
from flnode.devnet.training import run_task

MINERS = 4
MANUFACTURERS = 1
GIB = 1024**3
DEFAULT_DEVICES = (10, 25, 50)
DEFAULT_SHARDS = 120
#: Memory per process (GiB, proportional set size) assumed before any size was measured: the
#: largest device (0.483) and the largest other node (0.432) of a 3-device smoke run of this
#: benchmark, rounded up. Once a size has run, the next size's estimate uses what it measured.
DEFAULT_DEVICE_GIB = 0.5
DEFAULT_OTHER_GIB = 0.45
ESTIMATE_MARGIN = 1.1  # on the measured per-process peaks
SAMPLE_INTERVAL_S = 1.0


# --------------------------------------------------------------------------------------------------
# Pure logic (unit-tested in tests/bench/test_scale.py)


def memory_needed_gib(devices: int, *, per_device_gib: float, per_other_gib: float) -> float:
    """The memory a devnet of ``devices`` devices plus the miners and manufacturer should take."""
    return devices * per_device_gib + (MINERS + MANUFACTURERS) * per_other_gib


def skip_reason(
    devices: int,
    *,
    available_gib: float,
    per_device_gib: float,
    per_other_gib: float,
    reserve_gib: float,
    max_nodes: int = MAX_NODES,
) -> str | None:
    """Why a size cannot run now (``None``: it can): too many nodes, or not enough memory."""
    processes = devices + MINERS + MANUFACTURERS
    if processes > max_nodes:
        return f"{processes} processes exceed the devnet limit of {max_nodes} nodes"
    need = memory_needed_gib(devices, per_device_gib=per_device_gib, per_other_gib=per_other_gib)
    room = available_gib - reserve_gib
    if need > room:
        return (
            f"needs about {need:.1f} GiB ({devices} x {per_device_gib:.2f} GiB per device + "
            f"{MINERS + MANUFACTURERS} x {per_other_gib:.2f} GiB per other node), but only "
            f"{available_gib:.1f} GiB is available ({reserve_gib:.1f} GiB kept in reserve)"
        )
    return None


def largest_fitting(
    *,
    available_gib: float,
    per_device_gib: float,
    per_other_gib: float,
    reserve_gib: float,
    limit: int,
) -> int:
    """The most devices (at most ``limit``) whose devnet the estimate fits in the memory left;
    0 when not even one does."""
    if per_device_gib <= 0:
        return 0
    room = available_gib - reserve_gib - (MINERS + MANUFACTURERS) * per_other_gib
    return max(0, min(limit, math.floor(room / per_device_gib)))


def fit_growth(xs: Sequence[float], ys: Sequence[float | None]) -> dict[str, Any] | None:
    """A least-squares line ``y = slope * x + intercept`` and the log-log slope (growth exponent).

    Points whose ``y`` is missing or not positive are left out (the log needs ``y`` > 0). ``None``
    with fewer than two distinct ``x``. With exactly two points both fits pass through them
    (``r2`` = 1 says nothing then)."""
    import numpy as np

    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    predicted = slope * x + intercept
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else 1.0
    exponent, log_coefficient = np.polyfit(np.log(x), np.log(y), 1)
    return {
        "points": len(pts),
        "devices": [int(v) for v in x],
        "slope_s_per_device": round(float(slope), 4),
        "intercept_s": round(float(intercept), 3),
        "r2": round(r2, 4),
        "loglog_exponent": round(float(exponent), 3),
        "loglog_coefficient_s": round(math.exp(float(log_coefficient)), 4),
    }


def estimate_per_process(
    records: Sequence[dict[str, Any]], default_device_gib: float, default_other_gib: float
) -> tuple[float, float, str]:
    """Per-process memory estimates (device, other) for the next size, and where they came from:
    the largest process of each role at the last size that ran (times a margin), else defaults."""
    measured = [r for r in records if r.get("status") == "ok" and r.get("peak_pss_per_role_gib")]
    if not measured:
        return default_device_gib, default_other_gib, "defaults (3-device smoke run)"
    last = measured[-1]["peak_pss_per_role_gib"]
    device = last.get("device") or default_device_gib
    other = max(last.get("miner") or 0.0, last.get("manufacturer") or 0.0) or default_other_gib
    return (
        round(device * ESTIMATE_MARGIN, 3),
        round(other * ESTIMATE_MARGIN, 3),
        f"largest process per role at {measured[-1]['devices']} devices x {ESTIMATE_MARGIN}",
    )


# --------------------------------------------------------------------------------------------------
# Sampling the node processes' memory


def _role(name: str) -> str:
    return name.rsplit("-", 1)[0]


@dataclass
class MemorySampler:
    """Every second, in a thread: RSS and PSS of every live node process, and the machine's
    available memory; flags ``low`` when that falls below ``min_free_gib``."""

    network: Network
    min_free_gib: float
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    node_rss: dict[str, int] = field(default_factory=dict)
    node_pss: dict[str, int] = field(default_factory=dict)
    min_available: int | None = None
    samples: int = 0
    low: str | None = None
    #: Called once, from the sampler's thread, when ``low`` is set.
    on_low: Callable[[], None] | None = None
    _procs: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def _process(self, name: str) -> Any:
        import psutil

        pid = node_pid(self.network, name)
        cached = self._procs.get(name)
        if cached is not None and cached.pid == pid and cached.is_running():
            return cached
        if not is_alive(pid, self.network.datadir(name)):
            return None
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return None
        self._procs[name] = proc
        return proc

    def sample(self) -> None:
        import psutil

        rss_total = pss_total = count = 0
        for node in self.network.nodes:
            proc = self._process(node.name)
            if proc is None:
                continue
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss_total += info.rss
            pss_total += info.pss
            count += 1
            self.node_rss[node.name] = max(self.node_rss.get(node.name, 0), info.rss)
            self.node_pss[node.name] = max(self.node_pss.get(node.name, 0), info.pss)
        available = psutil.virtual_memory().available
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss_total)
        if pss_total > self.peak_pss:
            self.peak_pss = pss_total
            self.peak_processes = count
        if self.min_available is None or available < self.min_available:
            self.min_available = available
        if available < self.min_free_gib * GIB and self.low is None:
            self.low = (
                f"the machine's available memory fell to {available / GIB:.2f} GiB "
                f"(below --min-free-gib {self.min_free_gib:g}) with {count} node processes"
            )
            if self.on_low is not None:
                self.on_low()

    def per_role(self, values: dict[str, int]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in values.items():
            role = _role(name)
            out[role] = max(out.get(role, 0.0), round(value / GIB, 3))
        return out


# --------------------------------------------------------------------------------------------------
# One device count


class SizeStopped(Exception):
    """A size did not finish (low memory, --stop-at, or an error); ``measured`` is what was
    measured until then."""

    def __init__(self, reason: str, measured: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.measured = measured or {}


def _partial(
    sampler: MemorySampler, timings: dict[str, float], devices: int, network: Network
) -> dict[str, Any]:
    """What a size that did not finish still measured: its start-up, and its memory so far."""
    return {
        "processes": len(network.nodes),
        "startup_s": _rounded(timings.get("startup_s"), 2),
        "peak_rss_gib": round(sampler.peak_rss / GIB, 3),
        "peak_pss_gib": round(sampler.peak_pss / GIB, 3),
        "peak_pss_per_role_gib": sampler.per_role(sampler.node_pss),
        "min_available_gib": None
        if sampler.min_available is None
        else round(sampler.min_available / GIB, 2),
        "devnet_dir": str(network.dir),
    }


def shard_sizes(spec_text: str, shards: int, devices: int) -> list[int] | None:
    """The number of training images of each of the first ``devices`` shards (None if the
    partition cannot be computed here)."""
    try:
        from flnode.learning.datasets import load_dataset
        from flnode.learning.federated import network_config
        from flnode.learning.simulation import partition_for
        from flnode.learning.taskspec import load_task_spec

        cfg = network_config(load_task_spec(spec_text.encode()), shards)
        part = partition_for(cfg, load_dataset(cfg.dataset).train_labels)
    except Exception as exc:  # informative only: the record says None
        print(f"(could not compute the shard sizes: {exc})", flush=True)
        return None
    return part.sizes()[:devices]


def devnet_layout(devices: int, shards: int, device_peers: int | None) -> Layout:
    """4 miners, ``devices`` devices and a manufacturer; each device keeps at most
    ``device_peers`` connections of its own dialling when given (None: every node connects to
    every other). The miners are never bounded: they connect to every node."""
    config = {"federation": {"shard_count": shards}}
    if device_peers is None:
        return layout_from_counts(
            miners=MINERS, devices=devices, manufacturers=MANUFACTURERS, config=config
        )
    bounded = tuple(
        NodeSpec(name=f"device-{i}", roles=("device",), config={"p2p": {"max_peers": device_peers}})
        for i in range(devices)
    )
    return layout_from_counts(
        miners=MINERS, manufacturers=MANUFACTURERS, config=config, extra_nodes=bounded
    )


async def measure(
    devices: int,
    *,
    rounds: int,
    shards: int,
    workdir: Path,
    min_free_gib: float,
    deadline: float | None,
    device_peers: int | None = None,
) -> dict[str, Any]:
    """Run one device count; the record (``status`` ``ok``) or raise."""
    layout = devnet_layout(devices, shards, device_peers)
    network = prepare(workdir / f"devnet-{devices}", layout, reset=True)
    spec = task_spec(devices, rounds)
    sizes = shard_sizes(spec, shards, devices)
    load_before = os.getloadavg()
    print(f"[{devices} devices] starting {len(network.nodes)} processes", flush=True)
    sampler = MemorySampler(network, min_free_gib)
    timings: dict[str, float] = {}
    result: Any = None

    async def work() -> None:
        nonlocal result
        started = time.monotonic()
        await up(network, timeout_s=900.0)
        timings["startup_s"] = time.monotonic() - started
        print(f"[{devices} devices] up in {timings['startup_s']:.1f} s; training", flush=True)
        started = time.monotonic()
        result = await run_task(
            network,
            spec,
            timeout_s=600.0 + 60.0 * rounds * max(1, devices // 4),
            on_progress=round_printer(f"{devices} devices"),
        )
        timings["task_s"] = time.monotonic() - started

    # Low memory (seen by the sampler's thread) or --stop-at cancels the work; no nursery, so
    # that an error or Ctrl-C comes out as itself, not wrapped in an exception group.
    scope = trio.CancelScope()
    if deadline is not None:
        scope.deadline = trio.current_time() + max(0.0, deadline - time.time())
    token = trio.lowlevel.current_trio_token()
    sampler.on_low = lambda: token.run_sync_soon(scope.cancel)
    try:
        with sampler, scope:
            await work()
    except (DevnetError, OSError) as exc:
        raise SizeStopped(str(exc), _partial(sampler, timings, devices, network)) from None
    finally:
        down(network)
    if scope.cancelled_caught or result is None:
        raise SizeStopped(
            sampler.low or "--stop-at reached", _partial(sampler, timings, devices, network)
        )
    report = result.report
    rows = []
    for r in report["rounds"]:
        path = r.get("critical_path")
        if path is not None:
            rows.append({"round": r["round"], **{k: round(v, 3) for k, v in path.items()}})
    if not rows:
        raise DevnetError("the round records carry no timings")
    summary = summarise(devices, rows)
    record: dict[str, Any] = {
        "devices": devices,
        "status": "ok",
        "processes": len(network.nodes),
        "device_max_peers": device_peers,
        "miners": MINERS,
        "shard_count": shards,
        "images_per_device": None if sizes is None else [min(sizes), max(sizes)],
        "startup_s": round(timings["startup_s"], 2),
        "task_s": round(timings["task_s"], 2),
        **{k: v for k, v in summary.items() if k not in ("devices", "miners", "rounds")},
        "peak_rss_gib": round(sampler.peak_rss / GIB, 3),
        "peak_pss_gib": round(sampler.peak_pss / GIB, 3),
        "peak_rss_per_role_gib": sampler.per_role(sampler.node_rss),
        "peak_pss_per_role_gib": sampler.per_role(sampler.node_pss),
        "min_available_gib": None
        if sampler.min_available is None
        else round(sampler.min_available / GIB, 2),
        "memory_samples": sampler.samples,
        "public_only_accuracy": report.get("public_only_accuracy"),
        "final_accuracy": report.get("final_accuracy"),
        "all_nodes_agree": report.get("all_nodes_agree_on_final_model"),
        # Every round as the report has it (a round that timed out has no critical path and is
        # carried forward: it shows here, not in the medians).
        "round_records": [
            {
                "round": r["round"],
                "accepted": r.get("accepted"),
                "rejected": r.get("rejected"),
                "carried_forward": r.get("carried_forward"),
                "accuracy": r.get("accuracy"),
                "round_s": _rounded((r.get("time_s") or {}).get("round")),
                "closed_in_one_block": r.get("closed_in_one_block"),
            }
            for r in report["rounds"]
        ],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rounds": summary["rounds"],
    }
    print(
        f"[{devices} devices] round {record['round_s']:.2f} s = training "
        f"{record['train_s']:.2f} s + overhead {record['overhead_s']:.2f} s; "
        f"peak RSS {record['peak_rss_gib']:.2f} GiB (PSS {record['peak_pss_gib']:.2f})",
        flush=True,
    )
    return record


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------------------------------
# Output


def print_table(records: Sequence[dict[str, Any]], fit: dict[str, Any]) -> None:
    head = (
        f"{'devices':>7} {'procs':>5} {'round_s':>8} {'train_s':>8} {'overh_s':>8} "
        f"{'start_s':>8} {'RSS GiB':>8} {'PSS GiB':>8} {'accuracy':>8} {'agree':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in records:
        if r["status"] != "ok":
            print(f"{r['devices']:>7} {r['status']}: {r['reason']}")
            continue
        acc = r["final_accuracy"]
        print(
            f"{r['devices']:>7} {r['processes']:>5} {r['round_s']:>8.2f} {r['train_s']:>8.2f} "
            f"{r['overhead_s']:>8.2f} {r['startup_s']:>8.1f} {r['peak_rss_gib']:>8.2f} "
            f"{r['peak_pss_gib']:>8.2f} {'-' if acc is None else f'{acc:.4f}':>8} "
            f"{'yes' if r['all_nodes_agree'] else 'NO':>5}"
        )
    for key, f in fit.items():
        if f is None:
            print(f"fit {key}: fewer than two sizes ran")
        else:
            print(
                f"fit {key}: {f['slope_s_per_device']:+.4f} s per device, intercept "
                f"{f['intercept_s']:.2f} s (r2 {f['r2']:.3f}); log-log exponent "
                f"{f['loglog_exponent']:.2f} over {f['points']} sizes"
            )


def plot(records: Sequence[dict[str, Any]], fit: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [r for r in records if r["status"] == "ok"]
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    xs = [r["devices"] for r in ok]
    styles = (
        ("round_s", "round", "o"),
        ("train_s", "training", "s"),
        ("overhead_s", "overhead", "^"),
    )
    for key, label, marker in styles:
        line = ax.plot(xs, [r[key] for r in ok], marker=marker, linestyle="none", label=label)
        f = fit.get(key)
        if f is not None:
            grid = np.linspace(min(xs), max(xs), 50)
            ax.plot(
                grid,
                f["slope_s_per_device"] * grid + f["intercept_s"],
                color=line[0].get_color(),
                alpha=0.6,
                label=f"{label} fit: {f['slope_s_per_device']:.3f} s/device, "
                f"exponent {f['loglog_exponent']:.2f}",
            )
    ax.set_xlabel("devices (processes = devices + 5)")
    ax.set_ylabel("seconds per round (median)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    mem.plot(xs, [r["peak_rss_gib"] for r in ok], marker="o", label="peak RSS, summed")
    mem.plot(xs, [r["peak_pss_gib"] for r in ok], marker="s", label="peak PSS, summed")
    total = _total_memory_gib()
    if total is not None:
        mem.axhline(total, color="grey", linestyle="--", label=f"machine memory {total:.1f} GiB")
    skipped = [r for r in records if r["status"] != "ok" and r.get("memory")]
    if skipped:
        mem.plot(
            [r["devices"] for r in skipped],
            [r["memory"]["needed_gib"] for r in skipped],
            marker="x",
            linestyle="none",
            color="red",
            label="estimate, size not run (skipped/failed)",
        )
    mem.set_xlabel("devices")
    mem.set_ylabel("GiB (all node processes)")
    mem.set_title("memory of the devnet")
    mem.set_ylim(bottom=0)
    mem.grid(alpha=0.3)
    mem.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _total_memory_gib() -> float | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return None
    return psutil.virtual_memory().total / GIB


def fill_size(
    records: list[dict[str, Any]], args: argparse.Namespace, available: float
) -> int | None:
    """The extra size of ``--fill``: the largest the memory estimate allows now, if larger than
    every size that ran (None, said why, otherwise)."""
    ok = [r["devices"] for r in records if r["status"] == "ok"]
    if not ok or any(r["status"] == "failed" for r in records):
        print("--fill: no extra size (a size failed, or none ran)", flush=True)
        return None
    per_device, per_other, _ = estimate_per_process(records, DEFAULT_DEVICE_GIB, DEFAULT_OTHER_GIB)
    n = largest_fitting(
        available_gib=available,
        per_device_gib=per_device,
        per_other_gib=per_other,
        reserve_gib=args.reserve_gib,
        limit=min(MAX_NODES - MINERS - MANUFACTURERS, args.shards),
    )
    if n <= max(ok) or any(r["devices"] == n for r in records):
        print(f"--fill: the largest size that fits ({n}) is not larger than {max(ok)}", flush=True)
        return None
    return n


def merge_records(
    earlier: dict[str, Any], remeasured: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of an earlier result file (``--merge``) except the sizes measured again, each
    tagged with its run's date and command, and a summary of that run."""
    run = {
        key: earlier.get(key)
        for key in ("date", "command", "load_average_before", "load_average_after", "code")
    }
    tag = {"date": run["date"], "command": run["command"]}
    records = [
        {**r, "run": r.get("run", tag)}
        for r in earlier.get("records", [])
        if r["devices"] not in remeasured
    ]
    return records, run


def code_state() -> dict[str, Any]:
    """The commit the nodes ran and the files that differed from it (the devnet runs this
    working tree, whatever is uncommitted in it)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.rstrip("\n")

    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return {"commit": git("rev-parse", "HEAD").strip(), "modified": [c[3:] for c in changed]}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}


def _deadline(text: str | None) -> float | None:
    """``HH:MM`` (UTC, today or, if already past by more than 12 h, tomorrow) as a timestamp."""
    if text is None:
        return None
    hours, minutes = (int(p) for p in text.split(":"))
    now = dt.datetime.now(dt.UTC)
    at = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if (now - at).total_seconds() > 12 * 3600:
        at += dt.timedelta(days=1)
    return at.timestamp()


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=list(DEFAULT_DEVICES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--shards", type=int, default=DEFAULT_SHARDS, help="MNIST shards (size per device)"
    )
    parser.add_argument("--name", default="scale", help="result file name (bench/results/NAME)")
    parser.add_argument("--reserve-gib", type=float, default=1.0)
    parser.add_argument("--min-free-gib", type=float, default=0.75)
    parser.add_argument("--stop-at", default=None, help="UTC HH:MM: start no size after it")
    parser.add_argument(
        "--no-fill",
        dest="fill",
        action="store_false",
        help="do not add the largest size the memory estimate allows after the listed ones",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="an earlier result file whose records join this run's (sizes measured again here "
        "replace them); each keeps the date and command of its run",
    )
    parser.add_argument("--dir", type=Path, default=None, help="keep the devnets here")
    parser.add_argument(
        "--device-peers",
        type=int,
        default=None,
        help="bound each device's own dialling to this many peers (default: a full mesh)",
    )
    args = parser.parse_args(argv)
    counts = sorted(set(args.devices))
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first round is left out of the median)")
    if min(counts) < 1 or max(counts) > args.shards:
        parser.error(f"device counts must be 1 to --shards ({args.shards})")
    deadline = _deadline(args.stop_at)
    load_before = os.getloadavg()
    code = code_state()
    records: list[dict[str, Any]] = []
    merged_from: list[dict[str, Any]] = []
    if args.merge is not None:
        earlier, run = merge_records(json.loads(args.merge.read_text(encoding="utf-8")), counts)
        records.extend(earlier)
        merged_from.append(run)

    def attempt(n: int, workdir: Path, note: str | None = None) -> dict[str, Any] | None:
        """Run size ``n`` (or record why not); None on Ctrl-C."""
        per_device, per_other, source = estimate_per_process(
            records, DEFAULT_DEVICE_GIB, DEFAULT_OTHER_GIB
        )
        available = psutil.virtual_memory().available / GIB
        estimate = {
            "per_device_gib": per_device,
            "per_other_node_gib": per_other,
            "from": source,
            "needed_gib": round(
                memory_needed_gib(n, per_device_gib=per_device, per_other_gib=per_other), 2
            ),
            "available_gib": round(available, 2),
        }
        reason = skip_reason(
            n,
            available_gib=available,
            per_device_gib=per_device,
            per_other_gib=per_other,
            reserve_gib=args.reserve_gib,
        )
        if reason is None and any(r["status"] == "failed" and r["devices"] < n for r in records):
            reason = "a smaller size failed"
        if reason is None and deadline is not None and time.time() >= deadline:
            reason = f"--stop-at {args.stop_at} UTC reached before this size started"
        if reason is not None:
            print(f"[{n} devices] skipped: {reason}", flush=True)
            return {"devices": n, "status": "skipped", "reason": reason, "memory": estimate}
        print(
            f"[{n} devices] memory: need about {estimate['needed_gib']} GiB, "
            f"{estimate['available_gib']} GiB available" + (f" ({note})" if note else ""),
            flush=True,
        )
        try:
            record = trio.run(
                lambda: measure(
                    n,
                    rounds=args.rounds,
                    shards=args.shards,
                    workdir=workdir,
                    min_free_gib=args.min_free_gib,
                    deadline=deadline,
                    device_peers=args.device_peers,
                )
            )
        except KeyboardInterrupt:
            return None
        except (SizeStopped, DevnetError, OSError) as exc:
            print(f"[{n} devices] failed: {exc}", flush=True)
            record = {"devices": n, "status": "failed", "reason": str(exc)}
            if isinstance(exc, SizeStopped):
                record["measured_until_stopped"] = exc.measured
        record["memory"] = estimate
        if note:
            record["chosen"] = note
        return record

    with tempfile.TemporaryDirectory(prefix="flnode-bench-scale-") as tmp:
        workdir = args.dir or Path(tmp)
        print(f"devnets in {workdir}", flush=True)
        for n in counts:
            record = attempt(n, workdir)
            if record is None:
                print("interrupted: the devnet was stopped; nothing written", flush=True)
                return 130
            records.append(record)
        if args.fill:
            n = fill_size(records, args, psutil.virtual_memory().available / GIB)
            if n is not None:
                record = attempt(n, workdir, "--fill: the largest size the memory estimate allows")
                if record is None:
                    print("interrupted: the devnet was stopped; nothing written", flush=True)
                    return 130
                records.append(record)
    records.sort(key=lambda r: r["devices"])
    ok = [r for r in records if r["status"] == "ok"]
    fit = {
        key: fit_growth([r["devices"] for r in ok], [r[key] for r in ok])
        for key in ("round_s", "overhead_s", "train_s")
    }
    largest = max(ok, key=lambda r: r["devices"], default=None)
    payload = {
        "benchmark": "scale",
        "miners": MINERS,
        "manufacturers": MANUFACTURERS,
        "rounds_per_run": args.rounds,
        "shard_count": args.shards,
        "parts": list(PARTS),
        "largest_devnet_run": None
        if largest is None
        else {"devices": largest["devices"], "processes": largest["processes"]},
        "fit": fit,
        "records": records,
        "memory_total_gib": round(psutil.virtual_memory().total / GIB, 2),
        "merged_from": merged_from,
        "code": code,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print_table(records, fit)
    path = write_result(args.name, payload)
    png = RESULTS_DIR / f"{args.name}.png"
    plot(records, fit, png, f"devnet round time, {MINERS} miners, {args.shards} shards")
    print(f"wrote {path} and {png}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
