"""Declarative model specs, the architecture registry, and the split (extractor + head) models.

A task publishes its model as a :class:`ModelSpec`: an architecture *name* from a registry plus
plain parameters (ints, floats, strings), stored as canonical JSON by CID. Code is never shipped or
unpickled: every node builds the same modules from the same spec with the code it already runs, so
a hostile task can at worst name an unknown architecture or an absurd size, and both are refused
with a :class:`ModelSpecError` that names the problem.

The default architecture, ``"split-cnn"``, is the bottleneck prototype of learning.md §4:

* **extractor** (runs on the device): ``conv(in→32, 5) + act + maxpool 2 → conv(32→64, 5) + act +
  maxpool 2 → flatten (1024 for 28×28) → Linear(1024 → d)``. The device releases only ``d``
  numbers per sample (default 8), which is what makes an honest per-sample ε affordable;
* **head** (trained on the bounded, noisy features, on the device or an edge node): ``norm(d) →
  Linear(d → hidden) + act (+ dropout) → Linear(hidden → n_classes)``.

The bounding and the noise sit *between* the two parts and belong to the privacy code; they are
passed in as callables (``SplitModel.forward(x, transform=...)``, :mod:`.training`), so this module
does not depend on the privacy module.

State-dict keys are named, not numbered (``extractor.conv1.weight``, ``head.norm.running_mean``,
``head.fc2.bias``), so they stay readable in updates and stable if layers are added later.
:meth:`ModelSpec.weight_specs` gives the exact ``{key: (shape, dtype)}`` of the full model, the head
or the extractor, which miners use to check an update before touching its values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import FLNodeError
from ..strictjson import loads_strict
from .norms import DEFAULT_NORM, NORMS, NormConfigError, build_norm

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "MAX_PARAMETERS",
    "MAX_SPEC_BYTES",
    "SPEC_FORMAT",
    "ArchParams",
    "Architecture",
    "DpCnnParams",
    "ModelSpec",
    "ModelSpecError",
    "Part",
    "SplitCnnParams",
    "SplitModel",
    "TensorSpec",
    "build_extractor",
    "build_head",
    "build_model",
    "register_architecture",
]

SPEC_FORMAT = 1
"""Version of the spec's JSON layout (``{"format", "arch", "params"}``); bumped on any change."""

DEFAULT_ARCH = "split-cnn"

MAX_PARAMETERS = 16_000_000
"""Largest model a spec may describe (64 MB of float32): a spec comes from the chain, and a hostile
one must not make every node allocate gigabytes. The default split-cnn has about 65 thousand."""

MAX_SPEC_BYTES = 64 * 1024
"""Largest JSON spec :meth:`ModelSpec.from_json` parses; real specs are a few hundred bytes."""

Part = Literal["full", "head", "extractor"]
TensorSpec = tuple[tuple[int, ...], torch.dtype]
"""``(shape, dtype)`` of one state-dict entry."""


class ModelSpecError(FLNodeError, ValueError):
    """A model spec is invalid: unknown architecture, bad parameter, malformed JSON."""


# ----------------------------------------------------------------------------------------------
# Parameter rules: each params field carries one in its metadata; validation is generic.


@dataclass(frozen=True, slots=True)
class _Int:
    lo: int
    hi: int
    optional: bool = False

    def check(self, name: str, value: object) -> int | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelSpecError(f"parameter {name!r} must be an integer, got {value!r}")
        if not self.lo <= value <= self.hi:
            raise ModelSpecError(
                f"parameter {name!r} must be in [{self.lo}, {self.hi}], got {value}"
            )
        return value


@dataclass(frozen=True, slots=True)
class _Float:
    lo: float
    hi: float
    hi_open: bool = False
    optional: bool = False

    def check(self, name: str, value: object) -> float | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelSpecError(f"parameter {name!r} must be a number, got {value!r}")
        x = float(value)
        ok = math.isfinite(x) and self.lo <= x and (x < self.hi if self.hi_open else x <= self.hi)
        if not ok:
            bracket = ")" if self.hi_open else "]"
            raise ModelSpecError(
                f"parameter {name!r} must be in [{self.lo}, {self.hi}{bracket}, got {value!r}"
            )
        return x


