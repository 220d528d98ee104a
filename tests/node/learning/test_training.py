"""Training loops: learnable tasks are learnt, runs are deterministic, the extractor stays untouched.

Synthetic tasks keep these fast: Gaussian clusters for the head, bright-patch "digits" for the
split CNN. One short run on real MNIST (the vendored copy) checks the whole pipeline end to end; it
is skipped if the data set loader is not importable.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from flnode.errors import FLNodeError
from flnode.learning.models import ModelSpec, build_head, build_model
from flnode.learning.serialization import weights_to_bytes
from flnode.learning.training import (
    CleanNoisyResult,
    EvalResult,
    TrainingError,
    TrainStats,
    evaluate,
    evaluate_clean_and_noisy,
    extract_features,
    pretrain,
    set_threads,
    train_head,
)

T = 1  # tests run on one thread: 2 shared cores (learning.md P6)
D = 8
NOISE_B = 0.05
SMALL = {"conv1_channels": 4, "conv2_channels": 8, "head_hidden": 32}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    set_threads(T)


def bound(z: torch.Tensor) -> torch.Tensor:
    """L1 normalisation, as the privacy code's default bounding (coordinates in [-1, 1])."""
    return z / z.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)


def noise(z: torch.Tensor) -> torch.Tensor:
    """Laplace noise of scale NOISE_B from torch's global RNG (so the loops' seeding governs it)."""
    e = torch.empty_like(z)
    return z + NOISE_B * (e.exponential_() - torch.empty_like(z).exponential_())


