"""Feature-inversion attack quality against ε: what an attacker reconstructs from released features.

Run: ``python -m bench.inversion``. Writes ``bench/results/inversion.json``. For each per-sample ε
(Laplace, L1-bounded 8-dim bottleneck, the default design) the manufacturer's extractor is
pre-trained with that ε's noise in the loop, then an attacker who knows everything but the private
images trains a decoder from released features to images on the 2,000 public images and inverts
the released features of 1,000 test images. PSNR/SSIM of its reconstructions are recorded beside
the "mean image" guess (no information at all). See flnode/learning/inversion.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from bench._common import write_result
from flnode.learning.datasets import load_dataset, to_tensor
from flnode.learning.inversion import inversion_attack
from flnode.learning.mechanisms import noise_generator
from flnode.learning.partition import partition_indices
from flnode.learning.simulation import SimulationConfig, prepare

EPSILONS = (1.0, 10.0, 100.0, 1000.0, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    base = SimulationConfig(threads=args.threads)
    ds = load_dataset("mnist")
    public = partition_indices(
        ds.train_labels, 1, public_size=base.public_size, seed=base.seed
    ).public
    public_images = to_tensor(ds.train_images[public])
    target_images = to_tensor(ds.test_images[: args.targets])
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for eps in EPSILONS:
        cfg = dataclasses.replace(base, epsilon=eps)
        prepared = prepare(cfg)
        gen = noise_generator(None)
        extractor, bound, release = prepared.extractor, prepared.bounding.apply, prepared.release

        def released(images: torch.Tensor) -> torch.Tensor:
            z = bound(extractor(images))  # noqa: B023 - used within this iteration only
            return release.mechanism.release(z, gen) if release else z  # noqa: B023

        result = inversion_attack(released, public_images, target_images, epochs=args.epochs)
        records.append(
            {
                "epsilon": eps,
                "accounting": "per-sample",
                "mechanism": "laplace" if eps is not None else "none",
                "bottleneck": cfg.bottleneck,
                "psnr_db": round(result.attack.psnr_db, 3),
                "ssim": round(result.attack.ssim, 4),
                "mean_image_psnr_db": round(result.mean_image_baseline.psnr_db, 3),
                "mean_image_ssim": round(result.mean_image_baseline.ssim, 4),
                "public_images": result.n_public,
                "targets": result.n_targets,
            }
        )
        label = "∞" if eps is None else f"{eps:g}"
        print(
            f"[{time.perf_counter() - started:5.0f}s] ε={label:5} PSNR {result.attack.psnr_db:6.2f} dB"
            f" SSIM {result.attack.ssim:.3f} (mean image: {result.mean_image_baseline.psnr_db:.2f} dB,"
            f" {result.mean_image_baseline.ssim:.3f})",
            flush=True,
        )
        write_result("inversion", {"records": records})


if __name__ == "__main__":
    main()
