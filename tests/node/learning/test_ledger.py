"""The privacy ledger: arithmetic, refusal before exceeding, persistence, corruption."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

import flnode.learning.ledger as ledger_module
from flnode.errors import FLNodeError
from flnode.learning.ledger import (
    CorruptLedgerError,
    EpsDelta,
    LedgerEntry,
    LedgerError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
)


def _charge(ledger: PrivacyLedger, epsilon: float, delta: float = 0.0, **kw: Any) -> LedgerEntry:
    args: dict[str, Any] = {
        "kind": "features",
        "mechanism": "laplace+l1",
        "extractor_version": "bafkreiextractor1",
        "n_samples": 100,
    }
    args.update(kw)
    return ledger.charge(epsilon=epsilon, delta=delta, **args)


def _mem(epsilon: float = 1.0, delta: float = 0.0) -> PrivacyLedger:
    return PrivacyLedger.in_memory(task_id="task-1", device_id="dev-1", budget=(epsilon, delta))


def test_basic_composition_arithmetic() -> None:
    ledger = _mem(10.0, 1e-5)
    assert ledger.spent() == EpsDelta(0.0, 0.0)
    assert ledger.remaining() == EpsDelta(10.0, 1e-5)
    _charge(ledger, 2.5)
    _charge(ledger, 1.5, 4e-6, kind="dp-sgd", mechanism="gaussian+clip-l2(c=1.0)")
    assert ledger.spent() == EpsDelta(4.0, 4e-6)
    assert ledger.remaining().epsilon == 6.0
    assert ledger.remaining().delta == pytest.approx(6e-6)
    assert ledger.can_spend(6.0, 6e-6)
    assert not ledger.can_spend(6.0001)
    assert not ledger.can_spend(1.0, 7e-6)
    assert ledger.composition == "rdp+basic"
    assert ledger.account().rule == "basic"  # no entry has a curve
    assert [e.kind for e in ledger.entries] == ["features", "dp-sgd"]


def test_many_small_charges_fill_the_budget_exactly() -> None:
    ledger = _mem(1.0)
    for _ in range(10):
        _charge(
            ledger, 0.1
        )  # naive float summation would reach 0.9999999999999999 or 1.0000000000000002
    assert ledger.spent().epsilon == 1.0
    assert ledger.remaining().epsilon == 0.0
    assert not ledger.can_spend(1e-12)


def test_refusal_happens_before_anything_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, task_id="task-1", device_id="dev-1", budget=(3.0, 0.0))
    _charge(ledger, 2.0)
    before_entries, before_bytes = ledger.entries, path.read_bytes()
    with pytest.raises(PrivacyBudgetExceeded) as info:
        _charge(ledger, 1.5)
    exc = info.value
    assert isinstance(exc, FLNodeError)
    assert exc.requested == EpsDelta(1.5, 0.0)
    assert exc.spent == EpsDelta(2.0, 0.0)
    assert exc.budget == EpsDelta(3.0, 0.0)
    message = str(exc)
    assert "task-1" in message and "ε=1.5" in message and "ε=2" in message and "ε=3" in message
    assert "remaining ε=1" in message and "nothing was released" in message
    assert ledger.entries == before_entries
    assert ledger.spent() == EpsDelta(2.0, 0.0)
    assert path.read_bytes() == before_bytes
    _charge(ledger, 1.0)  # what does fit is still accepted
    assert ledger.remaining() == EpsDelta(0.0, 0.0)


def test_delta_is_budgeted_too() -> None:
    pure = _mem(10.0, 0.0)
    with pytest.raises(PrivacyBudgetExceeded):
        _charge(pure, 1.0, 1e-6, mechanism="gaussian+l2")
    assert pure.entries == ()


def test_entries_are_validated() -> None:
    ledger = _mem()
    for bad in (
        {"epsilon": 0.0},
        {"epsilon": -0.1},
        {"epsilon": float("nan")},
        {"epsilon": 0.1, "delta": 1.0},
        {"epsilon": 0.1, "kind": "gradients"},
        {"epsilon": 0.1, "n_samples": -1},
        {"epsilon": 0.1, "extractor_version": ""},
    ):
        with pytest.raises(ValueError):
            _charge(ledger, **bad)
    _charge(ledger, 0.1, release_id="r1")
    with pytest.raises(LedgerError, match="already in the ledger"):
        _charge(ledger, 0.1, release_id="r1")
    assert len(ledger.entries) == 1


def test_persistence_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.json"
    ledger = PrivacyLedger.open(path, task_id="task-1", device_id="dev-1", budget=(5.0, 1e-5))
    e1 = _charge(ledger, 1.25, timestamp=1000.5, note="ε=0.078125 per feature")
    e2 = _charge(ledger, 0.5, 2e-6, kind="dp-sgd", mechanism="gaussian+l2", n_samples=7)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temp files left

    doc = json.loads(path.read_text())
    assert doc["format"] == "flnode-privacy-ledger" and doc["version"] == 2
    assert doc["budget"] == {"epsilon": 5.0, "delta": 1e-5}
    assert doc["entries"][0]["epsilon"] == 1.25 and doc["entries"][0]["timestamp"] == 1000.5

    again = PrivacyLedger.open(path, task_id="task-1", device_id="dev-1")
    assert again.entries == (e1, e2)
    assert again.spent() == ledger.spent() == EpsDelta(1.75, 2e-6)
    assert again.budget == EpsDelta(5.0, 1e-5)
    assert again.entry(e1.release_id) == e1 and again.entry("nope") is None
    # Same budget given again is fine; charging continues where it left off.
    third = PrivacyLedger.open(path, task_id="task-1", device_id="dev-1", budget=(5.0, 1e-5))
    _charge(third, 3.25)
    assert PrivacyLedger.open(path, task_id="task-1", device_id="dev-1").remaining().epsilon == 0.0


def test_open_refuses_a_missing_budget_or_a_different_task_or_budget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    with pytest.raises(LedgerError, match="a budget is needed"):
        PrivacyLedger.open(path, task_id="t", device_id="d")
    assert not path.exists()
    PrivacyLedger.open(path, task_id="t", device_id="d", budget=(1.0, 0.0))
    with pytest.raises(LedgerError, match="belongs to task 't'"):
        PrivacyLedger.open(path, task_id="other", device_id="d")
    with pytest.raises(LedgerError, match="cannot be changed"):
        PrivacyLedger.open(path, task_id="t", device_id="d", budget=(2.0, 0.0))


def _valid_document(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "template.json"
    ledger = PrivacyLedger.open(path, task_id="t", device_id="d", budget=(1.0, 0.0))
    _charge(ledger, 0.5, release_id="a")
    _charge(ledger, 0.25, release_id="b")
    return json.loads(path.read_text())


def _corrupt(doc: dict[str, Any], change: str) -> bytes:
    entry = doc["entries"][0]
    if change == "nan epsilon":
        return json.dumps(doc).replace('"epsilon": 0.5', '"epsilon": NaN').encode()
    if change == "negative epsilon":
        entry["epsilon"] = -0.5
    elif change == "epsilon as text":
        entry["epsilon"] = "0.5"
    elif change == "missing field":
        del entry["n_samples"]
    elif change == "unknown field":
        entry["surprise"] = 1
    elif change == "spent beyond budget":
        entry["epsilon"] = 0.9
    elif change == "duplicate id":
        doc["entries"][1]["release_id"] = "a"
    elif change == "wrong format":
        doc["format"] = "something-else"
    elif change == "future version":
        doc["version"] = 3
    elif change == "entries not a list":
        doc["entries"] = {"a": entry}
    elif change == "budget missing":
        del doc["budget"]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "change",
    [
        "nan epsilon",
        "negative epsilon",
        "epsilon as text",
        "missing field",
        "unknown field",
        "spent beyond budget",
        "duplicate id",
        "wrong format",
        "future version",
        "entries not a list",
        "budget missing",
    ],
)
def test_corrupt_ledger_raises_and_is_left_alone(tmp_path: Path, change: str) -> None:
    data = _corrupt(_valid_document(tmp_path), change)
    path = tmp_path / "ledger.json"
    path.write_bytes(data)
    with pytest.raises(CorruptLedgerError) as info:
        PrivacyLedger.open(path, task_id="t", device_id="d", budget=(1.0, 0.0))
    assert info.value.path == path
    assert "forget privacy already spent" in str(info.value)
    assert path.read_bytes() == data  # never reset to an empty ledger


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xfe garbage", b'{"format": "flnode-privacy-led', b"[]"]
)
def test_unparseable_ledger_raises(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(data)
    with pytest.raises(CorruptLedgerError, match="is corrupt"):
        PrivacyLedger.open(path, task_id="t", device_id="d", budget=(1.0, 0.0))
    assert path.read_bytes() == data


def test_a_failed_write_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, task_id="t", device_id="d", budget=(1.0, 0.0))
    before = path.read_bytes()

    def disk_full(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ledger_module, "write_file_atomically", disk_full)
    with pytest.raises(OSError):
        _charge(ledger, 0.5)
    assert ledger.entries == () and path.read_bytes() == before


def test_concurrent_charges_never_exceed_the_budget() -> None:
    ledger = _mem(1.0)
    refused = []

    def worker() -> None:
        for _ in range(40):
            try:
                _charge(ledger, 0.01)
            except PrivacyBudgetExceeded:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.entries) == 100 and len(refused) == 100
    assert ledger.spent().epsilon == pytest.approx(1.0)
    assert ledger.spent().epsilon <= 1.0


def test_eps_delta_validation() -> None:
    assert EpsDelta.of((1, 0)) == EpsDelta(1.0, 0.0)
    assert str(EpsDelta(1.5, 1e-5)) == "ε=1.5, δ=1e-05"
    for bad in ((-1.0, 0.0), (float("inf"), 0.0), (1.0, 1.0), (1.0, -1e-9), (True, 0.0)):
        with pytest.raises(ValueError):
            EpsDelta(*bad)
    with pytest.raises(ValueError, match="positive epsilon"):
        PrivacyLedger.in_memory(task_id="t", device_id="d", budget=(0.0, 0.0))


def test_curves_persist_and_the_summary_reports_the_rdp_total(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flnode.learning.accountant import GaussianCurve

    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, task_id="t", device_id="d", budget=(5.0, 1e-5))
    for i in range(10):
        ledger.charge(
            kind="features",
            mechanism="gaussian+l2",
            epsilon=1.0,
            delta=1e-7,
            extractor_version=f"v{i}",
            n_samples=10,
            curve=GaussianCurve(4.0),
        )
    reopened = PrivacyLedger.open(path, task_id="t", device_id="d")
    summary = reopened.summary()
    assert summary["composition"] == "rdp"
    # Ten releases that basic composition would count as ε = 10 compose to well under 5.
    assert summary["basic_sum"]["epsilon"] == 10.0
    assert summary["spent"]["epsilon"] == ledger.spent().epsilon < 5.0
    assert summary["remaining"]["epsilon"] == 5.0 - summary["spent"]["epsilon"]
    assert [e["curve"] for e in summary["entries"]] == [GaussianCurve(4.0).to_dict()] * 10


def test_a_version_1_ledger_is_read_and_rewritten_as_version_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ledger.json"
    entry = {
        "release_id": "r1",
        "kind": "features",
        "mechanism": "laplace+l1",
        "epsilon": 2.0,
        "delta": 0.0,
        "extractor_version": "v1",
        "n_samples": 5,
        "timestamp": 1.0,
        "note": "",
    }
    doc = {
        "format": "flnode-privacy-ledger",
        "version": 1,
        "task_id": "t",
        "device_id": "d",
        "composition": "basic",
        "budget": {"epsilon": 5.0, "delta": 0.0},
        "entries": [entry],
    }
    path.write_text(json.dumps(doc))
    ledger = PrivacyLedger.open(path, task_id="t", device_id="d")
    assert ledger.spent() == EpsDelta(2.0, 0.0)
    ledger.charge(
        kind="features", mechanism="laplace+l1", epsilon=3.0, delta=0.0,
        extractor_version="v1", n_samples=5,
    )  # fmt: skip
    rewritten = json.loads(path.read_text())
    assert rewritten["version"] == 2 and rewritten["composition"] == "rdp+basic"
    assert PrivacyLedger.open(path, task_id="t", device_id="d").spent() == EpsDelta(5.0, 0.0)
