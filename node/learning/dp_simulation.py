"""The DP-SGD privacy modes in one process: the reference result for ``dpsgd-full`` and
``dpsgd-extractor`` (the ``frozen`` mode is :mod:`.simulation`).

``dpsgd-full``
    Each device trains the **whole** ``dp-cnn`` model on its raw shard with DP-SGD, locally (no
    edge: raw data never leaves the device, and an edge would need it). The update is the full
    state dict; its cost is the DP-SGD steps only.
``dpsgd-extractor``
    Each round a device (1) releases its shard's features under the round's *global* extractor,
    bounded and noised (a feature release, charged once per extractor version, i.e. once per
    round), and trains the head on them — this is the part an edge node can do, since it only
    needs the released features; (2) trains the extractor with DP-SGD on its raw shard, head
    frozen, on the device. The update is the DP-SGD extractor plus the noisy-feature head; its cost
    is both, composed in the device's ledger.

In both modes the noise multiplier is calibrated once, before round 1, so that every step of the
whole task (plus, in ``dpsgd-extractor``, every planned feature release) fits the per-sample
budget (ε, δ); each device's :class:`~.ledger.PrivacyLedger` is charged before each release, so a
task that would overrun stops with :class:`~.ledger.PrivacyBudgetExceeded` instead.

The manufacturer pre-trains the model on its public slice first (no privacy cost): that model's
accuracy is the **public-only** baseline the gain is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cid import Cid
from .accountant import Charge, EpsDelta, compose
from .aggregation import AggregationError, Strategy, Update, strategy_from_spec
from .bounding import get_bounding
from .datasets import labels_to_tensor, load_dataset, to_tensor
from .dpsgd import DpSgdSettings, DpSgdTrainer, plan_noise_multiplier
from .ledger import PrivacyLedger
from .mechanisms import noise_generator
from .models import ModelSpec, SplitModel, build_model
from .offload import release_for_offload, train_head_job
from .privacy import FeatureRelease
from .serialization import weights_from_bytes, weights_to_bytes
from .simulation import SimulationConfig, partition_for
from .training import RandomShift, evaluate, pretrain, set_threads

StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class DpRound:
    """One round: the global model's test accuracy and what it cost in time."""

    round: int
    accuracy: float
    noisy_accuracy: float
    accepted: int
    rejected: int
    train_s: float
    train_s_per_device: float
    aggregate_s: float


@dataclass(frozen=True)
class DpSimulationResult:
    """What a DP-SGD simulated task produced, with the public-only baseline beside it."""

    mode: str
    public_only_accuracy: float
    rounds: tuple[DpRound, ...]
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    feature_release: str | None
    epsilon_spent: tuple[float, ...]
    opacus_epsilon: tuple[float, ...]
    composition_rule: str
    pretrain_s: float
    update_bytes: int
    final_model_cid: str
    n_parameters: int
    update_keys: tuple[str, ...]

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy

    @property
    def gain(self) -> float:
        """What federation added over the public-only model, in points."""
        return 100.0 * (self.final_accuracy - self.public_only_accuracy)


def model_spec_for(config: SimulationConfig) -> ModelSpec:
    """The ``dp-cnn`` spec of a DP-SGD task (bottleneck from the config)."""
    return ModelSpec.create("dp-cnn", bottleneck=config.bottleneck)


def plan_feature_release(
    *,
    mechanism: str,
    bounding: str,
    dim: int,
    releases: int,
    epsilon: float,
    delta: float,
) -> FeatureRelease:
    """The per-round feature release whose ``releases`` repetitions compose (Rényi, with the
    basic bound as fallback) to at most (``epsilon``, ``delta``) per sample."""

    def make(eps: float) -> FeatureRelease:
        return FeatureRelease.create(
            mechanism=mechanism,  # type: ignore[arg-type]
            epsilon=eps,
            accounting="per-sample",
            bounding=bounding,
            dim=dim,
            delta=delta / (10 * releases) if mechanism == "gaussian" else None,
        )

    def total(eps: float) -> float:
        r = make(eps)
        return compose([Charge(r.cost, r.curve)] * releases, delta).spent.epsilon

    lo, hi = epsilon / releases, epsilon  # basic composition always fits at ε/R (δ split too)
    if total(lo) > epsilon:
        lo = epsilon / releases / 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if total(mid) <= epsilon:
            lo = mid
        else:
            hi = mid
    return make(lo)


