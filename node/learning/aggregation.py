"""Aggregation rules, update validation and the tolerance for re-checking an aggregate.

Every round each miner receives the devices' updates (state dicts, named by CID), checks each one
against the task's tensor spec (:func:`validate_update`), and combines the valid ones with the
task's :class:`Strategy`. The leader puts the aggregate's CID, the accepted and rejected CIDs and
the scores into a ``commitRound``; the other committee members recompute it and vote. Hence two
requirements shape this module beyond "average some tensors": the result must be the same on every
honest miner (see *Determinism*), and a poisoned minority must not be able to steer it (the robust
rules).

Rules
    ``fedavg``       :class:`FedAvg`, the sample-weighted mean (McMahan et al. 2017); claimed sample
                     counts are capped so that a device cannot buy weight by lying about them.
    ``multikrum``    :class:`MultiKrum` (Blanchard et al., NeurIPS 2017): score every update by its
                     distance to its closest neighbours, keep the ``m`` best, FedAvg them.
    ``krum``         :class:`Krum`, Multi-Krum with ``m = 1``.
    ``median``       :class:`Median`, the coordinate-wise median (Yin et al., ICML 2018).
    ``trimmed-mean`` :class:`TrimmedMean`, the coordinate-wise β-trimmed mean (Yin et al. 2018).
    ``three-sigma``  :class:`ThreeSigma`, the three-sigma rule on the distances to the
                     coordinate-wise median (the outlier test Zhao et al. cite as ref. [54]).

    Every rule returns per-update ``scores`` in which **higher means more suspicious**; what the
    number is (a distance, a sum of squared distances) is documented on each rule.

Integer tensors
    State dicts carry integer buffers (BatchNorm's ``num_batches_tracked``, learning.md P4). An
    average of counters is meaningless and one liar could drag it anywhere, so integer tensors are
    left out of every distance and score, and the aggregate takes their element-wise *lower median*
    over the accepted updates. Floating tensors of any dtype are aggregated in float64 and returned
    in their input dtype. Other dtypes (bool, complex) are refused.

Determinism
    All honest miners must compute the same bytes, whatever their thread count or CPU. So:

    * updates are sorted by CID before anything else, and every tie (equal scores) is broken by
      CID, so the order in which updates arrived never matters;
    * each update's floating tensors are flattened, in sorted key order, into one float64 vector;
    * all arithmetic is element-wise torch operations (subtract, multiply, add, divide by a full
      tensor), never a BLAS call or a library reduction: each element-wise operation is one
      correctly rounded IEEE-754 operation, so its result does not depend on SIMD width, thread
      count or blocking, whereas ``torch.sum``, ``@`` and ``torch.cdist`` reduce in an order that
      does (and Multi-Krum's choice would then flip on near-ties from one miner to the next);
    * sorting (median, trimmed mean) yields the same values whatever the algorithm, once −0.0 has
      been turned into +0.0 (there are no NaNs: non-finite updates are refused);
    * sums over coordinates (squared distances, norms) use a fixed pairwise tree whose shape
      depends only on the vector length; sums of a few scalars use :func:`math.fsum`;
    * the result is rounded once, at the end, from float64 to each tensor's input dtype.

Tolerance
    Recomputing the aggregate from the same updates with this code gives **bitwise identical**
    tensors on the same platform and torch version, and by the argument above on any IEEE-754
    machine that does not flush subnormals to zero. A validator should still compare with
    :func:`aggregates_match` rather than bytes, because a proposer may legitimately run another
    build (another torch version, a GPU, a platform with flush-to-zero): it accepts when every
    element satisfies ``|a − b| ≤ tol · max(1, |a|, |b|)`` with ``tol =``
    :data:`AGGREGATE_TOLERANCE` (1e-6, about eight float32 ulps; the tolerance is never tighter than
    two ulps of the tensor's dtype), integer tensors match exactly, and keys, shapes and dtypes are
    identical. The accepted and rejected *sets* must match exactly: they are decisions, not floats,
    and the rules above make them reproducible.
"""

from __future__ import annotations

import inspect
import itertools
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import FLNodeError

