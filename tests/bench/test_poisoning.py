"""``bench/poisoning.py``'s command line: bad choices are refused before any devnet starts.

``python -m bench.poisoning`` runs the benchmark itself (three devnets, minutes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from bench import poisoning  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rule", "nope"], "unknown aggregation rule 'nope'; known rules:"),
        (["--attacks", "label-flip,bribe"], "unknown attack(s) bribe"),
        (["--devices", "5"], "5 attackers leave no honest device among 5"),
        (["--devices", "10"], "5 attackers need more devices for multikrum (n > 2f + 2)"),
        (["--devices", "5", "--rule", "median"], "leave no honest device"),
    ],
)
def test_bad_choices_are_refused_with_a_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        poisoning.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_rule_without_f_is_not_held_to_multikrums_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Median takes no ``f``: 10 devices with 5 attackers pass the checks that Multi-Krum fails.
    The run is stopped where the first devnet would start (minutes of work, not run here)."""
    started = []

    def first_devnet(*_args: object, **_kwargs: object) -> None:
        started.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr(poisoning.trio, "run", first_devnet)
    with pytest.raises(KeyboardInterrupt):
        poisoning.main(["--devices", "10", "--rule", "median"])
    assert started == [True]
