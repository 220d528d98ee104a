"""Edge offload of head training: what a device hands an edge node, and what the edge does.

A device with little compute can let an edge node train the head for it. The device sends a
:class:`HeadTrainingJob`: its **released** features (bounded and noised, charged to its privacy
ledger before the noise was drawn), their labels, and the head to start from. It never sends raw
samples, and the extractor's DP-SGD (if any) stays on the device.

What each party learns (ARCHITECTURE.md "Privacy modes" repeats this):

* the edge sees the noisy features — covered by the feature release's per-sample (ε, δ), the same
  cost the device pays when it trains the head itself, so offloading costs no extra privacy — and
  the **labels in the clear**: the feature noise does not protect labels (neither does it when the
  device trains locally: the head it uploads depends on the true labels). Only the ``dpsgd-full``
  mode protects (image, label) pairs together;
* the edge learns nothing about the extractor's DP-SGD gradients, which never leave the device;
* the device learns the trained head, which it checks and signs before submitting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import FLNodeError
from .ledger import PrivacyLedger
from .models import ModelSpec, build_head
from .privacy import FeatureRelease
from .training import train_head


class OffloadError(FLNodeError, ValueError):
    """A head-training job is malformed or was not paid for."""


@dataclass(frozen=True, eq=False)
class HeadTrainingJob:
    """Everything an edge needs to train one device's head for one round, and nothing more."""

    task_id: str
    release_id: str
    extractor_version: str
    features: Tensor
    labels: Tensor
    head_state: Mapping[str, Tensor]
    epochs: int
    lr: float
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or len(self.features) != len(self.labels):
            raise OffloadError(
                f"a job needs features [N, d] and N labels; got {tuple(self.features.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        if not bool(torch.isfinite(self.features).all()):
            raise OffloadError("a job's features must be finite")
        if any(not k.startswith("head.") for k in self.head_state):
            raise OffloadError("a job carries head weights only (keys 'head.…')")


def release_for_offload(
    *,
    ledger: PrivacyLedger,
    release: FeatureRelease,
    raw_features: Tensor,
    labels: Tensor,
    head_state: Mapping[str, Tensor],
    extractor_version: str,
    generator: torch.Generator,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> HeadTrainingJob:
    """Device side: charge the feature release, draw the noise, and package the job.

    The charge happens first (and is durable when the ledger is persisted), so a job can only
    exist for features whose privacy cost was recorded; if the budget does not allow it,
    :class:`~.ledger.PrivacyBudgetExceeded` is raised and nothing is released.
    """
    cost = release.cost
    entry = ledger.charge(
        kind="features",
        mechanism=release.mechanism_label,
        epsilon=cost.epsilon,
        delta=cost.delta,
        extractor_version=extractor_version,
        n_samples=len(raw_features),
        note=release.label,
        curve=release.curve,
    )
    noisy = release.apply(raw_features, generator).float()
    return HeadTrainingJob(
        task_id=ledger.task_id,
        release_id=entry.release_id,
        extractor_version=extractor_version,
        features=noisy,
        labels=labels,
        head_state={k: v.detach().clone() for k, v in head_state.items()},
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
    )


def train_head_job(spec: ModelSpec, job: HeadTrainingJob) -> dict[str, Tensor]:
    """Edge side (or the device itself): train the head of ``job``; the new head weights."""
    head = build_head(spec)
    try:
        head.load_state_dict({k.removeprefix("head."): v for k, v in job.head_state.items()})
    except RuntimeError as exc:
        raise OffloadError(f"the job's head does not match the task's model: {exc}") from None
    train_head(
        head,
        job.features,
        job.labels,
        epochs=job.epochs,
        lr=job.lr,
        batch_size=job.batch_size,
        seed=job.seed,
        threads=None,
    )
    if not all(bool(torch.isfinite(p).all()) for p in head.parameters()):
        raise OffloadError("head training on the released features diverged (non-finite weights)")
    return {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
