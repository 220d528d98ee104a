"""Accuracy of the three privacy modes at the same per-sample budget, with small public slices.

    python -m bench.privacy_modes            # the grid (~30-60 min on 2 free cores)
    python -m bench.privacy_modes --quick    # capped shards, 2 rounds: a few minutes, not recorded
                                             # in accuracy.json

Each finished run is saved at once under ``bench/results/privacy_modes/`` and a later invocation
skips runs already saved (``--fresh`` starts over), so an interrupted grid resumes where it stopped.

Each run is its own process on one torch thread (two run at a time with ``--jobs 2``), so the
recorded ``s_per_round_per_device`` is the time of one device's round on one thread (the machine's
load average is recorded beside it: other work on the machine slows it down).

Writes ``bench/results/privacy_modes.json`` and merges its records, each with ``mode``,
``public_size``, ``public_only_accuracy``, ``epsilon`` and ``delta``, into
``bench/results/accuracy.json`` (replacing the records of an earlier run of this benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._common import RESULTS_DIR, run_info, write_result

DELTA = 1e-5
SOURCE = "bench.privacy_modes"


def grid(quick: bool) -> list[dict[str, Any]]:
    """The runs, most important first: every mode at ε = 10 with 500 and 2,000 public images;
    ε = 1 and 3 for ``dpsgd-full`` at 500; one ``dpsgd-full`` run from a deliberately weak
    (early-stopped) public model."""
    runs: list[dict[str, Any]] = []
    for public in (500, 2000):
        runs.append(
            {
                "mode": "frozen",
                "public_size": public,
                "mechanism": "gaussian",
                "bounding": "l2",
                "bottleneck": 64,
                "norm": "clampbn",
            }
        )
        runs.append({"mode": "dpsgd-extractor", "public_size": public})
        runs.append({"mode": "dpsgd-full", "public_size": public})
    for eps in (1.0, 3.0):
        runs.append({"mode": "dpsgd-full", "public_size": 500, "epsilon": eps})
    runs.append({"mode": "dpsgd-full", "public_size": 500, "pretrain_epochs": 5})
    for run in runs:
        run.setdefault("epsilon", 10.0)
        run.update(n_devices=8, delta=DELTA, seed=0, threads=1)
        if quick:
            run.update(max_samples_per_device=1500, rounds=2)
    return runs


def worker(overrides: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process and return its record."""
    from flnode.learning.dp_simulation import run_dp_simulation
    from flnode.learning.simulation import preset, run_simulation

    cfg = preset(overrides["mode"], **{k: v for k, v in overrides.items() if k != "mode"})
    t0 = time.perf_counter()
    base = {
        "mode": cfg.mode,
        "public_size": cfg.public_size,
        "epsilon": cfg.epsilon,
        "delta": cfg.delta,
        "devices": cfg.n_devices,
        "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs,
        "max_samples_per_device": cfg.max_samples_per_device,
        "pretrain_epochs": cfg.pretrain_epochs,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "privacy": "per-sample (ε, δ) over the whole task, per device",
        "public_recipe": "early-stopped" if "pretrain_epochs" in overrides else "preset",
    }
    if cfg.mode == "frozen":
        r = run_simulation(cfg)
        record = {
            **base,
            "mechanism": cfg.mechanism,
            "bottleneck": cfg.bottleneck,
            "public_only_accuracy": r.public_only.clean,
            "accuracy": r.final.clean,
            "gain_points": round(r.gain_clean, 2),
            "accuracy_per_round": [x.accuracy.clean for x in r.rounds],
            "epsilon_spent": max(r.epsilon_spent),
            "feature_release": r.privacy_label,
            "s_per_round_per_device": sum(x.train_s for x in r.rounds)
            / (len(r.rounds) * cfg.n_devices),
            "update_keys": "head only",
        }
    else:
        d = run_dp_simulation(cfg)
        record = {
            **base,
            "lr": cfg.dp_lr,
            "momentum": cfg.dp_momentum,
            "clip": cfg.dp_clip,
            "batch_size": cfg.dp_batch_size,
            "bottleneck": cfg.bottleneck,
            "feature_share": cfg.feature_share if cfg.mode == "dpsgd-extractor" else None,
            "public_only_accuracy": d.public_only_accuracy,
            "accuracy": d.final_accuracy,
            "gain_points": round(d.gain, 2),
            "accuracy_per_round": [x.accuracy for x in d.rounds],
            "noise_multiplier": d.noise_multiplier,
            "sample_rate": d.sample_rate,
            "steps_per_round": d.steps_per_round,
            "epsilon_spent": max(d.epsilon_spent),
            "opacus_epsilon": max(d.opacus_epsilon) if d.opacus_epsilon else None,
            "composition": d.composition_rule,
            "feature_release": d.feature_release,
            "s_per_round_per_device": sum(x.train_s_per_device for x in d.rounds) / len(d.rounds),
            "update_keys": "extractor + head",
        }
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    record["load_average_1m"] = os.getloadavg()[0]
    return record


def run_key(overrides: dict[str, Any]) -> str:
    """A file name for one run of the grid."""
    return "_".join(f"{k}-{overrides[k]}" for k in sorted(overrides)).replace("/", "")


def _run_worker(overrides: dict[str, Any], save_dir: Path) -> dict[str, Any]:
    saved = save_dir / f"{run_key(overrides)}.json"
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    out = subprocess.run(
        [sys.executable, "-m", "bench.privacy_modes", "--worker", json.dumps(overrides)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"run {overrides} failed:\n{out.stderr[-3000:]}")
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record = {**record, **run_info()}
    save_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"{record['mode']:>16} public {record['public_size']:>5} ε={record['epsilon']:<4g} "
        f"public-only {record['public_only_accuracy']:.2%} → {record['accuracy']:.2%} "
        f"({record['gain_points']:+.1f}) {record['s_per_round_per_device']:.2f} s/round/device",
        flush=True,
    )
    return record


def merge_into_accuracy(records: list[dict[str, Any]]) -> Path:
    """Put this benchmark's records into accuracy.json next to the frozen-mode grid's."""
    path = RESULTS_DIR / "accuracy.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    kept = [r for r in doc["records"] if r.get("source") != SOURCE]
    for r in kept:
        r.setdefault("mode", "frozen")  # bench.accuracy runs the frozen mode only
    stamped = [{**r, "source": SOURCE} for r in records]
    doc["records"] = kept + stamped
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="capped shards and 2 rounds")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--fresh", action="store_true", help="ignore runs saved earlier")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    runs = grid(args.quick)
    save_dir = RESULTS_DIR / ("privacy_modes_quick" if args.quick else "privacy_modes")
    if args.fresh and save_dir.exists():
        for old in save_dir.glob("*.json"):
            old.unlink()
    print(f"{len(runs)} runs, {args.jobs} at a time; saved runs in {save_dir}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda r: _run_worker(r, save_dir), runs))
    at_500 = [
        r
        for r in records
        if r["public_size"] == 500 and r["epsilon"] == 10.0 and r["public_recipe"] == "preset"
    ]
    best = max(at_500, key=lambda r: r["accuracy"], default=None)
    summary = {
        "best_at_500_public_eps10": None
        if best is None
        else {k: best[k] for k in ("mode", "accuracy", "public_only_accuracy", "gain_points")},
        "target_accuracy": 0.97,
        "target_gain_points": 10.0,
    }
    payload = {"quick": args.quick, "records": records, "summary": summary}
    path = write_result("privacy_modes_quick" if args.quick else "privacy_modes", payload)
    print(f"wrote {path}")
    if not args.quick:
        print(f"merged into {merge_into_accuracy(records)}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
