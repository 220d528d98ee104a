"""Feature releases (explicit ε convention) and the noise-once cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flnode.learning.bounding import L1Normalize, MinMax
from flnode.learning.ledger import EpsDelta, PrivacyBudgetExceeded, PrivacyLedger
from flnode.learning.mechanisms import GaussianMechanism, LaplaceMechanism, noise_generator
from flnode.learning.privacy import (
    FeatureCacheError,
    FeatureRelease,
    NoisyFeatureCache,
    per_feature_epsilon,
    per_sample_epsilon,
    sample_ids_key,
)

D = 8

# -- accounting conventions -------------------------------------------------------------------


def test_per_feature_and_per_sample_conversions() -> None:
    assert per_sample_epsilon(0.1, 1024) == pytest.approx(102.4)
    assert per_feature_epsilon(102.4, 1024) == pytest.approx(0.1)
    for eps, d in [(10.0, 8), (0.5, 64), (3.0, 1)]:
        assert per_feature_epsilon(per_sample_epsilon(eps, d), d) == pytest.approx(eps)
    with pytest.raises(ValueError):
        per_sample_epsilon(1.0, 0)


def test_paper_convention_gives_the_papers_noise_but_charges_d_times_more() -> None:
    # Paper: minmax bounding, Δ = 1 per coordinate, ε = 0.1 per feature → b = 1/ε = 10 per coordinate.
    paper = FeatureRelease.create(
        mechanism="laplace", epsilon=0.1, accounting="per-feature", bounding="minmax", dim=16
    )
    assert paper.mechanism.scale == pytest.approx(10.0)
    assert paper.per_sample_epsilon == pytest.approx(1.6)
    assert paper.per_feature_epsilon == pytest.approx(0.1)
    assert paper.cost == EpsDelta(paper.per_sample_epsilon, 0.0)
    # The same noise stated honestly: ε = 1.6 per sample at L1 sensitivity d = 16.
    honest = FeatureRelease.create(
        mechanism="laplace", epsilon=1.6, accounting="per-sample", bounding="minmax", dim=16
    )
    assert honest.mechanism.scale == pytest.approx(paper.mechanism.scale)
    assert "ε=1.6 per sample" in honest.label and "ε=0.1 per feature" in honest.label
    assert "stated as ε=0.1 per feature" in paper.label


def test_per_sample_releases_use_the_bounding_sensitivity() -> None:
    lap = FeatureRelease.create(
        mechanism="laplace", epsilon=10.0, accounting="per-sample", bounding="l1", dim=D
    )
    assert lap.mechanism.scale == pytest.approx(0.2)  # 2 / 10
    assert lap.mechanism_label == "laplace+l1"
    gauss = FeatureRelease.create(
        mechanism="gaussian",
        epsilon=1.0,
        delta=1e-5,
        accounting="per-sample",
        bounding="clip-l2",
        clip=0.5,
        dim=D,
    )
    assert isinstance(gauss.mechanism, GaussianMechanism)
    assert gauss.mechanism.l2_sensitivity == 1.0
    assert gauss.cost == EpsDelta(1.0, 1e-5)
    assert gauss.mechanism_label == "gaussian+clip-l2(c=0.5)"


def test_ambiguous_or_unsound_releases_are_refused() -> None:
    with pytest.raises(ValueError, match="only defined for the Laplace"):
        FeatureRelease.create(
            mechanism="gaussian",
            epsilon=1,
            delta=1e-5,
            accounting="per-feature",
            bounding="l2",
            dim=D,
        )
    with pytest.raises(ValueError, match="needs a delta"):
        FeatureRelease.create(
            mechanism="gaussian", epsilon=1, accounting="per-sample", bounding="l2", dim=D
        )
    with pytest.raises(ValueError, match="no delta"):
        FeatureRelease.create(
            mechanism="laplace",
            epsilon=1,
            delta=1e-5,
            accounting="per-sample",
            bounding="l1",
            dim=D,
        )
    with pytest.raises(ValueError, match="accounting"):
        FeatureRelease.create(
            mechanism="laplace", epsilon=1, accounting="per-vector", bounding="l1", dim=D
        )  # type: ignore[arg-type]
    # Built by hand: noise calibrated for a smaller sensitivity than the bounding has.
    with pytest.raises(ValueError, match="sensitivity"):
        FeatureRelease(MinMax(), LaplaceMechanism(1.0, 2.0), D, "per-sample", 1.0)
    # Built by hand: the stated number does not match the mechanism in that convention.
    with pytest.raises(ValueError, match="per sample"):
        FeatureRelease(MinMax(), LaplaceMechanism(1.0, D), D, "per-feature", 1.0)
    FeatureRelease(MinMax(), LaplaceMechanism(D * 1.0, D), D, "per-feature", 1.0)


def test_apply_bounds_then_noises_and_checks_the_dimension() -> None:
    release = FeatureRelease.create(
        mechanism="laplace", epsilon=1000.0, accounting="per-sample", bounding=L1Normalize(), dim=D
    )
    z = torch.randn(50, D) * 30
    out = release.apply(z, noise_generator(0))
    torch.testing.assert_close(out, L1Normalize().apply(z), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        release.apply(torch.randn(5, D + 1), noise_generator(0))


# -- the noise-once cache ---------------------------------------------------------------------


class Extractor:
    """Stands in for a frozen extractor over a private data set; counts how often it runs."""

    def __init__(self, n: int = 200, seed: int = 0) -> None:
        self.z = torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 3
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.z.clone()


RELEASE = FeatureRelease.create(
    mechanism="laplace", epsilon=2.0, accounting="per-sample", bounding="l1", dim=D
)


def _ledger(tmp_path: Path, budget: float = 5.0) -> PrivacyLedger:
    return PrivacyLedger.open(
        tmp_path / "ledger.json", task_id="task-1", device_id="dev-1", budget=(budget, 0.0)
    )


def _get(
    cache: NoisyFeatureCache, ledger: PrivacyLedger, fn: Extractor, **kw: object
) -> torch.Tensor:
    args: dict[str, object] = {
        "extractor_version": "extractor-v1",
        "dataset_key": "private-shard",
        "release": RELEASE,
        "generator": noise_generator(1),
    }
    args.update(kw)
    return cache.get_or_release(features_fn=fn, ledger=ledger, **args)  # type: ignore[arg-type]


def test_second_call_returns_the_same_noisy_tensor_without_a_new_charge(tmp_path: Path) -> None:
    ledger, cache, fn = _ledger(tmp_path), NoisyFeatureCache(), Extractor()
    first = _get(cache, ledger, fn)
    assert fn.calls == 1 and len(ledger.entries) == 1
    entry = ledger.entries[0]
    assert (entry.kind, entry.mechanism, entry.extractor_version) == (
        "features",
        "laplace+l1",
        "extractor-v1",
    )
    assert (entry.epsilon, entry.delta, entry.n_samples) == (2.0, 0.0, 200)
    assert "ε=2 per sample" in entry.note and "private-shard" in entry.note

    for _ in range(3):  # epochs, rounds: post-processing of one release
        again = _get(cache, ledger, fn, generator=noise_generator(99))
        assert torch.equal(again, first)
    assert fn.calls == 1 and len(ledger.entries) == 1 and ledger.spent().epsilon == 2.0
    # A caller modifying its copy in place does not change what the next caller gets.
    again.zero_()
    assert torch.equal(_get(cache, ledger, fn), first)


def test_the_released_tensor_is_bounded_features_plus_noise_of_the_right_scale(
    tmp_path: Path,
) -> None:
    ledger, fn = _ledger(tmp_path, budget=100.0), Extractor(n=5000)
    release = FeatureRelease.create(
        mechanism="laplace", epsilon=50.0, accounting="per-sample", bounding="l1", dim=D
    )
    noisy = _get(NoisyFeatureCache(), ledger, fn, release=release)
    noise = noisy - L1Normalize().apply(fn.z)
    assert noise.abs().mean().item() == pytest.approx(release.mechanism.scale, rel=0.05)


def test_a_new_extractor_version_is_a_new_release_and_costs_again(tmp_path: Path) -> None:
    ledger, cache, fn = _ledger(tmp_path, budget=10.0), NoisyFeatureCache(), Extractor()
    v1 = _get(cache, ledger, fn)
    v2 = _get(cache, ledger, fn, extractor_version="extractor-v2", generator=noise_generator(2))
    assert fn.calls == 2 and not torch.equal(v1, v2)
    assert [e.extractor_version for e in ledger.entries] == ["extractor-v1", "extractor-v2"]
    assert ledger.spent().epsilon == 4.0
    # Another data set, or the same data released with other parameters, is a release of its own.
    _get(cache, ledger, fn, dataset_key=sample_ids_key([1, 2, 3]))
    cheaper = FeatureRelease.create(
        mechanism="laplace", epsilon=0.5, accounting="per-sample", bounding="l1", dim=D
    )
    _get(cache, ledger, fn, release=cheaper)
    assert [e.epsilon for e in ledger.entries] == [2.0, 2.0, 2.0, 0.5]
    assert fn.calls == 4
    # And each of them is served from the cache from then on.
    _get(cache, ledger, fn, release=cheaper)
    _get(cache, ledger, fn, extractor_version="extractor-v2")
    assert fn.calls == 4 and ledger.spent().epsilon == 6.5


def test_over_budget_is_refused_before_features_are_computed_or_noised(tmp_path: Path) -> None:
    ledger, cache, fn = _ledger(tmp_path, budget=3.0), NoisyFeatureCache(), Extractor()
    _get(cache, ledger, fn)
    before = ledger.entries
    with pytest.raises(PrivacyBudgetExceeded) as info:
        _get(cache, ledger, fn, extractor_version="extractor-v2")
    assert info.value.requested == EpsDelta(2.0, 0.0) and info.value.spent == EpsDelta(2.0, 0.0)
    assert fn.calls == 1 and ledger.entries == before
    # The release that was paid for is still served.
    _get(cache, ledger, fn)
    assert fn.calls == 1


def test_a_restarted_device_reuses_its_noise_from_disk(tmp_path: Path) -> None:
    cache_dir = tmp_path / "noisy"
    first = _get(NoisyFeatureCache(cache_dir), _ledger(tmp_path), Extractor())
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"

    # "Restart": a new cache object, the ledger reopened from its file.
    ledger, fn = _ledger(tmp_path), Extractor()
    again = _get(NoisyFeatureCache(cache_dir), ledger, fn, generator=noise_generator(42))
    assert torch.equal(again, first)
    assert fn.calls == 0 and len(ledger.entries) == 1


def test_cached_features_without_a_ledger_entry_are_refused(tmp_path: Path) -> None:
    cache_dir = tmp_path / "noisy"
    _get(NoisyFeatureCache(cache_dir), _ledger(tmp_path), Extractor())
    # A fresh ledger for the same task and device (the old one lost or replaced).
    fresh = PrivacyLedger.in_memory(task_id="task-1", device_id="dev-1", budget=(5.0, 0.0))
    with pytest.raises(FeatureCacheError, match="holds no matching entry"):
        _get(NoisyFeatureCache(cache_dir), fresh, Extractor())
    assert fresh.entries == ()
    # The same holds for the in-memory cache.
    cache = NoisyFeatureCache()
    _get(cache, _ledger(tmp_path / "other"), Extractor())
    with pytest.raises(FeatureCacheError):
        _get(cache, fresh, Extractor())


def test_a_corrupt_or_mismatched_cache_file_raises(tmp_path: Path) -> None:
    cache_dir = tmp_path / "noisy"
    _get(NoisyFeatureCache(cache_dir), _ledger(tmp_path), Extractor())
    (path,) = cache_dir.iterdir()
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(FeatureCacheError, match="cannot be read"):
        _get(NoisyFeatureCache(cache_dir), _ledger(tmp_path), Extractor())

    # A file renamed onto another release's name: its metadata gives it away.
    other = NoisyFeatureCache(cache_dir)
    _get(other, _ledger(tmp_path), Extractor(), dataset_key="shard-2")
    path.unlink()
    (other_path,) = cache_dir.iterdir()
    other_path.rename(path)
    with pytest.raises(FeatureCacheError, match="dataset_key is 'shard-2'"):
        _get(NoisyFeatureCache(cache_dir), _ledger(tmp_path), Extractor())


def test_tasks_and_devices_do_not_share_cached_noise(tmp_path: Path) -> None:
    cache = NoisyFeatureCache(tmp_path / "noisy")
    a = _get(cache, _ledger(tmp_path / "a"), Extractor())
    other_task = PrivacyLedger.open(
        tmp_path / "b" / "ledger.json", task_id="task-2", device_id="dev-1", budget=(5.0, 0.0)
    )
    b = _get(cache, other_task, Extractor(), generator=noise_generator(2))
    assert not torch.equal(a, b) and len(other_task.entries) == 1
    assert len(list((tmp_path / "noisy").iterdir())) == 2


def test_sample_ids_key_is_stable_and_order_sensitive() -> None:
    assert sample_ids_key([1, 2, 3]) == sample_ids_key(torch.tensor([1, 2, 3]))
    assert sample_ids_key([1, 2, 3]) != sample_ids_key([3, 2, 1])
    assert sample_ids_key([1, 2, 3]).startswith("ids-sha256:")
