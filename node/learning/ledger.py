"""The privacy ledger: what one device has spent of its privacy budget for one task.

Every release of something derived from the device's private samples (noisy features now, DP-SGD
model updates later) is recorded as a :class:`LedgerEntry` with its **per-sample** (ε, δ): the
guarantee for one sample's whole released vector, never the paper's per-feature number. The
ledger refuses a release that would exceed the budget *before* recording it, so a refused release
leaves no trace and the caller must not release anything.

Composition
    :func:`.accountant.compose`: the smaller of basic composition (Σε, Σδ) and Rényi-DP composition
    of every entry that carries a privacy curve (Laplace and Gaussian feature releases, DP-SGD
    steps), converted at the budget's δ. Entries without a curve (e.g. from a version-1 ledger)
    are added by basic composition. Every release is charged against every sample, which is
    conservative: releases over disjoint sample sets would compose in parallel, but that needs
    per-sample bookkeeping the ledger does not do.

Persistence
    The ledger is a JSON file rewritten atomically on every charge (temp file, fsync, rename,
    fsync of the directory), so a crash leaves either the old or the new ledger, never half of one.
    The charge is on disk before :meth:`PrivacyLedger.charge` returns, i.e. before any noise is
    drawn. A file that cannot be read or does not validate raises :class:`CorruptLedgerError`; it
    is never replaced by an empty ledger, because "nothing spent" is the one wrong answer that
    silently breaks the privacy guarantee.

Thread-safe within one process (a lock covers check-and-record). The node holds its data directory
lock, so no second process writes the same ledger.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import FLNodeError
from ..fsutil import write_file_atomically
from ..strictjson import loads_strict
from .accountant import Charge, Composition, Curve, EpsDelta, compose, curve_from_dict

FORMAT = "flnode-privacy-ledger"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
COMPOSITION = "rdp+basic"
"""Version 1 ledgers (basic composition, no curves) are read and rewritten as version 2."""

ReleaseKind = Literal["features", "dp-sgd"]
"""What a ledger entry released: noisy feature vectors, or DP-SGD steps on raw samples."""


class LedgerError(FLNodeError):
    """Base class of the privacy ledger's errors."""


class CorruptLedgerError(LedgerError):
    """The ledger file exists but cannot be trusted; it must be repaired by a person, not reset."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"privacy ledger {self.path} is corrupt ({self.reason}); refusing to continue, since "
            "starting from an empty ledger would forget privacy already spent. Restore it from a "
            "backup or repair it by hand"
        )


class PrivacyBudgetExceeded(LedgerError):
    """A release would push the ledger past its budget; nothing was recorded or released."""

    def __init__(
        self, task_id: str, requested: EpsDelta, spent: EpsDelta, budget: EpsDelta
    ) -> None:
        super().__init__(task_id, requested, spent, budget)
        self.task_id = task_id
        self.requested = requested
        self.spent = spent
        self.budget = budget

    def __str__(self) -> str:
        remaining = _remaining(self.spent, self.budget)
        return (
            f"privacy budget exceeded for task {self.task_id!r}: this release costs "
            f"{self.requested} per sample, but {self.spent} of the budget {self.budget} is already "
            f"spent (remaining {remaining}); nothing was released"
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One recorded release. ``epsilon``/``delta`` are per sample (the whole vector)."""

    release_id: str
    kind: ReleaseKind
    mechanism: str
    epsilon: float
    delta: float
    extractor_version: str
    n_samples: int
    timestamp: float
    note: str = ""
    curve: dict[str, Any] | None = None
    """The release's privacy curve (:meth:`.accountant.Curve.to_dict`); ``None`` = (ε, δ) only."""

    def __post_init__(self) -> None:
        for name in ("release_id", "mechanism", "extractor_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string. Got: {value!r}")
        if self.kind not in get_args(ReleaseKind):
            raise ValueError(f"kind must be one of {get_args(ReleaseKind)}. Got: {self.kind!r}")
        cost = EpsDelta(self.epsilon, self.delta)  # validates both
        if cost.epsilon == 0:
            raise ValueError("a release must cost a positive epsilon")
        object.__setattr__(self, "epsilon", cost.epsilon)
        object.__setattr__(self, "delta", cost.delta)
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int):
            raise ValueError(f"n_samples must be an integer. Got: {self.n_samples!r}")
        if self.n_samples < 0:
            raise ValueError(f"n_samples must not be negative. Got: {self.n_samples}")
        if not (isinstance(self.timestamp, int | float) and math.isfinite(self.timestamp)):
            raise ValueError(f"timestamp must be a finite number. Got: {self.timestamp!r}")
        object.__setattr__(self, "timestamp", float(self.timestamp))
        if not isinstance(self.note, str):
            raise ValueError(f"note must be a string. Got: {self.note!r}")
        if self.curve is not None:
            object.__setattr__(self, "curve", curve_from_dict(self.curve).to_dict())

    @property
    def cost(self) -> EpsDelta:
        return EpsDelta(self.epsilon, self.delta)

    @property
    def charge(self) -> Charge:
        """This entry as :func:`.accountant.compose` takes it."""
        return Charge(self.cost, None if self.curve is None else curve_from_dict(self.curve))


