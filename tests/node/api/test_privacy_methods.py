"""The ``privacy_*`` API methods of a real node: ledgers read from the data dir, errors named."""

from __future__ import annotations

from typing import Any

import pytest

from flnode.learning.accountant import SubsampledGaussianCurve
from flnode.learning.ledger import PrivacyLedger
from flnode.rpc import RpcError


async def test_ledgers_are_visible_through_the_api(running_node: Any, connect: Any) -> None:
    async with running_node() as node, connect(node) as c:
        assert await c.call("privacy_ledgers") == {"ledgers": [], "errors": []}
        privacy = node.datadir.privacy_dir
        ledger = PrivacyLedger.open(
            privacy / "task-1.json", task_id="task-1", device_id="me", budget=(10.0, 1e-5)
        )
        curve = SubsampledGaussianCurve(0.7, 1 / 30, 30)
        ledger.charge(
            kind="dp-sgd",
            mechanism="dp-sgd",
            epsilon=curve.standalone(1e-5).epsilon,
            delta=1e-5,
            extractor_version="v1",
            n_samples=7437,
            curve=curve,
        )
        (privacy / "broken.json").write_text("{not json")

        listed = await c.call("privacy_ledgers")
        assert [s["task_id"] for s in listed["ledgers"]] == ["task-1"]
        assert listed["errors"][0]["file"] == "broken.json"
        assert "corrupt" in listed["errors"][0]["error"]

        one = await c.call("privacy_ledger", {"task_id": "task-1"})
        assert one["budget"] == {"epsilon": 10.0, "delta": 1e-5}
        assert one["spent"]["epsilon"] == pytest.approx(ledger.spent().epsilon)
        assert one["entries"][0]["curve"]["curve"] == "subsampled-gaussian"

        with pytest.raises(RpcError) as missing:
            await c.call("privacy_ledger", {"task_id": "task-2"})
        assert missing.value.code == -32602 and "no privacy ledger" in missing.value.message
        with pytest.raises(RpcError) as bad:
            await c.call("privacy_ledger", {"task_id": "../node"})
        assert bad.value.code == -32602 and "is not a task id" in bad.value.message
        with pytest.raises(RpcError) as corrupt:
            await c.call("privacy_ledger", {"task_id": "broken"})
        assert corrupt.value.code == -32000 and "corrupt" in corrupt.value.message
