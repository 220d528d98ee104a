"""Training loops: the manufacturer's pre-training, the device's head training, evaluation.

Plain synchronous torch, deterministic under a seed; the node runs these in a worker thread.

The privacy story shapes the API (DESIGN.md "Privacy, stated honestly"; learning.md §4):

* :func:`pretrain` trains extractor **and** head, and is meant only for the manufacturer's
  **public** slice. It runs the task's bounding and noise inside the loop, with fresh noise on every
  pass (public data costs no privacy), so the extractor learns features that survive the noise.
  Callers must say ``public_data=True``: an extractor trained on raw private data must never be
  uploaded (unless trained with DP-SGD, which this module does not do), and the flag makes that
  decision visible at every call site.
* :func:`train_head` is the device's local training. It takes the head module alone (a whole
  :class:`~.models.SplitModel` is refused) and **fixed** feature tensors, the device's samples
  already bounded and noised *once* and cached; its optimiser only sees the head's parameters and
  the features are detached, so no gradient can reach an extractor and nothing private escapes
  except through the already-private features (everything after the noise is post-processing).
* :func:`evaluate` / :func:`evaluate_clean_and_noisy` report both accuracies learning.md P3 asks
  for: "clean" (the head on noise-free bounded features: inference on the device itself needs no
  noise) and "noisy" (fresh noise on the test features: what a server that only sees released
  features gets).

Bounding and noise are plain callables ``Tensor → Tensor`` (e.g. a bounding's ``apply`` and a
mechanism's noise function), so this module does not depend on the privacy module's classes.
With the privacy helpers, for example::

    bound_fn = bounding.apply                                     # e.g. L1Normalize()
    noise_fn = functools.partial(mechanism.release, generator=noise_generator(seed))
    spec = ModelSpec.create(coord_lo=bounding.coord_range[0], coord_hi=bounding.coord_range[1],
                            noise_scale=mechanism.scale)          # what the clamping norms need

(a noise function with its own generator is reproducible through that generator; one drawing from
torch's global RNG is reproducible through ``seed``).

Determinism: every loop runs under ``torch.random.fork_rng`` seeded from ``seed`` (dropout and any
noise function drawing from torch's global RNG are reproducible, and the caller's RNG stream is left
untouched); shuffling uses its own generator. Two runs with the same seed, inputs and thread count
give identical weights. ``threads`` calls ``torch.set_num_threads`` (process-wide) unless ``None``;
on a busy 2-core machine 1 thread can be 3–4× faster than 2 (learning.md P6).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FLNodeError
from .models import SplitModel

__all__ = [
    "DEFAULT_THREADS",
    "CleanNoisyResult",
    "EvalResult",
    "FeatureFn",
    "TrainStats",
    "TrainingError",
    "evaluate",
    "evaluate_clean_and_noisy",
    "extract_features",
    "pretrain",
    "set_threads",
    "train_head",
]

DEFAULT_THREADS = 2
FeatureFn = Callable[[Tensor], Tensor]
"""A map of an ``[N, d]`` feature tensor to another (bounding, noise, or both)."""
OptimizerName = Literal["adam", "sgd"]


class TrainingError(FLNodeError, ValueError):
    """Bad arguments to a training or evaluation function, or a run that diverged."""


@dataclass(frozen=True, slots=True)
class TrainStats:
    """What a training run did: mean loss per epoch, samples processed, wall time."""

    epochs: int
    samples_seen: int
    epoch_losses: tuple[float, ...]
    seconds: float

    @property
    def final_loss(self) -> float:
        """Mean training loss of the last epoch (NaN when no epoch ran)."""
        return self.epoch_losses[-1] if self.epoch_losses else math.nan


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy over ``n`` samples."""

    accuracy: float
    loss: float
    n: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CleanNoisyResult:
    """Accuracy on noise-free bounded features (``clean``) and with fresh noise (``noisy``)."""

    clean: EvalResult
    noisy: EvalResult


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; ``None`` leaves the setting alone. Process-wide."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TrainingError(f"threads must be a positive integer or None, got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Feature extraction and evaluation