def _remaining(spent: EpsDelta, budget: EpsDelta) -> EpsDelta:
    return EpsDelta(max(0.0, budget.epsilon - spent.epsilon), max(0.0, budget.delta - spent.delta))


def _within(total: Composition, budget: EpsDelta) -> bool:
    # A tiny relative slack absorbs float rounding of the RDP conversion (a calibrated run is
    # meant to end exactly at the budget); basic sums are exact (fsum), so they get none.
    slack = 1e-9 * budget.epsilon if total.rule == "rdp" else 0.0
    return total.spent.epsilon <= budget.epsilon + slack and total.spent.delta <= budget.delta


class PrivacyLedger:
    """The per-sample privacy spent by one device on one task, against a fixed budget.

    Use :meth:`open` (persisted, the normal case) or :meth:`in_memory` (tests, simulations).
    """

    def __init__(
        self,
        *,
        task_id: str,
        device_id: str,
        budget: EpsDelta,
        path: Path | None,
        entries: tuple[LedgerEntry, ...] = (),
    ) -> None:
        for name, value in (("task_id", task_id), ("device_id", device_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string. Got: {value!r}")
        if budget.epsilon == 0:
            raise ValueError("a privacy budget needs a positive epsilon")
        self.task_id = task_id
        self.device_id = device_id
        self.path = path
        self._budget = budget
        self._entries: list[LedgerEntry] = list(entries)
        self._lock = threading.RLock()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def in_memory(
        cls, *, task_id: str, device_id: str, budget: EpsDelta | tuple[float, float]
    ) -> PrivacyLedger:
        """A ledger that is never written anywhere: for tests and simulations only."""
        return cls(task_id=task_id, device_id=device_id, budget=EpsDelta.of(budget), path=None)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        task_id: str,
        device_id: str,
        budget: EpsDelta | tuple[float, float] | None = None,
    ) -> PrivacyLedger:
        """Load the ledger at ``path``, or create it there (then ``budget`` is required).

        An existing ledger must belong to the same task and device, and if ``budget`` is given
        it must equal the stored one: a budget is fixed when a ledger is created, so that a
        changed setting can never quietly grant more privacy loss than was agreed.
        """
        path = Path(path)
        wanted = None if budget is None else EpsDelta.of(budget)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if wanted is None:
                raise LedgerError(
                    f"no privacy ledger at {path}; a budget is needed to create one"
                ) from None
            ledger = cls(task_id=task_id, device_id=device_id, budget=wanted, path=path)
            path.parent.mkdir(parents=True, exist_ok=True)
            ledger._save()
            return ledger
        except OSError as exc:
            raise LedgerError(f"cannot read privacy ledger {path}: {exc.strerror or exc}") from exc
        ledger = _decode(raw, path)
        if (ledger.task_id, ledger.device_id) != (task_id, device_id):
            raise LedgerError(
                f"privacy ledger {path} belongs to task {ledger.task_id!r} on device "
                f"{ledger.device_id!r}, not task {task_id!r} on device {device_id!r}"
            )
        if wanted is not None and wanted != ledger.budget:
            raise LedgerError(
                f"privacy ledger {path} was created with the budget {ledger.budget}, not "
                f"{wanted}; a ledger's budget cannot be changed"
            )
        return ledger

    # -- reading -----------------------------------------------------------------------------

    @property
    def budget(self) -> EpsDelta:
        """The total (ε, δ) per sample this device agreed to spend on this task."""
        return self._budget

    @property
    def composition(self) -> str:
        """How entries add up: ``"rdp+basic"`` (see :func:`.accountant.compose`)."""
        return COMPOSITION

    def account(self) -> Composition:
        """The composed total with the rule that gave it (basic or Rényi)."""
        with self._lock:
            return compose((e.charge for e in self._entries), self._budget.delta)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """All releases, oldest first."""
        with self._lock:
            return tuple(self._entries)

    def entry(self, release_id: str) -> LedgerEntry | None:
        """The entry recorded under ``release_id``, if any."""
        with self._lock:
            return next((e for e in self._entries if e.release_id == release_id), None)

    def spent(self) -> EpsDelta:
        """The composed (ε, δ) of all entries, per sample (:func:`.accountant.compose`)."""
        return self.account().spent

    def remaining(self) -> EpsDelta:
        """What is left of the budget (never negative)."""
        return _remaining(self.spent(), self._budget)

    def can_spend(self, epsilon: float, delta: float = 0.0, curve: Curve | None = None) -> bool:
        """Whether a release costing (ε, δ) per sample (with ``curve``, if known) fits."""
        return self._fits(Charge(EpsDelta(epsilon, delta), curve))

    def would_spend(self, charge: Charge) -> Composition:
        """The composed total if ``charge`` were recorded now (nothing is recorded)."""
        with self._lock:
            return compose([*(e.charge for e in self._entries), charge], self._budget.delta)

    def _fits(self, charge: Charge) -> bool:
        return _within(self.would_spend(charge), self._budget)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view for people and the node API: budget, spent, remaining, entries."""
        total = self.account()
        return {
            "task_id": self.task_id,
            "device_id": self.device_id,
            "budget": asdict(self._budget),
            "spent": asdict(total.spent),
            "remaining": asdict(_remaining(total.spent, self._budget)),
            "composition": total.rule,
            "basic_sum": asdict(total.basic),
            "entries": [asdict(e) for e in self.entries],
        }

    # -- writing -----------------------------------------------------------------------------

    def charge(
        self,
        *,
        kind: ReleaseKind,
        mechanism: str,
        epsilon: float,
        delta: float,
        extractor_version: str,
        n_samples: int,
        release_id: str | None = None,
        note: str = "",
        timestamp: float | None = None,
        curve: Curve | None = None,
    ) -> LedgerEntry:
        """Record a release costing (ε, δ) per sample, or raise before recording anything.

        Raises :class:`PrivacyBudgetExceeded` if the release does not fit; the ledger (in memory
        and on disk) is then unchanged. When this returns, the entry is durable on disk, and only
        then may the caller draw noise and release. ``release_id`` defaults to a fresh random id;
        it must be unique within the ledger.
        """
        entry = LedgerEntry(
            release_id=uuid.uuid4().hex if release_id is None else release_id,
            kind=kind,
            mechanism=mechanism,
            epsilon=epsilon,
            delta=delta,
            extractor_version=extractor_version,
            n_samples=n_samples,
            timestamp=time.time() if timestamp is None else timestamp,
            note=note,
            curve=None if curve is None else curve.to_dict(),
        )
        with self._lock:
            if not self._fits(entry.charge):
                raise PrivacyBudgetExceeded(self.task_id, entry.cost, self.spent(), self._budget)
            if self.entry(entry.release_id) is not None:
                raise LedgerError(f"release id {entry.release_id!r} is already in the ledger")
            self._entries.append(entry)
            try:
                self._save()
            except BaseException:
                self._entries.pop()
                raise
        return entry

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "task_id": self.task_id,
            "device_id": self.device_id,
            "composition": COMPOSITION,
            "budget": asdict(self._budget),
            "entries": [asdict(e) for e in self._entries],
        }
        data = json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
        write_file_atomically(self.path, data.encode("utf-8"), mode=0o600)

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(task_id={self.task_id!r}, device_id={self.device_id!r}, "
            f"budget=({self._budget}), spent=({self.spent()}), entries={len(self._entries)}, "
            f"path={self.path})"
        )


def _decode(raw: bytes, path: Path) -> PrivacyLedger:
    try:
        doc = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptLedgerError(path, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptLedgerError(path, "the top level is not an object")
    if doc.get("format") != FORMAT:
        raise CorruptLedgerError(path, f"format is {doc.get('format')!r}, not {FORMAT!r}")
    version = doc.get("version")
    if version not in READABLE_VERSIONS:
        raise CorruptLedgerError(path, f"unsupported version {version!r}")
    if doc.get("composition") != ("basic" if version == 1 else COMPOSITION):
        raise CorruptLedgerError(path, f"unknown composition {doc.get('composition')!r}")
    try:
        budget = doc["budget"]
        if not isinstance(budget, dict) or set(budget) != {"epsilon", "delta"}:
            raise ValueError("budget must be an object with epsilon and delta")
        raw_entries = doc["entries"]
        if not isinstance(raw_entries, list):
            raise ValueError("entries must be a list")
        entries = []
        for i, item in enumerate(raw_entries):
            if not isinstance(item, dict):
                raise ValueError(f"entry {i} is not an object")
            try:
                entries.append(LedgerEntry(**item))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"entry {i}: {exc}") from None
        ledger = PrivacyLedger(
            task_id=doc["task_id"],
            device_id=doc["device_id"],
            budget=EpsDelta(**budget),
            path=path,
            entries=tuple(entries),
        )
    except KeyError as exc:
        raise CorruptLedgerError(path, f"missing field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CorruptLedgerError(path, str(exc)) from None
    ids = [e.release_id for e in entries]
    if len(set(ids)) != len(ids):
        raise CorruptLedgerError(path, "a release id appears twice")
    total = ledger.account()
    epsilon, delta = total.spent.epsilon, total.spent.delta
    if not _within(total, ledger.budget):
        # charge() never records past the budget, so this file was edited or mixed up.
        raise CorruptLedgerError(
            path,
            f"it records ε={epsilon:g}, δ={delta:g} spent, beyond its budget {ledger.budget}",
        )
    return ledger
