"""One task's learning as the daemon's roles run it: bytes in, bytes out, no networking.

The node's federation services (:mod:`flnode.federation`) move models and updates between
processes by CID and record every step on the ledger; what each role *computes* is here, so that
it can be tested and timed without a network, and so that every miner computes the same thing:

* the manufacturer's initial model: :func:`publish_model` (pre-training on the public slice; its
  test accuracy is the *public-only* baseline the federation's gain is measured against);
* a device's round: :class:`DeviceLearner` (DP-SGD on its private shard, charged to its privacy
  ledger before it runs; in ``dpsgd-extractor`` mode the head is trained on the round's released,
  noised features, which is the part an edge node may do: :func:`train_offloaded_head`);
* a miner's judgement of a round: :func:`judge_round` (checks each update against the task's
  model, runs the task's robust rule, returns the aggregate's bytes and who was accepted);
* everyone's evaluation: :func:`evaluate_model` on the test split's first ``eval_size`` images.

Determinism matters for the miners: :func:`judge_round` depends only on its arguments (the
submissions in ledger order) and runs on one torch thread, so miners on the same platform produce
byte-identical aggregates; a miner on another CPU may differ in the last bits, which is why the
node compares a proposal's aggregate with :func:`~.aggregation.aggregates_match` when the CIDs
differ.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..cid import Cid
from ..errors import FLNodeError
from .accountant import Charge, EpsDelta
from .aggregation import (
    AggregationError,
    TensorSpec,
    Update,
    UpdateValidationError,
    strategy_from_spec,
    tensor_specs,
    validate_update,
)
from .attacks import free_ride, gaussian_noise, sign_flip
from .bounding import get_bounding
from .datasets import Dataset, labels_to_tensor, load_dataset, to_tensor
from .dp_simulation import model_spec_for, plan_feature_release
from .dpsgd import DpSgdSettings, DpSgdTrainer, plan_noise_multiplier
from .ledger import PrivacyLedger
from .mechanisms import noise_generator
from .models import ModelSpec, build_model
from .offload import HeadTrainingJob, release_for_offload, train_head_job
from .privacy import FeatureRelease
from .serialization import WeightsFormatError, weights_from_bytes, weights_to_bytes
from .simulation import SimulationConfig, partition_for
from .taskspec import LearningTaskSpec
from .training import RandomShift, evaluate, pretrain, set_threads

NETWORK_MODES = ("dpsgd-full", "dpsgd-extractor")
POISONS = ("label-flip", "scale", "sign-flip", "gaussian-noise", "free-ride")
"""Attacks a device can be told to make (``federation.fault``; tests, benchmarks, demos): train on
flipped labels; boost its change ×``SCALE_FACTOR``; reverse it ×``SCALE_FACTOR``; add N(0, 1)
noise to every weight; or skip training and resubmit the global model."""
SCALE_FACTOR = 10.0  # as the simulation's attack_scale: "scale" and "sign-flip" use it
NOISE_STD = 1.0  # as the simulation's attack_noise_std

HeadTrainer = Callable[[HeadTrainingJob], Mapping[str, Tensor]]


class FederatedLearningError(FLNodeError, ValueError):
    """A task cannot run on the network as specified (the message says what to change)."""


def network_config(spec: LearningTaskSpec, shard_count: int, seed: int = 0) -> SimulationConfig:
    """The learning settings of ``spec`` for a network whose private data is split in
    ``shard_count`` shards (the same partition on every node: the public slice is the
    manufacturer's, shard ``i`` is device ``i``'s)."""
    if spec.privacy.mode not in NETWORK_MODES:
        raise FederatedLearningError(
            f"privacy mode {spec.privacy.mode!r} runs in `flnode simulate` only; on the network "
            f"use one of {', '.join(NETWORK_MODES)}"
        )
    return spec.simulation_config(n_devices=shard_count, seed=seed, threads=1)


@cache
def _dataset(name: str) -> Dataset:
    return load_dataset(name)


def warm_dataset_cache(name: str) -> None:
    """Load data set ``name`` into this process's cache now (read-only arrays: a process forked
    afterwards shares their pages; the devnet's zygote does this once for all its nodes)."""
    _dataset(name)


