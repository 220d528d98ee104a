"""Federated training end to end with real node processes (`flnode devnet run`).

One devnet, every fault at once, so that the suite pays for one network:

* 5 miners, one of which proposes wrong aggregates (``federation.fault = "wrong-aggregate"``);
* 5 devices on small shards: 3 honest, one that scales its updates ×10 (``fault = "scale"``), and
  one that agreed to a smaller privacy budget than the task asks (``epsilon_cap``);
* device-0 is killed with SIGKILL while round 2 is open and restarted after that round closed.

The test then reads what a user would: the report of ``devnet run`` and the nodes' APIs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

SPEC = """\
name = "test-devnet-training"
[data]
public_size = 300
[privacy]
mode = "dpsgd-full"
epsilon = 10.0
delta = 1e-5
clip = 0.1
[training]
rounds = 3
lr = 4.0
momentum = 0.9
batch_size = 256
pretrain_epochs = 3
[aggregation]
rule = "three-sigma"
[round]
deadline_s = 90.0
updates_per_round = 5
min_updates = 2
eval_size = 2000
"""

LAYOUT = """\
miners = 4
devices = 3
manufacturers = 1

[config.federation]
shard_count = 40        # ~1,500 images per device: quick DP-SGD rounds

[[node]]
name = "bad-miner"
roles = ["miner"]
config = { federation = { fault = "wrong-aggregate" } }

[[node]]
name = "poisoner"
roles = ["device"]
config = { federation = { fault = "scale" } }