@dataclass(frozen=True, slots=True)
class _Choice:
    choices: tuple[str, ...]

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ModelSpecError(
                f"parameter {name!r} must be one of {', '.join(self.choices)}; got {value!r}"
            )
        return value


def _param(default: Any, rule: _Int | _Float | _Choice, doc: str) -> Any:
    return field(default=default, metadata={"rule": rule, "doc": doc})


class ArchParams:
    """Base of the per-architecture parameter classes (frozen dataclasses).

    Subclasses declare each parameter with a rule; ``__post_init__`` checks every field (type and
    range, naming the parameter) and then calls :meth:`_check_together` for cross-field rules.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = f.metadata["rule"].check(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # ints given for floats become floats
        self._check_together()

    def _check_together(self) -> None:
        """Cross-parameter rules; raise :class:`ModelSpecError`."""

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, defaults included, so the canonical JSON names the model completely."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchParams:
        """Parameters from a mapping; missing ones take their defaults, unknown ones are refused."""
        if not isinstance(data, Mapping):
            raise ModelSpecError(f"params must be a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in cls.names())
        if unknown:
            raise ModelSpecError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"known parameters: {', '.join(cls.names())}"
            )
        return cls(**data)


def _head_norm(p: Any, coord_range: tuple[float, float]) -> nn.Module:
    """The head's input normalisation named by ``p.norm`` (params with norm, bottleneck, ...)."""
    return build_norm(
        p.norm, p.bottleneck, coord_range=coord_range, noise_scale=p.noise_scale,
        groups=p.norm_groups,
    )  # fmt: skip


def _check_norm(p: Any) -> None:
    """Norm-specific rules (groups divide d, per-sample norms need d ≥ 2, ...), on the meta device."""
    try:
        with torch.device("meta"):
            p.make_norm()
    except NormConfigError as exc:
        raise ModelSpecError(f"parameter 'norm' ({p.norm!r}): {exc}") from exc


