"""Attack models: exact values on tiny tensors, and what the robust rules make of them."""

from __future__ import annotations

import pytest
import torch

from flnode.learning.aggregation import FedAvg, MultiKrum, ThreeSigma, Update
from flnode.learning.attacks import (
    ATTACKS,
    flip_labels,
    free_ride,
    gaussian_noise,
    scale_update,
    sign_flip,
)


def reference() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(7)}


def honest() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([3.0, 1.0]), "n": torch.tensor(9)}


def test_sign_flip_reflects_around_the_reference() -> None:
    # ref − (w − ref) = [1, 1] − [2, 0] = [−1, 1];  with scale 2: [1, 1] − [4, 0] = [−3, 1].
    assert sign_flip(honest(), reference())["w"].tolist() == [-1.0, 1.0]
    assert sign_flip(honest(), reference(), scale=2.0)["w"].tolist() == [-3.0, 1.0]


def test_scale_update_boosts_the_change() -> None:
    # ref + 3·(w − ref) = [1, 1] + [6, 0] = [7, 1];  factor 0 gives the reference back.
    assert scale_update(honest(), reference(), 3.0)["w"].tolist() == [7.0, 1.0]
    assert scale_update(honest(), reference(), 0.0)["w"].tolist() == [1.0, 1.0]


def test_update_attacks_keep_dtypes_copy_integer_buffers_and_leave_inputs_alone() -> None:
    w, ref = honest(), reference()
    w["h"] = torch.tensor([0.5], dtype=torch.float16)
    ref["h"] = torch.tensor([0.25], dtype=torch.float16)
    flipped = sign_flip(w, ref)
    # 0.25 − (0.5 − 0.25) = 0 in float16; the counter is the attacker's own, unchanged.
    assert flipped["h"].dtype == torch.float16 and flipped["h"].tolist() == [0.0]
    assert int(flipped["n"]) == 9
    assert w["w"].tolist() == [3.0, 1.0] and ref["w"].tolist() == [1.0, 1.0]
    flipped["n"].add_(1)
    assert int(w["n"]) == 9


def test_update_attacks_need_matching_tensors() -> None:
    with pytest.raises(ValueError, match="different tensors"):
        sign_flip(honest(), {"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="'w': weights"):
        scale_update(honest(), {"w": torch.zeros(3), "n": torch.tensor(0)}, 2.0)
    with pytest.raises(ValueError, match="factor must be a number"):
        scale_update(honest(), reference(), float("nan"))


def test_gaussian_noise_is_reproducible_and_has_the_asked_spread() -> None:
    big = {"w": torch.zeros(100_000), "n": torch.tensor(3)}
    a = gaussian_noise(big, 0.5, torch.Generator().manual_seed(1))
    b = gaussian_noise(big, 0.5, torch.Generator().manual_seed(1))
    c = gaussian_noise(big, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])
    # Sample std of 1e5 normal draws is within ~0.2 % of σ (1 std error); allow 2 %.
    assert float(a["w"].std()) == pytest.approx(0.5, rel=0.02)
    assert abs(float(a["w"].mean())) < 0.01
    assert int(a["n"]) == 3 and a["w"].dtype == torch.float32
    unchanged = gaussian_noise(honest(), 0.0, torch.Generator().manual_seed(1))
    assert unchanged["w"].tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="std must be ≥ 0"):
        gaussian_noise(honest(), -1.0, torch.Generator())


def test_free_ride_is_an_independent_copy_of_the_global_model() -> None:
    g = reference()
    copy = free_ride(g)
    assert copy["w"].tolist() == [1.0, 1.0] and int(copy["n"]) == 7
    copy["w"].add_(1)
    assert g["w"].tolist() == [1.0, 1.0]


def test_flip_labels() -> None:
    labels = torch.tensor([0, 1, 5, 9], dtype=torch.uint8)
    # reverse: y → 9 − y;  shift: y → (y + 1) mod 10.
    reversed_ = flip_labels(labels)
    assert reversed_.tolist() == [9, 8, 4, 0] and reversed_.dtype == torch.uint8
    assert flip_labels(labels, mapping="shift").tolist() == [1, 2, 6, 0]
    assert flip_labels(torch.tensor([0, 1, 2]), n_classes=3).tolist() == [2, 1, 0]
    assert flip_labels(torch.tensor([], dtype=torch.int64)).tolist() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: flip_labels(torch.tensor([10])), r"in \[0, 10\). Got range \[10, 10\]"),
        (lambda: flip_labels(torch.tensor([-1, 3])), r"Got range \[-1, 3\]"),
        (lambda: flip_labels(torch.tensor([1.0])), "integer tensor"),
        (lambda: flip_labels(torch.tensor([1]), mapping="random"), "known: reverse, shift"),
        (lambda: flip_labels(torch.tensor([1]), n_classes=1), "n_classes must be an int ≥ 2"),
    ],
)
def test_flip_labels_refuses_bad_input(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_registry_names() -> None:
    assert set(ATTACKS) == {"sign-flip", "scale", "gaussian-noise", "free-ride", "label-flip"}
    assert ATTACKS["sign-flip"] is sign_flip and ATTACKS["label-flip"] is flip_labels


def test_robust_rules_resist_boosted_sign_flips_that_hijack_fedavg() -> None:
    # Seven honest devices move the model from 0 towards +1 (with a little noise); two attackers
    # submit the honest direction reflected and boosted 10×, i.e. around −10.
    g = torch.Generator().manual_seed(0)
    glob = {"w": torch.zeros(20)}
    updates = [
        Update(f"h{i}", f"h{i}", {"w": torch.ones(20) + 0.05 * torch.randn(20, generator=g)}, 1)
        for i in range(7)
    ]
    for i in range(2):
        base = {"w": torch.ones(20)}
        updates.append(Update(f"x{i}", f"x{i}", sign_flip(base, glob, scale=10.0), 1))
    # FedAvg: (7·1 − 2·10) / 9 ≈ −1.44: the attack reverses the step.
    assert float(FedAvg().aggregate(updates).weights["w"].mean()) < -1
    for rule in (MultiKrum(f=2), ThreeSigma()):
        result = rule.aggregate(updates)
        assert result.rejected == ("x0", "x1"), rule
        assert float(result.weights["w"].mean()) == pytest.approx(1.0, abs=0.05)