@dataclass(frozen=True, slots=True)
class Shard:
    """A device's private training data (never leaves the device)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def device_shard(cfg: SimulationConfig, index: int) -> Shard:
    """Shard ``index`` of the partition ``cfg`` describes (devnet devices get theirs this way)."""
    if not 0 <= index < cfg.n_devices:
        raise FederatedLearningError(f"shard {index} does not exist: there are {cfg.n_devices}")
    ds = _dataset(cfg.dataset)
    part = partition_for(cfg, ds.train_labels)
    idx = np.asarray(part.shards[index], dtype=np.int64)
    # Select, then convert: converting all 60,000 images first made a 188 MB float32 temporary
    # in every device process, memory the allocator kept after it was freed.
    return Shard(to_tensor(ds.train_images[idx]), labels_to_tensor(ds.train_labels[idx]))


def _bound(cfg: SimulationConfig) -> Callable[[Tensor], Tensor] | None:
    return get_bounding(cfg.bounding).apply if cfg.mode == "dpsgd-extractor" else None


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """The manufacturer's initial global model and its public-only test accuracy."""

    weights: bytes
    public_only_accuracy: float
    public_only_loss: float
    pretrain_s: float


def publish_model(cfg: SimulationConfig, eval_size: int) -> PublishedModel:
    """Pre-train the task's model on the public slice (no privacy cost) and evaluate it."""
    set_threads(cfg.threads)
    ds = _dataset(cfg.dataset)
    part = partition_for(cfg, ds.train_labels)
    public = torch.tensor(part.public, dtype=torch.int64)
    spec = model_spec_for(cfg)
    model = build_model(spec, seed=cfg.seed)
    t0 = time.perf_counter()
    if len(public):
        pretrain(
            model,
            to_tensor(ds.train_images)[public],
            labels_to_tensor(ds.train_labels)[public],
            public_data=True,
            epochs=cfg.pretrain_epochs,
            lr=cfg.pretrain_lr,
            batch_size=cfg.pretrain_batch_size,
            noise_fn=None,
            bound_fn=_bound(cfg),
            seed=cfg.seed,
            threads=cfg.threads,
            augment=RandomShift(cfg.pretrain_shift) if cfg.pretrain_shift else None,
        )
    pretrain_s = time.perf_counter() - t0
    weights = weights_to_bytes(model.state_dict())
    accuracy, loss = evaluate_model(cfg, weights, eval_size)
    return PublishedModel(weights, accuracy, loss, pretrain_s)


def load_weights(cfg: SimulationConfig, data: bytes) -> dict[str, Tensor]:
    """The task model's weights from safetensors bytes (shapes and dtypes checked)."""
    return weights_from_bytes(data, expected=model_spec_for(cfg).weight_specs("full"))


