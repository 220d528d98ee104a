"""Edge offload: a job carries only charged, noisy features; the edge trains the head."""

from __future__ import annotations

import pytest
import torch

from flnode.learning.ledger import PrivacyBudgetExceeded, PrivacyLedger
from flnode.learning.mechanisms import noise_generator
from flnode.learning.models import ModelSpec, build_head
from flnode.learning.offload import (
    HeadTrainingJob,
    OffloadError,
    release_for_offload,
    train_head_job,
)
from flnode.learning.privacy import FeatureRelease

SPEC = ModelSpec.create("dp-cnn", bottleneck=8)
RELEASE = FeatureRelease.create(
    mechanism="gaussian", epsilon=2.0, accounting="per-sample", bounding="l2", dim=8, delta=1e-6
)


def _head_state() -> dict[str, torch.Tensor]:
    return {f"head.{k}": v for k, v in build_head(SPEC, seed=0).state_dict().items()}


def _job(ledger: PrivacyLedger) -> HeadTrainingJob:
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(200, 8, generator=gen)
    labels = (raw[:, 0] > 0).long()  # a learnable rule
    return release_for_offload(
        ledger=ledger,
        release=RELEASE,
        raw_features=raw,
        labels=labels,
        head_state=_head_state(),
        extractor_version="v1",
        generator=noise_generator(1),
        epochs=2,
        lr=1e-3,
        batch_size=32,
        seed=0,
    )


def test_a_job_exists_only_for_charged_noisy_features() -> None:
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=(3.0, 1e-5))
    job = _job(ledger)
    entry = ledger.entry(job.release_id)
    assert entry is not None and entry.kind == "features" and entry.curve is not None
    assert entry.extractor_version == "v1" and entry.n_samples == 200
    assert job.features.shape == (200, 8)  # d released numbers per sample, never an image
    # The features are noisy: far from the bounded originals at this ε (σ is about 4).
    assert float(job.features.std()) > 1.0
    head = train_head_job(SPEC, job)
    assert set(head) == set(_head_state())


def test_no_job_when_the_budget_is_spent() -> None:
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=(2.5, 1e-5))
    _job(ledger)
    with pytest.raises(PrivacyBudgetExceeded):
        _job(ledger)
    assert len(ledger.entries) == 1


def test_malformed_jobs_are_refused() -> None:
    ledger = PrivacyLedger.in_memory(task_id="t", device_id="d", budget=(30.0, 1e-5))
    job = _job(ledger)
    fields = {
        "task_id": job.task_id,
        "release_id": job.release_id,
        "extractor_version": job.extractor_version,
        "features": job.features,
        "labels": job.labels,
        "head_state": job.head_state,
        "epochs": 1,
        "lr": 1e-3,
        "batch_size": 32,
        "seed": 0,
    }
    with pytest.raises(OffloadError, match="features"):
        HeadTrainingJob(**{**fields, "labels": job.labels[:10]})
    with pytest.raises(OffloadError, match="finite"):
        HeadTrainingJob(**{**fields, "features": job.features * float("nan")})
    with pytest.raises(OffloadError, match="head weights only"):
        HeadTrainingJob(**{**fields, "head_state": {"extractor.fc.weight": torch.zeros(1)}})
    other = ModelSpec.create("dp-cnn", bottleneck=16)
    with pytest.raises(OffloadError, match="does not match"):
        train_head_job(other, HeadTrainingJob(**fields))
