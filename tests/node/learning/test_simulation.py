"""The in-process federated simulation on real MNIST (small, so it stays fast)."""

from __future__ import annotations

import dataclasses

import pytest

from flnode.learning.simulation import Prepared, SimulationConfig, prepare, run_simulation

BASE = SimulationConfig(
    n_devices=5,
    public_size=500,
    max_samples_per_device=600,
    pretrain_epochs=3,
    pretrain_shift=0,
    rounds=2,
    local_epochs=2,
    epsilon=30.0,
    seed=3,
    noise_seed=3,
    threads=1,
)


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    return prepare(BASE)


def test_federation_trains_and_reports_both_accuracies(prepared: Prepared) -> None:
    seen = []
    result = run_simulation(BASE, prepared=prepared, on_round=seen.append)
    assert [r.round for r in seen] == [1, 2]
    assert result.public_only.clean >= 0.6  # 500 public images, 3 epochs, noise in the loop
    # 3,000 private samples at per-sample ε = 30 add clearly to the public-only model
    # (measured: 73.8 % → 84.1 %).
    assert result.final.clean >= 0.80
    assert result.final.clean >= result.public_only.clean + 0.05
    assert 0.1 < result.final.noisy <= 1.0
    assert result.per_sample_epsilon == 30.0
    assert result.per_feature_epsilon == pytest.approx(30.0 / 8)
    # Noise once: every device paid ε exactly once over both rounds.
    assert result.epsilon_spent == (30.0,) * 5
    assert "per sample" in result.privacy_label
    assert result.final_head_cid.startswith("bafkrei")
    assert 0 < result.update_bytes < 256 * 1024  # head-only updates fit inline in gossip
    # The frozen mode uploads the head only: no weight trained on raw private data leaves.
    assert result.update_keys and all(k.startswith("head.") for k in result.update_keys)


def test_runs_are_deterministic_with_fixed_seeds(prepared: Prepared) -> None:
    a = run_simulation(BASE, prepared=prepared)
    b = run_simulation(BASE, prepared=prepared)
    assert a.final_head_cid == b.final_head_cid
    assert a.final == b.final


def test_multikrum_rejects_sign_flippers_that_fedavg_lets_in(prepared: Prepared) -> None:
    attacked = dataclasses.replace(
        BASE, attack="sign-flip", attack_fraction=0.2, attack_scale=5.0, rounds=1
    )
    robust = run_simulation(
        dataclasses.replace(attacked, strategy="multikrum", strategy_params={"f": 1}),
        prepared=prepared,
    )
    naive = run_simulation(attacked, prepared=prepared)
    assert robust.rounds[0].rejected_attackers == 1
    assert naive.rounds[0].rejected == 0
    assert robust.final.clean > naive.final.clean


def test_prepared_must_match_the_config(prepared: Prepared) -> None:
    with pytest.raises(ValueError, match="other pre-training settings"):
        run_simulation(dataclasses.replace(BASE, epsilon=1.0), prepared=prepared)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_devices": 0}, "n_devices"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"attack": "bribe"}, "unknown attack"),
        ({"attack_fraction": 1.0}, "attack_fraction"),
        ({"mechanism": "gaussian", "delta": None}, "delta"),
        ({"mode": "dp-everything"}, "unknown mode"),
        ({"mode": "dpsgd-full", "delta": None}, "needs a finite epsilon and a delta"),
        ({"mode": "dpsgd-full", "delta": 1e-5, "epsilon": None}, "needs a finite epsilon"),
        ({"mode": "dpsgd-full", "delta": 1e-5, "dp_clip": 0.0}, "max_grad_norm must be"),
        ({"mode": "dpsgd-full", "delta": 1e-5, "dp_momentum": 1.5}, "momentum must be"),
        ({"mode": "dpsgd-full", "delta": 1e-5, "dp_batch_size": 0}, "batch_size must be"),
        ({"mode": "dpsgd-extractor", "delta": 1e-5, "feature_share": 1.0}, "feature_share"),
        (
            {"mode": "dpsgd-full", "delta": 1e-5, "accounting": "per-feature"},
            "per sample only",
        ),
    ],
)
def test_bad_config_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(BASE, **change)


def test_rehead_changes_only_the_norm_and_shares_the_extractor(prepared: Prepared) -> None:
    from flnode.learning.simulation import rehead

    other = rehead(prepared, dataclasses.replace(BASE, norm="layernorm"))
    assert other.spec.to_dict()["params"]["norm"] == "layernorm"
    assert other.extractor is prepared.extractor
    assert 0.5 < other.public_only.clean <= 1.0
    result = run_simulation(dataclasses.replace(BASE, norm="layernorm"), prepared=other)
    assert result.final.clean > 0.5
    with pytest.raises(ValueError, match="only change the norm"):
        rehead(prepared, dataclasses.replace(BASE, epsilon=1.0))


def test_round_with_too_few_distinct_updates_carries_the_model_forward(prepared: Prepared) -> None:
    """Two free riders submit identical bytes: the copy is dropped, and Multi-Krum with f = 1
    cannot aggregate the 4 distinct updates left (it needs more than 2f + 2), so the round keeps
    the previous global model instead of failing."""
    cfg = dataclasses.replace(
        BASE,
        attack="free-ride",
        attack_fraction=0.4,
        rounds=1,
        strategy="multikrum",
        strategy_params={"f": 1},
    )
    result = run_simulation(cfg, prepared=prepared)
    record = result.rounds[0]
    assert record.accepted == 0
    assert record.rejected == 5
    assert record.accuracy.clean == pytest.approx(result.public_only.clean, abs=0.002)
