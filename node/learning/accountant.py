"""Privacy accounting: how the releases of one device on one task add up, per sample.

A device can release three kinds of things derived from a private sample, and each has a privacy
**curve** that describes it exactly enough to compose:

* :class:`LaplaceCurve` — a Laplace feature release, pure ε-DP (per sample, whole vector);
* :class:`GaussianCurve` — a Gaussian feature release with noise multiplier z = σ/Δ₂;
* :class:`SubsampledGaussianCurve` — DP-SGD steps: Poisson sampling at rate q, clipping norm C,
  Gaussian noise σ = z·C, repeated ``steps`` times;
* a release known only by its (ε, δ) (:func:`compose` takes it as a plain :class:`EpsDelta`).

Composition (the rule the ledger uses, and the one ``ARCHITECTURE.md`` documents)
    The total ε at the budget's δ is the **smaller** of two bounds, both valid, so their minimum
    is valid too:

    1. *basic*: (Σεᵢ, Σδᵢ) over all releases, usable when Σδᵢ ≤ δ;
    2. *Rényi*: every release with a curve is composed in Rényi DP (RDP of a composition is the
       sum of the RDPs, order by order; Mironov 2017) and converted to (ε_R, δ_R) with the
       conversion of Balle et al. 2020 (Theorem 21), which Opacus also uses; releases without a
       curve are added on top by basic composition: ε = ε_R + Σεⱼ at δ_R = δ − Σδⱼ.

    With a budget δ of 0 only the basic bound exists. RDP curves used:

    * Gaussian with multiplier z: α / (2z²) (Mironov 2017, Prop. 7);
    * Laplace with ε = Δ₁/b: (1/(α−1))·log(α/(2α−1)·e^{(α−1)ε} + (α−1)/(2α−1)·e^{−αε})
      (Mironov 2017, Prop. 6, for one coordinate). For a d-dimensional release with L1
      sensitivity Δ₁ the divergence is a sum over coordinates of that convex function of each
      coordinate's shift; a convex function that is 0 at 0 is superadditive, so the sum is at most
      the one-coordinate value at the total shift Δ₁/b = ε. It is also never above ε (pure DP);
    * sampled Gaussian: Opacus' ``compute_rdp`` (Mironov, Talwar & Zhang 2019).

    The orders searched are Opacus' defaults extended up to 256, because at ε ≈ 10 the best order
    is often beyond Opacus' largest (63).

Everything here is arithmetic: no state, no I/O. :class:`~.ledger.PrivacyLedger` keeps the entries
and uses :func:`compose`; :func:`calibrate_noise_multiplier` finds the DP-SGD noise that makes a
planned run fit the budget *together with* what was already released.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import FLNodeError

ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [64, 72, 80, 96, 112, 128, 160, 192, 256]
)
"""Rényi orders α searched when converting RDP to (ε, δ)."""


@dataclass(frozen=True, slots=True)
class EpsDelta:
    """An (ε, δ) pair: a budget, an amount spent, a cost, or what remains."""

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number. Got: {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and non-negative. Got: {value!r}")
            object.__setattr__(self, name, float(value))
        if self.delta >= 1:
            raise ValueError(f"delta must be below 1. Got: {self.delta!r}")

    @classmethod
    def of(cls, value: EpsDelta | tuple[float, float]) -> EpsDelta:
        """Accept an :class:`EpsDelta` or an ``(epsilon, delta)`` tuple."""
        if isinstance(value, EpsDelta):
            return value
        epsilon, delta = value
        return cls(epsilon, delta)

    def __str__(self) -> str:
        return f"ε={self.epsilon:g}, δ={self.delta:g}"


class AccountingError(FLNodeError, ValueError):
    """A curve or a composition request is malformed (what is wrong is in the message)."""


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AccountingError(f"{name} must be a number. Got: {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise AccountingError(f"{name} must be finite and positive. Got: {value!r}")
    return float(value)


class Curve:
    """A mechanism's privacy curve: its RDP at every order, and its standalone (ε, δ)."""

    kind: ClassVar[str]

    def rdp(self, orders: Sequence[float] = ORDERS) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def standalone(self, delta: float) -> EpsDelta:
        """The (ε, δ) of this release alone (what basic composition charges for it)."""
        return EpsDelta(rdp_to_epsilon(self.rdp(), delta), delta)


