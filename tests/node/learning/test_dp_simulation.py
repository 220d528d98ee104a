"""The DP-SGD privacy modes end to end in one process, on real MNIST (small and short)."""

from __future__ import annotations

import pytest

from flnode.learning.dp_simulation import plan_feature_release, run_dp_simulation
from flnode.learning.simulation import PRESETS, preset

# A weak public model (200 images, 3 epochs) and 4 devices × 1,500 private images: small enough
# for the default suite, and leaves room for the private data to show (measured: 55 % → 80 %).
SHORT = {
    "n_devices": 4,
    "max_samples_per_device": 1500,
    "public_size": 200,
    "pretrain_epochs": 3,
    "rounds": 2,
    "dp_batch_size": 128,
    "seed": 0,
    "noise_seed": 0,
}


def test_a_short_dpsgd_federated_run_improves_on_the_public_only_model() -> None:
    result = run_dp_simulation(preset("dpsgd-full", **SHORT))
    assert result.final_accuracy >= result.public_only_accuracy + 0.05, (
        f"federation did not add 5 points: {result.public_only_accuracy:.2%} public-only → "
        f"{[r.accuracy for r in result.rounds]}"
    )
    # Every device spent at most its budget, close to all of it, and Opacus' count agrees.
    for ours, theirs in zip(result.epsilon_spent, result.opacus_epsilon, strict=True):
        assert 9.5 < ours <= 10.0
        assert theirs == pytest.approx(ours, rel=1e-9)
    assert result.composition_rule == "rdp"
    assert any(k.startswith("extractor.") for k in result.update_keys)


def test_dpsgd_extractor_composes_feature_releases_with_dpsgd() -> None:
    result = run_dp_simulation(preset("dpsgd-extractor", **{**SHORT, "rounds": 1}))
    assert result.feature_release is not None and "per sample" in result.feature_release
    for spent in result.epsilon_spent:
        assert 9.0 < spent <= 10.0  # the features and the DP-SGD steps together fit the budget
    # The update carries both parts: the DP-SGD extractor and the noisy-feature head.
    assert any(k.startswith("extractor.") for k in result.update_keys)
    assert any(k.startswith("head.") for k in result.update_keys)


def test_planned_feature_releases_fit_their_share() -> None:
    release = plan_feature_release(
        mechanism="gaussian", bounding="l2", dim=32, releases=10, epsilon=3.0, delta=1e-5
    )
    from flnode.learning.accountant import Charge, compose

    total = compose([Charge(release.cost, release.curve)] * 10, 1e-5).spent.epsilon
    assert 2.9 < total <= 3.0
    # Rényi composition lets each of the 10 releases spend more than basic composition's ε/10.
    assert release.per_sample_epsilon > 0.3


def test_presets_exist_for_every_mode_and_validate() -> None:
    assert set(PRESETS) == {"frozen", "dpsgd-extractor", "dpsgd-full"}
    for mode in PRESETS:
        assert preset(mode).mode == mode
    with pytest.raises(ValueError, match="no preset"):
        preset("dp-everything")
