"""Noise mechanisms: Laplace (ε-DP) and the analytic Gaussian ((ε, δ)-DP), plus their RNG.

A mechanism adds noise to an already *bounded* ``[N, d]`` feature tensor (see
:mod:`flnode.learning.bounding`). Its ``epsilon`` is always the guarantee for one sample's whole
released vector given the sensitivity it was built with; how a stated ε (per sample or the paper's
per feature) becomes that number is decided in :mod:`flnode.learning.privacy`, never here.

Laplace
    Independent Laplace(0, b) noise on every coordinate with ``b = Δ₁/ε`` is ε-DP for a vector of
    L1 sensitivity Δ₁. The sample is drawn as ``b·(E₁ − E₂)`` with E₁, E₂ ~ Exponential(1): the
    difference of two exponentials is exactly Laplace, and unlike the textbook inverse-CDF sampler
    ``−b·sign(u)·log1p(−2|u|)`` it has no input that yields ``inf`` (learning.md P2: ``rand()``
    returning exactly 0 makes u = −0.5, about 9 times in 150 M draws, and one inf turns a whole
    model into NaN). Noise is checked for finiteness anyway and :class:`NoiseError` raised.

Gaussian
    N(0, σ²) noise on every coordinate of a vector of L2 sensitivity Δ₂. σ comes from the
    *analytic Gaussian mechanism* of Balle & Wang ("Improving the Gaussian Mechanism for
    Differential Privacy: Analytical Calibration and Optimal Denoising", ICML 2018, Theorem 8 and
    Algorithm 1): the mechanism is (ε, δ)-DP if and only if

        Φ(Δ/(2σ) − εσ/Δ) − e^ε · Φ(−Δ/(2σ) − εσ/Δ) ≤ δ,

    and the left side decreases in σ, so the smallest such σ is found by bisection. The textbook
    ``σ = Δ·√(2 ln(1.25/δ))/ε`` (Dwork & Roth, Theorem A.1) is only proven for ε < 1 and is larger
    than needed everywhere; it is exposed as :attr:`GaussianMechanism.textbook_sigma` for comparison.
    Φ is evaluated in log space (``math.erfc`` plus an asymptotic tail) so that large ε or tiny δ
    neither overflow ``e^ε`` nor lose the difference to cancellation. No SciPy needed.

Randomness
    :func:`noise_generator` seeds a torch generator from the operating system's entropy
    (``secrets.randbits(63)``) unless a seed is given; fixed seeds are for tests only, since anyone
    who knows the seed can subtract the noise.

Floating-point caveat (not fixed here)
    These are the *textbook* mechanisms run in floating point, and that is weaker than the theorem.
    Mironov ("On Significance of the Least Significant Bits for Differential Privacy", CCS 2012)
    showed that floating-point Laplace samples are not spread over all doubles: which low-order bit
    patterns ``z + noise`` can take depends on ``z``, so an observer of the released value can tell
    neighbouring inputs apart, in his experiments often exactly, whatever ε says. The same holds for
    float Gaussian noise, and the noise's tails are cut off where the underlying uniform runs out of
    bits. The known fix is Mironov's *snapping mechanism* (clamp, add noise from a carefully
    computed log, round to a power-of-two grid, clamp again), or discrete Laplace/Gaussian noise on
    a fixed grid (Canonne, Kamath & Steinke 2020). **flnode implements neither.** Moreover the
    generator is torch's Mersenne Twister, which is not a cryptographic PRNG. The ε flnode reports
    is the ε of the ideal real-valued mechanism; against an adversary who inspects the low-order
    bits of the released floats, or attacks the PRNG, it does not hold. DESIGN.md's "Privacy,
    stated honestly" should be read with this in mind.
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import FLNodeError

# Relative width of the final σ bracket in the analytic Gaussian search: σ is at most this much
# (relatively) larger than the smallest σ that satisfies the condition.
SIGMA_RTOL = 1e-12
_MAX_BISECTIONS = 400


class NoiseError(FLNodeError, ArithmeticError):
    """A noise draw produced NaN or infinity; the release is abandoned rather than sent."""


def noise_generator(seed: int | None = None) -> torch.Generator:
    """A CPU torch generator for DP noise: OS entropy when ``seed`` is None, else ``seed``.

    Pass a seed only in tests and benchmarks; released noise must come from an unknown seed.
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(secrets.randbits(63) if seed is None else seed)
    return g


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive finite number. Got: {epsilon!r}")


