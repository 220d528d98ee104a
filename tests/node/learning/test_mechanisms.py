"""Laplace and analytic Gaussian mechanisms: calibration, noise statistics, finiteness."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from flnode.learning.mechanisms import (
    SIGMA_RTOL,
    GaussianMechanism,
    LaplaceMechanism,
    NoiseError,
    analytic_gaussian_sigma,
    gaussian_delta,
    noise_generator,
    textbook_gaussian_sigma,
)

# -- Laplace ----------------------------------------------------------------------------------


def test_laplace_scale_is_sensitivity_over_epsilon() -> None:
    m = LaplaceMechanism(epsilon=2.0, l1_sensitivity=16.0)
    assert (m.epsilon, m.delta, m.scale) == (2.0, 0.0, 8.0)


def test_laplace_noise_has_the_stated_scale() -> None:
    m = LaplaceMechanism(epsilon=0.5, l1_sensitivity=2.0)  # b = 4
    x = m.noise((1_000_000,), noise_generator(1), dtype=torch.float64)
    # For Laplace(0, b): E|x| = b, Var x = 2b², median 0.
    assert x.abs().mean().item() == pytest.approx(4.0, rel=0.01)
    assert x.var().item() == pytest.approx(2 * 16.0, rel=0.02)
    assert abs(x.mean().item()) < 0.02
    assert (x > 0).double().mean().item() == pytest.approx(0.5, abs=0.002)


def test_laplace_noise_is_never_non_finite() -> None:
    m = LaplaceMechanism(epsilon=1.0, l1_sensitivity=1.0)
    g = noise_generator(2)
    for _ in range(2):
        x = m.noise((5_000_000,), g)
        assert bool(torch.isfinite(x).all())
        # float64 exponentials never exceed −log(2⁻⁵³) ≈ 36.7, so neither does |E₁ − E₂| / b.
        assert x.abs().max().item() < 40


def test_the_inverse_cdf_sampler_this_module_avoids_does_produce_inf() -> None:
    # learning.md P2: rand() returning exactly 0 gives u = −0.5 and −b·sign(u)·log1p(−2|u|) = inf.
    u = torch.tensor([-0.5])
    assert torch.isinf(-torch.sign(u) * torch.log1p(-2 * u.abs())).all()


# -- Gaussian: analytic calibration -----------------------------------------------------------


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _naive_delta(sigma: float, eps: float, sens: float) -> float:
    """Balle & Wang's condition written out directly (fine where e^ε does not overflow)."""
    return _phi(sens / (2 * sigma) - eps * sigma / sens) - math.exp(eps) * _phi(
        -sens / (2 * sigma) - eps * sigma / sens
    )


def _hockey_stick(sigma: float, eps: float, sens: float) -> float:
    """δ(ε) = ∫ max(0, p(x) − e^ε q(x)) dx for p = N(0, σ²), q = N(Δ, σ²), by quadrature:
    an independent check of the closed form, from the definition of (ε, δ)-DP."""
    x = np.linspace(-30 * sigma - sens, 30 * sigma + 2 * sens, 1_000_001)
    c = 1 / (sigma * math.sqrt(2 * math.pi))
    p = c * np.exp(-(x**2) / (2 * sigma**2))
    q = c * np.exp(eps - (x - sens) ** 2 / (2 * sigma**2))
    return float(np.clip(p - q, 0, None).sum() * (x[1] - x[0]))


GRID = [
    (eps, delta, sens)
    for eps in (0.1, 0.5, 1.0, 2.0, 10.0, 100.0)
    for delta in (1e-3, 1e-5, 1e-10)
    for sens in (1.0, 2.0)
]


@pytest.mark.parametrize(("eps", "delta", "sens"), GRID)
def test_analytic_sigma_is_the_smallest_that_satisfies_the_condition(
    eps: float, delta: float, sens: float
) -> None:
    sigma = analytic_gaussian_sigma(eps, delta, sens)
    assert gaussian_delta(sigma, eps, sens) <= delta
    # Just below (a thousand bisection tolerances) the condition fails: σ is not wastefully big.
    assert gaussian_delta(sigma * (1 - 1000 * SIGMA_RTOL), eps, sens) > delta
    # The log-space evaluation agrees with the condition written out naively.
    assert gaussian_delta(sigma, eps, sens) == pytest.approx(
        _naive_delta(sigma, eps, sens), rel=1e-6
    )


def test_analytic_sigma_cross_checks_for_epsilon_1_delta_1e_5() -> None:
    sigma = GaussianMechanism(epsilon=1.0, delta=1e-5, l2_sensitivity=1.0).sigma
    assert sigma == pytest.approx(3.7306, abs=1e-3)
    # Checked against the definition of (ε, δ)-DP itself, not against our own formula.
    assert _hockey_stick(sigma, 1.0, 1.0) == pytest.approx(1e-5, rel=1e-3)
    assert _hockey_stick(sigma * 0.99, 1.0, 1.0) > 1e-5


@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_analytic_sigma_beats_the_textbook_sigma_where_that_is_valid(eps: float) -> None:
    m = GaussianMechanism(epsilon=eps, delta=1e-5, l2_sensitivity=1.0)
    assert m.sigma < m.textbook_sigma == textbook_gaussian_sigma(eps, 1e-5, 1.0)


