"""Per-sample bounding: the stated sensitivities hold on every input and are tight."""

from __future__ import annotations

import math

import pytest
import torch

from flnode.learning.bounding import (
    BOUNDINGS,
    Bounding,
    ClipL1,
    ClipL2,
    L1Normalize,
    L2Normalize,
    MinMax,
    get_bounding,
)

ALL = [L1Normalize(), L2Normalize(), ClipL1(c=0.5), ClipL2(c=0.5), MinMax()]


def _pairs(d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs of inputs, including the families that reach each bound.

    * independent Gaussians with wildly varying scales,
    * x and y = −s·x (opposite directions: 2 in the normalised norm, 2c after clipping),
    * random sign vectors and their negation (2·√d in L1 after L2 normalisation),
    * binary vectors and their complement (d in L1 after min-max),
    * one-hot vectors and their negation (2 in L2 after L1 normalisation or clipping),
    * degenerate rows: zeros and constants.
    """
    g = torch.Generator().manual_seed(seed)
    k = n // 6

    def scale(m: int) -> torch.Tensor:
        return torch.exp(torch.randn(m, 1, generator=g, dtype=torch.float64) * 3)

    xa = torch.randn(k, d, generator=g, dtype=torch.float64) * scale(k)
    ya = torch.randn(k, d, generator=g, dtype=torch.float64) * scale(k)
    xb = torch.randn(k, d, generator=g, dtype=torch.float64) * scale(k)
    yb = -xb * scale(k)
    xc = (torch.randint(0, 2, (k, d), generator=g) * 2 - 1).to(torch.float64) * scale(k) * 10
    yc = -xc
    xd = torch.randint(0, 2, (k, d), generator=g).to(torch.float64)
    xd[:, 0], xd[:, 1] = 0.0, 1.0  # at least one 0 and one 1
    xd = xd * scale(k) + torch.randn(k, 1, generator=g, dtype=torch.float64)
    yd = xd.amax(dim=1, keepdim=True) + xd.amin(dim=1, keepdim=True) - xd  # the complement
    xe = torch.zeros(k, d, dtype=torch.float64)
    xe[torch.arange(k), torch.randint(0, d, (k,), generator=g)] = 1.0
    xe = xe * scale(k) * 10
    ye = -xe
    xf = torch.zeros(k, d, dtype=torch.float64)
    yf = torch.randn(k, 1, generator=g, dtype=torch.float64).expand(k, d).clone()
    return torch.cat([xa, xb, xc, xd, xe, xf]), torch.cat([ya, yb, yc, yd, ye, yf])


@pytest.mark.parametrize("bounding", ALL, ids=lambda b: b.spec)
@pytest.mark.parametrize("d", [2, 7, 32])
def test_sensitivity_holds_on_random_pairs_and_is_tight(bounding: Bounding, d: int) -> None:
    x, y = _pairs(d, 20_000, seed=d)
    diff = bounding.apply(x) - bounding.apply(y)
    l1 = diff.abs().sum(dim=1).max().item()
    l2 = torch.linalg.vector_norm(diff, dim=1).max().item()
    assert l1 <= bounding.l1_sensitivity(d) * (1 + 1e-9)
    assert l2 <= bounding.l2_sensitivity(d) * (1 + 1e-9)
    # The stated bounds are not loose: some pair comes within 0.1 % of each.
    assert l1 >= bounding.l1_sensitivity(d) * 0.999
    assert l2 >= bounding.l2_sensitivity(d) * 0.999


@pytest.mark.parametrize("bounding", ALL, ids=lambda b: b.spec)
def test_bounded_coordinates_lie_in_coord_range(bounding: Bounding) -> None:
    x, y = _pairs(16, 5_000, seed=3)
    out = bounding.apply(torch.cat([x, y]))
    lo, hi = bounding.coord_range
    assert out.min().item() >= lo and out.max().item() <= hi
    assert bounding.coord_sensitivity == hi - lo


def test_stated_sensitivities() -> None:
    d = 16
    assert (L1Normalize().l1_sensitivity(d), L1Normalize().l2_sensitivity(d)) == (2.0, 2.0)
    assert (L2Normalize().l1_sensitivity(d), L2Normalize().l2_sensitivity(d)) == (8.0, 2.0)
    assert (ClipL1(c=3).l1_sensitivity(d), ClipL1(c=3).l2_sensitivity(d)) == (6.0, 6.0)
    assert (ClipL2(c=3).l1_sensitivity(d), ClipL2(c=3).l2_sensitivity(d)) == (24.0, 6.0)
    assert (MinMax().l1_sensitivity(d), MinMax().l2_sensitivity(d)) == (16.0, 4.0)
    with pytest.raises(ValueError, match="positive integer"):
        MinMax().l1_sensitivity(0)


def test_normalisations_reach_unit_norm_and_clips_leave_short_vectors_alone() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(100, 8, generator=g) * 5
    torch.testing.assert_close(L1Normalize().apply(z).abs().sum(dim=1), torch.ones(100))
    torch.testing.assert_close(
        torch.linalg.vector_norm(L2Normalize().apply(z), dim=1), torch.ones(100)
    )
    short = z / z.abs().sum(dim=1, keepdim=True) * 0.4  # L1 norm 0.4 < c
    torch.testing.assert_close(ClipL1(c=0.5).apply(short), short)
    torch.testing.assert_close(ClipL2(c=0.5).apply(short), short)
    long = z * 100
    norms = torch.linalg.vector_norm(ClipL2(c=0.5).apply(long), dim=1)
    torch.testing.assert_close(norms, torch.full((100,), 0.5))


def test_minmax_maps_each_row_to_exactly_zero_to_one() -> None:
    z = torch.tensor([[3.0, -1.0, 1.0], [0.5, 0.5, 2.5]])
    torch.testing.assert_close(MinMax().apply(z), torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]]))


def test_degenerate_rows_stay_inside_the_bounded_set() -> None:
    zeros = torch.zeros(2, 5)
    const = torch.full((2, 5), 7.0)
    for b in (L1Normalize(), L2Normalize(), ClipL1(c=1), ClipL2(c=1)):
        assert torch.equal(b.apply(zeros), zeros)
    # An all-equal row (max − min = 0) maps to zeros, not NaN.
    assert torch.equal(MinMax().apply(const), torch.zeros(2, 5))
    assert torch.equal(MinMax().apply(zeros), torch.zeros(2, 5))


def test_apply_keeps_dtype_and_does_not_modify_its_input() -> None:
    z = torch.randn(4, 3, dtype=torch.float64)
    before = z.clone()
    for b in ALL:
        assert b.apply(z).dtype == torch.float64
        assert b.apply(z.float()).dtype == torch.float32
    assert torch.equal(z, before)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3),
        torch.zeros(2, 3, 4),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.zeros(2, 0),
        torch.tensor([[1.0, float("nan")]]),
        torch.tensor([[1.0, float("inf")]]),
    ],
)
def test_apply_refuses_inputs_it_cannot_bound(bad: torch.Tensor) -> None:
    for b in ALL:
        with pytest.raises(ValueError):
            b.apply(bad)


def test_registry_by_name() -> None:
    assert set(BOUNDINGS) == {"l1", "l2", "clip-l1", "clip-l2", "minmax"}
    assert get_bounding("l1") == L1Normalize()
    assert get_bounding("minmax") == MinMax()
    assert get_bounding("clip-l2", c=2.0) == ClipL2(c=2.0)
    assert get_bounding("clip-l1", c=2.0).spec == "clip-l1(c=2.0)"
    with pytest.raises(ValueError, match="clipping norm"):
        get_bounding("clip-l1")
    with pytest.raises(ValueError, match="takes no clipping norm"):
        get_bounding("l2", c=1.0)
    with pytest.raises(ValueError, match="unknown bounding"):
        get_bounding("l3")
    for c in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="positive finite"):
            ClipL2(c=c)


def test_boundings_are_frozen_values() -> None:
    b = ClipL1(c=1.0)
    with pytest.raises(AttributeError):
        b.c = 2.0  # type: ignore[misc]
    assert ClipL1(c=1.0) == b and hash(ClipL1(c=1.0)) == hash(b)