def evaluate_model(cfg: SimulationConfig, weights: bytes, eval_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a model on the first ``eval_size`` test images."""
    ds = _dataset(cfg.dataset)
    n = min(eval_size, len(ds.test_labels))
    model = build_model(model_spec_for(cfg))
    model.load_state_dict(load_weights(cfg, weights))
    result = evaluate(
        model,
        to_tensor(ds.test_images[:n]),
        labels_to_tensor(ds.test_labels[:n]),
        transform=_bound(cfg),
        threads=None,
    )
    return float(result.accuracy), float(result.loss)


# -- devices ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainedUpdate:
    """A device's update for one round, with what it cost."""

    weights: bytes
    n_samples: int
    train_s: float
    feature_s: float
    """Feature extraction + noise (``dpsgd-extractor``); 0 in ``dpsgd-full``."""
    head_s: float
    """Head training on the released features (on the device or an edge)."""
    offloaded: bool
    epsilon_spent: float


class DeviceLearner:
    """One device's learning for one task: one DP-SGD engine, charged to a persistent ledger.

    The noise multiplier is calibrated when the learner is made, for all of the task's rounds
    (and, in ``dpsgd-extractor``, its planned feature releases), so that the whole task fits the
    per-sample budget; a device restarted mid-task reopens the same ledger and computes the same
    calibration. ``budget_cap`` lets a device agree to less than the task asks: its ledger's budget
    is then the smaller one, and the round that would exceed it is refused
    (:class:`~.ledger.PrivacyBudgetExceeded`) before anything is trained or released.
    """

    def __init__(
        self,
        cfg: SimulationConfig,
        shard: Shard,
        *,
        ledger_path: Path | None,
        task_id: str,
        device_id: str,
        seed: int | None = None,
        budget_cap: float | None = None,
        poison: str | None = None,
    ) -> None:
        if poison is not None and poison not in POISONS:
            raise FederatedLearningError(f"unknown poison {poison!r}; known: {', '.join(POISONS)}")
        if cfg.delta is None:
            raise FederatedLearningError("DP-SGD needs delta > 0 in the task's privacy budget")
        self.cfg = cfg
        self.shard = shard
        self.poison = poison
        # The seed drives the DP-SGD noise and the Poisson sampling, whose privacy holds only if
        # nobody else can reproduce them: a real device draws it from the OS (None); a fixed one
        # is for reproducible experiments and tests.
        self.seed = secrets.randbits(62) if seed is None else seed
        task_budget = EpsDelta(cfg.epsilon, cfg.delta)
        budget = task_budget
        if budget_cap is not None and budget_cap < cfg.epsilon:
            budget = EpsDelta(budget_cap, cfg.delta)
        self.ledger = (
            PrivacyLedger.in_memory(task_id=task_id, device_id=device_id, budget=budget)
            if ledger_path is None
            else PrivacyLedger.open(
                ledger_path, task_id=task_id, device_id=device_id, budget=budget
            )
        )
        settings = DpSgdSettings(
            lr=cfg.dp_lr,
            momentum=cfg.dp_momentum,
            max_grad_norm=cfg.dp_clip,
            batch_size=cfg.dp_batch_size,
            local_epochs=cfg.local_epochs,
        )
        self.spec = model_spec_for(cfg)
        self.release: FeatureRelease | None = None
        if cfg.mode == "dpsgd-extractor":
            self.release = plan_feature_release(
                mechanism=cfg.mechanism,
                bounding=cfg.bounding,
                dim=self.spec.bottleneck,
                releases=cfg.rounds,
                epsilon=cfg.feature_share * cfg.epsilon,
                delta=cfg.delta,
            )
        planned = (
            [Charge(self.release.cost, self.release.curve)] * cfg.rounds if self.release else []
        )
        # Calibrated against the task's budget (what every device of the task plans with), not
        # the cap: a capped device then simply stops early, which is what it agreed to.
        self.noise_multiplier = plan_noise_multiplier(
            budget=task_budget,
            n_samples=len(shard),
            settings=settings,
            rounds=cfg.rounds,
            prior=planned,
        )
        labels = shard.labels
        if poison == "label-flip":
            labels = (cfg_classes(cfg) - 1) - labels
        self._labels = labels
        self.trainer = DpSgdTrainer(
            build_model(self.spec, seed=cfg.seed),
            shard.images,
            labels,
            settings=settings,
            noise_multiplier=self.noise_multiplier,
            ledger=self.ledger,
            part="full" if cfg.mode == "dpsgd-full" else "extractor",
            transform=_bound(cfg),
            seed=self.seed,
            threads=None,
        )
        self._noise = noise_generator(None)

    def train_round(
        self, global_weights: bytes, round_: int, *, head_trainer: HeadTrainer | None = None
    ) -> TrainedUpdate:
        """Train one round from ``global_weights``; ``head_trainer`` (e.g. an edge) trains the
        head on the released features in ``dpsgd-extractor`` mode (default: locally).

        Raises :class:`~.ledger.PrivacyBudgetExceeded` (nothing trained) when the round does not
        fit the budget; a head trainer's failure propagates (the caller may retry locally).
        """
        set_threads(1)
        global_state = load_weights(self.cfg, global_weights)
        if self.poison == "free-ride":
            return TrainedUpdate(
                weights_to_bytes(free_ride(global_state)),
                len(self.shard),
                0.0,
                0.0,
                0.0,
                False,
                self.ledger.spent().epsilon,
            )
        version = str(Cid.from_data(global_weights))
        weights = dict(global_state)
        feature_s = head_s = 0.0
        offloaded = False
        if self.release is not None:
            t0 = time.perf_counter()
            job = self.release_features(global_state, version, round_)
            feature_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            if head_trainer is not None:
                head = head_trainer(job)
                offloaded = True
            else:
                head = train_head_job(self.spec, job)
            check_head(self.spec, head)
            head_s = time.perf_counter() - t0
            weights.update(head)
        t0 = time.perf_counter()
        trained = self.trainer.train_round(
            global_state, extractor_version=version, note=round_note(round_)
        )
        if self.cfg.mode == "dpsgd-full":
            weights = trained
        else:
            weights.update({k: v for k, v in trained.items() if k.startswith("extractor.")})
        train_s = time.perf_counter() - t0
        if self.poison == "scale":
            weights = {
                k: (g + SCALE_FACTOR * (weights[k] - g)) if g.is_floating_point() else weights[k]
                for k, g in global_state.items()
            }
        elif self.poison == "sign-flip":
            weights = sign_flip(weights, global_state, scale=SCALE_FACTOR)
        elif self.poison == "gaussian-noise":
            generator = torch.Generator().manual_seed((self.seed * 7919 + round_) % 2**63)
            weights = gaussian_noise(weights, NOISE_STD, generator)
        return TrainedUpdate(
            weights_to_bytes(weights),
            len(self.shard),
            train_s,
            feature_s,
            head_s,
            offloaded,
            self.ledger.spent().epsilon,
        )

    def release_features(
        self, global_state: Mapping[str, Tensor], version: str, round_: int
    ) -> HeadTrainingJob:
        """Charge and release this round's noisy features (``dpsgd-extractor``)."""
        assert self.release is not None
        model = build_model(self.spec)
        model.load_state_dict(dict(global_state))
        with torch.no_grad():
            raw = model.extractor.eval()(self.shard.images)
        return release_for_offload(
            ledger=self.ledger,
            release=self.release,
            raw_features=raw,
            labels=self._labels,
            head_state={k: v for k, v in global_state.items() if k.startswith("head.")},
            extractor_version=version,
            generator=self._noise,
            epochs=self.cfg.head_epochs,
            lr=self.cfg.head_lr,
            batch_size=self.cfg.batch_size,
            seed=(self.seed * 1009 + round_) % 2**63,
        )


def round_note(round_: int) -> str:
    """The ledger note of a round's DP-SGD charge (how a restarted device knows it was charged)."""
    return f"round {round_}"


def cfg_classes(cfg: SimulationConfig) -> int:
    return int(_dataset(cfg.dataset).n_classes)


def check_head(spec: ModelSpec, head: Mapping[str, Tensor]) -> None:
    """An edge's answer must be exactly the head's tensors, finite."""
    expected = {
        key: TensorSpec(tuple(shape), dtype)
        for key, (shape, dtype) in spec.weight_specs("head").items()
    }
    try:
        validate_update(head, expected, max_norm=None)
    except UpdateValidationError as exc:
        raise FederatedLearningError(f"the trained head is not usable: {exc}") from None


def train_offloaded_head(cfg: SimulationConfig, job: HeadTrainingJob) -> dict[str, Tensor]:
    """Edge side: train a device's head on its released features (nothing else is sent)."""
    set_threads(1)
    return train_head_job(model_spec_for(cfg), job)


# -- miners -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    """An update as the ledger lists it, with its bytes when the miner could fetch them."""

    device: str
    cid: str
    n_samples: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class RoundDecision:
    """A miner's judgement of one round (what ``commitRound`` carries)."""

    weights: bytes
    """The new global model (the old one when the round carried it forward)."""
    accepted: tuple[str, ...]
    rejected: tuple[str, ...]
    reasons: dict[str, str]
    """Why each rejected device was rejected."""
    carried_forward: bool
    aggregate_s: float


def judge_round(
    cfg: SimulationConfig,
    rule: str,
    params: Mapping[str, int | float | str],
    global_weights: bytes,
    submissions: Sequence[Submission],
    *,
    min_updates: int,
    max_update_norm: float | None,
) -> RoundDecision:
    """Verify each submission, run the task's robust rule over the valid ones, and decide.

    A submission is rejected when its bytes could not be fetched, are the global model itself
    (a free rider that did not train), are a copy of an earlier submission's bytes (same CID: the
    first in ``submissions`` order, the ledger's, stands), do not decode as the task's model, are
    not finite, change the model by more than ``max_update_norm``, or when the rule filters it
    out. (CIDs are public on the ledger, so without the copy check one joined device could make
    the rule fail on duplicates and stall every round.) With fewer than ``min_updates`` (or fewer than the rule needs) valid updates
    the round carries the old model forward: nobody is accepted and only invalid updates are
    rejected.
    """
    t0 = time.perf_counter()
    set_threads(1)
    reference = load_weights(cfg, global_weights)
    specs = tensor_specs(reference)
    valid: list[Update] = []
    reasons: dict[str, str] = {}
    first_by_cid: dict[str, str] = {}
    for sub in submissions:
        if sub.data is None:
            reasons[sub.device] = "could not be fetched"
            continue
        if sub.data == global_weights:
            reasons[sub.device] = "the global model unchanged (no training)"
            continue
        original = first_by_cid.setdefault(sub.cid, sub.device)
        if original != sub.device:
            reasons[sub.device] = f"a copy of {original}'s update (same CID)"
            continue
        try:
            weights = load_weights(cfg, sub.data)
            validate_update(weights, specs, max_norm=max_update_norm, reference=reference)
        except (WeightsFormatError, UpdateValidationError) as exc:
            reasons[sub.device] = str(exc)[:200]
            continue
        valid.append(Update(sub.cid, sub.device, weights, sub.n_samples))
    strategy = strategy_from_spec(rule, **dict(params))
    enough = max(min_updates, strategy.min_updates())
    if len(valid) < enough:
        return RoundDecision(
            global_weights,
            (),
            tuple(d for d in (s.device for s in submissions) if d in reasons),
            reasons,
            True,
            time.perf_counter() - t0,
        )
    try:
        result = strategy.aggregate(valid)
    except AggregationError as exc:
        for u in valid:
            reasons[u.sender] = f"aggregation failed: {exc}"[:200]
        return RoundDecision(
            global_weights,
            (),
            tuple(s.device for s in submissions),
            reasons,
            True,
            time.perf_counter() - t0,
        )
    by_cid = {u.cid: u.sender for u in valid}
    accepted_devices = {by_cid[c] for c in result.accepted}
    for cid in result.rejected:
        reasons[by_cid[cid]] = f"filtered out by {result.rule} (score {result.scores[cid]:.4g})"
    order = [s.device for s in submissions]
    accepted = tuple(d for d in order if d in accepted_devices)
    rejected = tuple(d for d in order if d not in accepted_devices)
    merged = dict(reference)
    merged.update(result.weights)
    return RoundDecision(
        weights_to_bytes(merged),
        accepted,
        rejected,
        reasons,
        False,
        time.perf_counter() - t0,
    )


def model_version(weights: bytes) -> str:
    return str(Cid.from_data(weights))


__all__ = [
    "NETWORK_MODES",
    "DeviceLearner",
    "FederatedLearningError",
    "PublishedModel",
    "RoundDecision",
    "Shard",
    "Submission",
    "TrainedUpdate",
    "device_shard",
    "evaluate_model",
    "judge_round",
    "load_weights",
    "model_version",
    "network_config",
    "publish_model",
    "round_note",
    "train_offloaded_head",
]
