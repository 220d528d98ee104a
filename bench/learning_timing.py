"""Device-side costs on one thread: feature extraction, head training, serialisation.

Run: ``python -m bench.learning_timing``. Writes ``bench/results/learning_timing.json`` with
``extract_s_per_1000`` (frozen extractor, 1,000 MNIST images, no grad), ``head_train_s_per_round``
(one device: 6,000 noisy features, 2 local epochs, batch 64), ``update_bytes`` and the
serialise/parse time of one update. Aggregation times are in ``bench/results/aggregation.json``
(``python -m bench.aggregation``). Medians of several repeats, ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import statistics
import time

import torch

from bench._common import write_result
from flnode.learning.datasets import load_dataset, to_tensor
from flnode.learning.models import ModelSpec, build_head, build_model
from flnode.learning.serialization import weights_from_bytes, weights_to_bytes
from flnode.learning.training import extract_features, train_head


def _median_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    spec = ModelSpec.create(noise_scale=0.2)
    model = build_model(spec, seed=0).eval()
    images = to_tensor(load_dataset("mnist").train_images[:1000])
    extract = _median_time(lambda: extract_features(model.extractor, images, threads=1), 5)
    features = torch.randn(6000, spec.bottleneck)
    labels = torch.randint(0, 10, (6000,))

    def train() -> None:
        head = build_head(spec, seed=0)
        train_head(head, features, labels, epochs=2, lr=1e-3, batch_size=64, seed=0, threads=1)

    train()  # the first optimiser step imports torch._dynamo (seconds); keep it out of the figure
    head_train = _median_time(train, 3)
    state = {f"head.{k}": v for k, v in build_head(spec, seed=0).state_dict().items()}
    blob = weights_to_bytes(state)
    expected = spec.weight_specs("head")
    ser = _median_time(lambda: weights_from_bytes(weights_to_bytes(state), expected=expected), 50)
    print(f"feature extraction: {extract:.3f} s per 1,000 images (1 thread)")
    print(f"head training: {head_train:.3f} s per device per round (6,000 samples, 2 epochs)")
    print(f"update: {len(blob)} bytes, serialise + parse {1000 * ser:.2f} ms")
    write_result(
        "learning_timing",
        {
            "extract_s_per_1000": round(extract, 4),
            "head_train_s_per_round": round(head_train, 3),
            "head_train_samples": 6000,
            "local_epochs": 2,
            "update_bytes": len(blob),
            "serialise_parse_ms": round(1000 * ser, 3),
            "threads": 1,
        },
    )


if __name__ == "__main__":
    main()
