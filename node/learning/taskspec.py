"""The learning part of a task spec: what a manufacturer publishes and every node validates.

A spec is a small TOML document (``examples/task-dpsgd-full.toml``)::

    name = "mnist-dpsgd"
    [data]     dataset, public_size, partition
    [model]    arch and its parameters (see :mod:`.models`)
    [privacy]  mode, epsilon, delta (per sample, whole task), clip, accountant, feature_*
    [training] rounds, local_epochs, lr, momentum, batch_size, head_lr, head_epochs
    [aggregation] rule and its parameters
    [round]    deadline_s, updates_per_round, min_updates, max_update_norm, eval_size (network)

Every field is checked when the spec is read, with a message that names the field, so a bad spec
is refused before any training (or, on the network, before a node joins the task). Fields left out
take the measured preset of the chosen mode (:data:`.simulation.PRESETS`).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import FLNodeError
from .aggregation import strategy_from_spec
from .bounding import BOUNDINGS
from .datasets import DATASET_NAMES
from .models import ModelSpec, ModelSpecError
from .simulation import PRESETS, PRIVACY_MODES, SimulationConfig

MAX_SPEC_BYTES = 64 * 1024


class TaskSpecError(FLNodeError, ValueError):
    """A task spec is malformed; the message names the field and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class DataSpec(_Section):
    dataset: str = "mnist"
    public_size: int = Field(500, ge=0, le=60_000)
    partition: Literal["iid", "dirichlet", "classes"] = "iid"
    alpha: float = Field(0.5, gt=0, le=1000)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {value!r}; known: {', '.join(DATASET_NAMES)}")
        return value


class PrivacySpec(_Section):
    mode: Literal["frozen", "dpsgd-extractor", "dpsgd-full"] = "dpsgd-full"
    epsilon: float = Field(10.0, gt=0)
    delta: float = Field(1e-5, ge=0, lt=1)
    accountant: Literal["rdp"] = "rdp"
    clip: float | None = Field(None, gt=0)
    feature_mechanism: Literal["laplace", "gaussian"] | None = None
    feature_bounding: str | None = None
    feature_dim: int | None = Field(None, ge=1, le=4096)
    feature_share: float | None = Field(None, gt=0, lt=1)

    @field_validator("epsilon")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("epsilon must be finite (a task without a budget is not private)")
        return value

    @field_validator("feature_bounding")
    @classmethod
    def _known_bounding(cls, value: str | None) -> str | None:
        if value is not None and value not in BOUNDINGS:
            raise ValueError(f"unknown bounding {value!r}; known: {', '.join(BOUNDINGS)}")
        return value

    @model_validator(mode="after")
    def _mode_rules(self) -> PrivacySpec:
        if self.mode != "frozen" and self.delta <= 0:
            raise ValueError(f"mode {self.mode!r} uses DP-SGD, which needs delta > 0")
        if self.mode == "frozen" and self.clip is not None:
            raise ValueError("clip is the DP-SGD clipping norm; the frozen mode runs no DP-SGD")
        if self.mode != "dpsgd-extractor" and self.feature_share is not None:
            raise ValueError("feature_share only applies to mode 'dpsgd-extractor'")
        if self.mode == "dpsgd-full" and (self.feature_mechanism or self.feature_bounding):
            raise ValueError("mode 'dpsgd-full' releases no features; drop feature_* settings")
        return self


class TrainingSpec(_Section):
    rounds: int = Field(10, ge=1, le=10_000)
    local_epochs: int = Field(1, ge=1, le=1000)
    lr: float | None = Field(None, gt=0, le=1000)
    momentum: float | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    head_lr: float | None = Field(None, gt=0, le=10)
    head_epochs: int | None = Field(None, ge=1, le=1000)
    pretrain_epochs: int | None = Field(None, ge=0, le=10_000)


