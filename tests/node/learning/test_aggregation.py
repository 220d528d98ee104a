"""Aggregation rules, update validation and the aggregate tolerance.

Expected values are worked out by hand in the comments; the inputs are small integers or halves so
that every expected number is exact in float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flnode.errors import FLNodeError
from flnode.learning.aggregation import (
    AGGREGATE_TOLERANCE,
    STRATEGIES,
    AggregationError,
    AggregationResult,
    FedAvg,
    Krum,
    Median,
    MultiKrum,
    Strategy,
    TensorSpec,
    ThreeSigma,
    TrimmedMean,
    Update,
    UpdateValidationError,
    _pairwise_sq_distances,
    _row_sums_of_squares,
    aggregates_match,
    strategy_from_spec,
    tensor_specs,
    validate_update,
)


def upd(cid: str, values: list[float], n: int = 1, dtype: torch.dtype = torch.float32) -> Update:
    """An update holding one vector ``w``."""
    return Update(cid, f"sender-{cid}", {"w": torch.tensor(values, dtype=dtype)}, n)


def w(result: AggregationResult) -> list[float]:
    return result.weights["w"].tolist()


def output_bytes(result: AggregationResult) -> bytes:
    """Every byte a validator would compare: tensors in key order, scores, decisions."""
    h = hashlib.sha256()
    for key, t in result.weights.items():
        h.update(key.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps([result.scores, result.accepted, result.rejected, result.rule]).encode())
    return h.digest()


# The five points used by the Multi-Krum and median examples:
#   a (1, 2)  b (3, 4)  c (100, −100)  d (2, 3)  e (1.5, 2.5);  b claims 3 samples, the others 1.
FIVE = [
    upd("a", [1, 2]),
    upd("b", [3, 4], n=3),
    upd("c", [100, -100]),
    upd("d", [2, 3]),
    upd("e", [1.5, 2.5]),
]


# ------------------------------------------------------------------------------------------------
# FedAvg


def test_fedavg_weights_by_sample_count() -> None:
    # (1·[1, 2] + 3·[3, 4]) / 4 = [10, 14] / 4 = [2.5, 3.5]
    result = FedAvg().aggregate([upd("a", [1, 2], n=1), upd("b", [3, 4], n=3)])
    assert w(result) == [2.5, 3.5]
    assert result.accepted == ("a", "b")
    assert result.rejected == ()
    assert result.rule == "fedavg"


def test_fedavg_caps_claimed_sample_counts() -> None:
    honest, liar = upd("a", [0, 0], n=10), upd("b", [4, 8], n=1_000_000)
    # Uncapped: the liar has 1e6 / (1e6 + 10) of the weight; [4, 8]·0.99999 ≈ [3.99996, 7.99992].
    uncapped = w(FedAvg().aggregate([honest, liar]))
    assert uncapped[0] == pytest.approx(4 * 1_000_000 / 1_000_010)
    # Capped at 10: both weigh 10 → the plain mean [2, 4]; each is √(2² + 4²) = √20 from it.
    result = FedAvg(max_samples=10).aggregate([honest, liar])
    assert w(result) == [2.0, 4.0]
    assert result.scores == {"a": math.sqrt(20), "b": math.sqrt(20)}


def test_fedavg_with_the_five_points() -> None:
    # x: (1 + 3·3 + 100 + 2 + 1.5) / 7 = 113.5 / 7;  y: (2 + 3·4 − 100 + 3 + 2.5) / 7 = −80.5 / 7
    result = FedAvg().aggregate(FIVE)
    assert w(result) == pytest.approx([113.5 / 7, -80.5 / 7])
    # The outlier is furthest from the mean, so it gets the highest (most suspicious) score.
    assert max(result.scores, key=result.scores.__getitem__) == "c"


def test_fedavg_matches_an_independent_numpy_computation_bit_for_bit() -> None:
    # The documented arithmetic: Σ (xᵢ·nᵢ) in CID order, in float64, divided by Σ nᵢ, then rounded.
    g = torch.Generator().manual_seed(7)
    rows = [torch.randn(1001, generator=g) * 10 ** float(i) for i in range(-3, 4)]
    counts = [3, 1, 4, 1, 5, 9, 2]
    updates = [
        upd(f"u{i}", r.tolist(), n=c) for i, (r, c) in enumerate(zip(rows, counts, strict=True))
    ]
    acc = np.zeros(1001)
    for r, c in zip(rows, counts, strict=True):
        acc = acc + r.double().numpy() * float(c)
    expected = (acc / float(sum(counts))).astype(np.float32)
    assert FedAvg().aggregate(updates[::-1]).weights["w"].numpy().tobytes() == expected.tobytes()


def test_shapes_dtypes_and_key_order_are_preserved() -> None:
    def state(v: float) -> dict[str, torch.Tensor]:
        return {
            "z.weight": torch.full((2, 3), v, dtype=torch.float64),
            "a.bias": torch.full((3,), v, dtype=torch.float16),
            "m.scalar": torch.tensor(v, dtype=torch.float32),
        }

    # Means of 1 and 2 (equal weights): 1.5 everywhere, exactly representable in every dtype.
    result = FedAvg().aggregate([Update("x", "s", state(1.0), 1), Update("y", "s", state(2.0), 1)])
    assert list(result.weights) == ["a.bias", "m.scalar", "z.weight"]
    for key, t in state(0.0).items():
        out = result.weights[key]
        assert (out.shape, out.dtype) == (t.shape, t.dtype)
        assert torch.equal(out, torch.full_like(t, 1.5))


def test_integer_buffers_take_the_lower_median_of_the_accepted_updates() -> None:
    def state(v: float, count: int) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor([v]), "bn.num_batches_tracked": torch.tensor(count)}

    counts = {"a": 1, "b": 2, "c": 3, "d": 400}
    updates = [Update(c, c, state(1.0, k), 1) for c, k in counts.items()]
    # Sorted counts [1, 2, 3, 400]: the lower median is the 2nd, 2 (the liar's 400 does not matter).
    out = FedAvg().aggregate(updates).weights["bn.num_batches_tracked"]
    assert out.dtype == torch.int64
    assert int(out) == 2


def test_result_tensors_do_not_share_memory_with_inputs_or_each_other() -> None:
    a = Update("a", "s", {"p": torch.ones(2, dtype=torch.float64)}, 1)
    result = Median().aggregate([a])
    result.weights["p"].add_(1)
    assert a.weights["p"].tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------
# Multi-Krum


def test_multikrum_scores_and_selection_by_hand() -> None:
    # n = 5, f = 1: each score sums the n − f − 2 = 2 smallest squared distances to the others.
    # Squared distances: ab 8, ad 2, ae 0.5, bd 2, be 4.5, de 0.5,
    #   ca 99²+102² = 20205, cb 20225, cd 20213, ce 98.5²+102.5² = 20208.5.
    # Scores: a 0.5+2 = 2.5, b 2+4.5 = 6.5, c 20205+20208.5 = 40413.5, d 0.5+2 = 2.5, e 0.5+0.5 = 1.
    result = MultiKrum(f=1).aggregate(FIVE)
    assert result.scores == {"a": 2.5, "b": 6.5, "c": 40413.5, "d": 2.5, "e": 1.0}
    # m = n − f = 4 lowest: e, a, d, b; c is rejected. The aggregate is their FedAvg with b
    # weighing 3: x = (1 + 9 + 2 + 1.5)/6 = 2.25, y = (2 + 12 + 3 + 2.5)/6 = 3.25.
    assert result.accepted == ("a", "b", "d", "e")
    assert result.rejected == ("c",)
    assert w(result) == [2.25, 3.25]


def test_multikrum_ties_are_broken_by_cid() -> None:
    # m = 2: e (1.0) first, then a and d tie at 2.5 → "a" < "d" wins. Mean of a and e: [1.25, 2.25].
    result = MultiKrum(f=1, m=2).aggregate(FIVE)
    assert result.accepted == ("a", "e")
    assert w(result) == [1.25, 2.25]


def test_krum_keeps_the_single_best_update() -> None:
    result = Krum(f=1).aggregate(FIVE)
    assert result.rule == "krum"
    assert result.accepted == ("e",)
    assert w(result) == [1.5, 2.5]


def test_multikrum_selects_the_honest_cluster() -> None:
    g = torch.Generator().manual_seed(3)
    centre = torch.randn(50, generator=g)
    honest = [
        upd(f"h{i}", (centre + 0.01 * torch.randn(50, generator=g)).tolist()) for i in range(8)
    ]
    # Three attackers: one far away, one sign-flipped and boosted, one only moderately off.
    bad = [
        upd("x0", (centre + 100).tolist()),
        upd("x1", (-5 * centre).tolist()),
        upd("x2", (centre + 0.5).tolist()),
    ]
    result = MultiKrum(f=3).aggregate(honest + bad)
    assert result.rejected == ("x0", "x1", "x2")
    assert min(result.scores[c] for c in ("x0", "x1", "x2")) > max(
        result.scores[u.cid] for u in honest
    )
    assert torch.allclose(result.weights["w"], centre, atol=0.02)


def test_multikrum_needs_more_than_2f_plus_2_updates() -> None:
    with pytest.raises(AggregationError, match=r"more than 2f\+2 = 6 updates.*got 6"):
        MultiKrum(f=2).aggregate([upd(f"u{i}", [float(i)]) for i in range(6)])
    assert MultiKrum(f=2).min_updates() == 7
    assert MultiKrum(f=2, m=6).min_updates() == 8


def test_multikrum_cannot_keep_more_than_n_minus_f() -> None:
    with pytest.raises(AggregationError, match=r"m=5.*n−f = 4"):
        MultiKrum(f=1, m=5).aggregate(FIVE)


# ------------------------------------------------------------------------------------------------
# Median and trimmed mean


def test_median_odd_count() -> None:
    # x: sorted [1, 2, 100] → 2;  y: sorted [−5, 10, 20] → 10. Sample counts are ignored.
    result = Median().aggregate([upd("a", [1, 10], n=50), upd("b", [2, 20]), upd("c", [100, -5])])
    assert w(result) == [2.0, 10.0]
    # Scores are distances to [2, 10]: a √(1+0) = 1, b √(0+100) = 10, c √(98² + 15²).
    assert result.scores == {"a": 1.0, "b": 10.0, "c": math.sqrt(98**2 + 15**2)}
    assert result.rejected == ()


def test_median_even_count_averages_the_two_middle_values() -> None:
    # Sorted [1, 2, 3, 100]: (2 + 3) / 2 = 2.5.
    updates = [upd("a", [1]), upd("b", [2]), upd("c", [3]), upd("d", [100])]
    assert w(Median().aggregate(updates)) == [2.5]


def test_median_of_the_five_points() -> None:
    # x: [1, 1.5, 2, 3, 100] → 2;  y: [−100, 2, 2.5, 3, 4] → 2.5.
    assert w(Median().aggregate(FIVE)) == [2.0, 2.5]


def test_trimmed_mean_by_hand() -> None:
    # β = 0.2, n = 5 → trim ⌊1⌋ = 1 at each end.
    # x: [1, 2, 3, 4, 100] → mean(2, 3, 4) = 3;  y: [−50, 0, 1, 2, 3] → mean(0, 1, 2) = 1.
    updates = [
        upd("a", [1, 3]),
        upd("b", [2, 2]),
        upd("c", [100, 1]),
        upd("d", [3, 0]),
        upd("e", [4, -50]),
    ]
    result = TrimmedMean(0.2).aggregate(updates)
    assert w(result) == [3.0, 1.0]
    assert result.accepted == ("a", "b", "c", "d", "e")


def test_trimmed_mean_with_beta_zero_is_the_plain_mean() -> None:
    # (1 + 2 + 6) / 3 = 3, whatever the sample counts.
    assert w(TrimmedMean(0).aggregate([upd("a", [1], n=9), upd("b", [2]), upd("c", [6])])) == [3.0]


def test_trimmed_mean_counts_exactly_and_refuses_to_trim_nothing() -> None:
    assert TrimmedMean(0.29).trimmed(100) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert TrimmedMean(0.1).trimmed(10) == 1
    assert TrimmedMean(0.1).min_updates() == 10
    assert TrimmedMean(0.3).min_updates() == 4  # ⌈1/0.3⌉ = 4: ⌊0.3·4⌋ = 1
    with pytest.raises(AggregationError, match=r"at least 10 updates.*got 9"):
        TrimmedMean(0.1).aggregate([upd(f"u{i}", [float(i)]) for i in range(9)])


# ------------------------------------------------------------------------------------------------
# Three-sigma


def test_three_sigma_by_hand() -> None:
    # 1-D updates 0, 1, 2, 3, 100. Coordinate median 2 → distances 2, 1, 0, 1, 98.
    # centre = median(2, 1, 0, 1, 98) = 1; |d − 1| = 1, 0, 1, 0, 97 → MAD = 1;
    # threshold = 1 + 3 · 1.4826 · 1 ≈ 5.45 → only 100 (distance 98) is rejected.
    # FedAvg of 0, 1, 2, 3 = 1.5.
    updates = [upd(f"u{v}", [float(v)]) for v in (0, 1, 2, 3, 100)]
    rule = ThreeSigma()
    result = rule.aggregate(updates)
    assert result.scores == {"u0": 2.0, "u1": 1.0, "u2": 0.0, "u3": 1.0, "u100": 98.0}
    assert rule.threshold([2.0, 1.0, 0.0, 1.0, 98.0]) == pytest.approx(1 + 3 * 1.482602218505602)
    assert result.rejected == ("u100",)
    assert w(result) == [1.5]


def test_three_sigma_catches_what_a_naive_three_sigma_rule_misses() -> None:
    # With 0, 1, 2, 3, 100 the naive rule (mean + 3·std of the distances) would accept everything:
    distances = [2.0, 1.0, 0.0, 1.0, 98.0]
    mean = sum(distances) / 5  # 20.4
    std = math.sqrt(sum((d - mean) ** 2 for d in distances) / 5)  # ≈ 38.8
    assert max(distances) < mean + 3 * std
    assert ThreeSigma().threshold(distances) < 98.0


def test_three_sigma_with_a_majority_of_identical_copies() -> None:
    # Five copies of 5, then 6, 7 and 50. Median 5 → distances 0,0,0,0,0,1,2,45; centre 0, MAD 0.
    # Fallback: median of the non-zero deviations (1, 2, 45) = 2 → threshold 3·1.4826·2 ≈ 8.9.
    # 50 is rejected; FedAvg of the rest = (5·5 + 6 + 7) / 7 = 38/7.
    values = [5, 5, 5, 5, 5, 6, 7, 50]
    updates = [upd(f"u{i}", [float(v)]) for i, v in enumerate(values)]
    result = ThreeSigma().aggregate(updates)
    assert result.rejected == ("u7",)
    assert w(result) == [pytest.approx(38 / 7)]


def test_three_sigma_rejects_nothing_when_all_distances_are_equal() -> None:
    result = ThreeSigma().aggregate([upd(c, [3.0]) for c in "abc"])
    assert result.rejected == ()
    assert w(result) == [3.0]


def test_three_sigma_needs_three_updates() -> None:
    with pytest.raises(AggregationError, match=r"at least 3 updates.*got 2"):
        ThreeSigma().aggregate([upd("a", [1.0]), upd("b", [2.0])])


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "no updates"),
        ([upd("a", [1.0]), upd("a", [2.0])], "update a appears twice"),
        ([upd("a", [1.0]), Update("b", "s", {"v": torch.ones(1)}, 1)], r"tensors \['v'\]"),
        ([upd("a", [1.0]), upd("b", [1.0, 2.0])], "'w' is"),
        ([upd("a", [1.0]), upd("b", [1.0], dtype=torch.float64)], "'w' is"),
        ([upd("a", [1.0]), upd("b", [math.nan])], "NaN or infinite"),
        ([upd("a", [1.0]), upd("b", [-math.inf])], "NaN or infinite"),
        ([Update("a", "s", {"m": torch.tensor([True])}, 1)], "cannot be aggregated"),
        ([Update("a", "s", {}, 1)], "has no tensors"),
    ],
)
def test_inconsistent_updates_are_refused(updates: list[Update], message: str) -> None:
    with pytest.raises(AggregationError, match=message) as info:
        Median().aggregate(updates)
    assert isinstance(info.value, FLNodeError)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MultiKrum(f=-1), r"f .* must be an int ≥ 0. Got: -1"),
        (lambda: MultiKrum(f=1.5), r"f .* Got: 1.5"),
        (lambda: MultiKrum(f=1, m=0), r"m .* Got: 0"),
        (lambda: TrimmedMean(0.5), r"beta .* \[0, 0.5\). Got: 0.5"),
        (lambda: TrimmedMean(-0.1), r"beta .* Got: -0.1"),
        (lambda: ThreeSigma(k=0), r"k .* Got: 0"),
        (lambda: ThreeSigma(k=math.inf), r"k .* Got: inf"),
        (lambda: FedAvg(max_samples=0), r"max_samples .* Got: 0"),
        (lambda: FedAvg(max_samples=True), r"max_samples .* Got: True"),
    ],
)
def test_parameters_are_checked_eagerly(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cid": "", "n_samples": 1}, "non-empty CID"),
        ({"cid": "a", "n_samples": 0}, "at least 1"),
        ({"cid": "a", "n_samples": True}, "must be an int"),
    ],
)
def test_update_values_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UpdateValidationError, match=message):
        Update(sender="s", weights={}, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Registry


def test_registry_builds_every_rule_and_params_round_trip() -> None:
    built = {
        "fedavg": strategy_from_spec("fedavg", max_samples=100),
        "multikrum": strategy_from_spec("multikrum", f=2, m=3),
        "krum": strategy_from_spec("krum", f=1),
        "median": strategy_from_spec("median"),
        "trimmed-mean": strategy_from_spec("trimmed-mean", beta=0.1),
        "three-sigma": strategy_from_spec("three-sigma", k=2.5),
    }
    assert set(built) == set(STRATEGIES)
    for name, rule in built.items():
        assert isinstance(rule, Strategy)
        assert rule.name == name
        assert repr(strategy_from_spec(name, **rule.params)) == repr(rule)
    assert isinstance(built["krum"], MultiKrum) and built["krum"].m == 1


def test_registry_names_the_known_rules_and_parameters() -> None:
    with pytest.raises(ValueError, match="known rules: fedavg, krum, median, multikrum"):
        strategy_from_spec("mean")
    with pytest.raises(ValueError, match="takes no parameter 'beta'; it takes: f, m, max_samples"):
        strategy_from_spec("multikrum", f=1, beta=0.1)
    with pytest.raises(ValueError, match="missing a required argument: 'f'"):
        strategy_from_spec("krum")


# ------------------------------------------------------------------------------------------------
# Properties: order of arrival never matters; a Byzantine minority cannot move robust rules far


ALL_RULES: list[Strategy] = [
    FedAvg(),
    FedAvg(max_samples=3),
    MultiKrum(f=1),
    MultiKrum(f=1, m=2),
    Krum(f=1),
    Median(),
    TrimmedMean(0.2),
    ThreeSigma(),
]

values32 = st.floats(-10, 10, width=32)
any_finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def shuffled_updates(draw: st.DrawFn) -> tuple[list[Update], list[Update]]:
    n = draw(st.integers(5, 8))
    dim = draw(st.integers(1, 4))
    # Few distinct values, so that exact ties between scores are common.
    pool = draw(st.lists(values32, min_size=1, max_size=4))
    updates = [
        Update(
            f"cid{i:02d}",
            f"s{i}",
            {
                "w": torch.tensor(
                    draw(st.lists(st.sampled_from(pool), min_size=dim, max_size=dim))
                ),
                "n": torch.tensor(draw(st.integers(0, 9))),
            },
            draw(st.integers(1, 5)),
        )
        for i in range(n)
    ]
    return updates, draw(st.permutations(updates))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shuffled_updates())
def test_every_rule_is_permutation_invariant(pair: tuple[list[Update], list[Update]]) -> None:
    updates, shuffled = pair
    for rule in ALL_RULES:
        assert output_bytes(rule.aggregate(updates)) == output_bytes(rule.aggregate(shuffled))


@st.composite
def honest_and_outliers(
    draw: st.DrawFn, max_f: int = 2
) -> tuple[list[list[float]], list[list[float]], int]:
    dim = draw(st.integers(1, 3))
    f = draw(st.integers(1, max_f))
    vec = st.lists(st.floats(-1, 1, width=32), min_size=dim, max_size=dim)
    honest = draw(st.lists(vec, min_size=f + 3, max_size=f + 5))
    huge = st.sampled_from([3.0e38, -3.0e38, 1e30, -1e20, 1e6])
    outlier = st.lists(st.one_of(any_finite32, huge), min_size=dim, max_size=dim)
    outliers = draw(st.lists(outlier, min_size=f, max_size=f))
    return honest, outliers, f


def _as_updates(honest: list[list[float]], outliers: list[list[float]]) -> list[Update]:
    # Interleave the CIDs so that CID order says nothing about who is honest.
    vectors = [*honest, *outliers]
    return [upd(f"{(7 * i) % 101:03d}-{i}", v) for i, v in enumerate(vectors)]


@settings(max_examples=80, deadline=None)
@given(honest_and_outliers(), st.sampled_from([None, 1]))
def test_multikrum_stays_near_the_honest_cluster(
    case: tuple[list[list[float]], list[list[float]], int], m: int | None
) -> None:
    honest, outliers, f = case
    n = len(honest) + len(outliers)
    result = MultiKrum(f=f, m=m).aggregate(_as_updates(honest, outliers))
    # Bound (see the module notes): a selected outlier o scores no worse than some unselected
    # honest h, whose score is at most k·diam² (k = n − f − 2 neighbours, all honest), and o's k
    # nearest include an honest h' — so ‖o − h'‖ ≤ √k·diam, and so is every accepted coordinate.
    h = torch.tensor(honest, dtype=torch.float64)
    diam = float(torch.cdist(h, h).max())
    reach = math.sqrt(n - f - 2) * diam + 1e-5
    agg = result.weights["w"].double()
    assert bool((agg >= h.min(0).values - reach).all())
    assert bool((agg <= h.max(0).values + reach).all())
    # An outlier further than `reach` from every honest update is never accepted.
    for u, o in zip(_as_updates(honest, outliers)[len(honest) :], outliers, strict=True):
        gap = float(torch.cdist(torch.tensor([o], dtype=torch.float64), h).min())
        if gap > reach:
            assert u.cid in result.rejected


@settings(max_examples=80, deadline=None)
@given(honest_and_outliers(max_f=3))
def test_median_and_trimmed_mean_stay_within_the_honest_range(
    case: tuple[list[list[float]], list[list[float]], int],
) -> None:
    honest, outliers, f = case  # f < n/2 since there are at least f + 3 honest updates
    updates = _as_updates(honest, outliers)
    h = torch.tensor(honest)
    lo, hi = h.min(0).values, h.max(0).values
    beta = f / len(updates) + 1e-9  # ⌊β·n⌋ = f: exactly enough trimming
    for rule in (Median(), TrimmedMean(beta)):
        agg = rule.aggregate(updates).weights["w"]
        assert bool((agg >= lo).all()) and bool((agg <= hi).all()), rule


# ------------------------------------------------------------------------------------------------
# Determinism across processes (and thread counts)

_DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    from flnode.learning.aggregation import Update, strategy_from_spec

    def digests():
        g = torch.Generator().manual_seed(1234)
        # 9 updates of 40_001 floats (odd, and large enough for torch to use several threads)
        updates = []
        for i in range(9):
            w = torch.randn(40_001, generator=g) * (1 + i % 3)
            if i >= 7:
                w = w * 50 - 3  # two outliers
            b = torch.randn(3, 5, generator=g).double()
            weights = {"layer.w": w, "layer.b": b, "bn.n": torch.tensor(i * 10)}
            updates.append(Update(f"cid-{(i * 5) % 9}", f"s{i}", weights, 1 + i))
        specs = [("fedavg", {"max_samples": 6}), ("multikrum", {"f": 2}), ("krum", {"f": 2}),
                 ("median", {}), ("trimmed-mean", {"beta": 0.2}), ("three-sigma", {})]
        out = {}
        for name, params in specs:
            r = strategy_from_spec(name, **params).aggregate(updates)
            h = hashlib.sha256()
            for key, t in r.weights.items():
                h.update(key.encode() + t.contiguous().numpy().tobytes())
            h.update(json.dumps([r.scores, r.accepted, r.rejected]).encode())
            out[name] = h.hexdigest()
        return out

    if __name__ == "__main__":
        torch.set_num_threads(int(sys.argv[1]))
        print(json.dumps(digests()))
    """
)


