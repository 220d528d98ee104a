"""Privacy accounting arithmetic: against Opacus' accountant, closed forms and numeric integrals."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from flnode.learning.accountant import (
    ORDERS,
    AccountingError,
    Charge,
    EpsDelta,
    GaussianCurve,
    LaplaceCurve,
    SubsampledGaussianCurve,
    calibrate_noise_multiplier,
    compose,
    curve_from_dict,
    rdp_to_epsilon,
)

DELTA = 1e-5


def _charge(curve, delta: float = DELTA) -> Charge:
    return Charge(curve.standalone(delta), curve)


def test_dpsgd_history_matches_opacus_accountant_exactly() -> None:
    """The same steps in Opacus' RDP accountant and in compose() give the same ε."""
    history = [(0.7, 1 / 30, 30), (0.7, 1 / 30, 30), (1.1, 1 / 8, 16)]
    accountant = RDPAccountant()
    accountant.history = list(history)
    expected = accountant.get_epsilon(DELTA, alphas=list(ORDERS))
    got = compose([_charge(SubsampledGaussianCurve(*h)) for h in history], DELTA)
    assert got.rule == "rdp"
    assert got.spent.epsilon == pytest.approx(expected, rel=1e-12)
    assert got.spent.delta == DELTA


def test_more_orders_never_loosen_opacus_default_bound() -> None:
    curve = SubsampledGaussianCurve(0.7, 1 / 30, 300)
    accountant = RDPAccountant()
    accountant.history = [(0.7, 1 / 30, 300)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opacus_default = accountant.get_epsilon(DELTA)  # Opacus' own orders stop at 63
    ours = compose([_charge(curve)], DELTA).spent.epsilon
    assert ours <= opacus_default + 1e-12
    # Run H of the prototype: 10 rounds × 30 steps at σ=0.700 spent ε ≈ 9.84 by Opacus. count.
    assert 9.0 < ours < 10.0


def test_gaussian_composition_matches_hand_computation() -> None:
    """k Gaussian releases with multiplier z have RDP α·k/(2z²); the conversion of Balle et al.
    is ε = min_α [rdp(α) + log((α−1)/α) − (log δ + log α)/(α−1)], written out here by hand."""
    z, k = 3.0, 20
    a = np.array(ORDERS)
    by_hand = np.min(
        a * k / (2 * z * z) + np.log((a - 1) / a) - (np.log(DELTA) + np.log(a)) / (a - 1)
    )
    got = compose([_charge(GaussianCurve(z))] * k, DELTA)
    assert got.spent.epsilon == pytest.approx(by_hand, rel=1e-9)
    # ... and never above the classic continuous RDP bound k/(2z²) + √(2k·log(1/δ))/z.
    classic = k / (2 * z * z) + math.sqrt(2 * k * math.log(1 / DELTA)) / z
    assert got.spent.epsilon <= classic


@pytest.mark.parametrize("alpha", [1.5, 2.0, 5.0, 20.0])
@pytest.mark.parametrize("epsilon", [0.3, 1.0, 3.0])
def test_laplace_rdp_matches_numeric_renyi_divergence(alpha: float, epsilon: float) -> None:
    """Mironov's closed form against ∫ p^α q^(1−α) for Laplace(0, 1/ε) vs Laplace(1, 1/ε)."""
    b = 1.0 / epsilon
    x = np.linspace(-60 * b, 1 + 60 * b, 400_001)
    log_p = -np.abs(x) / b - math.log(2 * b)
    log_q = -np.abs(x - 1) / b - math.log(2 * b)
    integral = np.trapezoid(np.exp(alpha * log_p + (1 - alpha) * log_q), x)
    numeric = math.log(integral) / (alpha - 1)
    closed = float(LaplaceCurve(epsilon).rdp([alpha])[0])
    assert closed == pytest.approx(numeric, rel=1e-4, abs=1e-9)


@given(st.floats(0.01, 50.0))
@settings(max_examples=50, deadline=None)
def test_laplace_rdp_never_exceeds_pure_epsilon(epsilon: float) -> None:
    rdp = LaplaceCurve(epsilon).rdp()
    assert np.all(rdp >= 0) and np.all(rdp <= epsilon + 1e-12)
    assert np.all(np.diff(rdp) >= -1e-12)  # non-decreasing in α


def test_one_laplace_release_costs_exactly_its_epsilon() -> None:
    got = compose([_charge(LaplaceCurve(2.5))], DELTA)
    assert got.rule == "basic" and got.spent == EpsDelta(2.5, 0.0)


def test_many_small_laplace_releases_compose_below_the_advanced_composition_bound() -> None:
    """100 releases of ε=0.1: basic says 10; Dwork–Rothblum–Vadhan's advanced composition says
    √(2k ln(1/δ))·ε + k·ε·(e^ε − 1) at δ; Rényi composition must beat basic and not exceed DRV
    by more than its known slack at this δ (here it is below it)."""
    k, eps = 100, 0.1
    got = compose([_charge(LaplaceCurve(eps))] * k, DELTA)
    drv = math.sqrt(2 * k * math.log(1 / DELTA)) * eps + k * eps * math.expm1(eps)
    assert got.rule == "rdp"
    assert got.spent.epsilon < k * eps
    assert got.spent.epsilon <= drv


def test_with_zero_delta_only_basic_composition_applies() -> None:
    got = compose([_charge(LaplaceCurve(0.1))] * 100, 0.0)
    assert got.rule == "basic"
    assert got.spent.epsilon == pytest.approx(10.0) and got.spent.delta == 0.0


def test_releases_without_a_curve_are_added_on_top() -> None:
    """An opaque (ε, δ) release takes its δ out of the budget's before the Rényi conversion."""
    gauss = [_charge(GaussianCurve(2.0))] * 10
    opaque = Charge(EpsDelta(0.5, 4e-6))
    got = compose([*gauss, opaque], DELTA)
    rdp_only = rdp_to_epsilon(np.sum([c.curve.rdp() for c in gauss], axis=0), DELTA - 4e-6)
    assert got.rule == "rdp"
    assert got.spent.epsilon == pytest.approx(rdp_only + 0.5, rel=1e-12)


def test_a_budget_delta_too_small_for_the_opaque_releases_is_reported_as_basic_sums() -> None:
    got = compose([Charge(EpsDelta(1.0, 1e-5)), Charge(EpsDelta(1.0, 1e-5))], 1e-5)
    assert got.rule == "basic" and got.spent == EpsDelta(2.0, 2e-5)


def test_calibration_is_tight_and_counts_prior_releases() -> None:
    budget = EpsDelta(10.0, DELTA)
    z = calibrate_noise_multiplier([], sample_rate=1 / 30, steps=300, budget=budget)
    total = compose([_charge(SubsampledGaussianCurve(z, 1 / 30, 300))], DELTA).spent.epsilon
    looser = compose([_charge(SubsampledGaussianCurve(z - 2e-3, 1 / 30, 300))], DELTA)
    assert total <= 10.0 < looser.spent.epsilon
    prior = [_charge(GaussianCurve(4.0))] * 10
    z_prior = calibrate_noise_multiplier(prior, sample_rate=1 / 30, steps=300, budget=budget)
    assert z_prior > z
    with_prior = compose([*prior, _charge(SubsampledGaussianCurve(z_prior, 1 / 30, 300))], DELTA)
    assert with_prior.spent.epsilon <= 10.0


def _spent(prior: list[Charge], z: float, q: float, steps: int, delta: float) -> EpsDelta:
    return compose([*prior, _charge(SubsampledGaussianCurve(z, q, steps), delta)], delta).spent


@settings(max_examples=25, deadline=None)
@given(
    q=st.floats(1e-3, 0.5),
    steps=st.integers(1, 3000),
    epsilon=st.floats(0.3, 60.0),
    prior_z=st.one_of(st.none(), st.floats(2.0, 50.0)),
)
def test_calibration_returns_the_fitting_end_of_a_bracket_no_wider_than_the_tolerance(
    q: float, steps: int, epsilon: float, prior_z: float | None
) -> None:
    """Whatever the search's path: z fits the budget, and z − tolerance does not (or z is the
    smallest multiplier considered, 0.05)."""
    prior = [] if prior_z is None else [_charge(GaussianCurve(prior_z))] * 3
    budget = EpsDelta(epsilon, DELTA)
    try:
        z = calibrate_noise_multiplier(prior, sample_rate=q, steps=steps, budget=budget)
    except AccountingError:
        assert _spent(prior, 1000.0, q, steps, DELTA).epsilon > epsilon
        return
    assert _spent(prior, z, q, steps, DELTA).epsilon <= epsilon
    if z > 0.05:
        assert _spent(prior, z - 1e-3, q, steps, DELTA).epsilon > epsilon


def test_calibration_of_the_default_task_takes_few_rdp_curves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every device calibrates once per task and each probe is an Opacus RDP curve (~50 ms near
    the answer): the search must not fall back to bisection's ~15 probes."""
    from flnode.learning import accountant

    probes: list[float] = []
    real = accountant.SubsampledGaussianCurve

    def counted(z: float, q: float, steps: int) -> SubsampledGaussianCurve:
        probes.append(z)
        return real(z, q, steps)

    monkeypatch.setattr(accountant, "SubsampledGaussianCurve", counted)
    # The default devnet task: 5,950 images per device, batches of 256, 10 rounds of 1 epoch.
    z = calibrate_noise_multiplier(
        [], sample_rate=256 / 5950, steps=230, budget=EpsDelta(10, DELTA)
    )
    assert 0.7 < z < 0.8
    assert len(probes) <= 7, f"calibration probed {len(probes)} multipliers: {probes}"


def test_calibration_refuses_what_cannot_fit() -> None:
    with pytest.raises(AccountingError, match="delta > 0"):
        calibrate_noise_multiplier([], sample_rate=0.1, steps=10, budget=EpsDelta(1.0, 0.0))
    spent = [Charge(EpsDelta(1.0, 0.0), LaplaceCurve(1.0))]
    with pytest.raises(AccountingError, match="no DP-SGD noise fits"):
        calibrate_noise_multiplier(spent, sample_rate=0.1, steps=10, budget=EpsDelta(1.0, DELTA))


@pytest.mark.parametrize(
    "bad",
    [
        {"curve": "gaussian"},
        {"curve": "gaussian", "noise_multiplier": -1},
        {"curve": "subsampled-gaussian", "noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 3},
        {"curve": "subsampled-gaussian", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0},
        {"curve": "laplace", "epsilon": float("nan")},
        {"curve": "exponential", "epsilon": 1.0},
        {"epsilon": 1.0},
        "laplace",
    ],
)
def test_malformed_curves_are_refused(bad: object) -> None:
    with pytest.raises(AccountingError):
        curve_from_dict(bad)  # type: ignore[arg-type]


def test_curves_round_trip_through_their_dicts() -> None:
    for curve in (LaplaceCurve(1.5), GaussianCurve(0.8), SubsampledGaussianCurve(0.7, 0.01, 99)):
        assert curve_from_dict(curve.to_dict()) == curve
