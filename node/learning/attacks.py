"""Attack models: what a Byzantine device may submit, for tests, benchmarks and devnet scenarios.

None of this runs on an honest node. The functions are here (not in tests/) so that the robust
rules of :mod:`flnode.learning.aggregation` are exercised against the same, documented attacks
everywhere: unit tests, ``bench/`` and a devnet with malicious devices.

Update-level attacks take the update a device would honestly submit (``weights``) and, where the
attack is defined relative to it, the round's global model (``reference``), and return a new
state dict; inputs are never modified. Floating tensors are computed in float64 and returned in
their own dtype; integer buffers (``num_batches_tracked``) are copied unchanged, as an attacker gains
nothing from them. The data-level attack (:func:`flip_labels`) is applied to a device's labels
before it trains, so its poison arrives as an ordinary-looking update.

``sign-flip``      :func:`sign_flip`: reflect the update around the global model, ``ref − s·(w −
                   ref)``: the device pushes the model *against* the descent direction (Damaskinos
                   et al., Blanchard et al. use the same "negated gradient" model).
``scale``          :func:`scale_update`: boost the update, ``ref + λ·(w − ref)``; with λ ≈ n this
                   is the model-replacement attack (Bagdasaryan et al., AISTATS 2020), which a plain
                   mean cannot resist; a norm bound or a robust rule can.
``gaussian-noise`` :func:`gaussian_noise`: ``w + N(0, σ²)`` per coordinate, a random (not
                   gradient-aware) Byzantine device, or a broken one.
``free-ride``      :func:`free_ride`: submit the global model unchanged and collect the reward
                   without training (Lin et al., "Free-riders in Federated Learning", 2019). It is
                   not an outlier at all, so distance-based rules do not catch it; reputation has to.
``label-flip``     :func:`flip_labels`: train on labels ``y → C − 1 − y`` (Tolpegin et al.,
                   ESORICS 2020), a data-poisoning attack whose updates look statistically normal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from .aggregation import Weights

__all__ = [
    "ATTACKS",
    "LABEL_MAPPINGS",
    "flip_labels",
    "free_ride",
    "gaussian_noise",
    "scale_update",
    "sign_flip",
]

LABEL_MAPPINGS = ("reverse", "shift")
"""``reverse``: y → C − 1 − y (every class moves, 0↔9, 1↔8, ...); ``shift``: y → (y + 1) mod C."""


def sign_flip(
    weights: Mapping[str, Tensor], reference: Mapping[str, Tensor], scale: float = 1.0
) -> Weights:
    """Reflect the update around ``reference``: ``ref − scale·(w − ref)`` for every float tensor."""
    _check_number("scale", scale)
    return _relative(weights, reference, -float(scale))


def scale_update(
    weights: Mapping[str, Tensor], reference: Mapping[str, Tensor], factor: float
) -> Weights:
    """Scale the update's change by ``factor``: ``ref + factor·(w − ref)`` for every float tensor."""
    _check_number("factor", factor)
    return _relative(weights, reference, float(factor))


def gaussian_noise(
    weights: Mapping[str, Tensor], std: float, generator: torch.Generator
) -> Weights:
    """Add N(0, std²) noise to every float tensor, drawn in sorted key order from ``generator``.

    The generator is required (not optional) so that a test or a benchmark run is reproducible.
    """
    _check_number("std", std)
    if std < 0:
        raise ValueError(f"std must be ≥ 0. Got: {std!r}")
    out: Weights = {}
    for key in sorted(weights):
        t = weights[key]
        if not t.is_floating_point():
            out[key] = t.detach().clone()
            continue
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float64) * float(std)
        out[key] = (t.detach().to("cpu", torch.float64) + noise).to(t.dtype)
    return out


def free_ride(global_weights: Mapping[str, Tensor]) -> Weights:
    """A copy of the global model, submitted as if it were a trained update."""
    return {key: t.detach().clone() for key, t in sorted(global_weights.items())}


def flip_labels(labels: Tensor, n_classes: int = 10, mapping: str = "reverse") -> Tensor:
    """Relabel a device's training labels before it trains (a data-poisoning attack).

    ``labels`` must be an integer tensor with values in ``[0, n_classes)``; the result has the same
    shape and dtype. See :data:`LABEL_MAPPINGS`.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int ≥ 2. Got: {n_classes!r}")
    if mapping not in LABEL_MAPPINGS:
        raise ValueError(f"unknown label mapping {mapping!r}; known: {', '.join(LABEL_MAPPINGS)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor. Got dtype: {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}). Got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    if mapping == "reverse":
        return (n_classes - 1) - labels
    return (labels + 1) % n_classes


ATTACKS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "sign-flip": sign_flip,
        "scale": scale_update,
        "gaussian-noise": gaussian_noise,
        "free-ride": free_ride,
        "label-flip": flip_labels,
    }
)
"""Attack name (as used by tests, benchmarks and devnet scenarios) → function."""


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{name} must be a number. Got: {value!r}")


def _relative(
    weights: Mapping[str, Tensor], reference: Mapping[str, Tensor], factor: float
) -> Weights:
    """``ref + factor·(w − ref)`` for float tensors; integer tensors copied from ``weights``."""
    if set(weights) != set(reference):
        missing = sorted(set(weights) ^ set(reference))
        raise ValueError(f"weights and reference have different tensors: {missing}")
    out: Weights = {}
    for key in sorted(weights):
        w, r = weights[key], reference[key]
        if w.shape != r.shape:
            raise ValueError(f"{key!r}: weights {tuple(w.shape)} vs reference {tuple(r.shape)}")
        if not w.is_floating_point():
            out[key] = w.detach().clone()
            continue
        w64 = w.detach().to("cpu", torch.float64)
        r64 = r.detach().to("cpu", torch.float64)
        out[key] = (r64 + (w64 - r64) * factor).to(w.dtype)
    return out
