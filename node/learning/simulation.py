"""The whole learning pipeline for N devices in one process: the reference result.

This runs exactly what the daemon's roles will run, minus the network and the chain:

1. the manufacturer pre-trains extractor + head on its **public** slice with the task's bounding and
   noise in the loop (public data costs no privacy), then freezes the extractor; the accuracy of that
   model is the **public-only** baseline every federated result is shown beside;
2. each device computes its private samples' features once, bounds them and adds noise **once**
   (:class:`~.privacy.NoisyFeatureCache`, charged to the device's :class:`~.ledger.PrivacyLedger`);
3. each round every device trains the head from the global head on its fixed noisy features, the
   update is serialised (safetensors) and named by its CID, attackers (if any) poison theirs, and
   the task's :class:`~.aggregation.Strategy` combines the updates into the next global head;
4. after every round the global model is evaluated on the test set: **clean** (the device runs the
   model on its own noise-free features) and **noisy** (fresh noise on the test features).

Used by ``flnode simulate``, by the benchmarks (``python -m bench.accuracy``) and, later, by the
end-to-end issue as the reference the daemon's devnet result is compared with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..cid import Cid
from .aggregation import (
    AggregationError,
    AggregationResult,
    Strategy,
    Update,
    strategy_from_spec,
)
from .attacks import flip_labels, free_ride, gaussian_noise, scale_update, sign_flip
from .bounding import Bounding, get_bounding
from .datasets import labels_to_tensor, load_dataset, to_tensor
from .ledger import PrivacyLedger
from .mechanisms import noise_generator
from .models import ModelSpec, build_head, build_model
from .norms import NORMS
from .partition import Partition, partition_indices
from .privacy import Accounting, FeatureRelease, NoisyFeatureCache, sample_ids_key
from .serialization import weights_from_bytes, weights_to_bytes
from .training import RandomShift, evaluate, extract_features, pretrain, set_threads, train_head

PrivacyMode = Literal["frozen", "dpsgd-extractor", "dpsgd-full"]
PRIVACY_MODES: tuple[str, ...] = ("frozen", "dpsgd-extractor", "dpsgd-full")
"""How a device's private data reaches the model (README "Privacy modes"):