@dataclass(frozen=True, slots=True)
class SplitCnnParams(ArchParams):
    """Parameters of ``"split-cnn"`` (defaults: learning.md §4's prototype on MNIST).

    ``coord_lo``/``coord_hi`` are the range of one bounded coordinate (default ``[-1, 1]``, the L1
    normalisation's) and ``noise_scale`` the per-coordinate noise scale of the task's mechanism
    (``None`` = unknown); the clamping norms derive their clamp range from them (see
    :mod:`.norms`), the others ignore them. They are part of the spec because they change the
    head's function: every node must clamp the same way. ``dropout`` defaults to 0: the feature
    noise already regularises the head; the benchmark may change it.
    """

    in_channels: int = _param(1, _Int(1, 16), "image channels")
    image_size: int = _param(28, _Int(16, 256), "image height = width, pixels")
    n_classes: int = _param(10, _Int(2, 10_000), "number of classes")
    conv1_channels: int = _param(32, _Int(1, 512), "output channels of the first conv")
    conv2_channels: int = _param(64, _Int(1, 512), "output channels of the second conv")
    bottleneck: int = _param(8, _Int(1, 4096), "released feature dimension d")
    head_hidden: int = _param(256, _Int(1, 16_384), "width of the head's hidden layer")
    dropout: float = _param(0.0, _Float(0.0, 1.0, hi_open=True), "dropout after the hidden layer")
    norm: str = _param(DEFAULT_NORM, _Choice(tuple(NORMS)), "normalisation at the head's input")
    norm_groups: int | None = _param(None, _Int(1, 4096, optional=True), "groupnorm groups")
    coord_lo: float = _param(-1.0, _Float(-1e6, 1e6), "lower bound of a bounded coordinate")
    coord_hi: float = _param(1.0, _Float(-1e6, 1e6), "upper bound of a bounded coordinate")
    noise_scale: float | None = _param(None, _Float(0.0, 1e9, optional=True), "noise scale")
    activation: str = _param("relu", _Choice(("relu", "tanh")), "activation everywhere")

    def _check_together(self) -> None:
        if not self.coord_lo < self.coord_hi:
            raise ModelSpecError(
                f"parameter 'coord_lo' ({self.coord_lo}) must be below 'coord_hi' ({self.coord_hi})"
            )
        _check_norm(self)

    @property
    def feature_map_size(self) -> int:
        """Side of the last feature map: two valid 5×5 convs, each followed by a 2×2 max-pool.

        At least 1 for the smallest allowed ``image_size`` (16); 4 for 28×28.
        """
        return ((self.image_size - 4) // 2 - 4) // 2

    @property
    def flat_features(self) -> int:
        """Length of the flattened conv output (1024 for the 28×28 default)."""
        return self.conv2_channels * self.feature_map_size**2

    def make_norm(self) -> nn.Module:
        return _head_norm(self, (self.coord_lo, self.coord_hi))


def _activation(name: str) -> nn.Module:
    return nn.Tanh() if name == "tanh" else nn.ReLU()


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed in the channels-last memory layout.

    PyTorch's CPU kernel for the default (NCHW) layout was 4-9× slower here than the
    channels-last one (a 2×2 window, stride 1, over 1,000 × 16 × 14 × 14 activations: 38-41 ms
    against 9-10 ms forward; 46 against 24 ms with the backward pass); the pooling took a fifth of
    a device's DP-SGD time and most of a miner's evaluation. The values, the chosen maxima (ties
    included) and the gradients are bit-for-bit those of ``nn.MaxPool2d``; the output is handed on
    in the default layout.
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4:
            return super().forward(input)
        return super().forward(input.contiguous(memory_format=torch.channels_last)).contiguous()


def _split_cnn_extractor(p: SplitCnnParams) -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(p.in_channels, p.conv1_channels, 5),
            act1=_activation(p.activation),
            pool1=MaxPool2d(2),
            conv2=nn.Conv2d(p.conv1_channels, p.conv2_channels, 5),
            act2=_activation(p.activation),
            pool2=MaxPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(p.flat_features, p.bottleneck),
        )
    )


def _split_cnn_head(p: SplitCnnParams) -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            norm=p.make_norm(),
            fc1=nn.Linear(p.bottleneck, p.head_hidden),
            act=_activation(p.activation),
            drop=nn.Dropout(p.dropout),
            fc2=nn.Linear(p.head_hidden, p.n_classes),
        )
    )


@dataclass(frozen=True, slots=True)
class DpCnnParams(ArchParams):
    """Parameters of ``"dp-cnn"``: the small tanh CNN that DP-SGD trains well (Papernot et al.
    2021, "Tempered sigmoid activations"; the prototype of docs/notes/dpsgd-prototype.md).

    No BatchNorm anywhere by default (Opacus cannot compute per-sample gradients through it), tanh
    activations (bounded, which keeps clipped gradients informative), and a ``tanh`` on the
    released features, so every coordinate lies in ``[-1, 1]`` before any bounding. The head's
    ``norm`` is ``"none"`` by default; a BatchNorm-based norm is allowed only when the head is not
    trained by DP-SGD (the "dpsgd-extractor" mode trains it on noisy features instead).
    """

    in_channels: int = _param(1, _Int(1, 16), "image channels")
    image_size: int = _param(28, _Int(16, 256), "image height = width, pixels")
    n_classes: int = _param(10, _Int(2, 10_000), "number of classes")
    conv1_channels: int = _param(16, _Int(1, 512), "output channels of the first conv (8×8/2)")
    conv2_channels: int = _param(32, _Int(1, 512), "output channels of the second conv (4×4/2)")
    bottleneck: int = _param(32, _Int(1, 4096), "released feature dimension d")
    norm: str = _param("none", _Choice(tuple(NORMS)), "normalisation at the head's input")
    norm_groups: int | None = _param(None, _Int(1, 4096, optional=True), "groupnorm groups")
    noise_scale: float | None = _param(None, _Float(0.0, 1e9, optional=True), "noise scale")

    def _check_together(self) -> None:
        _check_norm(self)

    @property
    def feature_map_size(self) -> int:
        """Side of the last feature map (4 for 28×28)."""
        side = (self.image_size + 2 * 3 - 8) // 2 + 1 - 1  # conv 8×8/2 pad 3, max-pool 2/1
        return (side - 4) // 2 + 1 - 1  # conv 4×4/2, max-pool 2/1

    @property
    def flat_features(self) -> int:
        return self.conv2_channels * self.feature_map_size**2

    def make_norm(self) -> nn.Module:
        return _head_norm(self, (-1.0, 1.0))  # tanh features


