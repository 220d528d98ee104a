"""Test accuracy against ε, for every normalisation, with the public-only baseline beside it.

Run: ``python -m bench.accuracy`` (the full grid, ~45 min on 2 cores) or ``--quick`` (a few
points). Writes ``bench/results/accuracy.json``: ``records`` is a list with one record per run,
each holding at least ``accounting`` (``per-sample`` or ``per-feature``), ``epsilon`` (null = no
noise), ``norm``, ``partition``, ``rounds``, ``accuracy_clean``, ``accuracy_noisy``,
``public_only_accuracy``, ``public_size``, ``mechanism`` and ``delta``. The file is rewritten after
every run, so an interrupted grid keeps what it measured.

The grid (issue #4): per-sample ε ∈ {1, 10, 100, 1000, ∞} and the paper's per-feature ε ∈ {0.5, 1,
2, 5, 10}, each for every normalisation, 10 devices, IID and Dirichlet(0.5), 5 rounds; then the
Gaussian mechanism ((ε, δ = 1e-5), L2-bounded 64-dim bottleneck) at per-sample ε ∈ {1, 10, 100}.
Per-sample runs bound features by L1 normalisation (L1 sensitivity 2); per-feature runs use the
paper's per-sample min-max scaling to [0, 1] (each coordinate its own query with Δ = 1). The
default design is the 8-dim bottleneck; a 4-dim one is recorded at ε ∈ {1, 10, 100} beside it.

For each privacy setting one extractor is pre-trained (with the default head) and frozen; each
normalisation then gets its own head re-trained on the noisy public features (``rehead``), so the
norms are compared on identical features. Noise of the devices' releases is seeded from the
operating system, as in production, so repeated runs differ by noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from typing import Any

import torch

from bench._common import write_result
from flnode.learning.norms import DEFAULT_NORM, NORMS
from flnode.learning.simulation import (
    Prepared,
    SimulationConfig,
    SimulationResult,
    prepare,
    prepare_key,
    rehead,
    run_simulation,
)

PER_SAMPLE = (1.0, 10.0, 100.0, 1000.0, None)
PER_FEATURE = (0.5, 1.0, 2.0, 5.0, 10.0)
GAUSSIAN = (1.0, 10.0, 100.0)
PARTITIONS = ("iid", "dirichlet")


def record(result: SimulationResult) -> dict[str, Any]:
    cfg = result.config
    return {
        "mode": cfg.mode,
        "mechanism": cfg.mechanism if cfg.epsilon is not None else "none",
        "accounting": cfg.accounting,
        "epsilon": cfg.epsilon,
        "delta": cfg.delta if cfg.mechanism == "gaussian" else None,
        "per_sample_epsilon": result.per_sample_epsilon,
        "per_feature_epsilon": result.per_feature_epsilon,
        "bounding": cfg.bounding,
        "bottleneck": cfg.bottleneck,
        "norm": cfg.norm,
        "partition": cfg.partition if cfg.partition == "iid" else f"dirichlet({cfg.alpha:g})",
        "devices": cfg.n_devices,
        "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs,
        "public_size": cfg.public_size,
        "public_only_accuracy": result.public_only.clean,
        "public_only_accuracy_noisy": result.public_only.noisy,
        "head_pretraining": "re-trained on noisy public features of a shared extractor",
        "accuracy_clean": result.final.clean,
        "accuracy_noisy": result.final.noisy,
        "gain_points": round(result.gain_clean, 2),
        "accuracy_clean_per_round": [r.accuracy.clean for r in result.rounds],
        "privacy": result.privacy_label,
        "pretrain_s": round(result.pretrain_s, 2),
        "round_train_s": [round(r.train_s, 3) for r in result.rounds],
    }


def grid(quick: bool, base: SimulationConfig) -> list[SimulationConfig]:
    configs: list[SimulationConfig] = []
    norms = ("clampbn", "batchnorm") if quick else tuple(NORMS)
    per_sample = (10.0, 100.0) if quick else PER_SAMPLE
    per_feature = (10.0,) if quick else PER_FEATURE
    partitions = ("iid",) if quick else PARTITIONS
    for eps, norm, part in itertools.product(per_sample, norms, partitions):
        configs.append(dataclasses.replace(base, epsilon=eps, norm=norm, partition=part))
    for eps, norm, part in itertools.product(per_feature, norms, partitions):
        configs.append(
            dataclasses.replace(
                base,
                epsilon=eps,
                accounting="per-feature",
                bounding="minmax",
                norm=norm,
                partition=part,
            )
        )
    # A smaller bottleneck trades capacity for signal-to-noise (measured better at ε = 10).
    for eps, part in itertools.product(() if quick else (1.0, 10.0, 100.0), partitions):
        configs.append(dataclasses.replace(base, epsilon=eps, bottleneck=4, partition=part))
    for eps, part in itertools.product(() if quick else GAUSSIAN, partitions):
        configs.append(
            dataclasses.replace(
                base,
                mechanism="gaussian",
                epsilon=eps,
                delta=1e-5,
                bounding="l2",
                bottleneck=64,
                partition=part,
            )
        )
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few grid points only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--public-size", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="accuracy", help="results file name (without .json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = SimulationConfig(
        n_devices=args.devices,
        rounds=args.rounds,
        public_size=args.public_size,
        threads=args.threads,
    )
    configs = grid(args.quick, base)
    records: list[dict[str, Any]] = []
    extractors: dict[tuple[Any, ...], Prepared] = {}
    started = time.perf_counter()
    print(f"{len(configs)} runs; results go to bench/results/{args.out}.json after each")
    for n, cfg in enumerate(configs, 1):
        # One pre-trained extractor per privacy setting, shared by every normalisation (each
        # gets its own head re-trained on the public features; see simulation.rehead).
        base_cfg = dataclasses.replace(cfg, norm=DEFAULT_NORM, partition="iid")
        base_key = prepare_key(base_cfg)
        if base_key not in extractors:
            extractors.clear()  # one extractor at a time keeps memory flat
            extractors[base_key] = prepare(base_cfg)
        heads_key = prepare_key(cfg)
        if heads_key not in extractors:
            extractors[heads_key] = rehead(extractors[base_key], cfg)
        result = run_simulation(cfg, prepared=extractors[heads_key])
        records.append(record(result))
        eps = "∞" if cfg.epsilon is None else f"{cfg.epsilon:g}"
        print(
            f"[{n}/{len(configs)} {time.perf_counter() - started:6.0f}s] {cfg.mechanism:8} "
            f"{cfg.accounting:11} ε={eps:5} {cfg.norm:9} {cfg.partition:9} public-only "
            f"{result.public_only.clean:.4f} → clean {result.final.clean:.4f} "
            f"noisy {result.final.noisy:.4f}",
            flush=True,
        )
        write_result(args.out, {"records": records, "complete": n == len(configs)})


if __name__ == "__main__":
    main()
