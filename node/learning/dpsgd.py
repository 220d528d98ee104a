"""DP-SGD on the device: per-sample clipping, Gaussian noise and Poisson sampling, with Opacus.

Why this exists: a device that trains any part of the model on its **raw** private data and uploads
those weights releases information that noise on the features does not cover. DP-SGD (Abadi et al.
2016) makes that training itself differentially private: every step clips each sample's gradient to
L2 norm ``max_grad_norm`` (C), adds Gaussian noise of standard deviation z·C to the sum, and draws
the batch by Poisson sampling at rate q. The uploaded weights are then post-processing of those
noisy steps, and their cost is a :class:`~.accountant.SubsampledGaussianCurve` in the device's
ledger, where it composes (in Rényi DP) with the device's feature releases.

Opacus (a well-kept library) does the per-sample gradients, clipping, noise and sampling. flnode
keeps the accounting in its own ledger rather than Opacus' accountant, because the ledger must also
hold the feature releases and survive restarts; the tests check that both agree.

Rules that keep the guarantee honest (each one a measured pitfall, docs/notes/dpsgd-prototype.md):

* one :class:`DpSgdTrainer` (one Opacus engine) per device and task, for the whole task; the noise
  multiplier is calibrated **once** for every step the task will take (:func:`plan_noise_multiplier`),
  never per round;
* the sample rate is the device's own: q = 1 / ⌈n / batch⌉ over its own shard (Opacus' Poisson
  loader samples each example with that probability, ⌈n / batch⌉ times per epoch);
* a round is charged to the ledger **before** it runs, for all of its planned steps; if the charge
  does not fit, nothing is trained and :class:`~.ledger.PrivacyBudgetExceeded` says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FLNodeError
from .accountant import (
    Charge,
    EpsDelta,
    SubsampledGaussianCurve,
    calibrate_noise_multiplier,
)
from .ledger import PrivacyLedger
from .training import set_threads

TrainedPart = Literal["full", "extractor"]
"""What DP-SGD trains: the whole model, or the extractor with the head frozen."""


class DpSgdError(FLNodeError, ValueError):
    """DP-SGD cannot run as asked (unsupported layers, bad settings); the message says why."""


@dataclass(frozen=True, slots=True)
class DpSgdSettings:
    """The optimiser side of DP-SGD (the noise multiplier is calibrated, not chosen).

    With every per-sample gradient clipped, ``lr × max_grad_norm`` sets the scale of both the
    signal and the noise, so tune ``lr`` and keep C small (measured: C = 0.1 with lr 2 behaves like
    C = 1 with lr 0.2).

    ``physical_batch_size`` bounds how many samples' gradients are held at once: a Poisson batch
    (``batch_size`` expected) is processed in chunks of at most this many, their clipped
    gradients summed, and the noise is added once per batch, so privacy and the update are the
    same (up to the order of float sums). Measured on the default task (``dp-cnn``, batch 256):
    a round's peak memory +240-270 MiB unsplit, +46-57 MiB in chunks of 64, at the same speed
    (chunks of 32: +12-24 MiB, but 10-30 % slower).
    """

    lr: float = 4.0
    momentum: float = 0.9
    max_grad_norm: float = 0.1
    batch_size: int = 256
    local_epochs: int = 1
    physical_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("lr", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise DpSgdError(f"DP-SGD {name} must be a positive number. Got: {value!r}")
        if not (isinstance(self.momentum, int | float) and 0 <= self.momentum < 1):
            raise DpSgdError(f"DP-SGD momentum must be in [0, 1). Got: {self.momentum!r}")
        for name in ("batch_size", "local_epochs", "physical_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DpSgdError(f"DP-SGD {name} must be a positive integer. Got: {value!r}")


def sampling(n_samples: int, batch_size: int) -> tuple[float, int]:
    """(sample rate q, steps per epoch) of Opacus' Poisson loader over ``n_samples`` samples."""
    if n_samples < 1:
        raise DpSgdError("DP-SGD needs at least one private sample")
    steps = math.ceil(n_samples / batch_size)
    return 1.0 / steps, steps


def plan_noise_multiplier(
    *,
    budget: EpsDelta,
    n_samples: int,
    settings: DpSgdSettings,
    rounds: int,
    prior: Iterable[Charge] = (),
) -> float:
    """The noise multiplier that makes ``rounds`` rounds of DP-SGD, together with the ``prior``
    (or planned) releases, spend at most ``budget`` per sample."""
    q, steps_per_epoch = sampling(n_samples, settings.batch_size)
    steps = rounds * settings.local_epochs * steps_per_epoch
    return calibrate_noise_multiplier(prior, sample_rate=q, steps=steps, budget=budget)


_OPACUS_KNOWN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def check_dp_trainable(module: nn.Module) -> None:
    """Raise :class:`DpSgdError` naming every layer Opacus cannot train with DP-SGD."""
    from opacus.validators import ModuleValidator

    problems_found = {str(e) for e in ModuleValidator.validate(module, strict=False)}
    # Opacus' validator matches the exact BatchNorm classes; subclasses (flnode's clamping norms)
    # mix samples of a batch just the same, so they are refused here by inheritance.
    problems_found |= {
        f"BatchNorm cannot support training with differential privacy ({name}: {type(m).__name__})"
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and type(m) not in _OPACUS_KNOWN_BATCHNORMS
    }
    if problems_found:
        problems = "; ".join(sorted(problems_found))
        raise DpSgdError(
            f"this model cannot be trained with DP-SGD: {problems}. Use an architecture without "
            "BatchNorm in the trained parts (e.g. 'dp-cnn' with norm 'none' or 'groupnorm')"
        )


