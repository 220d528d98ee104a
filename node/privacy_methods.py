"""The ``privacy`` API namespace: a device's privacy ledgers, as people and auditors read them.

A device keeps one :class:`~flnode.learning.ledger.PrivacyLedger` per task in
``<datadir>/privacy/<task id>.json``. These methods read them from disk on every call (a ledger is
small, and reading the file means the answer is what a crash would leave, not a cached copy); a
file that does not validate is reported as corrupt, never shown as an empty ledger.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio
from pydantic import Field

from .learning.ledger import CorruptLedgerError, LedgerError, PrivacyLedger
from .rpc import INVALID_PARAMS, SERVER_ERROR, NoParams, Params, RpcError, RpcMethod, StaticProvider

_TASK_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class LedgerParams(Params):
    task_id: str = Field(description="The task whose ledger to show.")


def _read(path: Path) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        task_id, device_id = doc["task_id"], doc["device_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptLedgerError(path, f"unreadable: {exc}") from None
    return PrivacyLedger.open(path, task_id=task_id, device_id=device_id).summary()


def privacy_provider(privacy_dir: Path) -> StaticProvider:
    """The ``privacy_*`` methods over the ledgers in ``privacy_dir``."""

    async def privacy_ledgers(params: NoParams) -> dict[str, Any]:
        def scan() -> dict[str, Any]:
            ledgers, errors = [], []
            for path in sorted(privacy_dir.glob("*.json")) if privacy_dir.is_dir() else []:
                try:
                    ledgers.append(_read(path))
                except LedgerError as exc:
                    errors.append({"file": path.name, "error": str(exc)})
            return {"ledgers": ledgers, "errors": errors}

        return await trio.to_thread.run_sync(scan)

    async def privacy_ledger(params: LedgerParams) -> dict[str, Any]:
        if not _TASK_ID.match(params.task_id):
            raise RpcError(INVALID_PARAMS, f"task_id {params.task_id!r} is not a task id")
        path = privacy_dir / f"{params.task_id}.json"
        if not path.exists():
            raise RpcError(
                INVALID_PARAMS,
                f"no privacy ledger for task {params.task_id!r} on this node "
                "(privacy_ledgers lists the tasks it has released data for)",
            )
        try:
            return await trio.to_thread.run_sync(_read, path)
        except LedgerError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None

    return StaticProvider(
        "privacy",
        (
            RpcMethod(
                "privacy_ledgers",
                privacy_ledgers,
                "Every task's privacy ledger on this node: budget, spent, remaining, entries.",
                result="{ledgers: [...], errors: [{file, error}]}",
            ),
            RpcMethod(
                "privacy_ledger",
                privacy_ledger,
                "One task's privacy ledger: per-sample budget, spent (composed), remaining.",
                LedgerParams,
                result="the ledger summary",
            ),
        ),
    )
