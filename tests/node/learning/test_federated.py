"""What the daemon's roles compute (flnode.learning.federated), on real MNIST shards, no network."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch

from flnode.config import FederationSection
from flnode.learning.federated import (
    POISONS,
    SCALE_FACTOR,
    DeviceLearner,
    FederatedLearningError,
    Submission,
    device_shard,
    evaluate_model,
    judge_round,
    load_weights,
    model_version,
    network_config,
    publish_model,
)
from flnode.learning.ledger import PrivacyBudgetExceeded, PrivacyLedger
from flnode.learning.taskspec import load_task_spec

SPEC = b"""
name = "test-federated"
[data]
public_size = 300
[privacy]
mode = "dpsgd-full"
epsilon = 10.0
delta = 1e-5
clip = 0.1
[training]
rounds = 3
lr = 4.0
momentum = 0.9
batch_size = 256
pretrain_epochs = 3
[aggregation]
rule = "three-sigma"
[round]
updates_per_round = 5
min_updates = 2
eval_size = 1000
"""
SHARDS = 60  # ~1,000 images per device: quick DP-SGD rounds


@pytest.fixture(scope="module")
def cfg():
    return network_config(load_task_spec(SPEC), SHARDS)


@pytest.fixture(scope="module")
def published(cfg):
    return publish_model(cfg, 1000)


def _learner(cfg, i: int, tmp: Path | None = None, **kw) -> DeviceLearner:
    return DeviceLearner(
        cfg,
        device_shard(cfg, i),
        ledger_path=None if tmp is None else tmp / f"ledger-{i}.json",
        task_id="task-1",
        device_id=f"0x{i:040x}",
        seed=i,
        **kw,
    )


@pytest.fixture(scope="module")
def round_one(cfg, published):
    """Five submissions for round 0: three honest, one scaled ×10, one label-flipped."""
    subs = []
    for i, poison in enumerate([None, None, None, "scale", "label-flip"]):
        update = _learner(cfg, i, poison=poison).train_round(published.weights, 0)
        subs.append(
            Submission(
                f"0x{i:040x}", model_version(update.weights), update.n_samples, update.weights
            )
        )
    return subs


def test_frozen_mode_is_refused_on_the_network() -> None:
    spec = load_task_spec(b'[privacy]\nmode = "frozen"\n')
    with pytest.raises(FederatedLearningError, match="flnode simulate"):
        network_config(spec, 4)


def test_publish_model_reports_public_only_accuracy(cfg, published) -> None:
    assert 0.3 < published.public_only_accuracy < 1.0
    assert evaluate_model(cfg, published.weights, 1000)[0] == pytest.approx(
        published.public_only_accuracy
    )


def test_scaled_update_is_rejected_and_the_aggregate_improves(cfg, published, round_one) -> None:
    decision = judge_round(
        cfg, "three-sigma", {}, published.weights, round_one, min_updates=2, max_update_norm=None
    )
    scaled = round_one[3].device
    assert scaled in decision.rejected, decision.reasons
    assert set(decision.accepted) >= {s.device for s in round_one[:3]}
    assert not decision.carried_forward
    accuracy, _ = evaluate_model(cfg, decision.weights, 1000)
    assert accuracy > published.public_only_accuracy


def test_judging_is_deterministic(cfg, published, round_one) -> None:
    a = judge_round(
        cfg, "three-sigma", {}, published.weights, round_one, min_updates=2, max_update_norm=None
    )
    b = judge_round(
        cfg, "three-sigma", {}, published.weights, round_one, min_updates=2, max_update_norm=None
    )
    assert a.weights == b.weights
    assert (a.accepted, a.rejected) == (b.accepted, b.rejected)


def test_unfetchable_and_malformed_updates_are_rejected_with_a_reason(
    cfg, published, round_one
) -> None:
    subs = [
        *round_one[:3],
        Submission("0xmissing", "bafkreimissing", 100, None),
        Submission("0xgarbage", "bafkreigarbage", 100, b"not safetensors at all"),
    ]
    decision = judge_round(
        cfg, "fedavg", {}, published.weights, subs, min_updates=2, max_update_norm=None
    )
    assert decision.rejected == ("0xmissing", "0xgarbage")
    assert "fetched" in decision.reasons["0xmissing"]
    assert decision.reasons["0xgarbage"]


def test_copies_and_the_unchanged_global_model_are_rejected_without_stalling_the_round(
    cfg, published, round_one
) -> None:
    honest = round_one[:3]
    copier = Submission("0xcopier", honest[0].cid, 10**9, honest[0].data)
    rider = Submission("0xrider", model_version(published.weights), 100, published.weights)
    for rule, params in [("multikrum", {"f": 1}), ("fedavg", {})]:
        decision = judge_round(
            cfg,
            rule,
            params,
            published.weights,
            [*honest, copier, rider, *round_one[3:]],
            min_updates=2,
            max_update_norm=None,
        )
        assert not decision.carried_forward, (rule, decision.reasons)
        assert honest[0].device in decision.accepted, (rule, decision.reasons)
        assert {"0xcopier", "0xrider"} <= set(decision.rejected)
        assert decision.reasons["0xcopier"] == f"a copy of {honest[0].device}'s update (same CID)"
        assert "unchanged" in decision.reasons["0xrider"]


def test_norm_bound_rejects_a_boosted_update(cfg, published, round_one) -> None:
    decision = judge_round(
        cfg, "fedavg", {}, published.weights, round_one[:4], min_updates=2, max_update_norm=5.0
    )
    assert round_one[3].device in decision.rejected
    assert "norm" in decision.reasons[round_one[3].device]


def test_too_few_valid_updates_carry_the_old_model_forward(cfg, published, round_one) -> None:
    decision = judge_round(
        cfg, "fedavg", {}, published.weights, round_one[:1], min_updates=2, max_update_norm=None
    )
    assert decision.carried_forward
    assert decision.weights == published.weights
    assert decision.accepted == ()


def test_a_capped_device_refuses_the_round_beyond_its_budget(cfg, published, tmp_path) -> None:
    learner = _learner(cfg, 7, tmp_path, budget_cap=8.0)
    learner.train_round(published.weights, 0)  # one round costs ~7.4 of the task's 10
    with pytest.raises(PrivacyBudgetExceeded):
        learner.train_round(published.weights, 1)
    ledger = PrivacyLedger.open(
        tmp_path / "ledger-7.json", task_id="task-1", device_id=f"0x{7:040x}"
    )
    assert len(ledger.entries) == 1  # the refused round charged nothing
    assert ledger.spent().epsilon <= 8.0


def test_the_whole_task_fits_the_budget(cfg, published, tmp_path) -> None:
    learner = _learner(cfg, 8, tmp_path)
    weights = published.weights
    for rnd in range(cfg.rounds):
        update = learner.train_round(weights, rnd)
        weights = update.weights
    assert update.epsilon_spent <= cfg.epsilon
    assert update.epsilon_spent > 0.9 * cfg.epsilon  # calibrated to use the budget, not waste it
    with pytest.raises(PrivacyBudgetExceeded):
        learner.train_round(weights, cfg.rounds)


def test_every_poison_can_be_configured_on_a_device() -> None:
    allowed = set(typing.get_args(FederationSection.model_fields["fault"].annotation))
    assert set(POISONS) <= allowed, set(POISONS) - allowed


def test_poisoned_updates_do_what_their_names_say(cfg, published) -> None:
    g = load_weights(cfg, published.weights)
    honest = load_weights(cfg, _learner(cfg, 7).train_round(published.weights, 0).weights)
    flipped = load_weights(
        cfg, _learner(cfg, 7, poison="sign-flip").train_round(published.weights, 0).weights
    )
    for key, ref in g.items():
        if ref.is_floating_point():
            expected = ref - SCALE_FACTOR * (honest[key] - ref)
            assert torch.allclose(flipped[key], expected, atol=1e-4), key
    rider = _learner(cfg, 8, poison="free-ride").train_round(published.weights, 0)
    assert rider.weights == published.weights and rider.train_s == 0.0
    noisy = load_weights(
        cfg, _learner(cfg, 7, poison="gaussian-noise").train_round(published.weights, 0).weights
    )
    change = torch.cat([(noisy[k] - honest[k]).flatten() for k in g if g[k].is_floating_point()])
    assert 0.9 < float(change.std()) < 1.1  # N(0, 1) on every weight
    with pytest.raises(FederatedLearningError, match="unknown poison"):
        _learner(cfg, 9, poison="nonsense")


def test_a_device_without_a_seed_draws_its_noise_from_the_os(cfg, published) -> None:
    """The DP-SGD noise and sampling must not be reproducible by anyone else: two learners given
    no seed (as devices are) train different updates from the same data and model, while a fixed
    seed (experiments, tests) reproduces an update exactly."""

    def update(seed: int | None) -> bytes:
        learner = DeviceLearner(
            cfg,
            device_shard(cfg, 0),
            ledger_path=None,
            task_id="task-1",
            device_id="0x" + "00" * 20,
            seed=seed,
        )
        return learner.train_round(published.weights, 0).weights

    assert update(None) != update(None)
    assert update(5) == update(5)