[[node]]
name = "capped"
roles = ["device"]
config = { federation = { epsilon_cap = 8.0 } }
"""

pytestmark = pytest.mark.timeout(900)


def _flnode(exe: list[str], env: dict[str, str], *args: str, timeout: float = 300):  # type: ignore[no-untyped-def]
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _console(exe: list[str], env: dict[str, str], d: Path, node: str, command: str) -> Any:
    done = _flnode(
        exe, env, "console", "--datadir", str(d / "nodes" / node), "--exec", command, timeout=60
    )
    assert done.returncode == 0, f"{node}: {command}: {done.stderr}"
    return json.loads(done.stdout)


def _log_events(d: Path, node: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in (d / "logs" / f"{node}.log").read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


@pytest.fixture
def devnet(tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]):  # type: ignore[no-untyped-def]
    d = tmp_path / "devnet"
    layout = tmp_path / "layout.toml"
    layout.write_text(LAYOUT, encoding="utf-8")
    up = _flnode(flnode_exe, clean_env, "devnet", "up", "--dir", str(d), "--layout", str(layout))
    assert up.returncode == 0, up.stderr[-3000:]
    yield d
    _flnode(flnode_exe, clean_env, "devnet", "down", "--dir", str(d), "--grace", "3")


def test_training_survives_poisoning_a_wrong_miner_a_killed_device_and_a_budget_cap(
    devnet: Path, tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    d = devnet
    spec = tmp_path / "task.toml"
    spec.write_text(SPEC, encoding="utf-8")
    run = subprocess.Popen(
        [*flnode_exe, "devnet", "run", "--dir", str(d), "--spec", str(spec), "--timeout", "700"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env,
    )
    try:
        # Kill device-0 while round 2 (index 1) is open, once it has submitted round 1.
        deadline = time.monotonic() + 600
        while True:
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "round 2 never opened"
            status = _try_status(flnode_exe, clean_env, d)
            if status is not None and status["round"] >= 1:
                break
            time.sleep(2)
        pid = int((d / "run" / "device-0.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed_in_round = status["round"]
        # The round closes on its deadline without device-0 ...
        while _try_status(flnode_exe, clean_env, d)["round"] == killed_in_round:
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the round with a dead device never closed"
            time.sleep(2)
        # ... and device-0 comes back and takes part again.
        restarted = _flnode(flnode_exe, clean_env, "devnet", "restart", "--dir", str(d), "device-0")
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        _out, err = run.communicate(timeout=700)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-4000:]
    report = json.loads((d / "report.json").read_text())
    assert (d / "report.md").exists() and (d / "accuracy.png").stat().st_size > 1000

    # Every round committed, every live node holds the same final model, and it learned.
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert report["all_nodes_agree_on_final_model"], report["nodes"]
    assert report["final_accuracy"] > report["public_only_accuracy"]

    addresses = {name: node["address"].lower() for name, node in report["nodes"].items()}
    poisoner, capped = addresses["poisoner"], addresses["capped"]
    rounds = report["rounds"]
    # The scaled updates were rejected by the robust rule whenever they were judged.
    for r in rounds:
        assert "poisoner" not in r["accepted_devices"], r
    assert any("poisoner" in r["rejected_devices"] for r in rounds), rounds
    # ... so the poisoner's reputation fell below every honest device's, and it earned less.
    devices = report["devices"]
    honest = ["device-1", "device-2"]
    for name in honest:
        assert devices["poisoner"]["reputation"] < devices[name]["reputation"]
        assert devices["poisoner"]["owed_wei"] < devices[name]["owed_wei"]

    # The capped device trained until its own budget stopped it, and said why.
    assert devices["capped"]["refused"] and "privacy budget" in devices["capped"]["refused"]
    assert devices["capped"]["epsilon_spent"] <= 8.0
    assert _log_events(d, "capped", "refusing to train: privacy budget would be exceeded")
    # Every device stayed within the task's per-sample budget.
    assert all(dev["epsilon_spent"] <= 10.0 for dev in devices.values() if "epsilon_spent" in dev)

    # device-0: killed mid-task, the round closed anyway (on its deadline or with the others'
    # updates), it resumed at a later round, and its earlier submission is still on the ledger.
    assert devices["device-0"]["alive"]
    assert "device-0" in rounds[0]["accepted_devices"] + rounds[0]["rejected_devices"]
    device0 = _console(flnode_exe, clean_env, d, "device-0", "round_status task=1")
    submitted = {int(r) for r, e in device0["records"]["device"]["rounds"].items() if "cid" in e}
    assert 0 in submitted
    assert any(r > killed_in_round for r in submitted), submitted

    # The ledger: every committed round is an event, rewards credited add up to what was paid.
    assert len(device0["committed"]) == 3
    assert int(report["owed_total_wei"]) == int(report["paid_wei"]) > 0
    assert int(report["paid_wei"]) <= int(report["deposit_wei"])

    # The faulty miner never got a wrong aggregate committed: every honest miner agreed with
    # every committed round, and whenever the faulty one proposed, honest miners refused it.
    # A refusal takes one of two paths, and which one is a matter of timing: an honest miner
    # that already holds a lower credential for that consensus round rejects the block as
    # "not-leader" before any application check; otherwise it recomputes the round and refuses
    # the aggregate. (The slow test_task_committee.py forces the second path.)
    for miner in ("miner-0", "miner-1", "miner-2", "miner-3"):
        record = _console(flnode_exe, clean_env, d, miner, "round_status task=1")["records"][
            "miner"
        ]
        assert all(r["agreed_with_commit"] for r in record["rounds"]), (miner, record)
    proposals = _log_events(d, "bad-miner", "proposing round commit")
    committed = {r["aggregate"] for r in rounds}
    assert all(p["aggregate"] not in committed for p in proposals)
    # Only a block the faulty miner still led when it was built goes out ("proposal sent").
    sent = {(e["height"], e["round"]) for e in _log_events(d, "bad-miner", "proposal sent")}
    if any((p["height"], p["consensus_round"]) in sent for p in proposals):
        bad_miner = addresses["bad-miner"]
        refusals = {
            m: len(_log_events(d, m, "proposed aggregate differs from mine"))
            + len(_log_events(d, m, "proposed commit judges the updates differently"))
            + sum(
                e.get("reason") == "not-leader" and bad_miner in e.get("detail", "").lower()
                for e in _log_events(d, m, "consensus message rejected")
            )
            for m in ("miner-0", "miner-1", "miner-2", "miner-3")
        }
        assert sum(refusals.values()) > 0, (
            f"bad-miner proposed {len(proposals)} commits and no honest miner refused one: "
            f"{refusals}"
        )
    assert poisoner and capped  # addresses resolved from the devnet file


def _try_status(exe: list[str], env: dict[str, str], d: Path) -> dict[str, Any] | None:
    done = _flnode(
        exe,
        env,
        "console",
        "--datadir",
        str(d / "nodes" / "miner-0"),
        "--exec",
        "round_status task=1",
        timeout=60,
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)