def _check_sensitivity(sensitivity: float, which: str) -> None:
    if not (
        isinstance(sensitivity, int | float) and math.isfinite(sensitivity) and sensitivity > 0
    ):
        raise ValueError(
            f"the {which} sensitivity must be a positive finite number. Got: {sensitivity!r}"
        )


def _require_finite(t: Tensor, what: str) -> Tensor:
    if not bool(torch.isfinite(t).all()):
        raise NoiseError(f"{what} contains NaN or infinity; nothing was released")
    return t


class Mechanism(ABC):
    """Adds calibrated noise to a bounded feature tensor. Implementations are frozen dataclasses.

    ``epsilon`` and ``delta`` are the guarantee of one release of one sample's whole vector
    (``delta`` is 0 for pure ε-DP); ``scale`` is the noise scale per coordinate.
    """

    name: ClassVar[str]
    epsilon: float
    delta: float

    @property
    @abstractmethod
    def scale(self) -> float:
        """The noise scale per coordinate: Laplace b, or Gaussian σ."""

    @abstractmethod
    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Float64 noise of ``shape``."""

    def noise(
        self,
        shape: Sequence[int],
        generator: torch.Generator,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Fresh noise of ``shape``, drawn in float64 and returned as ``dtype``.

        Raises :class:`NoiseError` if any value is not finite (which the samplers are not expected to produce;
        the check is there so that a regression can never silently poison a model).
        """
        shape = tuple(int(s) for s in shape)
        return _require_finite(self._draw(shape, generator), f"{self.name} noise").to(dtype)

    def release(self, z_bounded: Tensor, generator: torch.Generator) -> Tensor:
        """``z_bounded`` plus fresh noise, in ``z_bounded``'s dtype.

        The input must already be bounded with the sensitivity this mechanism was built for; the
        mechanism cannot check that, :class:`flnode.learning.privacy.FeatureRelease` does.
        """
        if not isinstance(z_bounded, Tensor) or not z_bounded.is_floating_point():
            raise ValueError("release() needs a float tensor of bounded features")
        _require_finite(z_bounded, "the bounded features")
        noisy = z_bounded.to(torch.float64) + self._draw(tuple(z_bounded.shape), generator)
        return _require_finite(noisy, f"{self.name} release").to(z_bounded.dtype)

    @property
    def spec(self) -> str:
        """A stable text description with the parameters that determine the noise."""
        return f"{self.name}(epsilon={self.epsilon!r}, delta={self.delta!r}, scale={self.scale!r})"


@dataclass(frozen=True, slots=True)
class LaplaceMechanism(Mechanism):
    """ε-DP for a vector of L1 sensitivity ``l1_sensitivity``: Laplace(0, Δ₁/ε) per coordinate."""

    epsilon: float
    l1_sensitivity: float
    name: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        _check_epsilon(self.epsilon)
        _check_sensitivity(self.l1_sensitivity, "L1")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "l1_sensitivity", float(self.l1_sensitivity))

    @property
    def delta(self) -> float:  # type: ignore[override]
        """Always 0: the Laplace mechanism is pure ε-DP."""
        return 0.0

    @property
    def scale(self) -> float:
        """b = Δ₁/ε; the mean of |noise| per coordinate is b, its variance 2b²."""
        return self.l1_sensitivity / self.epsilon

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        e1 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        e2 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        return (e1 - e2).mul_(self.scale)