def _dp_cnn_extractor(p: DpCnnParams) -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(p.in_channels, p.conv1_channels, 8, stride=2, padding=3),
            act1=nn.Tanh(),
            pool1=MaxPool2d(2, 1),
            conv2=nn.Conv2d(p.conv1_channels, p.conv2_channels, 4, stride=2),
            act2=nn.Tanh(),
            pool2=MaxPool2d(2, 1),
            flatten=nn.Flatten(),
            fc=nn.Linear(p.flat_features, p.bottleneck),
            act3=nn.Tanh(),
        )
    )


def _dp_cnn_head(p: DpCnnParams) -> nn.Module:
    return nn.Sequential(OrderedDict(norm=p.make_norm(), fc=nn.Linear(p.bottleneck, p.n_classes)))


# ----------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True, slots=True)
class Architecture:
    """A named architecture: its parameter class and the builders of its two parts."""

    name: str
    params_type: type[ArchParams]
    extractor: Callable[[Any], nn.Module]
    head: Callable[[Any], nn.Module]
    description: str


_ARCHITECTURES: dict[str, Architecture] = {}
ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(_ARCHITECTURES)
"""Read-only view of the registry: name → :class:`Architecture`."""


def register_architecture(arch: Architecture) -> None:
    """Add an architecture; a name is registered once (a spec's meaning must never change)."""
    if arch.name in _ARCHITECTURES:
        raise ModelSpecError(f"architecture {arch.name!r} is already registered")
    _ARCHITECTURES[arch.name] = arch


register_architecture(
    Architecture(
        name="split-cnn",
        params_type=SplitCnnParams,
        extractor=_split_cnn_extractor,
        head=_split_cnn_head,
        description="2 conv blocks → Linear(→d) on the device; norm → MLP head (learning.md §4)",
    )
)


register_architecture(
    Architecture(
        name="dp-cnn",
        params_type=DpCnnParams,
        extractor=_dp_cnn_extractor,
        head=_dp_cnn_head,
        description="tanh CNN without BatchNorm for DP-SGD (~26k weights); norm → Linear head",
    )
)


def _lookup(name: object) -> Architecture:
    arch = _ARCHITECTURES.get(name) if isinstance(name, str) else None
    if arch is None:
        raise ModelSpecError(
            f"unknown architecture {name!r}; known architectures: {', '.join(sorted(_ARCHITECTURES))}"
        )
    return arch