class AggregationSpec(_Section):
    rule: str = "fedavg"
    params: dict[str, int | float | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_rule(self) -> AggregationSpec:
        strategy_from_spec(self.rule, **self.params)  # raises ValueError naming the problem
        return self


class RoundSpec(_Section):
    """How a task's rounds run on the network (``flnode simulate`` ignores this section).

    A round closes when ``updates_per_round`` updates are on the ledger or ``deadline_s`` seconds
    (block time) after the block that opened it, whichever comes first; with fewer than
    ``min_updates`` valid updates the old model is carried forward. ``max_update_norm`` bounds
    the L2 change an update may make to the global model (None: no bound). Every miner evaluates
    each committed model on the first ``eval_size`` images of the data set's test split.
    """

    deadline_s: float = Field(60.0, gt=0, le=86_400)
    updates_per_round: int = Field(8, ge=1, le=128)
    min_updates: int = Field(1, ge=1, le=128)
    max_update_norm: float | None = Field(None, gt=0)
    eval_size: int = Field(10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _min_fits(self) -> RoundSpec:
        if self.min_updates > self.updates_per_round:
            raise ValueError("min_updates cannot exceed updates_per_round")
        return self


class LearningTaskSpec(_Section):
    """The learning part of a task (``flnode simulate --spec``; the task registry later)."""

    name: str = Field("task", min_length=1, max_length=100)
    data: DataSpec = Field(default_factory=DataSpec)
    model: dict[str, Any] = Field(default_factory=dict)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)
    round: RoundSpec = Field(default_factory=RoundSpec)

    @model_validator(mode="after")
    def _model_fits_mode(self) -> LearningTaskSpec:
        spec = self.model_spec()
        if self.privacy.mode != "frozen" and spec.arch != "dp-cnn":
            raise ValueError(
                f"model.arch: mode {self.privacy.mode!r} trains on raw data with DP-SGD and needs the "
                f"'dp-cnn' architecture (no BatchNorm), not {spec.arch!r}"
            )
        return self

    def model_spec(self) -> ModelSpec:
        """The validated model spec (``[model]``; default by mode)."""
        fields = dict(self.model)
        arch = fields.pop("arch", "split-cnn" if self.privacy.mode == "frozen" else "dp-cnn")
        try:
            return ModelSpec.create(arch, **fields)
        except ModelSpecError as exc:
            raise ValueError(f"model: {exc}") from None

    def simulation_config(self, **overrides: Any) -> SimulationConfig:
        """The :class:`SimulationConfig` of this spec: the mode's preset, then the spec's fields,
        then ``overrides`` (e.g. ``n_devices``)."""
        p, t = self.privacy, self.training
        spec = self.model_spec()
        supported = {"arch", "bottleneck", "norm"} if p.mode == "frozen" else {"arch", "bottleneck"}
        unsupported = sorted(set(self.model) - supported)
        if unsupported:
            raise TaskSpecError(
                f"task spec {self.name!r}: the in-process simulation builds the model from "
                f"'arch' and 'bottleneck' (and 'norm' in the frozen mode) only; remove {', '.join(unsupported)} from "
                "[model] to simulate it"
            )
        fields: dict[str, Any] = {
            "dataset": self.data.dataset,
            "public_size": self.data.public_size,
            "partition": self.data.partition,
            "alpha": self.data.alpha,
            "epsilon": p.epsilon,
            "delta": p.delta if p.delta > 0 else None,
            "rounds": t.rounds,
            "local_epochs": t.local_epochs,
            "bottleneck": spec.bottleneck,
            "strategy": self.aggregation.rule,
            "strategy_params": dict(self.aggregation.params),
        }
        optional = {
            "dp_clip": p.clip,
            "mechanism": p.feature_mechanism,
            "bounding": p.feature_bounding,
            "feature_share": p.feature_share,
            "pretrain_epochs": t.pretrain_epochs,
            "head_lr": t.head_lr,
            "head_epochs": t.head_epochs,
        }
        if p.mode == "frozen":
            optional |= {
                "head_lr": t.lr or t.head_lr,
                "batch_size": t.batch_size,
                "norm": self.model.get("norm"),
            }
            if p.feature_mechanism != "gaussian":
                fields["delta"] = None
        else:
            optional |= {"dp_lr": t.lr, "dp_momentum": t.momentum, "dp_batch_size": t.batch_size}
        fields |= {k: v for k, v in optional.items() if v is not None}
        base = dict(PRESETS[p.mode])
        base.pop("mode")
        try:
            return SimulationConfig(mode=p.mode, **{**base, **fields, **overrides})
        except ValueError as exc:
            raise TaskSpecError(f"task spec {self.name!r}: {exc}") from None


def load_task_spec(source: str | Path | bytes) -> LearningTaskSpec:
    """Read and validate a TOML task spec from a path, or from its bytes."""
    where = "task spec"
    if isinstance(source, bytes):
        raw = source
    else:
        path = Path(source)
        where = f"task spec {path}"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TaskSpecError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise TaskSpecError(f"{where} is {len(raw)} bytes; the limit is {MAX_SPEC_BYTES}")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TaskSpecError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise TaskSpecError(
            f"{where} is not valid TOML: arrays or tables nested too deeply"
        ) from None
    try:
        return LearningTaskSpec.model_validate(doc)
    except ValidationError as exc:
        raise TaskSpecError(f"{where}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append(f"{where}: {msg}" if where else msg)
    return "; ".join(problems)


__all__ = [
    "PRIVACY_MODES",
    "AggregationSpec",
    "DataSpec",
    "LearningTaskSpec",
    "PrivacySpec",
    "TaskSpecError",
    "TrainingSpec",
    "load_task_spec",
]
