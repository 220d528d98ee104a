"""Releasing feature vectors privately: one stated ε, and noise drawn once per sample.

Two conventions for ε (learning.md P1)
    *per-sample* (flnode's, the honest one): ε covers one sample's whole released vector; the
    mechanism is calibrated to the L1 (Laplace) or L2 (Gaussian) sensitivity of the bounded vector.
    *per-feature* (the paper's, Zhao et al. 2019): each coordinate is its own query, with the
    coordinate's own sensitivity (Δ = 1 under ``minmax`` bounding), so one vector of d coordinates
    costs ``d × ε_feature`` by basic composition. The paper's "97 % at ε = 10" is ε = 10 per
    feature, i.e. ε = 10·d per sample. Both give the same noise for the same per-sample ε under
    ``minmax``; the difference is only which number is written down, and that is exactly why
    :class:`FeatureRelease` takes the convention as a required argument and the ledger records the
    per-sample ε only. Per-feature accounting is offered for the Laplace mechanism only (that is
    the paper's setting); under a bounding other than ``minmax`` it is valid but wasteful, because
    ``d × coordinate range`` over-states the true L1 sensitivity.

Noise once (learning.md P1, DESIGN.md "Privacy, stated honestly")
    Re-noising the same sample every epoch spends ε again every epoch. :class:`NoisyFeatureCache`
    draws the noise once per (task, device, extractor version, data set, release parameters),
    charges the ledger once, and hands out the same noisy tensor for every later epoch and round;
    training on it is post-processing and costs nothing more. A new extractor version computes
    new features of the same samples, so it is a new release and costs ε again.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor

from ..errors import FLNodeError
from ..fsutil import write_file_atomically
from .accountant import Curve, GaussianCurve, LaplaceCurve
from .bounding import Bounding, get_bounding
from .ledger import EpsDelta, PrivacyBudgetExceeded, PrivacyLedger
from .mechanisms import GaussianMechanism, LaplaceMechanism, Mechanism, noise_generator

Accounting = Literal["per-sample", "per-feature"]
"""How a stated ε is meant: for one sample's whole vector, or for each coordinate (the paper's)."""

MechanismName = Literal["laplace", "gaussian"]

CACHE_FORMAT = "flnode-noisy-features"
CACHE_FORMAT_VERSION = "1"
_TENSOR_NAME = "features"


class FeatureCacheError(FLNodeError):
    """A cached noisy-feature file cannot be used (unreadable, mismatched, or not paid for)."""


# -- accounting conventions ---------------------------------------------------------------------


def _check_dim(d: int) -> None:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"the feature dimension d must be a positive integer. Got: {d!r}")


def per_sample_epsilon(per_feature_epsilon: float, d: int) -> float:
    """The per-sample ε of d coordinates released at ``per_feature_epsilon`` each: ``d × ε``."""
    _check_dim(d)
    return d * per_feature_epsilon


def per_feature_epsilon(per_sample_epsilon: float, d: int) -> float:
    """The paper-convention ε per coordinate that adds up to ``per_sample_epsilon``: ``ε / d``."""
    _check_dim(d)
    return per_sample_epsilon / d


# -- one release configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureRelease:
    """Bounding + mechanism + the convention its ε was stated in: everything that determines the
    noisy features, so a number is never ambiguous. Build it with :meth:`create`.

    ``stated_epsilon`` is the ε as the user gave it, in ``accounting``'s convention;
    ``mechanism.epsilon`` is always the per-sample ε, the one the ledger is charged.
    """

    bounding: Bounding
    mechanism: Mechanism
    dim: int
    accounting: Accounting
    stated_epsilon: float

    def __post_init__(self) -> None:
        _check_dim(self.dim)
        if self.accounting not in get_args(Accounting):
            raise ValueError(
                f"accounting must be one of {get_args(Accounting)}. Got: {self.accounting!r}"
            )
        m = self.mechanism
        if isinstance(m, LaplaceMechanism):
            needed = self.bounding.l1_sensitivity(self.dim)
            given = m.l1_sensitivity
        elif isinstance(m, GaussianMechanism):
            needed = self.bounding.l2_sensitivity(self.dim)
            given = m.l2_sensitivity
            if self.accounting != "per-sample":
                raise ValueError("per-feature accounting is only defined for the Laplace mechanism")
        else:
            raise ValueError(f"unsupported mechanism {type(m).__name__}")
        if given < needed * (1 - 1e-12):
            raise ValueError(
                f"the {m.name} mechanism is calibrated for sensitivity {given:g}, but "
                f"{self.bounding.spec} bounding of {self.dim} features has sensitivity {needed:g}"
            )
        expected = (
            self.stated_epsilon
            if self.accounting == "per-sample"
            else per_sample_epsilon(self.stated_epsilon, self.dim)
        )
        if not math.isclose(m.epsilon, expected, rel_tol=1e-12):
            raise ValueError(
                f"stated ε={self.stated_epsilon:g} {self.accounting} means ε={expected:g} per "
                f"sample, but the mechanism has ε={m.epsilon:g}"
            )

    @classmethod
    def create(
        cls,
        *,
        mechanism: MechanismName,
        epsilon: float,
        accounting: Accounting,
        bounding: Bounding | str,
        dim: int,
        delta: float | None = None,
        clip: float | None = None,
    ) -> FeatureRelease:
        """Calibrate a mechanism for ``dim`` features bounded by ``bounding``.

        ``epsilon`` is read in the ``accounting`` convention. Laplace takes no ``delta``; Gaussian
        needs one. ``clip`` is the clipping norm when ``bounding`` is the name of a clip bounding.

        Per-feature Laplace noise has scale ``coordinate range / ε_feature`` on every coordinate
        (``1/ε`` under ``minmax``, the paper's), which is the per-sample mechanism with
        ``ε = d × ε_feature`` and L1 sensitivity ``d × coordinate range``.
        """
        _check_dim(dim)
        if clip is not None and not isinstance(bounding, str):
            raise ValueError("clip is only used with a bounding given by name")
        b = get_bounding(bounding, c=clip) if isinstance(bounding, str) else bounding
        if accounting not in get_args(Accounting):
            raise ValueError(
                f"accounting must be one of {get_args(Accounting)}. Got: {accounting!r}"
            )
        m: Mechanism
        if mechanism == "laplace":
            if delta not in (None, 0, 0.0):
                raise ValueError("the Laplace mechanism is pure ε-DP; it takes no delta")
            if accounting == "per-sample":
                m = LaplaceMechanism(epsilon, b.l1_sensitivity(dim))
            else:
                m = LaplaceMechanism(per_sample_epsilon(epsilon, dim), dim * b.coord_sensitivity)
        elif mechanism == "gaussian":
            if accounting != "per-sample":
                raise ValueError(
                    "per-feature accounting is only defined for the Laplace mechanism (the "
                    "paper's); state the Gaussian mechanism's ε per sample"
                )
            if delta is None:
                raise ValueError("the Gaussian mechanism needs a delta")
            m = GaussianMechanism(epsilon, delta, b.l2_sensitivity(dim))
        else:
            raise ValueError(f"unknown mechanism {mechanism!r}; expected 'laplace' or 'gaussian'")
        return cls(
            bounding=b, mechanism=m, dim=dim, accounting=accounting, stated_epsilon=float(epsilon)
        )

    @property
    def per_sample_epsilon(self) -> float:
        """The ε charged to the ledger: one sample's whole vector."""
        return self.mechanism.epsilon

    @property
    def per_feature_epsilon(self) -> float:
        """The same release in the paper's convention (ε per coordinate), for comparison."""
        return per_feature_epsilon(self.mechanism.epsilon, self.dim)

    @property
    def delta(self) -> float:
        return self.mechanism.delta

    @property
    def cost(self) -> EpsDelta:
        """What one release costs each sample, per sample."""
        return EpsDelta(self.mechanism.epsilon, self.mechanism.delta)

    @property
    def curve(self) -> Curve:
        """The release's privacy curve, so the ledger can compose it in Rényi DP."""
        m = self.mechanism
        if isinstance(m, GaussianMechanism):
            return GaussianCurve(m.sigma / m.l2_sensitivity)
        return LaplaceCurve(m.epsilon)

    @property
    def mechanism_label(self) -> str:
        """The mechanism name recorded in the ledger, e.g. ``"laplace+minmax"``."""
        return f"{self.mechanism.name}+{self.bounding.spec}"

    @property
    def label(self) -> str:
        """A human description that says which convention the number is in."""
        text = f"ε={self.per_sample_epsilon:g} per sample"
        if self.delta:
            text += f", δ={self.delta:g}"
        text += f" (= ε={self.per_feature_epsilon:g} per feature, paper convention)"
        if self.accounting == "per-feature":
            text += f"; stated as ε={self.stated_epsilon:g} per feature"
        return f"{text}; {self.mechanism_label}, d={self.dim}, scale={self.mechanism.scale:g}"

    @property
    def spec(self) -> str:
        """Everything that determines the noisy features, as stable text (part of cache keys)."""
        return f"{self.bounding.spec}|{self.mechanism.spec}|d={self.dim}"

    def bound(self, z: Tensor) -> Tensor:
        """Bound raw features ``z`` of shape ``[N, dim]``."""
        if isinstance(z, Tensor) and (z.ndim != 2 or z.shape[1] != self.dim):
            raise ValueError(f"expected features of shape [N, {self.dim}]. Got: {tuple(z.shape)}")
        return self.bounding.apply(z)

    def apply(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """Bound and noise ``z`` with fresh noise. Charges nothing: callers that release the
        result must charge a ledger first (or use :class:`NoisyFeatureCache`, which does)."""
        return self.mechanism.release(self.bound(z), generator)


# -- the noise-once cache -----------------------------------------------------------------------


def sample_ids_key(sample_ids: Sequence[int] | Tensor) -> str:
    """A dataset key naming an ordered set of sample ids (sha-256 of the int64 ids)."""
    ids = torch.as_tensor(sample_ids, dtype=torch.int64).reshape(-1).contiguous()
    return "ids-sha256:" + hashlib.sha256(ids.numpy().tobytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class _CacheKey:
    task_id: str
    device_id: str
    extractor_version: str
    dataset_key: str
    release_spec: str

    def digest(self) -> str:
        text = json.dumps(
            [
                self.task_id,
                self.device_id,
                self.extractor_version,
                self.dataset_key,
                self.release_spec,
            ]
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def metadata(self) -> dict[str, str]:
        return {
            "task_id": self.task_id,
            "device_id": self.device_id,
            "extractor_version": self.extractor_version,
            "dataset_key": self.dataset_key,
            "release_spec": self.release_spec,
        }


class NoisyFeatureCache:
    """Noisy features, released once per (task, device, extractor version, data set, release).

    In memory always; also on disk if ``cache_dir`` is given, one safetensors file per release
    named by the key's sha-256, so that a restarted device reuses its noise instead of paying
    again. Whatever the source, a cached tensor is only handed out if the ledger passed in holds
    the entry that paid for it: the ledger, not the cache, is the proof of payment.

    Order on a miss: check the budget (before computing any features), compute and bound the
    features, charge the ledger (durable), draw the noise, write the cache file. A crash after
    the charge and before the file is written costs that ε a second time on the next run, which
    errs on the safe side. Without ``cache_dir`` every restart pays again.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._memory: dict[_CacheKey, tuple[Tensor, str]] = {}
        self._lock = threading.Lock()

    def path_for(self, key_digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key_digest}.safetensors"

    def get_or_release(
        self,
        *,
        extractor_version: str,
        dataset_key: str,
        features_fn: Callable[[], Tensor],
        release: FeatureRelease,
        ledger: PrivacyLedger,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The noisy features of a data set, released (and charged) only the first time.

        ``features_fn`` returns the raw extractor output ``[N, release.dim]`` of the data set named
        by ``dataset_key`` (a name, or :func:`sample_ids_key` of its sample ids); it is called on a
        miss only. The task and device are the ledger's. ``generator`` defaults to a fresh
        OS-seeded one. Returns a new tensor each call (a copy of the cached one).

        Raises :class:`PrivacyBudgetExceeded` before computing or releasing anything when the
        release does not fit the ledger's budget, and :class:`FeatureCacheError` when a cached
        file is unusable or the ledger holds no entry that paid for it.
        """
        for name, value in (("extractor_version", extractor_version), ("dataset_key", dataset_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string. Got: {value!r}")
        key = _CacheKey(
            task_id=ledger.task_id,
            device_id=ledger.device_id,
            extractor_version=extractor_version,
            dataset_key=dataset_key,
            release_spec=release.spec,
        )
        with self._lock:
            hit, source = self._memory.get(key), "memory"
            if hit is None:
                hit, source = self._load(key, release), str(self.path_for(key.digest()))
            if hit is not None:
                tensor, release_id = hit
                self._check_paid(key, release_id, release, ledger, source=source)
                self._memory[key] = hit
                return tensor.clone()
            tensor, release_id = self._release(key, features_fn, release, ledger, generator)
            self._memory[key] = (tensor, release_id)
            return tensor.clone()

    def _release(
        self,
        key: _CacheKey,
        features_fn: Callable[[], Tensor],
        release: FeatureRelease,
        ledger: PrivacyLedger,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, str]:
        cost = release.cost
        if not ledger.can_spend(cost.epsilon, cost.delta, release.curve):
            raise PrivacyBudgetExceeded(ledger.task_id, cost, ledger.spent(), ledger.budget)
        bounded = release.bound(features_fn())
        entry = ledger.charge(
            kind="features",
            mechanism=release.mechanism_label,
            epsilon=cost.epsilon,
            delta=cost.delta,
            extractor_version=key.extractor_version,
            n_samples=int(bounded.shape[0]),
            note=f"{release.label}; dataset {key.dataset_key}",
            curve=release.curve,
        )
        g = noise_generator(None) if generator is None else generator
        noisy = release.mechanism.release(bounded, g).contiguous()
        path = self.path_for(key.digest())
        if path is not None:
            metadata = {
                "format": CACHE_FORMAT,
                "version": CACHE_FORMAT_VERSION,
                "release_id": entry.release_id,
                **key.metadata(),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomically(
                path, safetensors_save({_TENSOR_NAME: noisy}, metadata), mode=0o600
            )
        return noisy, entry.release_id

    def _load(self, key: _CacheKey, release: FeatureRelease) -> tuple[Tensor, str] | None:
        path = self.path_for(key.digest())
        if path is None or not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensor = f.get_tensor(_TENSOR_NAME)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise FeatureCacheError(
                f"cached noisy features {path} cannot be read ({exc}); delete the file to "
                "release these features again, which costs their ε again"
            ) from exc
        problems = []
        if (
            metadata.get("format") != CACHE_FORMAT
            or metadata.get("version") != CACHE_FORMAT_VERSION
        ):
            problems.append("unknown format")
        problems += [
            f"{name} is {metadata.get(name)!r}, expected {value!r}"
            for name, value in key.metadata().items()
            if metadata.get(name) != value
        ]
        if tensor.ndim != 2 or tensor.shape[1] != release.dim or not tensor.is_floating_point():
            problems.append(f"tensor of shape {tuple(tensor.shape)} and type {tensor.dtype}")
        if "release_id" not in metadata:
            problems.append("no release id")
        if problems:
            raise FeatureCacheError(
                f"cached noisy features {path} do not match this release: {'; '.join(problems)}"
            )
        return tensor, metadata["release_id"]

    @staticmethod
    def _check_paid(
        key: _CacheKey, release_id: str, release: FeatureRelease, ledger: PrivacyLedger, source: str
    ) -> None:
        entry = ledger.entry(release_id)
        cost = release.cost
        if (
            entry is None
            or entry.kind != "features"
            or entry.extractor_version != key.extractor_version
            or entry.cost != cost
        ):
            raise FeatureCacheError(
                f"noisy features for dataset {key.dataset_key!r} (extractor "
                f"{key.extractor_version!r}) are cached in {source}, but the privacy ledger of "
                f"task {ledger.task_id!r} holds no matching entry {release_id!r} that paid for them; "
                "refusing to use features whose release is not accounted for (was the ledger "
                "replaced?)"
            )