Weights = dict[str, Tensor]
"""A state dict: parameter name → tensor (floating, or an integer buffer)."""

AGGREGATE_TOLERANCE = 1e-6
"""Relative tolerance (to ``max(1, |w|)``) for :func:`aggregates_match`; see *Tolerance* above."""

# Turns a median absolute deviation into an estimate of σ for normal data: 1 / Φ⁻¹(3/4).
_MAD_TO_SIGMA = 1.482602218505602
# Rows of float64 scratch per distance chunk: 2**19 doubles = 4 MiB, which stays in cache. The chunk
# size changes the speed only, never a result (each row is reduced on its own).
_CHUNK_ELEMENTS = 1 << 19


class AggregationError(FLNodeError, ValueError):
    """The updates cannot be aggregated by this rule: too few, inconsistent, or non-finite."""


class UpdateValidationError(FLNodeError, ValueError):
    """An update does not match the task's tensor spec or bounds.

    ``kind`` says which check failed (``"type"``, ``"missing"``, ``"extra"``, ``"shape"``,
    ``"dtype"``, ``"non-finite"``, ``"norm"``) and ``key`` names the tensor, when there is one, so
    the caller can log it and charge the sender's peer score without parsing the message.
    """

    def __init__(self, message: str, *, kind: str, key: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.key = key


# --------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, eq=False)
class Update:
    """One device's submission for a round: its weights, named by the CID of their bytes.

    ``n_samples`` is the device's *claimed* number of training samples; nothing can verify it,
    which is why :class:`FedAvg` caps it. Equality is identity (tensors have no boolean equality).
    """

    cid: str
    sender: str
    weights: Mapping[str, Tensor]
    n_samples: int

    def __post_init__(self) -> None:
        if not isinstance(self.cid, str) or not self.cid:
            raise UpdateValidationError(
                f"an update needs a non-empty CID string. Got: {self.cid!r}", kind="type"
            )
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int):
            raise UpdateValidationError(
                f"n_samples must be an int. Got: {self.n_samples!r}", kind="type"
            )
        if self.n_samples < 1:
            raise UpdateValidationError(
                f"n_samples must be at least 1 (an update trained on nothing has no weight). "
                f"Got: {self.n_samples} for update {self.cid}",
                kind="type",
            )


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """What a rule decided: the aggregate, a score per update, and who was accepted.

    ``scores`` maps every input CID to a float where higher means more suspicious (its unit
    depends on ``rule``, see each rule). ``accepted`` and ``rejected`` are CIDs in sorted order and
    together cover all inputs. ``weights`` holds fresh tensors with the inputs' shapes and dtypes.
    """

    weights: Weights
    scores: dict[str, float]
    accepted: tuple[str, ...]
    rejected: tuple[str, ...]
    rule: str


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """The shape and dtype a tensor of an update must have (taken from the task's global model)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"shape must be a tuple of non-negative ints. Got: {self.shape!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"dtype must be a torch.dtype. Got: {self.dtype!r}")
        object.__setattr__(self, "shape", shape)


def tensor_specs(weights: Mapping[str, Tensor]) -> dict[str, TensorSpec]:
    """The spec every update must match: the shapes and dtypes of ``weights`` (the global model)."""
    return {k: TensorSpec(tuple(t.shape), t.dtype) for k, t in weights.items()}


# --------------------------------------------------------------------------------------------------
# Validation


def validate_update(
    weights: Mapping[str, Tensor],
    spec: Mapping[str, TensorSpec],
    *,
    max_norm: float | None,
    reference: Mapping[str, Tensor] | None = None,
) -> None:
    """Check an update before it may take part in aggregation; raise on the first problem.

    The checks run in a fixed order (type, missing keys, extra keys, then per key in sorted order:
    shape, dtype, finiteness; finally the norm), so every miner names the same problem for the
    same bytes. The norm is the L2 norm over all floating tensors of ``weights``, or of
    ``weights − reference`` when the round's global model is given as ``reference``: a bound on
    the *change* is what limits a scaled (boosted) update, since honest weights themselves can be
    large. Integer buffers are left out of the norm. ``max_norm=None`` skips the norm check.

    Raises :class:`UpdateValidationError` (with ``kind`` and ``key``) for a bad update, and
    ``ValueError`` for bad arguments (a non-positive ``max_norm``, a reference not matching spec).
    """
    if max_norm is not None and not (isinstance(max_norm, int | float) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive number or None. Got: {max_norm!r}")
    if not isinstance(weights, Mapping):
        raise UpdateValidationError(
            f"an update must be a mapping of names to tensors, not {type(weights).__name__}",
            kind="type",
        )
    missing = sorted(set(spec) - set(weights))
    if missing:
        raise UpdateValidationError(
            f"update lacks tensor {missing[0]!r}" + _and_more(len(missing)),
            kind="missing",
            key=missing[0],
        )
    extra = sorted(set(weights) - set(spec), key=str)
    if extra:
        raise UpdateValidationError(
            f"update has unexpected tensor {extra[0]!r}" + _and_more(len(extra)),
            kind="extra",
            key=str(extra[0]),
        )
    for key in sorted(spec):
        t, s = weights[key], spec[key]
        if not isinstance(t, Tensor):
            raise UpdateValidationError(
                f"{key!r} is a {type(t).__name__}, not a tensor", kind="type", key=key
            )
        if tuple(t.shape) != s.shape:
            raise UpdateValidationError(
                f"{key!r} has shape {tuple(t.shape)}, expected {s.shape}", kind="shape", key=key
            )
        if t.dtype != s.dtype:
            raise UpdateValidationError(
                f"{key!r} has dtype {t.dtype}, expected {s.dtype}", kind="dtype", key=key
            )
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise UpdateValidationError(
                f"{key!r} contains NaN or infinite values", kind="non-finite", key=key
            )
    if max_norm is None:
        return
    float_keys = [k for k in sorted(spec) if spec[k].dtype.is_floating_point]
    vector = _flatten(weights, float_keys)
    if reference is not None:
        for key in float_keys:
            r = reference.get(key)
            if not isinstance(r, Tensor) or tuple(r.shape) != spec[key].shape:
                raise ValueError(f"reference tensor {key!r} is missing or does not match the spec")
        vector = vector - _flatten(reference, float_keys)
    norm = math.sqrt(float(_row_sums_of_squares(vector.unsqueeze(0))[0]))
    if not norm <= max_norm:
        what = "update − reference" if reference is not None else "update"
        raise UpdateValidationError(
            f"L2 norm of the {what} is {norm:.6g}, above the bound {max_norm:.6g}", kind="norm"
        )


def _and_more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""


# --------------------------------------------------------------------------------------------------
# Strategies


class Strategy(ABC):
    """An aggregation rule: updates in, one aggregate (plus scores and decisions) out.

    Rules are small immutable objects configured once per task (``strategy_from_spec`` builds one
    from the task's spec); ``aggregate`` is a pure function of the set of updates, whatever their
    order. ``params`` round-trips through :func:`strategy_from_spec`.
    """

    name: ClassVar[str]

    @abstractmethod
    def aggregate(self, updates: Sequence[Update]) -> AggregationResult:
        """Combine ``updates`` (distinct CIDs, any order); raise :class:`AggregationError` if
        this rule cannot (too few updates, duplicates, mismatched tensors, non-finite values)."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The constructor arguments, so that ``strategy_from_spec(s.name, **s.params)`` == s."""

    def min_updates(self) -> int:
        """The fewest updates this rule accepts; a node should wait for at least this many."""
        return 1

    def _check_count(self, n: int, why: str) -> None:
        if n < self.min_updates():
            raise AggregationError(
                f"{self.name} needs at least {self.min_updates()} updates {why}; got {n}"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class FedAvg(Strategy):
    """The sample-weighted mean of all updates (McMahan et al., AISTATS 2017).

    A device's weight is its claimed ``n_samples``, capped at ``max_samples`` when given: the claim
    cannot be checked, and without a cap one device claiming a billion samples *is* the aggregate.
    Every update is accepted; the score is the L2 distance of the update to the aggregate
    (informational, e.g. for reputation: the rule itself rejects nobody).
    """

    name = "fedavg"

    def __init__(self, max_samples: int | None = None) -> None:
        self.max_samples = _check_cap(max_samples)

    @property
    def params(self) -> dict[str, Any]:
        return {"max_samples": self.max_samples}

    def aggregate(self, updates: Sequence[Update]) -> AggregationResult:
        batch = _prepare(updates)
        self._check_count(batch.n, "to average")
        rows = list(range(batch.n))
        mean = _weighted_mean(batch, rows, self.max_samples)
        return batch.result(self.name, mean, rows, _distances_to(batch.matrix, mean))


class MultiKrum(Strategy):
    """Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017), tolerating ``f`` Byzantine updates among ``n > 2f + 2``.

    Each update's score is the sum of its squared L2 distances to its ``n − f − 2`` nearest other
    updates: an honest update sits in the honest cluster, so its nearest neighbours are close,
    while an outlier pays for its distance to at least ``n − 2f − 2 ≥ 1`` honest ones. The ``m``
    updates with the lowest scores are accepted (ties by CID), ``m = n − f`` by default, and their
    aggregate is the sample-weighted FedAvg of the accepted updates (claims capped by
    ``max_samples``), which is the paper's plain mean when the sample counts are equal. ``m = 1``
    is Krum. Scores are the Krum scores (sums of squared distances).

    Pairwise distances are exact-order element-wise computations (see *Determinism*), chunked so
    the scratch stays in cache: O(n²·d) work, about 0.7 s for 100 updates of 100k parameters on one
    core (bench/aggregation.py).
    """

    name = "multikrum"

    def __init__(self, f: int, m: int | None = None, max_samples: int | None = None) -> None:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f (the number of Byzantine updates) must be an int ≥ 0. Got: {f!r}")
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(
                f"m (the number of updates to keep) must be an int ≥ 1 or None. Got: {m!r}"
            )
        self.f = f
        self.m = m
        self.max_samples = _check_cap(max_samples)

    @property
    def params(self) -> dict[str, Any]:
        return {"f": self.f, "m": self.m, "max_samples": self.max_samples}

    def min_updates(self) -> int:
        need = 2 * self.f + 3
        return max(need, self.m + self.f) if self.m is not None else need

    def aggregate(self, updates: Sequence[Update]) -> AggregationResult:
        batch = _prepare(updates)
        n = batch.n
        if n <= 2 * self.f + 2:
            raise AggregationError(
                f"{self.name} with f={self.f} needs more than 2f+2 = {2 * self.f + 2} updates "
                f"(each honest update must have more honest than Byzantine neighbours); got {n}"
            )
        m = n - self.f if self.m is None else self.m
        if m > n - self.f:
            raise AggregationError(
                f"{self.name} asked to keep m={m} updates but with f={self.f} only n−f = "
                f"{n - self.f} of the {n} updates can be trusted"
            )
        distances = _pairwise_sq_distances(batch.matrix).tolist()
        k = n - self.f - 2
        scores = [
            math.fsum(sorted(row[j] for j in range(n) if j != i)[:k])
            for i, row in enumerate(distances)
        ]
        ranked = sorted(range(n), key=lambda i: (scores[i], batch.cids[i]))
        accepted = sorted(ranked[:m])
        mean = _weighted_mean(batch, accepted, self.max_samples)
        return batch.result(self.name, mean, accepted, scores)


class Krum(MultiKrum):
    """Krum: Multi-Krum keeping the single best-scored update (``m = 1``), which is the aggregate.

    Strongest filter, but it throws away all other honest work each round, so it converges slower.
    """

    name = "krum"

    def __init__(self, f: int, max_samples: int | None = None) -> None:
        super().__init__(f, 1, max_samples)

    @property
    def params(self) -> dict[str, Any]:
        return {"f": self.f, "max_samples": self.max_samples}


class Median(Strategy):
    """The coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning", ICML 2018).

    Each coordinate is the median of that coordinate over all updates; for an even count it is the
    mean of the two middle values (``a/2 + b/2``, which cannot overflow). Sample counts are ignored
    (a weighted median would let a lying device move it again). It stays inside the honest range of
    every coordinate as long as fewer than half of the updates are Byzantine. Every update is
    accepted (each contributes a rank); the score is the L2 distance to the aggregate.
    """

    name = "median"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def aggregate(self, updates: Sequence[Update]) -> AggregationResult:
        batch = _prepare(updates)
        self._check_count(batch.n, "to take a median")
        median = _coordinate_median(batch.matrix)
        rows = list(range(batch.n))
        return batch.result(self.name, median, rows, _distances_to(batch.matrix, median))


class TrimmedMean(Strategy):
    """The coordinate-wise β-trimmed mean (Yin et al., ICML 2018).

    For each coordinate, drop the ``⌊β·n⌋`` largest and the ``⌊β·n⌋`` smallest values and average
    the rest (unweighted, like the median, and for the same reason). ``β·n`` is computed exactly
    from β's decimal form (``0.29 · 100`` is 29, not 28.999…). With ``β > 0`` at least one value
    must be trimmed at each end, else the rule would silently be a plain mean: ``n ≥ ⌈1/β⌉``. It
    tolerates up to ``⌊β·n⌋`` Byzantine updates. Every update is accepted; the score is the L2
    distance to the aggregate.
    """

    name = "trimmed-mean"

    def __init__(self, beta: float) -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < 0.5:
            raise ValueError(
                f"beta (the fraction trimmed at each end) must be in [0, 0.5). Got: {beta!r}"
            )
        self.beta = beta
        self._beta = Fraction(repr(float(beta)))

    @property
    def params(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def min_updates(self) -> int:
        return math.ceil(1 / self._beta) if self._beta > 0 else 1

    def trimmed(self, n: int) -> int:
        """How many values are dropped at *each* end of every coordinate for ``n`` updates."""
        return math.floor(self._beta * n)

    def aggregate(self, updates: Sequence[Update]) -> AggregationResult:
        batch = _prepare(updates)
        self._check_count(batch.n, f"so that β={self.beta} trims at least one at each end")
        t = self.trimmed(batch.n)
        kept = _sorted_columns(batch.matrix)[t : batch.n - t].contiguous()
        total = torch.zeros(batch.d, dtype=torch.float64)
        for row in kept:
            total.add_(row)
        mean = _divide(total, kept.shape[0])
        rows = list(range(batch.n))
        return batch.result(self.name, mean, rows, _distances_to(batch.matrix, mean))


class ThreeSigma(Strategy):
    """The three-sigma rule on distances to the coordinate-wise median, then FedAvg of the rest.

    Zhao et al. filter poisoned updates with the three-sigma rule (their ref. [54]). Applied
    naively (reject beyond mean + 3·std of the distances) it cannot flag anything in a small round:
    one huge outlier inflates the std so much that its own z-score is at most (n−1)/√n, below 3
    for n ≤ 10. So this rule is made robust in both places where the outliers could hide:

    * the *centre* from which distances are measured is the coordinate-wise median of the updates,
      not their mean, so the outliers do not pull it towards themselves;
    * the *spread* of the distances is estimated robustly: threshold = median(d) + k·σ̂ with
      σ̂ = 1.4826·MAD(d) (the median absolute deviation, scaled to equal σ for normal data).
      MAD = 0 means more than half the distances coincide exactly, which genuine, independently
      trained updates never do: a majority of identical copies (free riders replaying the global
      model, or a test). Their zero spread says nothing about how far genuine updates scatter, so
      σ̂ then falls back to 1.4826 times the median of the *non-zero* deviations; if there are none,
      all distances are equal and nothing is rejected.

    Updates with distance > threshold are rejected; at least half are always accepted (those at or
    below the median distance). The aggregate is the FedAvg of the accepted ones (claims capped by
    ``max_samples``). Scores are the L2 distances to the coordinate-wise median. Needs n ≥ 3: with
    two updates there is no majority to call either one an outlier.
    """

    name = "three-sigma"

    def __init__(self, k: float = 3.0, max_samples: int | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int | float) or not (0 < k < math.inf):
            raise ValueError(f"k (the number of sigmas) must be a positive number. Got: {k!r}")
        self.k = float(k)
        self.max_samples = _check_cap(max_samples)

    @property
    def params(self) -> dict[str, Any]:
        return {"k": self.k, "max_samples": self.max_samples}

    def min_updates(self) -> int:
        return 3

    def threshold(self, distances: Sequence[float]) -> float:
        """The distance above which an update is rejected (see the class docstring)."""
        centre = statistics.median(distances)
        deviations = [abs(d - centre) for d in distances]
        mad = statistics.median(deviations)
        if mad == 0.0:
            spread = [x for x in deviations if x > 0.0]
            mad = statistics.median(spread) if spread else 0.0
        return centre + self.k * _MAD_TO_SIGMA * mad

    def aggregate(self, updates: Sequence[Update]) -> AggregationResult:
        batch = _prepare(updates)
        self._check_count(batch.n, "(no majority to measure an outlier against)")
        distances = _distances_to(batch.matrix, _coordinate_median(batch.matrix))
        limit = self.threshold(distances)
        accepted = [i for i, d in enumerate(distances) if d <= limit]
        mean = _weighted_mean(batch, accepted, self.max_samples)
        return batch.result(self.name, mean, accepted, distances)


STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(
    {cls.name: cls for cls in (FedAvg, MultiKrum, Krum, Median, TrimmedMean, ThreeSigma)}
)
"""Rule name (as written in a task spec) → class."""


def strategy_from_spec(name: str, **params: Any) -> Strategy:
    """Build the rule a task names, e.g. ``strategy_from_spec("multikrum", f=2)``.

    Raises ``ValueError`` for an unknown name or parameter, listing what is known, and whatever
    the rule's constructor raises for a bad value.
    """
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown aggregation rule {name!r}; known rules: {', '.join(sorted(STRATEGIES))}"
        )
    signature = inspect.signature(cls.__init__)
    known = [p for p in signature.parameters if p != "self"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"rule {name!r} takes no parameter {unknown[0]!r}; "
            f"it takes: {', '.join(known) if known else 'nothing'}"
        )
    try:
        signature.bind(None, **params)
    except TypeError as exc:
        raise ValueError(f"rule {name!r}: {exc}") from None
    return cls(**params)


# --------------------------------------------------------------------------------------------------
# Comparing aggregates


def aggregates_match(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], tol: float = AGGREGATE_TOLERANCE
) -> bool:
    """Whether a recomputed aggregate ``a`` agrees with a proposed one ``b`` (see *Tolerance*).

    Keys, shapes and dtypes must be identical, integer tensors equal, floating tensors finite and
    within ``max(tol, 2·eps(dtype)) · max(1, |a|, |b|)`` element-wise.
    """
    if not (isinstance(tol, int | float) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number. Got: {tol!r}")
    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            return False
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        x64, y64 = x.detach().cpu().double(), y.detach().cpu().double()
        if not (bool(torch.isfinite(x64).all()) and bool(torch.isfinite(y64).all())):
            return False
        rtol = max(float(tol), 2 * torch.finfo(x.dtype).eps)
        scale = torch.maximum(x64.abs(), y64.abs()).clamp_min(1.0)
        if not bool(((x64 - y64).abs() <= rtol * scale).all()):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Internals: one batch of updates, sorted and flattened


@dataclass(frozen=True, eq=False)
class _Slot:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class _Batch:
    """The updates sorted by CID, their floating tensors as rows of one float64 matrix."""

    updates: tuple[Update, ...]
    cids: tuple[str, ...]
    slots: tuple[_Slot, ...]  # floating tensors, in key order
    int_slots: tuple[_Slot, ...]  # integer tensors (start/stop unused)
    matrix: Tensor  # (n, d) float64

    @property
    def n(self) -> int:
        return len(self.updates)

    @property
    def d(self) -> int:
        return self.matrix.shape[1]

    def result(
        self, rule: str, vector: Tensor, accepted: Sequence[int], scores: Sequence[float]
    ) -> AggregationResult:
        """Unflatten ``vector`` to the inputs' shapes and dtypes and package the decision."""
        weights: dict[str, Tensor] = {}
        for s in self.slots:
            weights[s.key] = vector[s.start : s.stop].reshape(s.shape).to(s.dtype, copy=True)
        for s in self.int_slots:
            stacked = torch.stack([self.updates[i].weights[s.key].detach().cpu() for i in accepted])
            ordered = torch.sort(stacked, dim=0).values
            weights[s.key] = ordered[(len(accepted) - 1) // 2].clone()
        keep = set(accepted)
        return AggregationResult(
            weights=dict(sorted(weights.items())),
            scores={cid: float(score) for cid, score in zip(self.cids, scores, strict=True)},
            accepted=tuple(self.cids[i] for i in range(self.n) if i in keep),
            rejected=tuple(self.cids[i] for i in range(self.n) if i not in keep),
            rule=rule,
        )


def _prepare(updates: Sequence[Update]) -> _Batch:
    if isinstance(updates, Update) or not isinstance(updates, Sequence):
        raise TypeError("aggregate() takes a sequence of Update objects")
    if not updates:
        raise AggregationError("no updates to aggregate")
    for u in updates:
        if not isinstance(u, Update):
            raise TypeError(f"aggregate() takes Update objects, not {type(u).__name__}")
    ordered = tuple(sorted(updates, key=lambda u: u.cid))
    cids = tuple(u.cid for u in ordered)
    for a, b in itertools.pairwise(ordered):
        if a.cid == b.cid:
            # Identical bytes from two senders (e.g. two free riders replaying the global model, or
            # a device copying another's update): which of them to credit is the round's policy,
            # decided before aggregation; here every CID names exactly one update.
            raise AggregationError(
                f"update {a.cid} appears twice (senders {a.sender!r} and {b.sender!r}); "
                f"deduplicate submissions before aggregating"
            )
    first = ordered[0]
    keys = sorted(first.weights)
    if not keys:
        raise AggregationError(f"update {first.cid} has no tensors")
    slots: list[_Slot] = []
    int_slots: list[_Slot] = []
    offset = 0
    for key in keys:
        t = first.weights[key]
        if not isinstance(t, Tensor):
            raise AggregationError(f"update {first.cid}: {key!r} is not a tensor")
        shape = tuple(t.shape)
        if t.is_floating_point():
            slots.append(_Slot(key, shape, t.dtype, offset, offset + t.numel()))
            offset += t.numel()
        elif t.dtype in _INTEGER_DTYPES:
            int_slots.append(_Slot(key, shape, t.dtype, 0, 0))
        else:
            raise AggregationError(
                f"update {first.cid}: {key!r} has dtype {t.dtype}, which cannot be aggregated"
            )
    matrix = torch.empty((len(ordered), offset), dtype=torch.float64)
    for row, u in enumerate(ordered):
        if sorted(u.weights) != keys:
            raise AggregationError(
                f"update {u.cid} has tensors {sorted(u.weights)} but update {first.cid} has {keys}"
            )
        for s in (*slots, *int_slots):
            t = u.weights[s.key]
            if not isinstance(t, Tensor) or tuple(t.shape) != s.shape or t.dtype != s.dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, Tensor) else type(t).__name__
                raise AggregationError(
                    f"update {u.cid}: {s.key!r} is {got}, but in update {first.cid} it is "
                    f"{(s.shape, s.dtype)}"
                )
            if s.stop > s.start:
                matrix[row, s.start : s.stop].copy_(t.detach().reshape(-1))
    finite = torch.isfinite(matrix).all(dim=1)
    if not bool(finite.all()):
        bad = ordered[int((~finite).nonzero()[0])]
        raise AggregationError(
            f"update {bad.cid} contains NaN or infinite values (validate updates first)"
        )
    return _Batch(ordered, cids, tuple(slots), tuple(int_slots), matrix)


_INTEGER_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


def _flatten(weights: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    parts = [weights[k].detach().reshape(-1).to("cpu", torch.float64) for k in keys]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _check_cap(max_samples: int | None) -> int | None:
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ValueError(
            f"max_samples (the cap on a device's claimed sample count) must be an int ≥ 1 "
            f"or None. Got: {max_samples!r}"
        )
    return max_samples


def _divide(total: Tensor, count: int | float) -> Tensor:
    # Divide by a full tensor, not a scalar: a scalar divisor may be turned into a multiplication
    # by its reciprocal (torch does this for some dtypes and devices), which rounds differently.
    return total / torch.full_like(total, float(count))


def _weighted_mean(batch: _Batch, rows: Sequence[int], cap: int | None) -> Tensor:
    """Σ wᵢ·xᵢ / Σ wᵢ over ``rows`` in CID order, wᵢ = min(n_samples, cap), one op at a time."""
    counts = [batch.updates[i].n_samples for i in rows]
    if cap is not None:
        counts = [min(c, cap) for c in counts]
    total = torch.zeros(batch.d, dtype=torch.float64)
    for i, c in zip(rows, counts, strict=True):
        total.add_(batch.matrix[i] * float(c))
    return _divide(total, sum(counts))


def _sorted_columns(matrix: Tensor) -> Tensor:
    """Every coordinate's values in ascending order: an (n, d) view whose columns are sorted.

    −0.0 is first turned into +0.0 (adding +0.0 does it: −0 + +0 = +0 under round-to-nearest):
    the two compare equal, so a sort may order them either way and a median could come out as
    either, which are different bytes. The sort runs in numpy on the transposed copy, about four
    times faster than ``torch.sort(dim=0)`` for 100 × 100k; the sorted *values* are the same
    whatever the algorithm, since there are no NaNs and no signed zeros left.
    """
    columns = np.array(matrix.numpy().T, order="C", copy=True)  # a copy even when d or n is 1
    np.add(columns, 0.0, out=columns)
    columns.sort(axis=1)
    return torch.from_numpy(columns).T


def _coordinate_median(matrix: Tensor) -> Tensor:
    n = matrix.shape[0]
    ordered = _sorted_columns(matrix)
    if n % 2:
        return ordered[n // 2].clone(memory_format=torch.contiguous_format)
    return ordered[n // 2 - 1] * 0.5 + ordered[n // 2] * 0.5


def _row_sums_of_squares(v: Tensor) -> Tensor:
    """Σⱼ v[r, j]² for every row, in a fixed pairwise order; ``v`` is overwritten (scratch)."""
    v.mul_(v)
    width = v.shape[1]
    if width == 0:
        return torch.zeros(v.shape[0], dtype=torch.float64)
    while width > 1:
        half = width // 2
        v[:, :half].add_(v[:, half : 2 * half])
        if width % 2:
            v[:, 0].add_(v[:, 2 * half])
        width = half
    return v[:, 0].clone()


def _sq_distances_rows(matrix: Tensor, point: Tensor, scratch: Tensor) -> Tensor:
    """‖matrix[r] − point‖² for every row, computed in chunks of ``scratch``'s rows."""
    rows, chunk = matrix.shape[0], scratch.shape[0]
    out = torch.empty(rows, dtype=torch.float64)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        buf = scratch[: stop - start]
        torch.sub(matrix[start:stop], point, out=buf)
        out[start:stop] = _row_sums_of_squares(buf)
    return out


def _scratch(n: int, d: int) -> Tensor:
    rows = max(1, min(n, _CHUNK_ELEMENTS // max(d, 1)))
    return torch.empty((rows, d), dtype=torch.float64)


def _pairwise_sq_distances(matrix: Tensor) -> Tensor:
    """The symmetric (n, n) matrix of squared L2 distances between rows, zero diagonal."""
    n, d = matrix.shape
    out = torch.zeros((n, n), dtype=torch.float64)
    scratch = _scratch(n, d)
    for i in range(n - 1):
        row = _sq_distances_rows(matrix[i + 1 :], matrix[i], scratch)
        out[i, i + 1 :] = row
        out[i + 1 :, i] = row
    return out


def _distances_to(matrix: Tensor, point: Tensor) -> list[float]:
    """L2 distance of every row to ``point``, as Python floats."""
    n, d = matrix.shape
    squares = _sq_distances_rows(matrix, point, _scratch(n, d))
    return [math.sqrt(s) for s in squares.tolist()]
