"""Normalisations at the head's input: shapes, the clamp rule and its values, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flnode.errors import FLNodeError
from flnode.learning.norms import (
    DEFAULT_NORM,
    NORMS,
    ClampBatchNorm1d,
    ClampLayerNorm,
    NormConfigError,
    build_norm,
    clamp_margin,
    default_groups,
)

RANGE = (-1.0, 1.0)


def test_registry_lists_the_required_norms_and_defaults_to_clampbn() -> None:
    assert {"none", "batchnorm", "layernorm", "groupnorm", "clampbn", "clampln"} <= set(NORMS)
    assert DEFAULT_NORM == "clampbn"
    assert issubclass(NormConfigError, FLNodeError)


@pytest.mark.parametrize("name", sorted(NORMS))
@pytest.mark.parametrize("training", [True, False])
def test_every_norm_maps_n_by_d_to_n_by_d(name: str, training: bool) -> None:
    norm = build_norm(name, 8, coord_range=RANGE, noise_scale=0.2)
    norm.train(training)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    y = norm(x)
    assert y.shape == (16, 8)
    assert torch.isfinite(y).all()


def test_types_and_default_groupnorm_groups() -> None:
    assert isinstance(build_norm("none", 8), nn.Identity)
    assert isinstance(build_norm("batchnorm", 8), nn.BatchNorm1d)
    assert isinstance(build_norm("layernorm", 8), nn.LayerNorm)
    gn = build_norm("groupnorm", 8)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 2
    assert build_norm("groupnorm", 8, groups=4).num_groups == 4
    assert isinstance(build_norm("clampbn", 8, coord_range=RANGE), ClampBatchNorm1d)
    assert isinstance(build_norm("clampln", 8, coord_range=RANGE), ClampLayerNorm)


@pytest.mark.parametrize(("d", "groups"), [(8, 2), (16, 2), (6, 2), (4, 2), (3, 1), (2, 1), (1, 1)])
def test_default_groups(d: int, groups: int) -> None:
    assert default_groups(d) == groups


@pytest.mark.parametrize(
    ("coord_range", "scale", "margin"),
    [
        ((0.0, 1.0), 0.3, 0.3),
        ((0.0, 1.0), 5.0, 1.0),
        ((-1.0, 1.0), None, 2.0),
        ((-1.0, 1.0), 0, 0.0),
    ],
)
def test_clamp_margin_rule(
    coord_range: tuple[float, float], scale: float | None, margin: float
) -> None:
    assert clamp_margin(coord_range, scale) == pytest.approx(margin)


def test_clampbn_clamps_to_the_widened_range_then_batchnorms() -> None:
    norm = build_norm("clampbn", 4, coord_range=(0.0, 1.0), noise_scale=0.3)
    assert (norm.clamp_lo, norm.clamp_hi) == pytest.approx((-0.3, 1.3))
    x = torch.tensor(
        [
            [-5.0, 0.5, 2.0, 1.2],
            [0.1, -0.2, 9.0, -0.31],
            [3.0, 0.0, 0.4, 1.31],
            [0.7, -7.0, 1.0, 0.2],
        ]
    )
    expected_clamped = torch.tensor(
        [[-0.3, 0.5, 1.3, 1.2], [0.1, -0.2, 1.3, -0.3], [1.3, 0.0, 0.4, 1.3], [0.7, -0.3, 1.0, 0.2]]
    )
    reference = nn.BatchNorm1d(4)
    reference.load_state_dict(norm.state_dict())
    for training in (True, False):
        norm.train(training)
        reference.train(training)
        assert torch.allclose(norm(x), reference(expected_clamped), atol=1e-6)
    # In eval mode with identity statistics the clamped values come out unchanged.
    fresh = build_norm("clampbn", 4, coord_range=(0.0, 1.0), noise_scale=0.3).eval()
    fresh.eps = 0.0
    assert torch.allclose(fresh(x), expected_clamped, atol=1e-6)


def test_clamp_is_the_identity_on_clean_features_without_noise() -> None:
    norm = build_norm("clampbn", 8, coord_range=RANGE, noise_scale=0.0).eval()
    norm.eps = 0.0
    x = torch.rand(32, 8) * 2 - 1  # clean bounded coordinates, all in [-1, 1]
    assert (norm.clamp_lo, norm.clamp_hi) == (-1.0, 1.0)
    assert torch.equal(norm(x), x)


def test_clamp_with_unknown_noise_scale_uses_the_range_width() -> None:
    norm = build_norm("clampbn", 8, coord_range=RANGE)
    assert (norm.clamp_lo, norm.clamp_hi) == (-3.0, 3.0)


def test_clampln_clamps_then_layernorms() -> None:
    norm = build_norm("clampln", 4, coord_range=(0.0, 1.0), noise_scale=0.1)
    x = torch.tensor([[5.0, -5.0, 0.5, 0.2]])
    reference = nn.LayerNorm(4)
    assert torch.allclose(norm(x), reference(torch.tensor([[1.1, -0.1, 0.5, 0.2]])), atol=1e-6)


def test_clampbn_has_the_state_dict_keys_of_batchnorm_and_no_clamp_state() -> None:
    a = build_norm("clampbn", 8, coord_range=RANGE, noise_scale=0.5).state_dict()
    b = build_norm("batchnorm", 8).state_dict()
    assert list(a) == list(b)
    assert a["num_batches_tracked"].dtype == torch.int64


def test_unknown_norm_lists_the_known_ones() -> None:
    with pytest.raises(
        NormConfigError, match="unknown norm 'weirdnorm'; known norms: batchnorm, clampbn"
    ):
        build_norm("weirdnorm", 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "batchnorm", "d": 0}, "positive integer"),
        ({"name": "batchnorm", "d": True}, "positive integer"),
        ({"name": "clampbn", "d": 8}, "needs coord_range"),
        ({"name": "clampbn", "d": 8, "coord_range": (1.0, 1.0)}, "lo < hi"),
        ({"name": "clampbn", "d": 8, "coord_range": (0.0, float("inf"))}, "finite"),
        ({"name": "clampbn", "d": 8, "coord_range": "ab"}, "coord_range"),
        ({"name": "clampbn", "d": 8, "coord_range": RANGE, "noise_scale": -1.0}, "noise_scale"),
        (
            {"name": "clampbn", "d": 8, "coord_range": RANGE, "noise_scale": float("nan")},
            "noise_scale",
        ),
        ({"name": "groupnorm", "d": 8, "groups": 3}, "does not divide"),
        ({"name": "groupnorm", "d": 8, "groups": 8}, "equals d"),
        ({"name": "groupnorm", "d": 8, "groups": 0}, "positive integer"),
        ({"name": "batchnorm", "d": 8, "groups": 2}, "'groupnorm' only"),
        ({"name": "layernorm", "d": 1}, "needs d >= 2"),
        ({"name": "clampln", "d": 1, "coord_range": RANGE}, "needs d >= 2"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(NormConfigError, match=message):
        build_norm(**kwargs)