@dataclass(frozen=True, slots=True)
class GaussianMechanism(Mechanism):
    """(ε, δ)-DP for a vector of L2 sensitivity ``l2_sensitivity``, σ by Balle & Wang's analytic
    calibration (the smallest σ that satisfies their exact condition)."""

    epsilon: float
    delta: float
    l2_sensitivity: float
    sigma: float = field(init=False, compare=False)
    name: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        _check_epsilon(self.epsilon)
        _check_delta(self.delta)
        _check_sensitivity(self.l2_sensitivity, "L2")
        for attr in ("epsilon", "delta", "l2_sensitivity"):
            object.__setattr__(self, attr, float(getattr(self, attr)))
        sigma = analytic_gaussian_sigma(self.epsilon, self.delta, self.l2_sensitivity)
        object.__setattr__(self, "sigma", sigma)

    @property
    def scale(self) -> float:
        """σ, the standard deviation of the noise per coordinate."""
        return self.sigma

    @property
    def textbook_sigma(self) -> float:
        """Δ₂·√(2 ln(1.25/δ))/ε: the classic calibration, proven only for ε < 1; for comparison."""
        return textbook_gaussian_sigma(self.epsilon, self.delta, self.l2_sensitivity)

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return torch.randn(shape, dtype=torch.float64, generator=generator).mul_(self.sigma)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ValueError(f"the Gaussian mechanism needs 0 < delta < 1. Got: {delta!r}")


# -- the analytic Gaussian mechanism ------------------------------------------------------------

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_ndtr(x: float) -> float:
    """log Φ(x) for the standard normal CDF Φ, accurate from x = −∞ to +∞."""
    if x > 0:
        return math.log1p(-0.5 * math.erfc(x / math.sqrt(2)))
    if x > -30:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2)))
    # Asymptotic expansion of the lower tail (erfc underflows near x = −38); at x ≤ −30 the
    # truncation error is below 1e-11 relative.
    x2 = x * x
    series = 1 - 1 / x2 + 3 / x2**2 - 15 / x2**3 + 105 / x2**4
    return -x2 / 2 - math.log(-x) - _LOG_SQRT_2PI + math.log(series)


def gaussian_delta(sigma: float, epsilon: float, l2_sensitivity: float) -> float:
    """The smallest δ for which N(0, σ²) noise at L2 sensitivity Δ is (ε, δ)-DP (Balle & Wang,
    Theorem 8): ``Φ(Δ/(2σ) − εσ/Δ) − e^ε Φ(−Δ/(2σ) − εσ/Δ)``.

    Computed as ``Φ(a)·(1 − exp(ε + log Φ(b) − log Φ(a)))`` so neither term overflows and the
    difference keeps its relative precision when both terms are tiny.
    """
    a = l2_sensitivity / (2 * sigma) - epsilon * sigma / l2_sensitivity
    b = -l2_sensitivity / (2 * sigma) - epsilon * sigma / l2_sensitivity
    log_pa = _log_ndtr(a)
    log_ratio = epsilon + _log_ndtr(b) - log_pa
    if log_ratio >= 0:  # only rounding can get here: the exact value is never negative
        return 0.0
    return math.exp(log_pa) * -math.expm1(log_ratio)


def textbook_gaussian_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """Δ·√(2 ln(1.25/δ))/ε (Dwork & Roth, Theorem A.1; proven for ε < 1 only)."""
    return l2_sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def analytic_gaussian_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """The smallest σ (to a relative :data:`SIGMA_RTOL`) with ``gaussian_delta(σ) ≤ δ``.

    The returned σ always satisfies the condition: the search keeps a bracket ``lo < σ* ≤ hi``
    where ``hi`` satisfies it and ``lo`` does not, halves it geometrically, and returns ``hi``.
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    _check_sensitivity(l2_sensitivity, "L2")

    def ok(sigma: float) -> bool:
        return gaussian_delta(sigma, epsilon, l2_sensitivity) <= delta

    hi = textbook_gaussian_sigma(epsilon, delta, l2_sensitivity)
    for _ in range(_MAX_BISECTIONS):
        if ok(hi):
            break
        hi *= 2
    lo = hi
    for _ in range(_MAX_BISECTIONS):
        if not ok(lo):
            break
        lo /= 2
    if not ok(hi) or ok(lo):  # pragma: no cover - cannot happen for valid parameters
        raise ArithmeticError(
            f"could not bracket the analytic Gaussian σ for ε={epsilon}, δ={delta}, Δ={l2_sensitivity}"
        )
    for _ in range(_MAX_BISECTIONS):
        if hi / lo - 1 <= SIGMA_RTOL:
            break
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
