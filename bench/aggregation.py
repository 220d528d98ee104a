"""Time every aggregation rule over 10 and 100 updates; run ``python -m bench.aggregation``.

Two sizes: the head of the bottleneck design (BatchNorm1d(8) → Linear(8, 256) → Linear(256, 10),
4,906 floats plus BatchNorm's integer counter; the state dict a device actually submits) and a
100k-float vector as a margin for larger heads. A tenth of the updates are sign-flipped and
boosted, so the robust rules have something to reject. The question this answers: can a miner
filter and aggregate a round within its block time? The target is Multi-Krum of 100 updates in
under a second on one core (its pairwise distances are O(n²·d)).

One torch thread (learning.md P6: on a shared 2-core machine more threads are slower). Each
timing is the median of several runs of ``aggregate`` alone (the updates are built beforehand).
Results go to ``bench/results/aggregation.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from torch import nn

from bench._common import write_result
from flnode.learning.aggregation import Strategy, Update, strategy_from_spec
from flnode.learning.attacks import sign_flip


def head_state() -> dict[str, torch.Tensor]:
    """The state dict of the bottleneck design's head (float parameters and BN buffers)."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 10))
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def vector_state(params: int = 100_000) -> dict[str, torch.Tensor]:
    return {"w": torch.randn(params, generator=torch.Generator().manual_seed(0))}


def make_updates(glob: dict[str, torch.Tensor], n: int, seed: int) -> list[Update]:
    """``n`` updates around ``glob``; every tenth one a boosted sign flip."""
    g = torch.Generator().manual_seed(seed)
    updates = []
    for i in range(n):
        weights = {
            k: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v + i
            for k, v in glob.items()
        }
        if i % 10 == 9:
            weights = sign_flip(weights, glob, scale=10.0)
        updates.append(Update(f"cid-{seed}-{i:04d}", f"dev{i}", weights, 100 + i))
    return updates


def rules(n: int) -> list[Strategy]:
    f = max(1, n // 10)  # as many Byzantine updates as there are attackers
    return [
        strategy_from_spec("fedavg", max_samples=1000),
        strategy_from_spec("multikrum", f=f),
        strategy_from_spec("krum", f=f),
        strategy_from_spec("median"),
        strategy_from_spec("trimmed-mean", beta=0.1),
        strategy_from_spec("three-sigma"),
    ]


def time_rule(rule: Strategy, updates: list[Update], repeats: int) -> float:
    rule.aggregate(updates)  # warm-up (allocations, lazy init)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        rule.aggregate(updates)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was

    models = {"head": head_state(), "vector-100k": vector_state()}
    records: list[dict[str, Any]] = []
    print(f"{'model':<12} {'params':>7} {'rule':<13} {'updates':>7} {'seconds':>9}  rejected")
    for model, glob in models.items():
        params = sum(v.numel() for v in glob.values() if v.is_floating_point())
        for n in (10, 100):
            updates = make_updates(glob, n, seed=n)
            for rule in rules(n):
                seconds = time_rule(rule, updates, args.repeats)
                rejected = len(rule.aggregate(updates).rejected)
                records.append(
                    {
                        "model": model,
                        "params": params,
                        "rule": rule.name,
                        "rule_params": rule.params,
                        "updates": n,
                        "seconds": seconds,
                        "rejected": rejected,
                    }
                )
                print(f"{model:<12} {params:>7} {rule.name:<13} {n:>7} {seconds:>9.4f}  {rejected}")

    def pick(model: str, rule: str, n: int) -> float:
        return next(
            r["seconds"]
            for r in records
            if (r["model"], r["rule"], r["updates"]) == (model, rule, n)
        )

    summary = {
        "multikrum_100_s": pick("vector-100k", "multikrum", 100),
        "multikrum_100_head_s": pick("head", "multikrum", 100),
    }
    path = write_result(
        "aggregation",
        {
            "records": records,
            **summary,
            "repeats": args.repeats,
            "target_s": 1.0,
            "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        },
    )
    print(
        f"Multi-Krum, 100 updates: {summary['multikrum_100_head_s']:.3f} s (head), "
        f"{summary['multikrum_100_s']:.3f} s (100k floats); target < 1 s. Wrote {path}"
    )


if __name__ == "__main__":
    main()