def run_dp_simulation(
    config: SimulationConfig,
    *,
    on_stage: StageCallback | None = None,
    on_round: Callable[[DpRound], None] | None = None,
) -> DpSimulationResult:
    """Run one ``dpsgd-full`` or ``dpsgd-extractor`` task (``config``: a SimulationConfig)."""
    cfg = config
    stage = on_stage or (lambda _msg: None)
    mode = cfg.mode
    if mode not in ("dpsgd-full", "dpsgd-extractor"):
        raise ValueError(f"run_dp_simulation runs the DP-SGD modes, not {mode!r}")
    set_threads(cfg.threads)
    budget = EpsDelta(cfg.epsilon, cfg.delta)
    settings = DpSgdSettings(
        lr=cfg.dp_lr,
        momentum=cfg.dp_momentum,
        max_grad_norm=cfg.dp_clip,
        batch_size=cfg.dp_batch_size,
        local_epochs=cfg.local_epochs,
    )
    stage("loading data")
    ds = load_dataset(cfg.dataset)
    part = partition_for(cfg, ds.train_labels)
    images = to_tensor(ds.train_images)
    labels = labels_to_tensor(ds.train_labels)
    test_x, test_y = to_tensor(ds.test_images), labels_to_tensor(ds.test_labels)
    spec = model_spec_for(cfg)

    release: FeatureRelease | None = None
    bound = None
    if mode == "dpsgd-extractor":
        release = plan_feature_release(
            mechanism=cfg.mechanism,
            bounding=cfg.bounding,
            dim=spec.bottleneck,
            releases=cfg.rounds,
            epsilon=cfg.feature_share * cfg.epsilon,
            delta=cfg.delta,
        )
        bound = get_bounding(cfg.bounding).apply

    stage(f"pre-training on {len(part.public)} public images")
    model = build_model(spec, seed=cfg.seed)
    public = torch.tensor(part.public, dtype=torch.int64)
    t0 = time.perf_counter()
    pretrain(
        model,
        images[public],
        labels[public],
        public_data=True,
        epochs=cfg.pretrain_epochs,
        lr=cfg.pretrain_lr,
        batch_size=cfg.pretrain_batch_size,
        noise_fn=None,
        bound_fn=bound,
        seed=cfg.seed,
        threads=cfg.threads,
        augment=RandomShift(cfg.pretrain_shift) if cfg.pretrain_shift else None,
    )
    pretrain_s = time.perf_counter() - t0
    noise_gen = noise_generator(cfg.noise_seed)

    def accuracy(m: SplitModel) -> tuple[float, float]:
        clean = evaluate(m, test_x, test_y, transform=bound, threads=None).accuracy
        if release is None:
            return clean, clean
        noisy = evaluate(
            m, test_x, test_y, transform=lambda z: release.apply(z, noise_gen), threads=None
        ).accuracy
        return clean, noisy

    public_only, _ = accuracy(model)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # Calibrate once for the whole task: every round's DP-SGD steps plus the planned releases.
    shards = [torch.tensor(s, dtype=torch.int64) for s in part.shards]
    planned = [Charge(release.cost, release.curve)] * cfg.rounds if release else []
    trainers: list[DpSgdTrainer] = []
    ledgers: list[PrivacyLedger] = []
    z = None
    for i, idx in enumerate(shards):
        zi = plan_noise_multiplier(
            budget=budget, n_samples=len(idx), settings=settings, rounds=cfg.rounds, prior=planned
        )
        z = zi if z is None else max(z, zi)
        ledger = PrivacyLedger.in_memory(
            task_id="simulation", device_id=f"device-{i}", budget=budget
        )
        ledgers.append(ledger)
        working = build_model(spec, seed=cfg.seed)
        trainers.append(
            DpSgdTrainer(
                working,
                images[idx],
                labels[idx],
                settings=settings,
                noise_multiplier=zi,
                ledger=ledger,
                part="full" if mode == "dpsgd-full" else "extractor",
                transform=bound,
                seed=cfg.seed * 1_000_003 + i,
                threads=None,
            )
        )
    assert z is not None
    strategy: Strategy = strategy_from_spec(cfg.strategy, **dict(cfg.strategy_params))
    full_specs = spec.weight_specs("full")
    records: list[DpRound] = []
    update_bytes = 0
    update_keys: tuple[str, ...] = ()
    final_cid = ""
    for rnd in range(1, cfg.rounds + 1):
        stage(f"round {rnd}/{cfg.rounds}")
        version = str(Cid.from_data(weights_to_bytes(global_state)))
        updates: list[Update] = []
        t0 = time.perf_counter()
        for i, trainer in enumerate(trainers):
            idx = shards[i]
            weights = dict(global_state)
            if release is not None:
                head_state = _release_and_train_head(
                    cfg,
                    spec,
                    global_state,
                    images[idx],
                    labels[idx],
                    release,
                    ledgers[i],
                    version,
                    noise_gen,
                    seed=cfg.seed * 1009 + rnd * 31 + i,
                )
                weights.update(head_state)
            trained = trainer.train_round(global_state, extractor_version=version)
            if mode == "dpsgd-full":
                weights = trained
            else:
                weights.update({k: v for k, v in trained.items() if k.startswith("extractor.")})
            blob = weights_to_bytes(weights)
            update_bytes = max(update_bytes, len(blob))
            checked = weights_from_bytes(blob, expected=full_specs)
            update_keys = tuple(sorted(checked))
            updates.append(Update(str(Cid.from_data(blob)), f"device-{i}", checked, len(idx)))
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            result = strategy.aggregate(updates)
            global_state = {k: v.clone() for k, v in result.weights.items()}
            accepted, rejected = len(result.accepted), len(result.rejected)
        except AggregationError:
            accepted, rejected = 0, len(updates)
        aggregate_s = time.perf_counter() - t0
        final_cid = str(Cid.from_data(weights_to_bytes(global_state)))
        model.load_state_dict(global_state)
        clean, noisy = accuracy(model)
        record = DpRound(
            rnd, clean, noisy, accepted, rejected, train_s, train_s / len(trainers), aggregate_s
        )
        records.append(record)
        if on_round is not None:
            on_round(record)

    return DpSimulationResult(
        mode=mode,
        public_only_accuracy=public_only,
        rounds=tuple(records),
        noise_multiplier=z,
        sample_rate=trainers[0].sample_rate,
        steps_per_round=trainers[0].round_curve.steps,
        feature_release=release.label if release else None,
        epsilon_spent=tuple(ledger.spent().epsilon for ledger in ledgers),
        opacus_epsilon=tuple(t.opacus_epsilon(cfg.delta) for t in trainers),
        composition_rule=ledgers[0].account().rule,
        pretrain_s=pretrain_s,
        update_bytes=update_bytes,
        final_model_cid=final_cid,
        n_parameters=sum(p.numel() for p in model.parameters()),
        update_keys=update_keys,
    )


def _release_and_train_head(
    cfg: SimulationConfig,
    spec: ModelSpec,
    global_state: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    release: FeatureRelease,
    ledger: PrivacyLedger,
    version: str,
    generator: torch.Generator,
    *,
    seed: int,
) -> dict[str, Tensor]:
    """Step (1) of ``dpsgd-extractor``: the device releases the noisy features of this round's
    global extractor (charged), and the head is trained on them as an edge node would."""
    model = build_model(spec)
    model.load_state_dict(global_state)
    with torch.no_grad():
        raw = model.extractor.eval()(images)
    job = release_for_offload(
        ledger=ledger,
        release=release,
        raw_features=raw,
        labels=labels,
        head_state={k: v for k, v in global_state.items() if k.startswith("head.")},
        extractor_version=version,
        generator=generator,
        epochs=cfg.head_epochs,
        lr=cfg.head_lr,
        batch_size=cfg.batch_size,
        seed=seed,
    )
    return train_head_job(spec, job)