def clusters(n: int, seed: int, d: int = D, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """k well-separated Gaussian clusters in d dimensions: a linearly separable task."""
    g = torch.Generator().manual_seed(1234)
    centres = torch.randn(k, d, generator=g) * 3
    g.manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return centres[y] + 0.5 * torch.randn(n, d, generator=g), y


def patches(n: int, seed: int, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class is the position of one bright 8×4 patch (a learnable CNN task)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    for k in range(10):
        r, c = divmod(k, 5)
        x[y == k, 0, 2 + 12 * r : 10 + 12 * r, 1 + 5 * c : 5 + 5 * c] += 1.0
    return x, y


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _head_spec(norm: str = "clampbn") -> ModelSpec:
    # Cluster features are not bounded: give the clamp a range that covers them.
    return ModelSpec.create(norm=norm, coord_lo=-15.0, coord_hi=15.0, **SMALL)


# -- train_head --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "optimizer"), [("clampbn", "adam"), ("none", "sgd")])
def test_train_head_learns_a_separable_task(norm: str, optimizer: str) -> None:
    x, y = clusters(1000, seed=1)
    xt, yt = clusters(500, seed=2)
    head = build_head(_head_spec(norm), seed=0)
    stats = train_head(
        head, x, y, epochs=5, lr=1e-2, batch_size=64, optimizer=optimizer, seed=0, threads=T
    )
    assert isinstance(stats, TrainStats)
    assert stats.epochs == 5 and len(stats.epoch_losses) == 5
    assert stats.samples_seen == 5 * 1000
    assert stats.final_loss < stats.epoch_losses[0]
    assert stats.seconds >= 0
    result = evaluate(head, xt, yt, threads=T)
    assert isinstance(result, EvalResult) and result.n == 500
    assert result.accuracy >= 0.90, result


def test_train_head_is_deterministic_under_a_seed() -> None:
    x, y = clusters(300, seed=3)

    def run(seed: int) -> dict[str, torch.Tensor]:
        spec = _head_spec().replace(dropout=0.3)  # dropout draws from the (seeded) global RNG
        head = build_head(spec, seed=0)
        train_head(head, x, y, epochs=2, lr=1e-2, batch_size=32, seed=seed, threads=T)
        return head.state_dict()

    a, b, c = run(7), run(7), run(8)
    assert _states_equal(a, b)
    assert weights_to_bytes(a) == weights_to_bytes(b)
    assert not _states_equal(a, c)


def test_train_head_leaves_the_extractor_and_the_global_rng_alone() -> None:
    spec = ModelSpec.create(**SMALL)
    model = build_model(spec, seed=0)
    images, labels = patches(64, seed=0)
    extractor_before = {k: v.clone() for k, v in model.extractor.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    features = noise(bound(extract_features(model, images, threads=T)))
    rng = torch.random.get_rng_state()
    train_head(model.head, features, labels, epochs=2, lr=1e-2, batch_size=16, seed=0, threads=T)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert _states_equal(model.extractor.state_dict(), extractor_before)
    assert all(p.grad is None for p in model.extractor.parameters())
    assert not _states_equal(model.head.state_dict(), head_before)


def test_train_head_refuses_a_whole_split_model() -> None:
    model = build_model(ModelSpec.create(**SMALL), seed=0)
    x, y = clusters(10, seed=0)
    with pytest.raises(TrainingError, match=r"pass model\.head"):
        train_head(model, x, y, epochs=1, lr=1e-3, batch_size=4, seed=0, threads=T)


def test_a_trailing_single_sample_batch_is_skipped() -> None:
    x, y = clusters(33, seed=0)
    head = build_head(_head_spec("batchnorm"), seed=0)
    stats = train_head(head, x, y, epochs=2, lr=1e-3, batch_size=16, seed=0, threads=T)
    assert stats.samples_seen == 2 * 32


def test_zero_epochs_trains_nothing() -> None:
    x, y = clusters(20, seed=0)
    head = build_head(_head_spec(), seed=0)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    stats = train_head(head, x, y, epochs=0, lr=1e-3, batch_size=8, seed=0, threads=T)
    assert stats.samples_seen == 0 and stats.epoch_losses == ()
    assert _states_equal(head.state_dict(), before)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": torch.zeros(5, dtype=torch.long)}, "labels"),
        ({"labels": torch.zeros(20)}, "integer"),
        ({"labels": torch.full((20,), 10)}, r"labels must be in \[0, 10\)"),
        ({"features": torch.zeros(20, D, dtype=torch.uint8)}, "float tensor"),
        ({"features": torch.zeros(20, 2, D)}, r"\[N, d\]"),
        ({"features": torch.full((20, D), float("nan"))}, "non-finite"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"batch_size": 1}, "at least 2"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"seed": -3}, "seed"),
        ({"optimizer": "lbfgs"}, "unknown optimizer"),
        ({"threads": 0}, "threads"),
        ({"features": torch.zeros(1, D), "labels": torch.zeros(1, dtype=torch.long)}, "at least 2"),
    ],
)
def test_train_head_refuses_bad_arguments(change: dict, message: str) -> None:
    x, y = clusters(20, seed=0)
    kwargs = {
        "features": x,
        "labels": y,
        "epochs": 1,
        "lr": 1e-3,
        "batch_size": 8,
        "seed": 0,
        "threads": T,
        **change,
    }
    head = build_head(_head_spec("none"), seed=0)
    with pytest.raises(TrainingError, match=message):
        train_head(head, **kwargs)
    assert issubclass(TrainingError, FLNodeError)


# -- pretrain ----------------------------------------------------------------------------------------