# ----------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Architecture name + validated parameters; a value (hashable, comparable), never code.

    ``ModelSpec()`` is the default split-cnn; ``ModelSpec.create("split-cnn", bottleneck=16)``
    builds one from keyword parameters; ``params`` may also be given as a mapping. Construction
    validates everything, including the model's total size (:data:`MAX_PARAMETERS`), without
    allocating any weights.
    """

    arch: str = DEFAULT_ARCH
    params: ArchParams = field(default_factory=SplitCnnParams)

    def __post_init__(self) -> None:
        arch = _lookup(self.arch)
        params: object = self.params
        if isinstance(params, Mapping):
            params = arch.params_type.from_dict(params)
        if type(params) is not arch.params_type:
            raise ModelSpecError(
                f"architecture {self.arch!r} takes {arch.params_type.__name__}, "
                f"got {type(params).__name__}"
            )
        object.__setattr__(self, "params", params)
        n = sum(math.prod(shape) for _, (shape, _dtype) in _state_specs(self))
        if n > MAX_PARAMETERS:
            raise ModelSpecError(
                f"the model has {n:,} weights, more than the maximum of {MAX_PARAMETERS:,}; "
                "reduce the channels, bottleneck or head_hidden"
            )

    @classmethod
    def create(cls, arch: str = DEFAULT_ARCH, **params: Any) -> ModelSpec:
        """A spec from keyword parameters; missing ones take the architecture's defaults."""
        return cls(arch, _lookup(arch).params_type.from_dict(params))

    def replace(self, **params: Any) -> ModelSpec:
        """A copy with some parameters changed (validated again)."""
        unknown = sorted(k for k in params if k not in self.params.names())
        if unknown:
            raise ModelSpecError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"known parameters: {', '.join(self.params.names())}"
            )
        return ModelSpec(self.arch, replace(self.params, **params))  # type: ignore[type-var]

    # -- encoding --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"format": 1, "arch": name, "params": {every parameter}}`` (JSON types only)."""
        return {"format": SPEC_FORMAT, "arch": self.arch, "params": self.params.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Parse :meth:`to_dict`'s layout; unknown keys or formats are refused, not ignored."""
        if not isinstance(data, Mapping):
            raise ModelSpecError(f"a model spec must be a JSON object, got {type(data).__name__}")
        keys = set(data)
        if keys != {"format", "arch", "params"}:
            missing = sorted({"format", "arch", "params"} - keys)
            extra = sorted(map(str, keys - {"format", "arch", "params"}))
            raise ModelSpecError(
                "a model spec has exactly the keys 'format', 'arch', 'params'"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
            )
        fmt = data["format"]
        if isinstance(fmt, bool) or fmt != SPEC_FORMAT:
            raise ModelSpecError(f"unsupported model spec format {fmt!r}; expected {SPEC_FORMAT}")
        arch = _lookup(data["arch"])
        return cls(arch.name, arch.params_type.from_dict(data["params"]))

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, ASCII): equal specs give equal bytes and CIDs."""
        return json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        ).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelSpec:
        """Parse a JSON spec (canonical or not; re-encode with :meth:`to_json` to compare CIDs)."""
        if len(data) > MAX_SPEC_BYTES:
            raise ModelSpecError(f"model spec of {len(data)} bytes exceeds {MAX_SPEC_BYTES} bytes")
        try:
            parsed = loads_strict(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ModelSpecError(f"model spec is not valid JSON: {exc}") from exc
        return cls.from_dict(parsed)

    def digest(self) -> str:
        """Hex sha256 of :meth:`to_json` (the CID's digest when stored as a raw block)."""
        return hashlib.sha256(self.to_json()).hexdigest()

    # -- shapes ----------------------------------------------------------------------------------

    def weight_specs(self, part: Part = "full") -> dict[str, TensorSpec]:
        """``{state-dict key: (shape, dtype)}`` of the full model, the head or the extractor.

        Keys keep their ``head.`` / ``extractor.`` prefix, as in the full model's state dict, so a
        head-only update is self-describing and merges into a full state dict as it is. Derived
        from the real modules (built on the meta device, so nothing is allocated), hence always in
        step with :func:`build_model`. Includes buffers such as BatchNorm's running statistics and
        its int64 ``num_batches_tracked`` counter.
        """
        prefix = _part_prefix(part)
        return {k: v for k, v in _state_specs(self) if k.startswith(prefix)}

    def n_weights(self, part: Part = "full") -> int:
        """Number of scalar values in the state dict of ``part`` (parameters and buffers)."""
        return sum(math.prod(shape) for shape, _ in self.weight_specs(part).values())

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. ``(1, 28, 28)``."""
        p = self.params
        if isinstance(p, SplitCnnParams | DpCnnParams):
            return (p.in_channels, p.image_size, p.image_size)
        raise ModelSpecError(f"no input shape known for architecture {self.arch!r}")

    @property
    def bottleneck(self) -> int:
        """The released feature dimension d."""
        return int(self.params.bottleneck)  # type: ignore[attr-defined]

    @property
    def n_classes(self) -> int:
        return int(self.params.n_classes)  # type: ignore[attr-defined]


def _part_prefix(part: str) -> str:
    if part == "full":
        return ""
    if part in ("head", "extractor"):
        return part + "."
    raise ModelSpecError(f"part must be 'full', 'head' or 'extractor', got {part!r}")


@lru_cache(maxsize=64)
def _state_specs(spec: ModelSpec) -> tuple[tuple[str, TensorSpec], ...]:
    arch = _ARCHITECTURES[spec.arch]
    with torch.device("meta"):
        model = SplitModel(arch.extractor(spec.params), arch.head(spec.params))
    return tuple(
        (k, (tuple(int(s) for s in t.shape), t.dtype)) for k, t in model.state_dict().items()
    )


# ----------------------------------------------------------------------------------------------
# Models


class SplitModel(nn.Module):
    """The two parts of a split model: ``extractor`` (device) and ``head`` (device or edge).

    ``forward(x, transform)`` runs ``head(transform(extractor(x)))``; ``transform`` is where the
    privacy code's bounding (and, when training or testing on released features, noise) goes. With
    no transform the head sees raw, unbounded features, which is only right for a model trained
    that way.
    """

    def __init__(self, extractor: nn.Module, head: nn.Module, spec: ModelSpec | None = None):
        super().__init__()
        self.extractor = extractor
        self.head = head
        self.spec = spec

    def features(self, x: Tensor) -> Tensor:
        """The extractor's raw (unbounded) ``[N, d]`` features."""
        return self.extractor(x)

    def forward(self, x: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        z = self.features(x)
        if transform is not None:
            z = transform(z)
        return self.head(z)


def _sub_seed(seed: int, part: str) -> int:
    # Each part gets its own stream derived from the one seed, so build_head(spec, s) equals
    # build_model(spec, s).head and the two parts' initial weights are not drawn from one stream.
    digest = hashlib.sha256(f"flnode-init:{seed}:{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_seed(seed: object) -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ModelSpecError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def _build(spec: ModelSpec, part: str, seed: int | None) -> nn.Module:
    if not isinstance(spec, ModelSpec):
        raise ModelSpecError(f"expected a ModelSpec, got {type(spec).__name__}")
    _check_seed(seed)
    arch = _ARCHITECTURES[spec.arch]
    builder = arch.extractor if part == "extractor" else arch.head
    if seed is None:
        return builder(spec.params)
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_sub_seed(seed, part))
        return builder(spec.params)


def build_extractor(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """The device-side feature extractor; input ``[N, *spec.input_shape()]``, output ``[N, d]``.

    The same ``seed`` always gives the same initial weights (``None``: torch's global RNG).
    """
    return _build(spec, "extractor", seed)


def build_head(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """The head: ``[N, d]`` (bounded, possibly noisy) features → ``[N, n_classes]`` logits."""
    return _build(spec, "head", seed)


def build_model(spec: ModelSpec, seed: int | None = None) -> SplitModel:
    """Extractor + head; ``build_model(spec, s).head`` has the weights of ``build_head(spec, s)``."""
    return SplitModel(build_extractor(spec, seed), build_head(spec, seed), spec)
