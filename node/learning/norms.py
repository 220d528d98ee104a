"""Normalisation layers at the start of the head, applied to (noisy) released features ``[N, d]``.

In the bottleneck design (learning.md §4) the device releases ``d`` bounded coordinates plus noise;
the head starts with a normalisation of those noisy values. The prototype found (learning.md §2A):

* with noisy test features the choice of norm moves accuracy by about one point: the noise sets the
  ceiling;
* BatchNorm after the noise is a strong optimiser aid (clean-test accuracy 76 % vs 35 % without a
  norm at small ε);
* the only clear gain at small ε came from **clamping each noisy coordinate back towards the known
  range of the bounded coordinate** (+4–6 points at ε ≤ 2), with BatchNorm after it also best at
  larger ε. Clamping is pure post-processing of a DP release, so it costs no privacy;
* a "noise-aware" BatchNorm that subtracts the noise variance was *worse* (it blows activations up),
  so it is deliberately not offered here.

Registry (``build_norm``): ``"none"``, ``"batchnorm"``, ``"layernorm"``, ``"groupnorm"``, and our own
``"clampbn"`` (clamp, then BatchNorm) and ``"clampln"`` (clamp, then LayerNorm: per-sample, no batch
statistics, so nothing to average or leak through running stats). ``"clampbn"`` is the default for
now; the normalisation benchmark (bench/) decides the final default.

The clamp rule. The bounding on the device puts every clean coordinate in ``[lo, hi]``; the mechanism
then adds noise of scale ``s`` per coordinate (Laplace ``b`` or Gaussian ``σ``). The head clamps each
value to ``[lo − c, hi + c]`` with ``c = min(hi − lo, s)`` (``c = hi − lo`` when the scale is unknown):

* a value beyond ``c`` outside the range is, with high probability, mostly noise, so pulling it in
  removes variance without removing much signal (the prototype's ``clip`` used exactly this rule with
  ``[lo, hi] = [0, 1]``);
* ``c`` never exceeds the range's width, so at tiny ε (huge ``s``) the clamp still bites;
* with ``s = 0`` (no noise, e.g. inference on the device itself) ``c = 0`` and the clamp is the
  identity on clean features, which are in ``[lo, hi]`` already: clean and noisy inference share one
  head without a special case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import Tensor, nn

from ..errors import FLNodeError

__all__ = [
    "DEFAULT_NORM",
    "NORMS",
    "ClampBatchNorm1d",
    "ClampLayerNorm",
    "NormConfigError",
    "build_norm",
    "clamp_margin",
    "default_groups",
]

DEFAULT_NORM = "clampbn"
"""The default norm until the benchmark decides (see the module docstring)."""


class NormConfigError(FLNodeError, ValueError):
    """A normalisation name or parameter is invalid; the message names the parameter."""


def clamp_margin(coord_range: tuple[float, float], noise_scale: float | None) -> float:
    """The widening ``c = min(hi − lo, noise_scale)`` of the clamp range (module docstring).

    ``noise_scale`` ``None`` means unknown: then ``c = hi − lo``, the widest margin the rule allows.
    """
    lo, hi = _check_range(coord_range)
    if noise_scale is None:
        return hi - lo
    scale = _check_scale(noise_scale)
    return min(hi - lo, scale)


def default_groups(d: int) -> int:
    """Default GroupNorm group count for ``d`` features: 2 when ``d`` is even and ≥ 4, else 1.

    Why 2 (for the default d = 8: two groups of 4): one group is LayerNorm, and ``d`` groups would
    normalise every single coordinate on its own, which maps it to 0 (a group of one value has no
    spread), so the head would see only the affine bias. Two groups is the smallest count that
    differs from LayerNorm while keeping several coordinates per group.
    """
    return 2 if d >= 4 and d % 2 == 0 else 1


class _Clamp(nn.Module):
    """Clamps inputs to ``[lo − c, hi + c]`` before the normalisation it is mixed into."""

    clamp_lo: float
    clamp_hi: float

    def _set_clamp(self, coord_range: tuple[float, float], noise_scale: float | None) -> None:
        lo, hi = _check_range(coord_range)
        c = clamp_margin((lo, hi), noise_scale)
        self.clamp_lo = lo - c
        self.clamp_hi = hi + c

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.clamp(self.clamp_lo, self.clamp_hi))  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clamp=[{self.clamp_lo}, {self.clamp_hi}]"


class ClampBatchNorm1d(_Clamp, nn.BatchNorm1d):
    """Clamp noisy coordinates back to ``[lo − c, hi + c]``, then BatchNorm (``"clampbn"``).

    A subclass of :class:`~torch.nn.BatchNorm1d`, so its state-dict keys (weight, bias, running
    stats, ``num_batches_tracked``) are exactly those of ``"batchnorm"``. The clamp bounds are plain
    floats from the model spec (bounding range and noise scale), not buffers: they never enter the
    state dict, are never averaged and cannot be changed by a (poisoned) update.
    """

    def __init__(
        self, d: int, coord_range: tuple[float, float], noise_scale: float | None = None
    ) -> None:
        super().__init__(d)
        self._set_clamp(coord_range, noise_scale)


class ClampLayerNorm(_Clamp, nn.LayerNorm):
    """Clamp noisy coordinates back to ``[lo − c, hi + c]``, then LayerNorm (``"clampln"``).

    Per-sample statistics only: no running stats to average across devices (learning.md P4) and
    no batch-size dependence at inference.
    """

    def __init__(
        self, d: int, coord_range: tuple[float, float], noise_scale: float | None = None
    ) -> None:
        super().__init__(d)
        self._set_clamp(coord_range, noise_scale)


@dataclass(frozen=True, slots=True)
class _NormEntry:
    description: str
    build: Callable[[int, tuple[float, float] | None, float | None, int | None], nn.Module]
    per_sample: bool  # normalises over the d coordinates of one sample (needs d >= 2)
    uses_range: bool  # needs coord_range (and uses noise_scale)
    uses_groups: bool


def _build_none(d: int, rng: tuple[float, float] | None, s: float | None, g: int | None):
    return nn.Identity()


def _build_batchnorm(d: int, rng: tuple[float, float] | None, s: float | None, g: int | None):
    return nn.BatchNorm1d(d)


def _build_layernorm(d: int, rng: tuple[float, float] | None, s: float | None, g: int | None):
    return nn.LayerNorm(d)


def _build_groupnorm(d: int, rng: tuple[float, float] | None, s: float | None, g: int | None):
    groups = default_groups(d) if g is None else g
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise NormConfigError(f"groups must be a positive integer, got {groups!r}")
    if d % groups != 0:
        raise NormConfigError(f"groups={groups} does not divide the feature dimension d={d}")
    if groups == d:
        raise NormConfigError(
            f"groups={groups} equals d: each group would hold one coordinate, which GroupNorm "
            "maps to 0; use fewer groups"
        )
    return nn.GroupNorm(groups, d)


def _build_clampbn(d: int, rng: tuple[float, float] | None, s: float | None, g: int | None):
    assert rng is not None  # checked by build_norm
    return ClampBatchNorm1d(d, rng, s)


def _build_clampln(d: int, rng: tuple[float, float] | None, s: float | None, g: int | None):
    assert rng is not None
    return ClampLayerNorm(d, rng, s)


_REGISTRY: dict[str, _NormEntry] = {
    "none": _NormEntry("no normalisation", _build_none, False, False, False),
    "batchnorm": _NormEntry("BatchNorm1d over the batch", _build_batchnorm, False, False, False),
    "layernorm": _NormEntry(
        "LayerNorm over the d coordinates", _build_layernorm, True, False, False
    ),
    "groupnorm": _NormEntry("GroupNorm (groups, default 2)", _build_groupnorm, True, False, True),
    "clampbn": _NormEntry(
        "clamp to the widened range, then BatchNorm", _build_clampbn, False, True, False
    ),
    "clampln": _NormEntry(
        "clamp to the widened range, then LayerNorm", _build_clampln, True, True, False
    ),
}

NORMS: Mapping[str, str] = MappingProxyType({k: v.description for k, v in _REGISTRY.items()})
"""Known normalisation names → one-line description."""


def build_norm(
    name: str,
    d: int,
    *,
    coord_range: tuple[float, float] | None = None,
    noise_scale: float | None = None,
    groups: int | None = None,
) -> nn.Module:
    """Build the normalisation ``name`` for ``d`` features (input ``[N, d]``).

    ``coord_range`` is the ``(lo, hi)`` range of one clean bounded coordinate and ``noise_scale``
    the per-coordinate noise scale; both are required by / used only for the clamping norms
    (``coord_range`` is required, ``noise_scale`` may be ``None`` = unknown). ``groups`` is used only
    by ``"groupnorm"`` (default :func:`default_groups`). Raises :class:`NormConfigError`.
    """
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise NormConfigError(f"unknown norm {name!r}; known norms: {', '.join(sorted(_REGISTRY))}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise NormConfigError(f"the feature dimension d must be a positive integer, got {d!r}")
    if entry.per_sample and d < 2:
        raise NormConfigError(
            f"norm {name!r} normalises over the d coordinates of a sample and needs d >= 2 "
            f"(with d={d} it always outputs its bias)"
        )
    if entry.uses_range:
        if coord_range is None:
            raise NormConfigError(
                f"norm {name!r} needs coord_range=(lo, hi) of the bounded features"
            )
        coord_range = _check_range(coord_range)
    if noise_scale is not None:
        _check_scale(noise_scale)
    if groups is not None and not entry.uses_groups:
        raise NormConfigError(f"groups applies to 'groupnorm' only, not to {name!r}")
    return entry.build(d, coord_range, noise_scale, groups)


def _check_range(coord_range: object) -> tuple[float, float]:
    try:
        lo, hi = coord_range  # type: ignore[misc]
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError) as exc:
        raise NormConfigError(f"coord_range must be a pair (lo, hi), got {coord_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise NormConfigError(f"coord_range must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def _check_scale(noise_scale: object) -> float:
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, int | float):
        raise NormConfigError(f"noise_scale must be a number, got {noise_scale!r}")
    scale = float(noise_scale)
    if not math.isfinite(scale) or scale < 0:
        raise NormConfigError(f"noise_scale must be finite and >= 0, got {noise_scale!r}")
    return scale
