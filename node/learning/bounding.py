"""Per-sample bounding of feature vectors, the step that gives a release its sensitivity.

Differential privacy needs a bound on how much one sample can change what is released. A feature
extractor's output is unbounded, so each sample's feature vector ``z`` (a row of an ``[N, d]``
tensor) is first mapped into a known set; the *sensitivity* of the release is the largest distance
between the images of any two samples (replace-one neighbouring, which is what a device releasing
its own samples' features needs):

================  =============================  ==============  ==============  ============
name              map                            L1 sensitivity  L2 sensitivity  coord range
================  =============================  ==============  ==============  ============
``l1``            z / ‖z‖₁                       2               2               [-1, 1]
``l2``            z / ‖z‖₂                       2·√d            2               [-1, 1]
``clip-l1``       z · min(1, c / ‖z‖₁)           2c              2c              [-c, c]
``clip-l2``       z · min(1, c / ‖z‖₂)           2c·√d           2c              [-c, c]
``minmax``        (z − min z) / (max z − min z)  d               √d              [0, 1]
================  =============================  ==============  ==============  ============

The L1 sensitivity calibrates the Laplace mechanism, the L2 sensitivity the Gaussian one; the
coordinate range is what a later, DP-aware normalisation may clamp noisy values back into (pure
post-processing, so free). ``minmax`` is the paper's bounding (each coordinate in [0, 1], so each
coordinate alone has sensitivity 1, but the whole vector has L1 sensitivity d); the normalisations
are learning.md §4's low-dimensional bottleneck design.

The bounds hold for *every* input, including degenerate ones: a zero vector stays zero under
``l1``/``l2`` (its norm is below the guard, so nothing is divided by it), and an all-equal vector
maps to zeros under ``minmax``. Those images lie inside the bounded set, so the sensitivities above
still hold. Inputs with NaN or infinity are refused: their image would not be bounded at all.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

# Norms (or ranges) below this are treated as zero: the vector is left as it is (l1, l2) or mapped
# to zeros (minmax) instead of being divided by something that rounds to zero. Far below any real
# feature scale, far above float32's smallest normal number (1.2e-38).
NORM_GUARD = 1e-12


def _check_features(z: Tensor) -> None:
    if not isinstance(z, Tensor) or z.ndim != 2 or not z.is_floating_point():
        raise ValueError(
            "features must be a float tensor of shape [N, d]. Got: "
            f"{type(z).__name__} {getattr(z, 'dtype', '')} {tuple(getattr(z, 'shape', ()))}"
        )
    if z.shape[1] == 0:
        raise ValueError("features must have at least one coordinate (d >= 1)")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("features contain NaN or infinity; they cannot be bounded")


def _check_dim(d: int) -> None:
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"the feature dimension d must be a positive integer. Got: {d!r}")


class Bounding(ABC):
    """Maps each row of an ``[N, d]`` tensor into a bounded set with a known sensitivity.

    Implementations are frozen dataclasses, so a bounding is a value: two equal boundings bound
    the same way, and :attr:`spec` names it in ledgers and cache keys.
    """

    name: ClassVar[str]

    @abstractmethod
    def _apply(self, z: Tensor) -> Tensor: ...

    def apply(self, z: Tensor) -> Tensor:
        """Bound each row of ``z`` (shape ``[N, d]``, finite floats); returns a new tensor."""
        _check_features(z)
        return self._apply(z)

    @abstractmethod
    def l1_sensitivity(self, d: int) -> float:
        """The largest L1 distance between the bounded images of any two d-dim vectors."""

    @abstractmethod
    def l2_sensitivity(self, d: int) -> float:
        """The largest L2 distance between the bounded images of any two d-dim vectors."""

    @property
    @abstractmethod
    def coord_range(self) -> tuple[float, float]:
        """The interval ``(lo, hi)`` every bounded coordinate lies in."""

    @property
    def coord_sensitivity(self) -> float:
        """How much one coordinate alone can change: the width of :attr:`coord_range`.

        This is the sensitivity of the paper's per-feature convention, where each coordinate
        is counted as its own query.
        """
        lo, hi = self.coord_range
        return hi - lo

    @property
    def spec(self) -> str:
        """A stable text name including parameters, e.g. ``"clip-l2(c=1.0)"``."""
        return self.name


@dataclass(frozen=True, slots=True)
class L1Normalize(Bounding):
    """``z / ‖z‖₁``: unit L1 norm, so any two images are at most 2 apart in L1 (and in L2).

    The Laplace mechanism's natural partner: noise scale ``2/ε`` whatever d is.
    """

    name: ClassVar[str] = "l1"

    def _apply(self, z: Tensor) -> Tensor:
        norm = z.abs().sum(dim=1, keepdim=True)
        return z / norm.clamp_min(NORM_GUARD)

    def l1_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0

    def l2_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0  # ‖x − y‖₂ ≤ ‖x‖₂ + ‖y‖₂ ≤ ‖x‖₁ + ‖y‖₁ = 2

    @property
    def coord_range(self) -> tuple[float, float]:
        return (-1.0, 1.0)


@dataclass(frozen=True, slots=True)
class L2Normalize(Bounding):
    """``z / ‖z‖₂``: unit L2 norm, L2 sensitivity 2; the Gaussian mechanism's natural partner.

    Its L1 sensitivity is 2·√d (reached by ``x = (1, ..., 1)/√d`` and ``y = −x``), so pairing it
    with the Laplace mechanism wastes noise as d grows.
    """

    name: ClassVar[str] = "l2"

    def _apply(self, z: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(z, ord=2, dim=1, keepdim=True)
        return z / norm.clamp_min(NORM_GUARD)

    def l1_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0 * math.sqrt(d)

    def l2_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0

    @property
    def coord_range(self) -> tuple[float, float]:
        return (-1.0, 1.0)


def _check_clip(c: float) -> None:
    if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
        raise ValueError(f"the clipping norm c must be a positive finite number. Got: {c!r}")


@dataclass(frozen=True, slots=True)
class _Clip(Bounding):
    """Shared by the clipping boundings: the clip norm ``c`` bounds every coordinate too."""

    c: float = 1.0

    def __post_init__(self) -> None:
        _check_clip(self.c)

    @property
    def coord_range(self) -> tuple[float, float]:
        return (-float(self.c), float(self.c))

    @property
    def spec(self) -> str:
        return f"{self.name}(c={float(self.c)!r})"


@dataclass(frozen=True, slots=True)
class ClipL1(_Clip):
    """Scale ``z`` down to L1 norm ``c`` if it is longer; shorter vectors pass unchanged.

    Unlike normalisation it keeps the magnitude of small vectors, at the price of a tuning knob.
    """

    name: ClassVar[str] = "clip-l1"

    def _apply(self, z: Tensor) -> Tensor:
        norm = z.abs().sum(dim=1, keepdim=True)
        return z * (self.c / norm.clamp_min(NORM_GUARD)).clamp_max(1.0)

    def l1_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0 * self.c

    def l2_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0 * self.c  # ‖x‖₂ ≤ ‖x‖₁ ≤ c


@dataclass(frozen=True, slots=True)
class ClipL2(_Clip):
    """Scale ``z`` down to L2 norm ``c`` if it is longer (the DP-SGD per-example clip, on features)."""

    name: ClassVar[str] = "clip-l2"

    def _apply(self, z: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(z, ord=2, dim=1, keepdim=True)
        return z * (self.c / norm.clamp_min(NORM_GUARD)).clamp_max(1.0)

    def l1_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0 * self.c * math.sqrt(d)

    def l2_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return 2.0 * self.c


@dataclass(frozen=True, slots=True)
class MinMax(Bounding):
    """Per-sample min-max scaling to [0, 1], the bounding the paper's prototype uses.

    Each coordinate lies in [0, 1], so one coordinate changes by at most 1 (the paper's Δ = 1 per
    feature), but the whole vector changes by up to d in L1 (x with a single 0 and y = 1 − x) and
    √d in L2. An all-equal row (e.g. all zeros after a ReLU) has ``max − min = 0``: the denominator
    is guarded by :data:`NORM_GUARD` and the row maps to zeros, which stays inside [0, 1].
    """

    name: ClassVar[str] = "minmax"

    def _apply(self, z: Tensor) -> Tensor:
        lo = z.amin(dim=1, keepdim=True)
        width = z.amax(dim=1, keepdim=True) - lo
        # Rounding can push (z − lo)/width a hair above 1; clamp keeps the stated range exact.
        return ((z - lo) / width.clamp_min(NORM_GUARD)).clamp(0.0, 1.0)

    def l1_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return float(d)

    def l2_sensitivity(self, d: int) -> float:
        _check_dim(d)
        return math.sqrt(d)

    @property
    def coord_range(self) -> tuple[float, float]:
        return (0.0, 1.0)


BOUNDINGS: dict[str, type[Bounding]] = {
    cls.name: cls for cls in (L1Normalize, L2Normalize, ClipL1, ClipL2, MinMax)
}
"""Bounding classes by name: ``"l1"``, ``"l2"``, ``"clip-l1"``, ``"clip-l2"``, ``"minmax"``."""


def get_bounding(name: str, *, c: float | None = None) -> Bounding:
    """The bounding called ``name``; ``c`` is the clipping norm of ``clip-l1``/``clip-l2`` only.

    A clip without ``c``, or ``c`` for a bounding that has no clipping norm, is refused rather than
    silently defaulted or ignored: the norm sets the sensitivity, so it must be chosen on purpose.
    """
    try:
        cls = BOUNDINGS[name]
    except KeyError:
        raise ValueError(
            f"unknown bounding {name!r}; expected one of {', '.join(sorted(BOUNDINGS))}"
        ) from None
    if cls in (ClipL1, ClipL2):
        if c is None:
            raise ValueError(f"bounding {name!r} needs a clipping norm c")
        return cls(c=c)  # type: ignore[call-arg]
    if c is not None:
        raise ValueError(f"bounding {name!r} takes no clipping norm (got c={c!r})")
    return cls()