* ``frozen`` — the manufacturer's public extractor is frozen; devices release noisy features and
  train the head on them (the paper's scheme; the update has no extractor weights);
* ``dpsgd-extractor`` — devices train the extractor with DP-SGD on raw data and the head on noisy
  features (which an edge node can do for them);
* ``dpsgd-full`` — devices train the whole model with DP-SGD, locally only.
"""

AttackName = Literal["none", "label-flip", "sign-flip", "scale", "gaussian-noise", "free-ride"]
ATTACK_NAMES: tuple[str, ...] = (
    "none",
    "label-flip",
    "sign-flip",
    "scale",
    "gaussian-noise",
    "free-ride",
)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines one simulated federated task.

    ``epsilon`` is read in the ``accounting`` convention (``per-sample``, flnode's honest one, or
    ``per-feature``, the paper's); ``None`` means no noise at all (ε = ∞, no privacy).
    """

    mode: PrivacyMode = "frozen"
    dataset: str = "mnist"
    n_devices: int = 10
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_device: int = 2
    public_size: int = 2000
    max_samples_per_device: int | None = None
    rounds: int = 5
    local_epochs: int = 2
    batch_size: int = 64
    head_lr: float = 1e-3
    pretrain_epochs: int = 30
    pretrain_shift: int = 2
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 64
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon: float | None = 10.0
    delta: float | None = None
    accounting: Accounting = "per-sample"
    bounding: str = "l1"
    bottleneck: int = 8
    norm: str = "clampbn"
    strategy: str = "fedavg"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    attack: str = "none"
    attack_fraction: float = 0.0
    attack_scale: float = 10.0
    attack_noise_std: float = 1.0
    seed: int = 0
    noise_seed: int | None = None
    threads: int = 2
    # DP-SGD modes only (see :mod:`.dp_simulation`); ``local_epochs`` is the DP-SGD epochs there.
    dp_lr: float = 4.0
    dp_momentum: float = 0.9
    dp_clip: float = 0.1
    dp_batch_size: int = 256
    feature_share: float = 0.5
    head_epochs: int = 2

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; known: {', '.join(PRIVACY_MODES)}")
        if self.mode != "frozen":
            if self.epsilon is None or self.delta is None or not 0 < self.delta < 1:
                raise ValueError(
                    f"mode {self.mode!r} trains on raw data with DP-SGD, which needs a finite "
                    "epsilon and a delta in (0, 1)"
                )
            if self.accounting != "per-sample":
                raise ValueError("DP-SGD modes are accounted per sample only")
            from .dpsgd import DpSgdSettings  # validates the DP-SGD knobs with clear errors

            DpSgdSettings(
                lr=self.dp_lr,
                momentum=self.dp_momentum,
                max_grad_norm=self.dp_clip,
                batch_size=self.dp_batch_size,
                local_epochs=self.local_epochs,
            )
            if self.mode == "dpsgd-extractor" and not 0 < self.feature_share < 1:
                raise ValueError(
                    f"feature_share must be in (0, 1) (the part of ε planned for the feature "
                    f"releases). Got: {self.feature_share}"
                )
        if self.n_devices < 1:
            raise ValueError(f"n_devices must be ≥ 1. Got: {self.n_devices}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be ≥ 1. Got: {self.rounds}")
        if self.epsilon is not None and self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0 (or None for no noise). Got: {self.epsilon}")
        if self.attack not in ATTACK_NAMES:
            raise ValueError(f"unknown attack {self.attack!r}; known: {', '.join(ATTACK_NAMES)}")
        if not 0.0 <= self.attack_fraction < 1.0:
            raise ValueError(f"attack_fraction must be in [0, 1). Got: {self.attack_fraction}")
        if (
            self.mode == "frozen"
            and self.mechanism == "gaussian"
            and self.epsilon is not None
            and self.delta is None
        ):
            raise ValueError("the Gaussian mechanism needs a delta")
        # Fail before any training: the rule, the norm and the bounding are checked up front.
        strategy_from_spec(self.strategy, **dict(self.strategy_params))
        get_bounding(self.bounding)
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known: {', '.join(NORMS)}")

    @property
    def n_attackers(self) -> int:
        return 0 if self.attack == "none" else round(self.attack_fraction * self.n_devices)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["strategy_params"] = dict(self.strategy_params)
        return out


PRESETS: Mapping[str, Mapping[str, Any]] = {
    # learning.md's measured recipe (README "Accuracy"): public extractor, noisy 8-d features.
    "frozen": {"mode": "frozen"},
    # Measured in docs/notes/dpsgd-prototype.md (run H) and bench/results/accuracy.json.
    "dpsgd-full": {
        "mode": "dpsgd-full",
        "n_devices": 8,
        "public_size": 500,
        "rounds": 10,
        "local_epochs": 1,
        "epsilon": 10.0,
        "delta": 1e-5,
        "bottleneck": 32,
        "pretrain_epochs": 60,
        "pretrain_lr": 1e-3,
        "pretrain_batch_size": 50,
        "pretrain_shift": 0,
        "dp_lr": 4.0,
        "dp_momentum": 0.9,
        "dp_clip": 0.1,
        "dp_batch_size": 256,
        "threads": 1,
    },
}
PRESETS["dpsgd-extractor"] = {  # type: ignore[index]
    **PRESETS["dpsgd-full"],
    "mode": "dpsgd-extractor",
    # At full scale (8 × 7,437 images, 10 rounds) the head trained on noisy features with lr 1e-3
    # × 2 epochs drifted and the model collapsed (round 5 at 500 public images, round 9 at 2,000),
    # with DP-SGD lr 4 / momentum 0.9 and with lr 2 / momentum 0.5 alike
    # (bench/results/privacy_modes_superseded/): each round's feature release gets ε ≈ 1, so the
    # noise (σ ≈ 9 on unit-norm features) swamps the signal. The head now takes one small step.
    "dp_lr": 2.0,
    "dp_momentum": 0.5,
    "mechanism": "gaussian",
    "bounding": "l2",
    "feature_share": 0.3,
    "head_epochs": 1,
    "head_lr": 1e-4,
    "batch_size": 64,
}


def preset(mode: str, **overrides: Any) -> SimulationConfig:
    """The measured hyper-parameters for ``mode`` on MNIST, with ``overrides`` applied."""
    if mode not in PRESETS:
        raise ValueError(f"no preset for mode {mode!r}; known: {', '.join(PRESETS)}")
    return SimulationConfig(**{**PRESETS[mode], **overrides})


@dataclass(frozen=True)
class Accuracy:
    """Test accuracy with noise-free ("clean") and freshly noised ("noisy") test features."""

    clean: float
    noisy: float


@dataclass(frozen=True)
class RoundRecord:
    """One round of the simulated task."""

    round: int
    accuracy: Accuracy
    accepted: int
    rejected: int
    rejected_attackers: int
    train_s: float
    aggregate_s: float


@dataclass(frozen=True)
class SimulationResult:
    """What a simulated task produced, with the public-only baseline beside it."""

    config: SimulationConfig
    public_only: Accuracy
    rounds: tuple[RoundRecord, ...]
    per_sample_epsilon: float | None
    per_feature_epsilon: float | None
    privacy_label: str
    epsilon_spent: tuple[float, ...]
    pretrain_s: float
    release_s: float
    extract_s_per_1000: float
    update_bytes: int
    final_head_cid: str
    update_keys: tuple[str, ...] = ()
    """The state-dict keys a device uploads (head only: the extractor is frozen and public)."""

    @property
    def final(self) -> Accuracy:
        return self.rounds[-1].accuracy

    @property
    def gain_clean(self) -> float:
        """What federation added over the public-only model (clean accuracy, in points)."""
        return 100.0 * (self.final.clean - self.public_only.clean)


RoundCallback = Callable[[RoundRecord], None]
StageCallback = Callable[[str], None]

# Fields of SimulationConfig that change the manufacturer's pre-trained model or the features;
# runs that agree on these can share one Prepared (e.g. IID vs Dirichlet, or different rules).
_PREPARE_FIELDS = (
    "dataset",
    "public_size",
    "seed",
    "bounding",
    "bottleneck",
    "norm",
    "mechanism",
    "epsilon",
    "delta",
    "accounting",
    "pretrain_epochs",
    "pretrain_lr",
    "pretrain_batch_size",
    "pretrain_shift",
)


@dataclass(frozen=True, eq=False)
class Prepared:
    """The manufacturer's side of a task: pre-trained model, frozen extractor, its features.

    Training features are extracted on first use and kept, so runs that share a Prepared extract
    each image once; a device's private features are the rows of its shard (the public slice
    depends only on the data set, ``public_size`` and the seed, not on how the rest is split).
    """

    def features_for(self, idx: Tensor) -> Tensor:
        """The raw extractor features of training images ``idx`` (extracting what is missing)."""
        missing = idx[~self.extracted[idx]]
        if len(missing):
            t0 = time.perf_counter()
            self.train_features[missing] = extract_features(
                self.extractor, self.train_images[missing], threads=None
            )
            self.extract_seconds.append((len(missing), time.perf_counter() - t0))
            self.extracted[missing] = True
        return self.train_features[idx]

    @property
    def extract_s_per_1000(self) -> float:
        """Measured feature-extraction time per 1,000 images (on the configured threads)."""
        n = sum(k for k, _ in self.extract_seconds)
        return 1000.0 * sum(t for _, t in self.extract_seconds) / n if n else float("nan")

    key: tuple[Any, ...]
    spec: ModelSpec
    extractor: torch.nn.Module
    train_images: Tensor
    public_idx: Tensor
    release: FeatureRelease | None
    bounding: Bounding
    head_state: dict[str, Tensor]
    extractor_version: str
    train_features: Tensor
    extracted: Tensor
    train_labels: Tensor
    test_features: Tensor
    test_labels: Tensor
    n_classes: int
    public_only: Accuracy
    pretrain_s: float
    extract_seconds: list[tuple[int, float]]


def partition_for(cfg: SimulationConfig, labels: Any) -> Partition:
    """The public slice and the device shards of ``cfg`` over the training ``labels``."""
    return partition_indices(
        labels,
        cfg.n_devices,
        scheme=cfg.partition,
        public_size=cfg.public_size,
        alpha=cfg.alpha,
        classes_per_device=cfg.classes_per_device,
        seed=cfg.seed,
        max_samples_per_device=cfg.max_samples_per_device,
    )


def prepare_key(cfg: SimulationConfig) -> tuple[Any, ...]:
    """What a pre-trained Prepared depends on: runs with equal keys can share one."""
    return tuple(getattr(cfg, name) for name in _PREPARE_FIELDS)


class _Noise:
    """The task's noise with its own generator (OS-seeded unless the config fixes a seed)."""

    def __init__(self, release: FeatureRelease | None, seed: int | None) -> None:
        self.release = release
        self.generator = noise_generator(seed)

    def __call__(self, z: Tensor) -> Tensor:
        return self.release.mechanism.release(z, self.generator) if self.release else z


def _accuracy(head: torch.nn.Module, prepared: Prepared, noise: _Noise) -> Accuracy:
    bound = prepared.bounding.apply
    feats, labels = prepared.test_features, prepared.test_labels
    clean = evaluate(head, feats, labels, transform=bound, threads=None)
    noisy = evaluate(head, feats, labels, transform=lambda z: noise(bound(z)), threads=None)
    return Accuracy(clean.accuracy, noisy.accuracy)


def prepare(config: SimulationConfig, *, on_stage: StageCallback | None = None) -> Prepared:
    """Pre-train the manufacturer's model on its public slice and extract every image's features."""
    cfg = config
    stage = on_stage or (lambda _msg: None)
    set_threads(cfg.threads)
    stage("loading data")
    ds = load_dataset(cfg.dataset)
    public = partition_indices(
        ds.train_labels, 1, scheme="iid", public_size=cfg.public_size, seed=cfg.seed
    ).public
    train_images = to_tensor(ds.train_images)
    train_labels = labels_to_tensor(ds.train_labels)
    test_images = to_tensor(ds.test_images)

    bounding = get_bounding(cfg.bounding)
    release: FeatureRelease | None = None
    if cfg.epsilon is not None:
        release = FeatureRelease.create(
            mechanism=cfg.mechanism,
            epsilon=cfg.epsilon,
            accounting=cfg.accounting,
            bounding=bounding,
            dim=cfg.bottleneck,
            delta=cfg.delta if cfg.mechanism == "gaussian" else None,
        )
    lo, hi = bounding.coord_range
    spec = ModelSpec.create(
        bottleneck=cfg.bottleneck,
        norm=cfg.norm,
        coord_lo=lo,
        coord_hi=hi,
        noise_scale=release.mechanism.scale if release else None,
    )
    # Noise in pre-training runs over public data, so it protects nothing: it only teaches the
    # extractor to survive the noise. It is seeded from the config for reproducible extractors;
    # the devices' releases (run_simulation) draw from the operating system unless told otherwise.
    noise = _Noise(release, cfg.seed)

    stage(f"pre-training on {len(public)} public images")
    model = build_model(spec, seed=cfg.seed)
    public_idx = torch.tensor(public, dtype=torch.int64)
    t0 = time.perf_counter()
    pretrain(
        model,
        train_images[public_idx],
        train_labels[public_idx],
        public_data=True,
        epochs=cfg.pretrain_epochs,
        lr=cfg.pretrain_lr,
        batch_size=cfg.pretrain_batch_size,
        noise_fn=noise if release else None,
        bound_fn=bounding.apply,
        seed=cfg.seed,
        threads=cfg.threads,
        augment=RandomShift(cfg.pretrain_shift) if cfg.pretrain_shift else None,
    )
    pretrain_s = time.perf_counter() - t0
    extractor = model.extractor.eval()

    stage("extracting test features")
    t0 = time.perf_counter()
    test_features = extract_features(extractor, test_images, threads=cfg.threads)
    extract_seconds = [(len(test_images), time.perf_counter() - t0)]
    prepared = Prepared(
        key=prepare_key(cfg),
        spec=spec,
        extractor=extractor,
        train_images=train_images,
        public_idx=public_idx,
        release=release,
        bounding=bounding,
        head_state=_prefixed(model.head.state_dict()),
        extractor_version=_extractor_version(extractor.state_dict(), spec),
        train_features=torch.zeros(len(train_images), cfg.bottleneck),
        extracted=torch.zeros(len(train_images), dtype=torch.bool),
        train_labels=train_labels,
        test_features=test_features,
        test_labels=labels_to_tensor(ds.test_labels),
        n_classes=ds.n_classes,
        public_only=Accuracy(0.0, 0.0),
        pretrain_s=pretrain_s,
        extract_seconds=extract_seconds,
    )
    head = build_head(spec)
    head.load_state_dict(_unprefixed(prepared.head_state))
    return dataclasses.replace(prepared, public_only=_accuracy(head, prepared, noise))


def rehead(
    prepared: Prepared, config: SimulationConfig, *, copies: int = 10, epochs: int = 3
) -> Prepared:
    """``prepared`` with a new head for ``config.norm``; the frozen extractor is shared.

    The new head is trained on the public slice's bounded features, with fresh noise in each of
    ``copies`` noisy copies (public data costs no privacy). Comparing normalisations this way keeps
    the extractor, and so the features, identical across them: the comparison measures the head's
    normalisation of noisy features and nothing else. Only ``norm`` may differ from the config
    ``prepared`` was made for.
    """
    cfg = config
    want = dict(zip(_PREPARE_FIELDS, prepare_key(cfg), strict=True))
    have = dict(zip(_PREPARE_FIELDS, prepared.key, strict=True))
    if {k: v for k, v in want.items() if k != "norm"} != {
        k: v for k, v in have.items() if k != "norm"
    }:
        raise ValueError("rehead can only change the norm of a Prepared")
    set_threads(cfg.threads)
    spec = prepared.spec.replace(norm=cfg.norm)
    noise = _Noise(prepared.release, cfg.seed)
    bounded = prepared.bounding.apply(prepared.features_for(prepared.public_idx))
    features = torch.cat([noise(bounded) for _ in range(copies)])
    labels = prepared.train_labels[prepared.public_idx].repeat(copies)
    head = build_head(spec, seed=cfg.seed)
    train_head(
        head,
        features,
        labels,
        epochs=epochs,
        lr=cfg.pretrain_lr,
        batch_size=cfg.pretrain_batch_size,
        seed=cfg.seed,
        threads=None,
    )
    replaced = dataclasses.replace(
        prepared, key=prepare_key(cfg), spec=spec, head_state=_prefixed(head.state_dict())
    )
    return dataclasses.replace(replaced, public_only=_accuracy(head, replaced, noise))


def run_simulation(
    config: SimulationConfig,
    *,
    prepared: Prepared | None = None,
    on_round: RoundCallback | None = None,
    on_stage: StageCallback | None = None,
) -> SimulationResult:
    """Run one federated task in this process; see the module docstring for the steps.

    ``prepared`` (from :func:`prepare` with a config that agrees on the pre-training fields)
    skips the manufacturer's stage, so several runs can share one pre-trained extractor.
    """
    cfg = config
    stage = on_stage or (lambda _msg: None)
    if prepared is None:
        prepared = prepare(cfg, on_stage=on_stage)
    elif prepared.key != prepare_key(cfg):
        raise ValueError("this Prepared was made for a config with other pre-training settings")
    set_threads(cfg.threads)
    strategy: Strategy = strategy_from_spec(cfg.strategy, **dict(cfg.strategy_params))
    spec, release, bounding = prepared.spec, prepared.release, prepared.bounding
    noise = _Noise(release, cfg.noise_seed)
    part = partition_for(cfg, prepared.train_labels.numpy().astype("uint8"))
    device_idx = [torch.tensor(s, dtype=torch.int64) for s in part.shards]

    # 2. each device releases its noisy features once, charged to its privacy ledger.
    cache = NoisyFeatureCache()
    device_features: list[Tensor] = []
    device_labels: list[Tensor] = []
    ledgers: list[PrivacyLedger] = []
    t0 = time.perf_counter()
    stage("extracting private features")
    prepared.features_for(torch.cat(device_idx))
    stage("releasing noisy features (once per sample)")
    for i, idx in enumerate(device_idx):
        raw = prepared.features_for(idx)
        if release is None:
            device_features.append(bounding.apply(raw))
        else:
            ledger = PrivacyLedger.in_memory(
                task_id="simulation",
                device_id=f"device-{i}",
                budget=(release.per_sample_epsilon, release.delta),
            )
            ledgers.append(ledger)
            device_features.append(
                cache.get_or_release(
                    extractor_version=prepared.extractor_version,
                    dataset_key=sample_ids_key(idx),
                    features_fn=lambda raw=raw: raw,
                    release=release,
                    ledger=ledger,
                    generator=noise.generator,
                )
            )
        labels = prepared.train_labels[idx]
        if i < cfg.n_attackers and cfg.attack == "label-flip":
            labels = flip_labels(labels, prepared.n_classes)
        device_labels.append(labels)
    release_s = time.perf_counter() - t0

    # 3. rounds of local training and aggregation. Updates carry the full model's key names
    # ("head.…"), as spec.weight_specs("head") lists them.
    global_head = {k: v.clone() for k, v in prepared.head_state.items()}
    head_specs = spec.weight_specs("head")
    records: list[RoundRecord] = []
    update_bytes = 0
    update_keys: tuple[str, ...] = ()
    attackers = {f"device-{i}" for i in range(cfg.n_attackers)}
    final_cid = ""
    for rnd in range(1, cfg.rounds + 1):
        stage(f"round {rnd}/{cfg.rounds}")
        updates: list[Update] = []
        duplicates: list[str] = []
        t0 = time.perf_counter()
        for i in range(cfg.n_devices):
            head = build_head(spec)
            head.load_state_dict(_unprefixed(global_head))
            train_head(
                head,
                device_features[i],
                device_labels[i],
                epochs=cfg.local_epochs,
                lr=cfg.head_lr,
                batch_size=cfg.batch_size,
                seed=cfg.seed * 1_000_003 + rnd * 1009 + i,
                threads=None,
            )
            weights = _prefixed(head.state_dict())
            if i < cfg.n_attackers:
                weights = _poison(cfg, weights, global_head, rnd, i)
            blob = weights_to_bytes(weights)
            update_bytes = max(update_bytes, len(blob))
            # What a miner does with a received update: parse and check it against the spec.
            checked = weights_from_bytes(blob, expected=head_specs)
            update_keys = tuple(sorted(checked))
            cid = str(Cid.from_data(blob))
            if any(u.cid == cid for u in updates):
                # Identical bytes from two senders (e.g. two free riders resubmitting the global
                # model): the first submission stands, later copies are rejected outright.
                duplicates.append(f"device-{i}")
                continue
            updates.append(Update(cid, f"device-{i}", checked, len(device_labels[i])))
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            result = strategy.aggregate(updates)
        except AggregationError:
            # Too few distinct updates for the rule (e.g. Multi-Krum with n <= 2f + 2 after
            # duplicates were dropped): the round carries the old model forward.
            result = AggregationResult(
                weights=global_head,
                scores={},
                accepted=(),
                rejected=tuple(u.cid for u in updates),
                rule=strategy.name,
            )
        aggregate_s = time.perf_counter() - t0
        global_head = {k: v.clone() for k, v in result.weights.items()}
        final_cid = str(Cid.from_data(weights_to_bytes(global_head)))
        head = build_head(spec)
        head.load_state_dict(_unprefixed(global_head))
        sender_of = {u.cid: u.sender for u in updates}
        record = RoundRecord(
            round=rnd,
            accuracy=_accuracy(head, prepared, noise),
            accepted=len(result.accepted),
            rejected=len(result.rejected) + len(duplicates),
            rejected_attackers=sum(1 for c in result.rejected if sender_of[c] in attackers)
            + sum(1 for d in duplicates if d in attackers),
            train_s=train_s,
            aggregate_s=aggregate_s,
        )
        records.append(record)
        if on_round is not None:
            on_round(record)

    return SimulationResult(
        config=cfg,
        public_only=prepared.public_only,
        rounds=tuple(records),
        per_sample_epsilon=release.per_sample_epsilon if release else None,
        per_feature_epsilon=release.per_feature_epsilon if release else None,
        privacy_label=release.label if release else "no noise (ε = ∞)",
        epsilon_spent=tuple(ledger.spent().epsilon for ledger in ledgers),
        pretrain_s=prepared.pretrain_s,
        release_s=release_s,
        extract_s_per_1000=prepared.extract_s_per_1000,
        update_bytes=update_bytes,
        final_head_cid=final_cid,
        update_keys=update_keys,
    )


def _poison(
    cfg: SimulationConfig,
    weights: dict[str, Tensor],
    global_head: Mapping[str, Tensor],
    rnd: int,
    device: int,
) -> dict[str, Tensor]:
    if cfg.attack == "sign-flip":
        return sign_flip(weights, global_head, scale=cfg.attack_scale)
    if cfg.attack == "scale":
        return scale_update(weights, global_head, cfg.attack_scale)
    if cfg.attack == "gaussian-noise":
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + rnd * 31 + device)
        return gaussian_noise(weights, cfg.attack_noise_std, gen)
    if cfg.attack == "free-ride":
        return free_ride(global_head)
    return weights  # label-flip poisons the data, not the update


def _prefixed(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"head.{k}": v.detach().clone() for k, v in state.items()}


def _unprefixed(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("head."): v for k, v in state.items()}


def _extractor_version(state: Mapping[str, Tensor], spec: ModelSpec) -> str:
    """A name for the extractor that produced a release: the CID of its weights (+ the spec)."""
    digest = hashlib.sha256(spec.to_json() + weights_to_bytes(dict(state))).digest()
    return str(Cid(digest))
