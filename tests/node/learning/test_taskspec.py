"""Task spec knobs: every example validates, every bad field is refused with its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from flnode.learning.simulation import PRESETS
from flnode.learning.taskspec import MAX_SPEC_BYTES, TaskSpecError, load_task_spec

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("task-*.toml"))


def test_examples_exist_and_validate() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "task-dpsgd-full.toml",
        "task-dpsgd-extractor.toml",
        "task-frozen.toml",
    }
    for path in EXAMPLES:
        spec = load_task_spec(path)
        cfg = spec.simulation_config()
        assert cfg.mode == spec.privacy.mode
        assert (cfg.epsilon, cfg.delta or 0.0) == (spec.privacy.epsilon, spec.privacy.delta) or (
            cfg.mode == "frozen" and spec.privacy.feature_mechanism != "gaussian"
        )


def test_unset_fields_take_the_mode_preset_and_set_fields_win() -> None:
    spec = load_task_spec(b'[privacy]\nmode = "dpsgd-full"\nclip = 0.5\n[training]\nlr = 2.0\n')
    cfg = spec.simulation_config(n_devices=3)
    preset = PRESETS["dpsgd-full"]
    assert (cfg.dp_clip, cfg.dp_lr, cfg.n_devices) == (0.5, 2.0, 3)
    assert cfg.dp_batch_size == preset["dp_batch_size"]
    assert cfg.dp_momentum == preset["dp_momentum"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[privacy]\nepsilon = -1", "privacy.epsilon: Input should be greater than 0"),
        ("[privacy]\nepsilon = inf", "privacy.epsilon: epsilon must be finite"),
        ('[privacy]\nmode = "dpsgd-full"\ndelta = 0', "needs delta > 0"),
        ('[privacy]\nmode = "frozen"\nclip = 0.1', "frozen mode runs no DP-SGD"),
        ('[privacy]\nmode = "dpsgd-full"\nfeature_share = 0.3', "only applies to mode"),
        ('[privacy]\nmode = "dpsgd-full"\nfeature_mechanism = "laplace"', "releases no features"),
        ('[privacy]\nmode = "sgd"', "privacy.mode"),
        ('[privacy]\naccountant = "moments"', "privacy.accountant"),
        ('[privacy]\nmode = "dpsgd-extractor"\nfeature_bounding = "l7"', "unknown bounding"),
        ('[model]\narch = "split-cnn"', "needs the 'dp-cnn' architecture"),
        ("[model]\nbottleneck = 0", "model: parameter 'bottleneck'"),
        ("[training]\nrounds = 0", "training.rounds"),
        ("[training]\nmomentum = 1.0", "training.momentum"),
        ("[training]\nbogus = 1", "training.bogus: unknown field"),
        ('[data]\ndataset = "cifar10"', "unknown dataset 'cifar10'"),
        ("[data]\npublic_size = -5", "data.public_size"),
        ('[aggregation]\nrule = "average"', "unknown aggregation rule 'average'"),
        ("colour = 'red'", "colour: unknown field"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(TaskSpecError, match=message):
        load_task_spec(text.encode())


def test_oversized_unreadable_and_non_utf8_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TaskSpecError, match="limit"):
        load_task_spec(b"#" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(TaskSpecError, match="cannot read"):
        load_task_spec(tmp_path / "missing.toml")
    with pytest.raises(TaskSpecError, match="not valid TOML"):
        load_task_spec(b"\xff\xfe")


def test_model_params_the_simulation_cannot_build_are_refused_not_ignored() -> None:
    spec = load_task_spec(b'[model]\narch = "dp-cnn"\nconv1_channels = 8\n')
    with pytest.raises(TaskSpecError, match="remove conv1_channels"):
        spec.simulation_config()
