"""The fault injector's settings refuse what cannot work, naming the problem."""

from __future__ import annotations

import pytest

from flnode.devnet.chaos import KINDS, ChaosSettings


def test_defaults_use_every_kind_of_fault() -> None:
    assert ChaosSettings().kinds == KINDS == ("kill", "pause", "isolate")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kinds": ("kill", "flood")}, "chaos kinds must be among"),
        ({"kinds": ()}, "chaos kinds must be among"),
        ({"interval_s": (5.0, 1.0)}, "interval_s must be a range"),
        ({"pause_s": (0.0, 1.0)}, "pause_s must be a range"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ChaosSettings(**kwargs)  # type: ignore[arg-type]
