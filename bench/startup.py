"""Devnet start-up: how long ``flnode devnet up`` takes, and what idle nodes cost, per spawn mode.

Run: ``python -m bench.startup`` (``--devices 8 --miners 4``, ``--repeats 1``, ``--idle 20``).
For each repeat and each spawn mode (``exec``: a new interpreter per node; ``fork``: every node
forked from one zygote that imported the code once, :mod:`flnode.devnet.zygote`) it creates a
fresh devnet of real processes (1 manufacturer, ``--miners`` miners, ``--devices`` devices) in a
temporary directory and times :func:`flnode.devnet.up` (every node ready, connected to all others
and holding block 1). Then, with the devnet idle (no task), it measures over ``--idle`` seconds
each node's CPU (from ``/proc/<pid>/stat``) and, at the end, its resident set size (RSS) and its
proportional set size (PSS, ``/proc/<pid>/smaps_rollup``: a page shared by ``n`` processes counts
``1/n``; forked nodes share the zygote's pages, which RSS counts once per process).

Writes ``bench/results/startup.json``: a record per run with ``spawn``, ``nodes``, ``up_s``,
``idle_cpu_cores`` (all nodes together), ``idle_rss_mib`` and ``idle_pss_mib`` (median per node),
``idle_pss_total_gib``, and a summary per mode (medians over the repeats).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import write_result
from flnode.devnet import down, layout_from_counts, prepare, up
from flnode.devnet.network import Network
from flnode.devnet.processes import node_pid

MODES = ("exec", "fork")
MIB = 2**20


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) * 1024
    return values["Rss"], values["Pss"]


def measure(network: Network, spawn: str, idle_s: float) -> dict[str, Any]:
    started = time.monotonic()
    trio.run(lambda: up(network, timeout_s=300.0, spawn=spawn))
    up_s = time.monotonic() - started
    try:
        pids = {n.name: node_pid(network, n.name) for n in network.nodes}
        if any(p is None for p in pids.values()):
            raise SystemExit(f"[{spawn}] a node has no pid file after up: {pids}")
        before = {name: _cpu_s(pid) for name, pid in pids.items()}  # type: ignore[arg-type]
        time.sleep(idle_s)
        cpu = {name: _cpu_s(pid) - before[name] for name, pid in pids.items()}  # type: ignore[arg-type]
        memory = {name: _memory(pid) for name, pid in pids.items()}  # type: ignore[arg-type]
    finally:
        down(network)
    rss = [r for r, _ in memory.values()]
    pss = [p for _, p in memory.values()]
    return {
        "spawn": spawn,
        "nodes": len(network.nodes),
        "up_s": round(up_s, 2),
        "idle_window_s": idle_s,
        "idle_cpu_cores": round(sum(cpu.values()) / idle_s, 3),
        "idle_rss_mib": round(statistics.median(rss) / MIB, 1),
        "idle_pss_mib": round(statistics.median(pss) / MIB, 1),
        "idle_rss_total_gib": round(sum(rss) / 2**30, 3),
        "idle_pss_total_gib": round(sum(pss) / 2**30, 3),
        "per_node": {
            name: {
                "cpu_s": round(cpu[name], 2),
                "rss_mib": round(memory[name][0] / MIB, 1),
                "pss_mib": round(memory[name][1] / MIB, 1),
            }
            for name in pids
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--miners", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle sampling")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.idle <= 0:
        parser.error("--repeats must be at least 1 and --idle positive")
    load_before = os.getloadavg()
    records = []
    with tempfile.TemporaryDirectory(prefix="flnode-bench-startup-") as tmp:
        for repeat in range(args.repeats):
            for spawn in MODES:
                layout = layout_from_counts(
                    miners=args.miners, devices=args.devices, edges=0, manufacturers=1
                )
                network = prepare(Path(tmp) / f"{spawn}-{repeat}", layout, reset=True)
                record = measure(network, spawn, args.idle)
                records.append(record)
                print(
                    f"[{spawn}] {record['nodes']} nodes up in {record['up_s']:.1f} s; idle: "
                    f"{record['idle_cpu_cores']:.2f} cores, per node RSS "
                    f"{record['idle_rss_mib']:.0f} MiB, PSS {record['idle_pss_mib']:.0f} MiB",
                    flush=True,
                )
    summary = {
        spawn: {
            key: statistics.median(r[key] for r in records if r["spawn"] == spawn)
            for key in ("up_s", "idle_cpu_cores", "idle_rss_mib", "idle_pss_mib")
        }
        for spawn in MODES
    }
    path = write_result(
        "startup",
        {
            "benchmark": "startup",
            "layout": {"miners": args.miners, "devices": args.devices, "manufacturers": 1},
            "summary": summary,
            "records": records,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
