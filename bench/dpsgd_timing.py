"""Time of one device's DP-SGD round on one thread, against plain SGD on the same data.

    python -m bench.dpsgd_timing

One device with a full IID shard of MNIST (7,437 images, as with 8 devices and a 500-image public
slice), the ``dpsgd-full`` preset (dp-cnn, batch 256, 1 local epoch), one torch thread. Reports the
median of ``--repeats`` rounds. Writes ``bench/results/dpsgd_timing.json`` with the machine's load
average, since other work on the machine slows the measurement down.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from bench._common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from flnode.learning.accountant import EpsDelta
    from flnode.learning.datasets import labels_to_tensor, load_dataset, to_tensor
    from flnode.learning.dpsgd import DpSgdSettings, DpSgdTrainer, plan_noise_multiplier
    from flnode.learning.ledger import PrivacyLedger
    from flnode.learning.models import ModelSpec, build_model
    from flnode.learning.partition import partition_indices
    from flnode.learning.simulation import PRESETS
    from flnode.learning.training import set_threads

    set_threads(1)
    p = PRESETS["dpsgd-full"]
    ds = load_dataset("mnist")
    part = partition_indices(ds.train_labels, 8, public_size=500, seed=0)
    idx = torch.tensor(part.shards[0], dtype=torch.int64)
    images, labels = to_tensor(ds.train_images)[idx], labels_to_tensor(ds.train_labels)[idx]
    settings = DpSgdSettings(
        lr=p["dp_lr"],
        momentum=p["dp_momentum"],
        max_grad_norm=p["dp_clip"],
        batch_size=p["dp_batch_size"],
        local_epochs=1,
    )
    budget = EpsDelta(1000.0, 1e-5)  # large: the timing runs several rounds
    z = plan_noise_multiplier(
        budget=budget, n_samples=len(idx), settings=settings, rounds=args.repeats + 1
    )
    spec = ModelSpec.create("dp-cnn")
    ledger = PrivacyLedger.in_memory(task_id="timing", device_id="d0", budget=budget)
    trainer = DpSgdTrainer(
        build_model(spec, seed=0),
        images,
        labels,
        settings=settings,
        noise_multiplier=z,
        ledger=ledger,
        seed=0,
        threads=1,
    )
    state = trainer.model.state_dict()
    trainer.train_round(state, extractor_version="warm-up")
    dp_times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train_round(state, extractor_version=f"r{i}")
        dp_times.append(time.perf_counter() - t0)

    plain = build_model(spec, seed=0)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    sgd_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        perm = torch.randperm(len(images))
        for b in perm.split(settings.batch_size):
            opt.zero_grad()
            F.cross_entropy(plain(images[b]), labels[b]).backward()
            opt.step()
        sgd_times.append(time.perf_counter() - t0)

    dp = statistics.median(dp_times)
    sgd = statistics.median(sgd_times)
    payload = {
        "n_samples": len(idx),
        "batch_size": settings.batch_size,
        "steps_per_round": trainer.round_curve.steps,
        "threads": 1,
        "dpsgd_round_s": round(dp, 3),
        "plain_sgd_round_s": round(sgd, 3),
        "dpsgd_overhead": round(dp / sgd, 2),
        "dpsgd_round_s_all": [round(t, 3) for t in dp_times],
        "load_average_1m": os.getloadavg()[0],
    }
    path = write_result("dpsgd_timing", payload)
    print(
        f"DP-SGD round ({len(idx)} images, 1 thread): {dp:.2f} s; plain SGD {sgd:.2f} s "
        f"({dp / sgd:.1f}×); load average {payload['load_average_1m']:.2f}; wrote {path}"
    )


if __name__ == "__main__":
    main()