def test_textbook_sigma_is_not_private_enough_at_epsilon_10() -> None:
    # Dwork & Roth's σ = Δ√(2 ln(1.25/δ))/ε is proven for ε < 1 only; at ε = 10 it is too small:
    # the mechanism it calibrates is only (10, 2.3e-5)-DP, not (10, 1e-5)-DP. The analytic σ is
    # therefore *larger* there, which learning.md §4's Gaussian runs (textbook σ) did not know.
    m = GaussianMechanism(epsilon=10.0, delta=1e-5, l2_sensitivity=1.0)
    assert _hockey_stick(m.textbook_sigma, 10.0, 1.0) == pytest.approx(2.265e-5, rel=1e-2)
    assert gaussian_delta(m.textbook_sigma, 10.0, 1.0) > 1e-5
    assert m.sigma > m.textbook_sigma
    assert _hockey_stick(m.sigma, 10.0, 1.0) == pytest.approx(1e-5, rel=1e-3)


def test_analytic_sigma_scales_with_sensitivity_and_survives_extremes() -> None:
    assert analytic_gaussian_sigma(1.0, 1e-5, 4.0) == pytest.approx(
        4 * analytic_gaussian_sigma(1.0, 1e-5, 1.0), rel=1e-9
    )
    # e^ε would overflow a float at ε > 709, Φ underflows for tiny δ: neither may break the search.
    for eps, delta in [(1e4, 1e-5), (1e3, 1e-300), (1e-3, 1e-300)]:
        sigma = analytic_gaussian_sigma(eps, delta, 1.0)
        assert math.isfinite(sigma) and sigma > 0
        assert gaussian_delta(sigma, eps, 1.0) <= delta


def test_gaussian_noise_has_the_calibrated_std() -> None:
    m = GaussianMechanism(epsilon=2.0, delta=1e-5, l2_sensitivity=2.0)
    assert (m.epsilon, m.delta, m.scale) == (2.0, 1e-5, m.sigma)
    x = m.noise((500_000,), noise_generator(3), dtype=torch.float64)
    assert x.std().item() == pytest.approx(m.sigma, rel=0.01)
    assert abs(x.mean().item()) < 0.01 * m.sigma


# -- both -------------------------------------------------------------------------------------

MECHANISMS = [LaplaceMechanism(1.0, 2.0), GaussianMechanism(1.0, 1e-5, 2.0)]


@pytest.mark.parametrize("m", MECHANISMS, ids=lambda m: m.name)
def test_release_adds_noise_and_keeps_shape_and_dtype(m: LaplaceMechanism) -> None:
    z = torch.rand(64, 8)
    out = m.release(z, noise_generator(4))
    assert out.shape == z.shape and out.dtype == torch.float32
    assert not torch.equal(out, z)
    assert m.release(z.double(), noise_generator(4)).dtype == torch.float64
    # Same seed, same noise; another seed, other noise.
    assert torch.equal(m.release(z, noise_generator(5)), m.release(z, noise_generator(5)))
    assert not torch.equal(m.release(z, noise_generator(5)), m.release(z, noise_generator(6)))


@pytest.mark.parametrize("m", MECHANISMS, ids=lambda m: m.name)
def test_release_refuses_non_finite_input(m: LaplaceMechanism) -> None:
    with pytest.raises(NoiseError, match="nothing was released"):
        m.release(torch.tensor([[0.0, float("nan")]]), noise_generator(0))


def test_non_finite_noise_raises_instead_of_being_released() -> None:
    class Broken(LaplaceMechanism):
        def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
            out = torch.zeros(shape, dtype=torch.float64)
            out.view(-1)[0] = math.inf
            return out

    broken = Broken(1.0, 1.0)
    with pytest.raises(NoiseError):
        broken.noise((3,), noise_generator(0))
    with pytest.raises(NoiseError):
        broken.release(torch.zeros(2, 2), noise_generator(0))


def test_unseeded_generators_differ() -> None:
    a = torch.rand(4, generator=noise_generator(None))
    b = torch.rand(4, generator=noise_generator(None))
    assert not torch.equal(a, b)
    assert torch.equal(
        torch.rand(4, generator=noise_generator(7)), torch.rand(4, generator=noise_generator(7))
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: LaplaceMechanism(0.0, 1.0),
        lambda: LaplaceMechanism(-1.0, 1.0),
        lambda: LaplaceMechanism(math.inf, 1.0),
        lambda: LaplaceMechanism(1.0, 0.0),
        lambda: LaplaceMechanism(1.0, math.nan),
        lambda: GaussianMechanism(1.0, 0.0, 1.0),
        lambda: GaussianMechanism(1.0, 1.0, 1.0),
        lambda: GaussianMechanism(0.0, 1e-5, 1.0),
        lambda: GaussianMechanism(1.0, 1e-5, -1.0),
    ],
)
def test_invalid_parameters_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_mechanisms_are_frozen_and_describe_themselves() -> None:
    m = LaplaceMechanism(1.0, 2.0)
    with pytest.raises(AttributeError):
        m.epsilon = 5.0  # type: ignore[misc]
    assert m.spec == "laplace(epsilon=1.0, delta=0.0, scale=2.0)"
    assert GaussianMechanism(1.0, 1e-5, 1.0).spec.startswith("gaussian(epsilon=1.0, delta=1e-05")