@dataclass(frozen=True, slots=True)
class LaplaceCurve(Curve):
    """A Laplace release that is ε-DP for one sample's whole vector."""

    epsilon: float
    kind: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _positive("epsilon", self.epsilon))

    def rdp(self, orders: Sequence[float] = ORDERS) -> np.ndarray:
        a = np.asarray(orders, dtype=np.float64)
        e = self.epsilon
        # log(α/(2α−1)·e^{(α−1)ε} + (α−1)/(2α−1)·e^{−αε}), computed in log space (ε·α can be 10³).
        log_terms = np.logaddexp(
            np.log(a / (2 * a - 1)) + (a - 1) * e, np.log((a - 1) / (2 * a - 1)) - a * e
        )
        return np.minimum(log_terms / (a - 1), e)

    def standalone(self, delta: float) -> EpsDelta:
        return EpsDelta(self.epsilon, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"curve": self.kind, "epsilon": self.epsilon}


@dataclass(frozen=True, slots=True)
class GaussianCurve(Curve):
    """A Gaussian release with noise multiplier z = σ / Δ₂ (one release, no sampling)."""

    noise_multiplier: float
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier)
        )

    def rdp(self, orders: Sequence[float] = ORDERS) -> np.ndarray:
        return np.asarray(orders, dtype=np.float64) / (2 * self.noise_multiplier**2)

    def to_dict(self) -> dict[str, Any]:
        return {"curve": self.kind, "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True, slots=True)
class SubsampledGaussianCurve(Curve):
    """``steps`` DP-SGD steps: Poisson sampling at ``sample_rate``, noise multiplier z = σ/C."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    kind: ClassVar[str] = "subsampled-gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier)
        )
        q = _positive("sample_rate", self.sample_rate)
        if q > 1:
            raise AccountingError(f"sample_rate must be at most 1. Got: {q}")
        object.__setattr__(self, "sample_rate", q)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise AccountingError(f"steps must be a positive integer. Got: {self.steps!r}")

    def rdp(self, orders: Sequence[float] = ORDERS) -> np.ndarray:
        return _subsampled_gaussian_rdp(
            self.noise_multiplier, self.sample_rate, self.steps, tuple(orders)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "curve": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }


@functools.lru_cache(maxsize=256)
def _subsampled_gaussian_rdp(
    noise_multiplier: float, sample_rate: float, steps: int, orders: tuple[float, ...]
) -> np.ndarray:
    """Opacus' RDP of the subsampled Gaussian, cached (read-only result).

    Its fractional orders cost ~10 ms each in pure Python, and the same curve is asked for
    again and again: twice per step of the noise calibration (its standalone cost and the
    composition), and once per recorded round every time a privacy ledger composes its charges.
    """
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = np.asarray(
        compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(orders)
        ),
        dtype=np.float64,
    )
    rdp.setflags(write=False)
    return rdp


CURVES: Mapping[str, type[Curve]] = {
    c.kind: c for c in (LaplaceCurve, GaussianCurve, SubsampledGaussianCurve)
}


def curve_from_dict(data: Mapping[str, Any]) -> Curve:
    """The curve stored as ``data`` (the inverse of ``Curve.to_dict``)."""
    if not isinstance(data, Mapping) or "curve" not in data:
        raise AccountingError(f"a curve must be an object with a 'curve' name. Got: {data!r}")
    fields = dict(data)
    kind = fields.pop("curve")
    cls = CURVES.get(kind)
    if cls is None:
        raise AccountingError(f"unknown curve {kind!r}; known: {', '.join(CURVES)}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise AccountingError(f"curve {kind!r}: {exc}") from None


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = ORDERS) -> float:
    """The smallest ε over ``orders`` such that RDP ``rdp`` implies (ε, δ)-DP (Balle et al. 2020)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not 0 < delta < 1:
        raise AccountingError(f"converting RDP needs 0 < delta < 1. Got: {delta!r}")
    if not np.any(rdp > 0):
        return 0.0
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": our orders already reach 256; the bound is valid.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(max(eps, 0.0))


@dataclass(frozen=True, slots=True)
class Charge:
    """One release as the composition sees it: its standalone cost and, if known, its curve."""

    cost: EpsDelta
    curve: Curve | None = None


@dataclass(frozen=True, slots=True)
class Composition:
    """The total of a set of releases at a target δ, and which bound gave it."""

    spent: EpsDelta
    rule: str  # "none", "basic" or "rdp"
    basic: EpsDelta
    rdp_epsilon: float | None


def compose(charges: Iterable[Charge], delta: float) -> Composition:
    """The per-sample total of ``charges`` at δ ≤ ``delta`` (module docstring: the rule)."""
    charges = list(charges)
    basic = EpsDelta(
        math.fsum(c.cost.epsilon for c in charges), math.fsum(c.cost.delta for c in charges)
    )
    if not charges:
        return Composition(EpsDelta(0.0, 0.0), "none", basic, None)
    best = basic if basic.delta <= delta else None
    rdp_eps: float | None = None
    curved = [c for c in charges if c.curve is not None]
    if curved and delta > 0:
        flat = [c for c in charges if c.curve is None]
        rest_eps = math.fsum(c.cost.epsilon for c in flat)
        rest_delta = math.fsum(c.cost.delta for c in flat)
        delta_r = delta - rest_delta
        if delta_r > 0:
            total = np.sum([c.curve.rdp() for c in curved if c.curve is not None], axis=0)
            rdp_eps = rdp_to_epsilon(total, delta_r) + rest_eps
            if best is None or rdp_eps < best.epsilon:
                return Composition(EpsDelta(rdp_eps, delta), "rdp", basic, rdp_eps)
    # No bound meets δ: report the basic sums, whose δ shows by how much the budget is missed.
    return Composition(best or basic, "basic", basic, rdp_eps)


_Z_MIN, _Z_MAX = 0.05, 1000.0
"""The range of DP-SGD noise multipliers that calibration considers."""


def calibrate_noise_multiplier(
    prior: Iterable[Charge],
    *,
    sample_rate: float,
    steps: int,
    budget: EpsDelta,
    tolerance: float = 1e-3,
) -> float:
    """The smallest DP-SGD noise multiplier z (to ``tolerance``) such that ``prior`` releases
    plus ``steps`` steps at ``sample_rate`` compose to at most ``budget``.

    The result is the upper end of a bracket [lo, hi] no wider than ``tolerance`` in which hi
    fits the budget and lo does not (or 0.05, the smallest z tried, when even that fits).

    Raises :class:`AccountingError` when even z = 1000 does not fit (the prior releases have
    used up the budget, or the budget's δ is 0, which DP-SGD cannot meet).

    Every probe costs one Opacus RDP curve (~50 ms near the answer, in pure Python), and every
    device calibrates once per task, so the search takes few probes: the total ε falls roughly
    as a power of z, so secant steps on (log z, log ε) land next to the answer within a few
    probes, and one probe a tolerance below the end that fits closes the bracket. Measured on
    the default devnet task: 6 probes instead of bisection's 15.
    """
    prior = list(prior)
    if budget.delta <= 0:
        raise AccountingError("DP-SGD needs a budget with delta > 0 (it is not pure ε-DP)")
    target = math.log(budget.epsilon)

    def excess(z: float) -> float:
        """log(ε(z)) − log(budget ε): > 0 exactly when z does not fit."""
        curve = SubsampledGaussianCurve(z, sample_rate, steps)
        total = compose([*prior, Charge(curve.standalone(budget.delta), curve)], budget.delta)
        spent = total.spent.epsilon
        if total.spent.delta > budget.delta or not math.isfinite(spent):
            return math.inf
        return (math.log(spent) if spent > 0 else -math.inf) - target

    # Bracket the answer by doubling or halving from z = 1, where DP-SGD's noise usually is.
    lo, hi, g_lo, g_hi = 0.0, 0.0, math.inf, -math.inf
    z = 1.0
    g = excess(z)
    while g > 0:
        lo, g_lo = z, g
        if z >= _Z_MAX:
            raise AccountingError(
                f"no DP-SGD noise fits: {steps} steps at sample rate {sample_rate:g} on top of "
                f"what is already spent exceed the budget {budget} even with noise multiplier "
                f"{_Z_MAX:g}"
            )
        z = min(2 * z, _Z_MAX)
        g = excess(z)
    hi, g_hi = z, g
    while lo == 0.0:
        if z <= _Z_MIN:
            return _Z_MIN
        z = max(z / 2, _Z_MIN)
        g = excess(z)
        if g > 0:
            lo, g_lo = z, g
        else:
            hi, g_hi = z, g
    # Secant steps on (log z, log ε) through the last two probes, each probe placed just past
    # the estimate on the side that fits; once the estimate is within the tolerance of the
    # fitting end, one probe a tolerance below that end closes the bracket.
    recent = ((lo, g_lo) if z == hi else (hi, g_hi), (z, g))
    while hi - lo > tolerance:
        (z1, g1), (z2, g2) = recent
        est = math.nan
        if math.isfinite(g1) and math.isfinite(g2) and g1 != g2:
            u1, u2 = math.log(z1), math.log(z2)
            est = math.exp(u2 + (u2 - u1) * g2 / (g1 - g2))
        if not lo < est < hi:
            est = math.sqrt(lo * hi)
        if hi - est <= 0.9 * tolerance:
            z = hi - 0.99 * tolerance
        elif est - lo <= 0.9 * tolerance:
            z = lo + 0.99 * tolerance
        else:
            z = min(est + 0.45 * tolerance, hi - 0.99 * tolerance)
        g = excess(z)
        if g <= 0:
            hi = z
        else:
            lo = z
        recent = (recent[1], (z, g))
    return hi
