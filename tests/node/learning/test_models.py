"""Model specs (validation, canonical JSON), the registry, split models and seeded init."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from flnode.errors import FLNodeError
from flnode.learning.models import (
    ARCHITECTURES,
    MAX_SPEC_BYTES,
    Architecture,
    MaxPool2d,
    ModelSpec,
    ModelSpecError,
    SplitCnnParams,
    SplitModel,
    build_extractor,
    build_head,
    build_model,
    register_architecture,
)
from flnode.learning.norms import NORMS

SMALL = {"conv1_channels": 4, "conv2_channels": 8, "head_hidden": 16}


def test_default_spec_is_the_bottleneck_prototype() -> None:
    spec = ModelSpec()
    assert spec.arch == "split-cnn"
    p = spec.params
    assert isinstance(p, SplitCnnParams)
    assert (p.in_channels, p.image_size, p.n_classes) == (1, 28, 10)
    assert (p.conv1_channels, p.conv2_channels, p.bottleneck, p.head_hidden) == (32, 64, 8, 256)
    assert (p.norm, p.activation) == ("clampbn", "relu")
    assert p.flat_features == 1024
    assert spec.input_shape() == (1, 28, 28)
    assert (spec.bottleneck, spec.n_classes) == (8, 10)
    assert issubclass(ModelSpecError, FLNodeError)


def test_canonical_json_round_trip() -> None:
    spec = ModelSpec.create(bottleneck=16, norm="groupnorm", norm_groups=4, noise_scale=0.25)
    data = spec.to_json()
    assert (
        data
        == json.dumps(
            json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()
    )
    assert ModelSpec.from_json(data) == spec
    assert ModelSpec.from_json(data.decode()) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert hash(ModelSpec.from_json(data)) == hash(spec)
    assert spec.digest() == hashlib.sha256(data).hexdigest()
    # Every parameter is written, so the bytes name the model completely.
    assert set(json.loads(data)["params"]) == set(SplitCnnParams.names())
    assert json.loads(data)["format"] == 1


def test_equal_specs_give_equal_bytes_whatever_the_input_form() -> None:
    a = ModelSpec.create(dropout=0, coord_lo=0, coord_hi=1)  # ints for floats are normalised
    b = ModelSpec("split-cnn", {"coord_hi": 1.0, "dropout": 0.0, "coord_lo": 0.0})
    pretty = json.dumps(a.to_dict(), indent=2)  # non-canonical JSON parses to the same spec
    assert a == b == ModelSpec.from_json(pretty)
    assert a.to_json() == b.to_json() == ModelSpec.from_json(pretty).to_json()
    assert a != ModelSpec()


def test_replace_changes_and_revalidates() -> None:
    spec = ModelSpec().replace(bottleneck=4, activation="tanh")
    assert (spec.bottleneck, spec.params.activation) == (4, "tanh")
    with pytest.raises(ModelSpecError, match="'bottleneck'"):
        ModelSpec().replace(bottleneck=-1)
    with pytest.raises(ModelSpecError, match="unknown parameter"):
        ModelSpec().replace(depth=3)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(
        ModelSpecError,
        match="unknown architecture 'resnet50'; known architectures: dp-cnn, split-cnn",
    ):
        ModelSpec.create("resnet50")
    with pytest.raises(ModelSpecError, match="known architectures"):
        ModelSpec.from_dict({"format": 1, "arch": 7, "params": {}})


def test_unknown_parameter_names_it_and_lists_the_known_ones() -> None:
    with pytest.raises(
        ModelSpecError, match=r"unknown parameter\(s\) 'depth'; known parameters: in_channels"
    ):
        ModelSpec.create(depth=3)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"bottleneck": 2.0}, "bottleneck"),
        ({"bottleneck": True}, "bottleneck"),
        ({"in_channels": 0}, "in_channels"),
        ({"image_size": 15}, "image_size"),
        ({"n_classes": 1}, "n_classes"),
        ({"head_hidden": "256"}, "head_hidden"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"norm": "instancenorm"}, "norm"),
        ({"activation": "gelu"}, "activation"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"coord_lo": 1.0, "coord_hi": 1.0}, "coord_lo"),
        ({"norm": "groupnorm", "bottleneck": 8, "norm_groups": 3}, "norm"),
        ({"norm": "layernorm", "bottleneck": 1}, "norm"),
        ({"norm": "batchnorm", "norm_groups": 2}, "norm"),
    ],
)
def test_bad_parameter_values_name_the_parameter(params: dict, name: str) -> None:
    with pytest.raises(ModelSpecError, match=f"'{name}'"):
        ModelSpec.create(**params)


def test_a_huge_model_is_refused_without_allocating_it() -> None:
    with pytest.raises(ModelSpecError, match="more than the maximum"):
        ModelSpec.create(image_size=256, conv2_channels=512, bottleneck=4096)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"format": 1, "arch": "split-cnn"}', "missing"),
        (b'{"format": 1, "arch": "split-cnn", "params": {}, "code": "x"}', "unexpected"),
        (b'{"format": 2, "arch": "split-cnn", "params": {}}', "unsupported model spec format"),
        (b'{"format": true, "arch": "split-cnn", "params": {}}', "unsupported model spec format"),
        (b'{"format": 1, "arch": "split-cnn", "params": []}', "params must be a mapping"),
        (b'{"format": 1, "arch": "split-cnn", "params": {"dropout": NaN}}', "not valid JSON"),
        (b'{"format": 1, "format": 1, "arch": "split-cnn", "params": {}}', "duplicate key"),
        (b" " * (MAX_SPEC_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_json_specs_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        ModelSpec.from_json(data)


def test_missing_params_take_defaults() -> None:
    spec = ModelSpec.from_json(b'{"format": 1, "arch": "split-cnn", "params": {"bottleneck": 4}}')
    assert spec == ModelSpec.create(bottleneck=4)


def test_registry_is_read_only_and_names_are_registered_once() -> None:
    assert "split-cnn" in ARCHITECTURES
    with pytest.raises(TypeError):
        ARCHITECTURES["x"] = ARCHITECTURES["split-cnn"]  # type: ignore[index]
    arch = ARCHITECTURES["split-cnn"]
    with pytest.raises(ModelSpecError, match="already registered"):
        register_architecture(
            Architecture("split-cnn", SplitCnnParams, arch.extractor, arch.head, "dup")
        )


@pytest.mark.parametrize(
    ("params", "shape"),
    [
        ({}, (1, 28, 28)),
        ({"in_channels": 3, "image_size": 32, "bottleneck": 4}, (3, 32, 32)),
        ({"image_size": 16}, (1, 16, 16)),
    ],
)
def test_built_model_shapes(params: dict, shape: tuple[int, ...]) -> None:
    spec = ModelSpec.create(**{**SMALL, **params})
    model = build_model(spec, seed=0)
    assert isinstance(model, SplitModel) and model.spec == spec
    x = torch.randn(5, *shape)
    assert spec.input_shape() == shape
    assert model.features(x).shape == (5, spec.bottleneck)
    assert model(x).shape == (5, 10)
    assert build_extractor(spec)(x).shape == (5, spec.bottleneck)
    assert build_head(spec)(torch.randn(5, spec.bottleneck)).shape == (5, 10)


def test_forward_applies_the_transform_between_the_parts() -> None:
    model = build_model(ModelSpec.create(**SMALL), seed=1).eval()
    x = torch.randn(4, 1, 28, 28)
    seen: list[torch.Tensor] = []

    def transform(z: torch.Tensor) -> torch.Tensor:
        seen.append(z)
        return z * 0

    out = model(x, transform)
    assert torch.equal(seen[0], model.features(x))
    assert torch.equal(out, model.head(torch.zeros(4, 8)))


def test_activation_parameter_is_used() -> None:
    tanh = build_model(ModelSpec.create(activation="tanh"), seed=0)
    relu = build_model(ModelSpec(), seed=0)
    assert isinstance(tanh.extractor.act1, torch.nn.Tanh) and isinstance(
        tanh.head.act, torch.nn.Tanh
    )
    assert isinstance(relu.extractor.act2, torch.nn.ReLU)


def test_same_seed_same_weights_and_different_seed_different_weights() -> None:
    spec = ModelSpec()
    a, b, c = (
        build_model(spec, 7).state_dict(),
        build_model(spec, 7).state_dict(),
        build_model(spec, 8).state_dict(),
    )
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["extractor.conv1.weight"], c["extractor.conv1.weight"])
    assert not torch.equal(a["head.fc1.weight"], c["head.fc1.weight"])


def test_parts_built_alone_match_the_full_model_and_leave_the_global_rng_alone() -> None:
    spec = ModelSpec()
    state = torch.random.get_rng_state()
    model = build_model(spec, 3)
    head, extractor = build_head(spec, 3), build_extractor(spec, 3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for k, v in head.state_dict().items():
        assert torch.equal(v, model.head.state_dict()[k])
    for k, v in extractor.state_dict().items():
        assert torch.equal(v, model.extractor.state_dict()[k])


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ModelSpecError, match="seed"):
        build_model(ModelSpec(), seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_weight_specs_match_the_real_state_dict(norm: str) -> None:
    spec = ModelSpec.create(norm=norm, **SMALL)
    state = build_model(spec, 0).state_dict()
    full = spec.weight_specs()
    assert full == {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    head, extractor = spec.weight_specs("head"), spec.weight_specs("extractor")
    assert set(head) | set(extractor) == set(full) and not set(head) & set(extractor)
    assert all(k.startswith("head.") for k in head)
    assert all(k.startswith("extractor.") for k in extractor)
    assert spec.n_weights() == sum(v.numel() for v in state.values())
    if norm in ("batchnorm", "clampbn"):
        assert head["head.norm.num_batches_tracked"] == ((), torch.int64)


def test_default_weight_spec_keys_are_named_and_the_head_is_small() -> None:
    spec = ModelSpec()
    head = spec.weight_specs("head")
    assert head["head.fc1.weight"] == ((256, 8), torch.float32)
    assert head["head.fc2.bias"] == ((10,), torch.float32)
    assert spec.weight_specs("extractor")["extractor.fc.weight"] == ((8, 1024), torch.float32)
    assert spec.n_weights("head") < 5_000  # a head-only update is a few tens of KB
    with pytest.raises(ModelSpecError, match="part"):
        spec.weight_specs("tail")  # type: ignore[arg-type]


def test_dp_cnn_is_the_small_tanh_model_without_batchnorm() -> None:
    spec = ModelSpec.create("dp-cnn")
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 26_010  # the prototype's size
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert spec.input_shape() == (1, 28, 28) and spec.bottleneck == 32
    features = model.features(torch.zeros(3, 1, 28, 28))
    assert features.shape == (3, 32) and bool((features.abs() <= 1).all())  # tanh-bounded
    assert set(spec.weight_specs("head")) == {"head.fc.weight", "head.fc.bias"}
    assert ModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ModelSpecError, match="bottleneck"):
        ModelSpec.create("dp-cnn", bottleneck=0)


@pytest.mark.parametrize(("kernel", "stride"), [(2, None), (2, 1)])
@pytest.mark.parametrize("shape", [(64, 16, 14, 14), (8, 3, 7, 9), (16, 14, 14)])
def test_channels_last_max_pool_is_bit_for_bit_nn_max_pool(
    kernel: int, stride: int | None, shape: tuple[int, ...]
) -> None:
    """Same values, same maxima among ties (saturated tanh gives many), same gradients."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.tanh(3 * torch.randn(shape, generator=gen))
    x[..., 1:5, 1:5] = 1.0  # ties in every window there
    grads = []
    for pool in (torch.nn.MaxPool2d(kernel, stride), MaxPool2d(kernel, stride)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(upstream)
        assert out.is_contiguous()
        grads.append((out.detach(), leaf.grad))
    (out_ref, grad_ref), (out_fast, grad_fast) = grads
    assert torch.equal(out_fast, out_ref)
    assert torch.equal(grad_fast, grad_ref)
