"""Edge offload: the job's wire format, and a device offloading to an edge in a real devnet."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from flnode.federation.context import FederationError
from flnode.federation.edge import decode_job, encode_job
from flnode.learning.offload import HeadTrainingJob
from flnode.learning.serialization import weights_to_bytes


def _job() -> HeadTrainingJob:
    return HeadTrainingJob(
        task_id="task-3",
        release_id="r1",
        extractor_version="bafkreiexample",
        features=torch.randn(20, 8),
        labels=torch.randint(0, 10, (20,)),
        head_state={"head.weight": torch.randn(10, 8), "head.bias": torch.zeros(10)},
        epochs=1,
        lr=0.01,
        batch_size=8,
        seed=5,
    )


def test_a_job_survives_the_wire() -> None:
    job = _job()
    task, back = decode_job(encode_job(3, job))
    assert task == 3
    assert torch.equal(back.features, job.features) and torch.equal(back.labels, job.labels)
    assert set(back.head_state) == {"head.weight", "head.bias"}
    assert (back.epochs, back.lr, back.batch_size, back.seed) == (1, 0.01, 8, 5)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", weights_to_bytes({"features": torch.zeros(2, 2)})],
    ids=["empty", "garbage", "no metadata"],
)
def test_a_malformed_job_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(FederationError, match="offload job"):
        decode_job(data)


def test_a_job_carrying_raw_images_is_refused() -> None:
    job = _job()
    raw = weights_to_bytes(
        {
            "features": job.features,
            "labels": job.labels,
            "images": torch.zeros(20, 1, 28, 28),
            **job.head_state,
        },
        {
            "task": "3",
            "release_id": "r",
            "extractor_version": "v",
            "settings": json.dumps({"epochs": 1, "lr": 0.1, "batch_size": 8, "seed": 1}),
        },
    )
    with pytest.raises(FederationError, match="unexpected tensors"):
        decode_job(raw)


SPEC = """\
name = "test-offload"
[data]
public_size = 300
[privacy]
mode = "dpsgd-extractor"
epsilon = 10.0
delta = 1e-5
[training]
rounds = 1
pretrain_epochs = 2
[round]
deadline_s = 60.0
updates_per_round = 2
min_updates = 1
eval_size = 1000
"""

LAYOUT = """\
miners = 1
devices = 2
edges = 1
manufacturers = 1

[config.federation]
shard_count = 40
"""


@pytest.mark.timeout(600)
def test_a_device_offloads_head_training_to_its_edge(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    d = tmp_path / "devnet"
    (tmp_path / "layout.toml").write_text(LAYOUT, encoding="utf-8")
    (tmp_path / "task.toml").write_text(SPEC, encoding="utf-8")

    def flnode(*args: str, timeout: float = 500) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flnode_exe, *args], capture_output=True, text=True, env=clean_env, timeout=timeout
        )

    try:
        up = flnode("devnet", "up", "--dir", str(d), "--layout", str(tmp_path / "layout.toml"))
        assert up.returncode == 0, up.stderr[-3000:]
        run = flnode("devnet", "run", "--dir", str(d), "--spec", str(tmp_path / "task.toml"))
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads((d / "report.json").read_text())
        assert len(report["rounds"]) == 1
        # devnet gives the first two devices the edge: both offloaded, the edge served both,
        # and both updates were judged.
        edge = json.loads(
            flnode(
                "console", "--datadir", str(d / "nodes" / "edge-0"), "--exec", "federation_status"
            ).stdout
        )
        assert edge["edge"]["served"] == 2, edge
        assert edge["edge"]["refused"] == 0
        for device in ("device-0", "device-1"):
            status = json.loads(
                flnode(
                    "console",
                    "--datadir",
                    str(d / "nodes" / device),
                    "--exec",
                    "round_status task=1",
                ).stdout
            )
            entry = status["records"]["device"]["rounds"]["0"]
            assert entry["offloaded"] is True, entry
            assert entry["feature_s"] > 0 and entry["head_s"] > 0
        r = report["rounds"][0]
        assert sorted(r["accepted_devices"] + r["rejected_devices"]) == ["device-0", "device-1"]
    finally:
        flnode("devnet", "down", "--dir", str(d), "--grace", "3", timeout=120)