def test_pretrain_learns_through_bounding_and_noise() -> None:
    x, y = patches(600, seed=1)
    xt, yt = patches(300, seed=2)
    spec = ModelSpec.create(noise_scale=NOISE_B, **SMALL)
    model = build_model(spec, seed=0)
    calls = {"bound": 0, "noise": 0}

    def counting_bound(z: torch.Tensor) -> torch.Tensor:
        calls["bound"] += 1
        return bound(z)

    def counting_noise(z: torch.Tensor) -> torch.Tensor:
        calls["noise"] += 1
        return noise(z)

    stats = pretrain(
        model,
        x,
        y,
        public_data=True,
        epochs=3,
        lr=3e-3,
        batch_size=32,
        bound_fn=counting_bound,
        noise_fn=counting_noise,
        seed=0,
        threads=T,
    )
    batches = 3 * ((600 + 31) // 32)
    assert calls == {"bound": batches, "noise": batches}  # fresh noise on every pass
    assert stats.samples_seen == 3 * 600
    result = evaluate_clean_and_noisy(
        model, xt, yt, bound_fn=bound, noise_fn=noise, seed=0, threads=T
    )
    assert isinstance(result, CleanNoisyResult)
    assert result.clean.accuracy >= 0.90, result
    assert result.noisy.accuracy >= 0.85, result


def test_pretrain_is_deterministic_under_a_seed() -> None:
    x, y = patches(96, seed=3)
    spec = ModelSpec.create(**SMALL)

    def run() -> dict[str, torch.Tensor]:
        model = build_model(spec, seed=1)
        pretrain(
            model,
            x,
            y,
            public_data=True,
            epochs=1,
            lr=1e-3,
            batch_size=32,
            bound_fn=bound,
            noise_fn=noise,
            seed=5,
            threads=T,
        )
        return model.state_dict()

    a, b = run(), run()
    assert _states_equal(a, b)
    assert weights_to_bytes(a) == weights_to_bytes(b)


def test_pretrain_demands_public_data_and_a_split_model() -> None:
    x, y = patches(8, seed=0)
    model = build_model(ModelSpec.create(**SMALL), seed=0)
    common = {
        "epochs": 1,
        "lr": 1e-3,
        "batch_size": 4,
        "bound_fn": None,
        "noise_fn": None,
        "seed": 0,
        "threads": T,
    }
    with pytest.raises(TrainingError, match="public slice only"):
        pretrain(model, x, y, public_data=False, **common)
    with pytest.raises(TrainingError, match="SplitModel"):
        pretrain(model.head, x, y, public_data=True, **common)  # type: ignore[arg-type]

    def shrink(z: torch.Tensor) -> torch.Tensor:
        return z[:, :2]

    with pytest.raises(TrainingError, match="bound_fn changed the feature shape"):
        pretrain(model, x, y, public_data=True, **{**common, "bound_fn": shrink})


# -- evaluation and features -------------------------------------------------------------------------


def test_extract_features_is_batch_invariant_gradient_free_and_restores_modes() -> None:
    model = build_model(ModelSpec.create(**SMALL), seed=0)
    model.train()
    x, _ = patches(50, seed=0)
    a = extract_features(model.extractor, x, batch_size=7, threads=T)
    b = extract_features(model, x, batch_size=1000, threads=T)  # a SplitModel: its extractor
    assert a.shape == (50, 8) and not a.requires_grad
    assert torch.allclose(a, b, atol=1e-6)
    assert all(m.training for m in model.modules())


def test_evaluate_counts_correct_predictions_and_restores_modes() -> None:
    head = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    x = torch.eye(3).repeat(4, 1)  # argmax of each row is its index
    y = torch.tensor([0, 1, 2] * 4)
    head.train()
    assert evaluate(head, x, y, threads=T).accuracy == 1.0
    assert head.training
    wrong = torch.tensor([1, 2, 0] * 4)
    assert evaluate(head, x, wrong, batch_size=5, threads=T).accuracy == 0.0

    def swap(z: torch.Tensor) -> torch.Tensor:
        return z[:, [2, 0, 1]]

    assert evaluate(head, x, wrong, transform=swap, threads=T).accuracy == 1.0


def test_clean_and_noisy_evaluation() -> None:
    x, y = clusters(600, seed=1)
    xt, yt = clusters(400, seed=2)
    spec = ModelSpec.create(norm="none", **SMALL)
    head = build_head(spec, seed=0)
    train_head(head, bound(x), y, epochs=8, lr=1e-2, batch_size=64, seed=0, threads=T)

    def loud(z: torch.Tensor) -> torch.Tensor:
        return z + 10 * torch.randn_like(z)

    result = evaluate_clean_and_noisy(
        head, xt, yt, bound_fn=bound, noise_fn=loud, seed=0, threads=T
    )
    assert result.clean.accuracy >= 0.90, result
    assert result.noisy.accuracy < result.clean.accuracy - 0.3
    # Seeded noisy evaluation is reproducible; with identity noise clean == noisy.
    again = evaluate_clean_and_noisy(head, xt, yt, bound_fn=bound, noise_fn=loud, seed=0, threads=T)
    assert again.noisy.accuracy == result.noisy.accuracy
    same = evaluate_clean_and_noisy(head, xt, yt, bound_fn=bound, noise_fn=lambda z: z, threads=T)
    assert same.clean.accuracy == same.noisy.accuracy == result.clean.accuracy


# -- real MNIST --------------------------------------------------------------------------------------


def _mnist() -> object:
    return importlib.import_module("flnode.learning.datasets")


def test_short_real_mnist_run_of_the_bottleneck_design() -> None:
    """Public pre-training with noise in the loop, then a head on fixed noisy private features.

    Per-sample ε = 30 with the L1 bounding (Laplace scale 2/30), the default spec; small slices so
    the test takes a few seconds. learning.md §4 reports ~94 % with 10,000 public images; with
    1,500 images and 2 epochs ~90 % is typical; the bounds leave room for seed-to-seed variation.
    """
    datasets = _mnist()
    ds = datasets.load_dataset("mnist")  # type: ignore[attr-defined]
    to_tensor, to_labels = datasets.to_tensor, datasets.labels_to_tensor  # type: ignore[attr-defined]
    public_x, public_y = to_tensor(ds.train_images[:1500]), to_labels(ds.train_labels[:1500])
    private_x, private_y = (
        to_tensor(ds.train_images[10_000:12_000]),
        to_labels(ds.train_labels[10_000:12_000]),
    )
    test_x, test_y = to_tensor(ds.test_images[:1000]), to_labels(ds.test_labels[:1000])
    b = 2 / 30

    def laplace(z: torch.Tensor) -> torch.Tensor:
        return z + b * (torch.empty_like(z).exponential_() - torch.empty_like(z).exponential_())

    spec = ModelSpec.create(noise_scale=b)
    model = build_model(spec, seed=0)
    pretrain(
        model,
        public_x,
        public_y,
        public_data=True,
        epochs=2,
        lr=1e-3,
        batch_size=64,
        bound_fn=bound,
        noise_fn=laplace,
        seed=0,
        threads=T,
    )
    # The extractor is frozen from here on: extract the test features once, evaluate heads on them.
    test_features = extract_features(model, test_x, threads=T)
    public_only = evaluate_clean_and_noisy(
        model.head, test_features, test_y, bound_fn=bound, noise_fn=laplace, seed=1, threads=T
    )
    assert public_only.clean.accuracy >= 0.80, public_only

    torch.manual_seed(2)
    released = laplace(bound(extract_features(model, private_x, threads=T)))  # noised once
    head = build_head(spec, seed=1)
    train_head(head, released, private_y, epochs=4, lr=1e-3, batch_size=128, seed=0, threads=T)
    result = evaluate_clean_and_noisy(
        head, test_features, test_y, bound_fn=bound, noise_fn=laplace, seed=1, threads=T
    )
    assert result.clean.accuracy >= 0.85, result
    assert result.noisy.accuracy >= 0.70, result


def test_random_shift_moves_whole_pixels_and_keeps_shape() -> None:
    from flnode.learning.training import RandomShift

    torch.manual_seed(0)
    images = torch.zeros(16, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0  # a square well inside the frame
    shifted = RandomShift(2)(images)
    assert shifted.shape == images.shape
    # Nearest-neighbour shifts by whole pixels: the square's mass is kept, values stay 0/1.
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(shifted, images)  # 16 draws of 25 shifts: some moved
    assert torch.equal(RandomShift(0)(images), images)