class DpSgdTrainer:
    """One device's DP-SGD for one task: one Opacus engine, charged to the device's ledger.

    ``model`` is the device's working copy; :meth:`train_round` loads the round's global weights
    into it, charges the round, trains, and returns the new state dict. The optimiser's momentum
    buffer persists across rounds (it is post-processing of already-private gradients).
    """

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        *,
        settings: DpSgdSettings,
        noise_multiplier: float,
        ledger: PrivacyLedger,
        part: TrainedPart = "full",
        transform: object = None,
        seed: int | None = None,
        threads: int | None = None,
    ) -> None:
        from opacus import PrivacyEngine
        from opacus.utils.batch_memory_manager import wrap_data_loader
        from torch.utils.data import DataLoader, TensorDataset

        if part not in ("full", "extractor"):
            raise DpSgdError(f"part must be 'full' or 'extractor'. Got: {part!r}")
        if len(images) != len(labels):
            raise DpSgdError(f"{len(images)} images but {len(labels)} labels")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise DpSgdError(f"noise multiplier must be positive. Got: {noise_multiplier!r}")
        if ledger.budget.delta <= 0:
            raise DpSgdError("DP-SGD needs a privacy budget with delta > 0")
        set_threads(threads)
        self.model = model
        self.settings = settings
        self.noise_multiplier = float(noise_multiplier)
        self.ledger = ledger
        self.part = part
        self.n_samples = len(images)
        self.sample_rate, self.steps_per_epoch = sampling(self.n_samples, settings.batch_size)
        self.empty_batches = 0
        self._transform = transform
        if part == "extractor":
            for name, p in model.named_parameters():
                p.requires_grad_(not name.startswith("head."))
        check_dp_trainable(_trained(model))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        loader = DataLoader(
            TensorDataset(images, labels), batch_size=settings.batch_size, generator=generator
        )
        optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=settings.lr,
            momentum=settings.momentum,
        )
        model.train()
        with warnings.catch_warnings():
            # Opacus warns that secure_mode is off: its noise then comes from torch's PRNG, as
            # every other noise in flnode does; documented in ARCHITECTURE.md.
            warnings.simplefilter("ignore", UserWarning)
            self._engine = PrivacyEngine(accountant="rdp")
            noise_gen = torch.Generator().manual_seed(seed + 1) if seed is not None else None
            self._module, self._optimizer, self._loader = self._engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=settings.max_grad_norm,
                poisson_sampling=True,
                noise_generator=noise_gen,
            )
        # Poisson batches in chunks of at most ``physical_batch_size``; the optimiser steps (and
        # adds noise) only after a batch's last chunk (see DpSgdSettings).
        self._loader = wrap_data_loader(
            data_loader=self._loader,
            max_batch_size=settings.physical_batch_size,
            optimizer=self._optimizer,
        )

    @property
    def round_curve(self) -> SubsampledGaussianCurve:
        """What one round costs: ``local_epochs × steps_per_epoch`` sampled Gaussian steps."""
        return SubsampledGaussianCurve(
            self.noise_multiplier,
            self.sample_rate,
            self.settings.local_epochs * self.steps_per_epoch,
        )

    def opacus_epsilon(self, delta: float) -> float:
        """ε according to Opacus' own accountant (steps actually taken), for cross-checks."""
        from .accountant import ORDERS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(self._engine.accountant.get_epsilon(delta, alphas=list(ORDERS)))

    def train_round(
        self, global_state: Mapping[str, Tensor], *, extractor_version: str, note: str = ""
    ) -> dict[str, Tensor]:
        """Charge one round to the ledger, then run it from ``global_state``; the new weights."""
        curve = self.round_curve
        delta = self.ledger.budget.delta
        self.ledger.charge(
            kind="dp-sgd",
            mechanism=f"dp-sgd(z={self.noise_multiplier:.4g},C={self.settings.max_grad_norm:g})",
            epsilon=curve.standalone(delta).epsilon,
            delta=delta,
            extractor_version=extractor_version,
            n_samples=self.n_samples,
            note=note or f"{curve.steps} DP-SGD steps at q={self.sample_rate:.4g}",
            curve=curve,
        )
        self.model.load_state_dict(dict(global_state))
        self._module.train()
        with warnings.catch_warnings():
            # Opacus' hooks fire "with respect to module outputs since no inputs require
            # gradients": images never require gradients; the per-sample gradients are right.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self._run_epochs()
        self._optimizer.zero_grad(set_to_none=True)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _run_epochs(self) -> None:
        for _ in range(self.settings.local_epochs):
            for xb, yb in self._loader:
                if len(xb) == 0:
                    # Poisson sampling drew no sample (probability (1−q)^n). The step is charged
                    # anyway (conservative); there is nothing to clip, so nothing is trained.
                    # (A batch split into chunks never yields an empty chunk.)
                    self.empty_batches += 1
                    continue
                self._optimizer.zero_grad(set_to_none=True)
                logits = (
                    self._module(xb)
                    if self._transform is None
                    else self._module(xb, transform=self._transform)
                )
                F.cross_entropy(logits, yb).backward()
                self._optimizer.step()


def _trained(model: nn.Module) -> nn.Module:
    """The part of ``model`` whose parameters DP-SGD trains (for the layer check)."""
    head = getattr(model, "head", None)
    extractor = getattr(model, "extractor", None)
    if (
        extractor is not None
        and head is not None
        and not any(p.requires_grad for p in head.parameters())
    ):
        return extractor
    return model