INFERENCE_BATCH = 256
"""Images per forward pass when extracting features or evaluating. Small enough that a batch's
activations stay in the CPU caches: on 10,000 MNIST images, one thread, ``dp-cnn`` evaluated in
0.25 s at 256 against 0.51 s at 1,000, ``split-cnn`` in 1.07 s against 2.96 s (best of 3-9)."""


def extract_features(
    extractor: nn.Module,
    images: Tensor,
    batch_size: int = INFERENCE_BATCH,
    *,
    threads: int | None = DEFAULT_THREADS,
) -> Tensor:
    """The extractor's raw ``[N, d]`` features of ``images``, without gradients, in eval mode.

    A :class:`SplitModel` may be passed; its extractor is used. The module's train/eval modes are
    restored afterwards. The features are unbounded: bound (and noise) them before release.
    """
    set_threads(threads)
    if isinstance(extractor, SplitModel):
        extractor = extractor.extractor
    _check_inputs(images, None, "images")
    _check_positive_int(batch_size, "batch_size")
    with _mode(extractor, training=False), torch.no_grad():
        parts = [extractor(chunk) for chunk in images.split(batch_size)]
    return torch.cat(parts) if parts else images.new_zeros((0, 0))


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    batch_size: int = INFERENCE_BATCH,
    *,
    transform: FeatureFn | None = None,
    seed: int | None = None,
    threads: int | None = DEFAULT_THREADS,
) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on ``(inputs, labels)``, in eval mode.

    ``model`` is a :class:`SplitModel` (``inputs`` are images; ``transform`` runs between extractor
    and head) or a head (``inputs`` are features; ``transform`` runs on them first). ``transform``
    is where bounding and, for a noisy evaluation, noise go; ``seed`` makes random transforms
    reproducible without touching the caller's RNG.
    """
    set_threads(threads)
    start = time.perf_counter()
    labels = _check_inputs(inputs, labels, "inputs")
    _check_positive_int(batch_size, "batch_size")
    correct = 0
    loss_sum = 0.0
    with _mode(model, training=False), torch.no_grad(), _seeded(seed, "evaluate"):
        for x, y in zip(inputs.split(batch_size), labels.split(batch_size), strict=True):
            logits = _forward(model, x, transform)
            _check_labels(y, logits)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    n = int(labels.shape[0])
    return EvalResult(
        accuracy=correct / n, loss=loss_sum / n, n=n, seconds=time.perf_counter() - start
    )


def evaluate_clean_and_noisy(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    bound_fn: FeatureFn | None,
    noise_fn: FeatureFn,
    batch_size: int = INFERENCE_BATCH,
    seed: int | None = None,
    threads: int | None = DEFAULT_THREADS,
) -> CleanNoisyResult:
    """Evaluate on bounded features without noise ("clean") and with fresh noise ("noisy").

    ``inputs`` are images for a :class:`SplitModel`, raw (unbounded) extractor features for a head.
    Report both (learning.md P3): clean is what the device gets running the model itself; noisy is
    what anyone seeing only released features gets.
    """

    def clean(z: Tensor) -> Tensor:
        return bound_fn(z) if bound_fn is not None else z

    def noisy(z: Tensor) -> Tensor:
        return noise_fn(clean(z))

    kw = {"batch_size": batch_size, "seed": seed, "threads": threads}
    return CleanNoisyResult(
        clean=evaluate(model, inputs, labels, transform=clean, **kw),  # type: ignore[arg-type]
        noisy=evaluate(model, inputs, labels, transform=noisy, **kw),  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------------------------
# Training


def pretrain(
    model: SplitModel,
    images: Tensor,
    labels: Tensor,
    *,
    public_data: bool,
    epochs: int,
    lr: float,
    batch_size: int,
    noise_fn: FeatureFn | None,
    bound_fn: FeatureFn | None,
    seed: int,
    optimizer: OptimizerName = "adam",
    weight_decay: float = 0.0,
    threads: int | None = DEFAULT_THREADS,
    augment: FeatureFn | None = None,
) -> TrainStats:
    """The manufacturer's pre-training of extractor + head on its PUBLIC slice.

    Each batch runs ``head(noise_fn(bound_fn(extractor(x))))`` with fresh noise on every pass, so
    the extractor learns features that survive the task's bounding and noise (learning.md §4: the
    gradient flows back through the additive noise). ``public_data`` must be ``True``: this trains
    the extractor on raw data, which is only acceptable for data that is public (module docstring).
    A trailing batch of a single sample is skipped (BatchNorm cannot train on one sample).
    ``augment`` (e.g. :class:`RandomShift`) transforms each batch of images first: with a public
    slice of a few thousand images, augmentation is what keeps the extractor from over-fitting.
    """
    if public_data is not True:
        raise TrainingError(
            "pretrain trains the extractor on raw data and is for the manufacturer's public "
            "slice only (public_data=True); a device trains its head with train_head on "
            "bounded, noised features"
        )
    if not isinstance(model, SplitModel):
        raise TrainingError(f"pretrain needs a SplitModel, got {type(model).__name__}")

    def step_forward(x: Tensor) -> Tensor:
        if augment is not None:
            x = augment(x)
        z = model.extractor(x)
        if bound_fn is not None:
            b = bound_fn(z)
            if not isinstance(b, Tensor) or b.shape != z.shape:
                raise TrainingError(f"bound_fn changed the feature shape {tuple(z.shape)}")
            z = b
        if noise_fn is not None:
            n = noise_fn(z)
            if not isinstance(n, Tensor) or n.shape != z.shape:
                raise TrainingError(f"noise_fn changed the feature shape {tuple(z.shape)}")
            z = n
        return model.head(z)

    return _train(
        model,
        list(model.parameters()),
        step_forward,
        images,
        labels,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        optimizer=optimizer,
        weight_decay=weight_decay,
        threads=threads,
        what="pretrain",
    )


class RandomShift:
    """Shift each image by a random whole number of pixels (at most ``max_shift`` each way).

    The classic augmentation for MNIST-like digits; vacated pixels are zero (the background).
    Draws from torch's global RNG, which :func:`pretrain` seeds, so runs stay reproducible.
    """

    def __init__(self, max_shift: int = 2) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0. Got: {max_shift}")
        self.max_shift = max_shift

    def __call__(self, images: Tensor) -> Tensor:
        if self.max_shift == 0:
            return images
        n, _, h, w = images.shape
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (n, 2))
        theta = torch.zeros(n, 2, 3, dtype=images.dtype)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = -2.0 * shifts[:, 0].to(images.dtype) / w
        theta[:, 1, 2] = -2.0 * shifts[:, 1].to(images.dtype) / h
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )


def train_head(
    head: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: OptimizerName = "adam",
    weight_decay: float = 0.0,
    threads: int | None = DEFAULT_THREADS,
) -> TrainStats:
    """The device's local training of the head on FIXED features (already bounded and noised).

    ``features`` are the device's released features, noised once per sample and cached (so ε is
    spent once, not once per epoch; learning.md P1). Only ``head``'s parameters are optimised; a
    :class:`SplitModel` is refused so that an extractor can never be trained here by mistake.
    A trailing batch of a single sample is skipped (BatchNorm cannot train on one sample).
    """
    if isinstance(head, SplitModel):
        raise TrainingError(
            "train_head trains a head only; pass model.head (an extractor must never be "
            "trained on private data)"
        )
    if not isinstance(head, nn.Module):
        raise TrainingError(f"head must be an nn.Module, got {type(head).__name__}")
    _check_inputs(features, labels, "features")
    if features.ndim != 2:
        raise TrainingError(f"features must be [N, d], got shape {tuple(features.shape)}")
    fixed = features.detach()
    return _train(
        head,
        list(head.parameters()),
        head,
        fixed,
        labels,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        optimizer=optimizer,
        weight_decay=weight_decay,
        threads=threads,
        what="train_head",
    )


def _train(
    module: nn.Module,
    params: list[nn.Parameter],
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: str,
    weight_decay: float,
    threads: int | None,
    what: str,
) -> TrainStats:
    set_threads(threads)
    start = time.perf_counter()
    labels = _check_inputs(inputs, labels, "inputs")
    _check_nonnegative_int(epochs, "epochs")
    _check_positive_int(batch_size, "batch_size")
    if batch_size < 2:
        raise TrainingError("batch_size must be at least 2 (BatchNorm cannot train on one sample)")
    _check_seed(seed)
    if (
        isinstance(lr, bool)
        or not isinstance(lr, int | float)
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise TrainingError(f"lr must be a positive finite number, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise TrainingError(f"weight_decay must be finite and >= 0, got {weight_decay!r}")
    n = int(inputs.shape[0])
    if n < 2:
        raise TrainingError(f"{what} needs at least 2 samples, got {n}")
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    shuffle = torch.Generator().manual_seed(_derive(seed, what + ":shuffle"))

    losses: list[float] = []
    seen = 0
    with _mode(module, training=True), _seeded(seed, what):
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=shuffle)
            total, count = 0.0, 0
            for idx in perm.split(batch_size):
                if idx.numel() < 2:
                    continue  # a lone trailing sample: BatchNorm cannot train on it
                x, y = inputs[idx], labels[idx]
                logits = forward(x)
                _check_labels(y, logits)
                loss = F.cross_entropy(logits, y)
                if not bool(torch.isfinite(loss)):
                    raise TrainingError(
                        f"{what}: the loss became non-finite in epoch {epoch + 1} "
                        "(NaN/inf in the inputs or the noise, or lr too large)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().item() * idx.numel()
                count += idx.numel()
            losses.append(total / count)
            seen += count
    return TrainStats(
        epochs=epochs,
        samples_seen=seen,
        epoch_losses=tuple(losses),
        seconds=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------------------------
# Helpers


def _forward(model: nn.Module, x: Tensor, transform: FeatureFn | None) -> Tensor:
    if isinstance(model, SplitModel):
        return model(x, transform)
    return model(transform(x) if transform is not None else x)


def _make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if not params:
        raise TrainingError("the module has no parameters to train")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise TrainingError(f"unknown optimizer {name!r}; known: adam, sgd")


def _check_inputs(inputs: object, labels: object, name: str) -> Tensor:
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.ndim < 2:
        raise TrainingError(
            f"{name} must be a float tensor [N, ...] (normalise uint8 images first), got "
            f"{type(inputs).__name__} {getattr(inputs, 'dtype', '')} "
            f"{tuple(getattr(inputs, 'shape', ()))}"
        )
    if labels is None:
        return inputs
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise TrainingError("labels must be a 1-D integer tensor")
    if labels.shape[0] != inputs.shape[0]:
        raise TrainingError(f"{inputs.shape[0]} {name} but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise TrainingError(f"no {name}: nothing to train or evaluate on")
    return labels.long()


def _check_labels(y: Tensor, logits: Tensor) -> None:
    if bool((y < 0).any()) or bool((y >= logits.shape[1]).any()):
        raise TrainingError(f"labels must be in [0, {logits.shape[1]}) for this model")


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingError(f"{name} must be a positive integer, got {value!r}")


def _check_nonnegative_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TrainingError(f"{name} must be a non-negative integer, got {value!r}")


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise TrainingError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def _derive(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"flnode-train:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def _seeded(seed: int | None, purpose: str) -> Iterator[None]:
    """Seed torch's global RNG for the block and restore the caller's stream afterwards."""
    if seed is None:
        yield
        return
    _check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive(seed, purpose))
        yield


@contextmanager
def _mode(module: nn.Module, *, training: bool) -> Iterator[None]:
    """Put ``module`` in train/eval mode for the block; restore every submodule's mode after."""
    saved = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, was in saved:
            m.training = was