def test_same_bytes_in_another_process_with_another_thread_count() -> None:
    namespace: dict[str, object] = {"__name__": "in_process"}
    exec(_DETERMINISM_SCRIPT, namespace)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = namespace["digests"]()  # type: ignore[operator]
    finally:
        torch.set_num_threads(threads)
    child = subprocess.run(
        [sys.executable, "-c", _DETERMINISM_SCRIPT, "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    there = json.loads(child.stdout)
    assert there == here
    assert len(set(here.values())) == len(here)  # six different aggregates, not one constant


# ------------------------------------------------------------------------------------------------
# Distances


@pytest.mark.parametrize("width", [0, 1, 2, 3, 7, 8, 9, 17, 1000])
def test_tree_sum_of_squares_is_exact_on_small_integers(width: int) -> None:
    v = torch.arange(2 * width, dtype=torch.float64).reshape(2, width) - 3
    expected = [sum(x * x for x in row) for row in v.tolist()]
    assert _row_sums_of_squares(v.clone()).tolist() == expected


def test_pairwise_distances_agree_with_a_brute_force_computation() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 333, generator=g, dtype=torch.float64)
    got = _pairwise_sq_distances(x)
    for i in range(6):
        for j in range(6):
            brute = math.fsum(((x[i] - x[j]) ** 2).tolist())
            assert float(got[i, j]) == pytest.approx(brute, rel=1e-14, abs=0)


# ------------------------------------------------------------------------------------------------
# Validation

SPEC = {
    "fc.weight": TensorSpec((2, 2), torch.float32),
    "fc.bias": TensorSpec((2,), torch.float32),
    "bn.num_batches_tracked": TensorSpec((), torch.int64),
}


def good() -> dict[str, torch.Tensor]:
    # Floating values 3, 4 and zeros: L2 norm √(9 + 16) = 5 (the integer buffer does not count).
    return {
        "fc.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0]]),
        "fc.bias": torch.tensor([0.0, 4.0]),
        "bn.num_batches_tracked": torch.tensor(1000),
    }


def test_a_good_update_passes() -> None:
    assert validate_update(good(), SPEC, max_norm=5.0) is None
    assert validate_update(good(), SPEC, max_norm=None) is None
    assert tensor_specs(good()) == SPEC


def _broken(change: dict[str, object], drop: str | None = None) -> dict[str, object]:
    weights: dict[str, object] = {**good(), **change}
    if drop:
        del weights[drop]
    return weights


@pytest.mark.parametrize(
    ("weights", "kind", "key", "message"),
    [
        (_broken({}, drop="fc.bias"), "missing", "fc.bias", "lacks tensor 'fc.bias'"),
        (_broken({"fc.extra": torch.zeros(1)}), "extra", "fc.extra", "unexpected tensor"),
        (
            _broken({"fc.bias": torch.zeros(3)}),
            "shape",
            "fc.bias",
            r"shape \(3,\), expected \(2,\)",
        ),
        (_broken({"fc.bias": torch.zeros(2).double()}), "dtype", "fc.bias", "dtype torch.float64"),
        (_broken({"fc.bias": torch.tensor([0.0, math.nan])}), "non-finite", "fc.bias", "NaN"),
        (_broken({"fc.bias": torch.tensor([math.inf, 0.0])}), "non-finite", "fc.bias", "infinite"),
        (_broken({"fc.bias": [0.0, 4.0]}), "type", "fc.bias", "is a list, not a tensor"),
        (
            _broken({"bn.num_batches_tracked": torch.tensor(1.0)}),
            "dtype",
            "bn.num_batches_tracked",
            "expected torch.int64",
        ),
    ],
)
def test_each_validation_failure_is_named(
    weights: dict[str, torch.Tensor], kind: str, key: str, message: str
) -> None:
    with pytest.raises(UpdateValidationError, match=message) as info:
        validate_update(weights, SPEC, max_norm=100.0)
    assert (info.value.kind, info.value.key) == (kind, key)
    assert isinstance(info.value, FLNodeError)


def test_missing_keys_are_reported_before_other_problems() -> None:
    weights = _broken({"fc.weight": torch.zeros(5)}, drop="fc.bias")
    with pytest.raises(UpdateValidationError, match=r"lacks tensor 'fc.bias'"):
        validate_update(weights, SPEC, max_norm=None)  # type: ignore[arg-type]


def test_norm_bound_on_the_update() -> None:
    with pytest.raises(
        UpdateValidationError, match=r"norm of the update is 5, above the bound 4.9"
    ):
        validate_update(good(), SPEC, max_norm=4.9)


def test_norm_bound_on_the_change_from_the_reference() -> None:
    reference = {**good(), "fc.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0]])}
    reference["fc.bias"] = torch.tensor([0.0, 1.0])
    # update − reference = [0, 0, 0, 0] and [0, 3] → norm 3.
    assert validate_update(good(), SPEC, max_norm=3.0, reference=reference) is None
    with pytest.raises(UpdateValidationError, match="update − reference is 3") as info:
        validate_update(good(), SPEC, max_norm=2.5, reference=reference)
    assert info.value.kind == "norm"


def test_bad_validation_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        validate_update(good(), SPEC, max_norm=0.0)
    with pytest.raises(ValueError, match=r"reference tensor 'fc.bias'"):
        validate_update(good(), SPEC, max_norm=1.0, reference={"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="shape must be a tuple of non-negative ints"):
        TensorSpec((2, -1), torch.float32)


# ------------------------------------------------------------------------------------------------
# Tolerance


def test_aggregates_match() -> None:
    a = {"w": torch.tensor([1.0, -2.0, 1e6]), "n": torch.tensor(3)}

    def b(w: list[float], n: int = 3) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor(w), "n": torch.tensor(n)}

    assert AGGREGATE_TOLERANCE == 1e-6
    assert aggregates_match(a, b([1.0, -2.0, 1e6]))
    # 5e-7 off near 1 (tolerance 1e-6·max(1, |w|) = 1e-6): accepted; 2e-6 off: refused.
    assert aggregates_match(a, b([1.0000005, -2.0, 1e6]))
    assert not aggregates_match(a, b([1.000002, -2.0, 1e6]))
    # Relative for large values: 1e6 ± 0.5 is within 1e-6·1e6 = 1; ± 2 is not.
    assert aggregates_match(a, b([1.0, -2.0, 1e6 + 0.5]))
    assert not aggregates_match(a, b([1.0, -2.0, 1e6 + 2]))
    assert not aggregates_match(a, b([1.0, -2.0, 1e6], n=4))  # integers must be equal
    assert not aggregates_match(a, {"w": a["w"]})  # missing key
    assert not aggregates_match(a, {**a, "w": a["w"].double()})  # dtype
    assert not aggregates_match(a, {**a, "w": a["w"][:2]})  # shape
    assert not aggregates_match(a, b([math.nan, -2.0, 1e6]))
    assert not aggregates_match({"w": torch.tensor([math.nan])}, {"w": torch.tensor([math.nan])})
    assert aggregates_match(a, b([1.0, -2.0, 1e6 + 2]), tol=1e-5)


def test_aggregates_match_allows_one_ulp_of_a_coarse_dtype() -> None:
    # float16 has eps ≈ 9.8e-4: one ulp apart at 1.0 exceeds 1e-6 but is within 2·eps.
    one = torch.tensor([1.0], dtype=torch.float16)
    assert aggregates_match({"w": one}, {"w": torch.nextafter(one, torch.full_like(one, 2))})


def test_signed_zeros_cannot_change_the_bytes_of_a_median() -> None:
    # −0.0 == +0.0, so a sort may put either first; both orders must give +0.0 exactly.
    plus_zero = torch.tensor([0.0]).numpy().tobytes()
    for values in ([-0.0, 0.0, 5.0], [0.0, -0.0, 5.0], [-0.0, -0.0, 0.0, 0.0]):
        updates = [upd(f"u{i}", [v]) for i, v in enumerate(values)]
        for rule in (Median(), TrimmedMean(1 / len(values) + 0.01)):  # trims one at each end
            assert rule.aggregate(updates).weights["w"].numpy().tobytes() == plus_zero
