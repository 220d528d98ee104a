"""DP-SGD on the device: layer checks, per-round charging, the budget stop, Opacus agreement."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from flnode.learning.accountant import EpsDelta
from flnode.learning.datasets import labels_to_tensor, load_dataset, to_tensor
from flnode.learning.dpsgd import (
    DpSgdError,
    DpSgdSettings,
    DpSgdTrainer,
    check_dp_trainable,
    plan_noise_multiplier,
    sampling,
)
from flnode.learning.ledger import PrivacyBudgetExceeded, PrivacyLedger
from flnode.learning.models import ModelSpec, build_model

BUDGET = EpsDelta(4.0, 1e-5)
SETTINGS = DpSgdSettings(lr=2.0, momentum=0.5, max_grad_norm=0.1, batch_size=64)


@pytest.fixture(scope="module")
def shard() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("mnist")
    return to_tensor(ds.train_images[:300]), labels_to_tensor(ds.train_labels[:300])


def _trainer(shard, ledger: PrivacyLedger, rounds: int, settings=SETTINGS, **kw) -> DpSgdTrainer:  # type: ignore[no-untyped-def]
    images, labels = shard
    z = plan_noise_multiplier(
        budget=BUDGET, n_samples=len(images), settings=settings, rounds=rounds
    )
    model = build_model(ModelSpec.create("dp-cnn"), seed=0)
    return DpSgdTrainer(
        model,
        images,
        labels,
        settings=settings,
        noise_multiplier=z,
        ledger=ledger,
        seed=1,
        threads=1,
        **kw,
    )


def test_split_cnn_with_batchnorm_is_refused_with_a_clear_error() -> None:
    model = build_model(ModelSpec.create("split-cnn", norm="clampbn"), seed=0)
    with pytest.raises(DpSgdError, match=r"BatchNorm.*dp-cnn"):
        check_dp_trainable(model)
    check_dp_trainable(build_model(ModelSpec.create("dp-cnn"), seed=0))  # supported: no error


def test_a_trainer_refuses_a_model_with_batchnorm(shard) -> None:  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=BUDGET)
    images, labels = shard
    with pytest.raises(DpSgdError, match="cannot be trained with DP-SGD"):
        DpSgdTrainer(
            build_model(ModelSpec.create("split-cnn", norm="batchnorm"), seed=0),
            images,
            labels,
            settings=SETTINGS,
            noise_multiplier=1.0,
            ledger=ledger,
        )
    assert ledger.entries == ()


def test_sampling_follows_opacus_poisson_loader() -> None:
    assert sampling(300, 64) == (1 / 5, 5)
    assert sampling(7438, 256) == (1 / 30, 30)


def test_rounds_are_charged_before_training_and_the_budget_stops_the_task(shard) -> None:  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=BUDGET)
    trainer = _trainer(shard, ledger, rounds=2)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for rnd in (1, 2):
        state = trainer.train_round(state, extractor_version=f"v{rnd}")
        assert len(ledger.entries) == rnd and ledger.entries[-1].kind == "dp-sgd"
    spent = ledger.spent()
    assert spent.epsilon <= BUDGET.epsilon
    # The task was calibrated for 2 rounds: it ends close to (not far below) its budget, and
    # Opacus' own accountant, fed by the steps actually taken, agrees with the ledger.
    assert spent.epsilon > 0.9 * BUDGET.epsilon
    assert trainer.opacus_epsilon(BUDGET.delta) == pytest.approx(spent.epsilon, rel=1e-9)

    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(PrivacyBudgetExceeded, match="privacy budget exceeded"):
        trainer.train_round(state, extractor_version="v3")
    assert len(ledger.entries) == 2  # the refused round left no trace ...
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... and trained nothing


def test_charging_each_round_as_a_whole_task_would_be_caught(shard) -> None:  # type: ignore[no-untyped-def]
    """The classic mistake: calibrating for one round and running several. The ledger refuses the
    second round instead of silently charging ε per round."""
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=BUDGET)
    trainer = _trainer(shard, ledger, rounds=1)
    state = trainer.train_round(trainer.model.state_dict(), extractor_version="v1")
    with pytest.raises(PrivacyBudgetExceeded):
        trainer.train_round(state, extractor_version="v2")


def test_extractor_mode_leaves_the_head_untouched(shard) -> None:  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=BUDGET)
    trainer = _trainer(shard, ledger, rounds=1, part="extractor")
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trained = trainer.train_round(start, extractor_version="v1")
    heads = [k for k in start if k.startswith("head.")]
    assert heads and all(torch.equal(start[k], trained[k]) for k in heads)
    assert any(not torch.equal(start[k], trained[k]) for k in start if k.startswith("extractor."))


def test_batches_processed_in_chunks_give_the_same_update_and_privacy(shard) -> None:  # type: ignore[no-untyped-def]
    """``physical_batch_size`` only bounds memory: chunks of 8 samples (a batch of 64 expected)
    take the same steps, add the same noise once per batch and end at the same weights."""
    results = []
    for physical in (10_000, 8):
        ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=BUDGET)
        settings = replace(SETTINGS, physical_batch_size=physical)
        trainer = _trainer(shard, ledger, rounds=1, settings=settings)
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trained = trainer.train_round(start, extractor_version="v1")
        results.append((start, trained, trainer.opacus_epsilon(BUDGET.delta)))
    (start, whole, eps_whole), (_, chunked, eps_chunked) = results
    assert any(not torch.equal(start[k], whole[k]) for k in start)  # it did train
    for k in whole:
        assert torch.allclose(whole[k], chunked[k], rtol=1e-4, atol=1e-6), k
    assert eps_chunked == pytest.approx(eps_whole, rel=1e-12)  # Opacus counted the same steps


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("lr", 0.0, "lr must be a positive"),
        ("max_grad_norm", float("inf"), "max_grad_norm must be a positive"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("local_epochs", 1.5, "local_epochs must be a positive integer"),
        ("physical_batch_size", 0, "physical_batch_size must be a positive integer"),
    ],
)
def test_bad_settings_are_refused(field: str, value: object, match: str) -> None:
    with pytest.raises(DpSgdError, match=match):
        DpSgdSettings(**{field: value})  # type: ignore[arg-type]


def test_a_budget_without_delta_cannot_run_dpsgd(shard) -> None:  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=(4.0, 0.0))
    images, labels = shard
    with pytest.raises(DpSgdError, match="delta > 0"):
        DpSgdTrainer(
            build_model(ModelSpec.create("dp-cnn"), seed=0),
            images,
            labels,
            settings=SETTINGS,
            noise_multiplier=1.0,
            ledger=ledger,
        )
