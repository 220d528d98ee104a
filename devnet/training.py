"""``flnode devnet run``: publish a training task on a running devnet, follow it, report.

The driver only talks to the nodes' APIs, as a user's script would: ``task_create`` on the
manufacturer, ``round_status`` on a miner while the task runs, then ``task_get``,
``round_status``, ``reputation_get`` and ``wallet_balance`` on every node to assemble the report:
``report.json`` (everything), ``report.md`` (a summary) and ``accuracy.png`` (accuracy per round
against the manufacturer's public-only model) in the devnet directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import trio

from ..api import ApiClient
from ..api.client import ApiConnectionError
from ..rpc import RpcError
from .errors import DevnetError
from .network import Network
from .processes import is_alive, node_pid
from .supervisor import endpoint

DEFAULT_TASK_SPEC = """\
# The default task of `flnode devnet run` (and `make run`): MNIST, every device trains the whole
# model with DP-SGD at a per-sample budget of epsilon = 10 (delta = 1e-5) for the whole task.
# The manufacturer pre-trains on a small public slice for 5 epochs only, so that the gain from
# federation shows (the measured "early-stopped public model" preset, README "Privacy modes").
name = "devnet-mnist-dpsgd"

[data]
dataset = "mnist"
public_size = 500
partition = "iid"

[model]
arch = "dp-cnn"

[privacy]
mode = "dpsgd-full"
epsilon = 10.0
delta = 1e-5
clip = 0.1

[training]
rounds = 10
local_epochs = 1
lr = 4.0
momentum = 0.9
batch_size = 256
pretrain_epochs = 5

[aggregation]
rule = "three-sigma"

[round]
deadline_s = 180.0
updates_per_round = 8
min_updates = 2
eval_size = 10000
"""


def edit_spec(spec: str = DEFAULT_TASK_SPEC, **values: object) -> str:
    """``spec`` (task-spec TOML) with the line of each key in ``values`` set to that value, e.g.
    ``edit_spec(rounds=3, eval_size=2000)`` for a shorter default task. Each key must name one
    line of ``spec`` (keys are unique across its sections), else ``KeyError``."""
    lines = spec.splitlines()
    for key, value in values.items():
        matches = [i for i, line in enumerate(lines) if line.split(" = ")[0] == key]
        if len(matches) != 1:
            raise KeyError(f"{key!r} is on {len(matches)} lines of the spec, not one")
        lines[matches[0]] = tomli_w.dumps({key: value}).strip()
    return "\n".join(lines) + "\n"


REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "accuracy.png"
_POLL_S = 1.0
_CALL_TIMEOUT_S = 30.0
_CREATE_TIMEOUT_S = 600.0

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class RunResult:
    report: dict[str, Any]
    paths: tuple[Path, ...]


def _alive(network: Network, name: str) -> bool:
    return is_alive(node_pid(network, name), network.datadir(name))


def _names(network: Network, role: str) -> list[str]:
    return [n.name for n in network.nodes if role in n.roles]


async def _call(
    network: Network,
    name: str,
    method: str,
    params: Any = None,
    *,
    timeout: float = _CALL_TIMEOUT_S,
) -> Any:
    async with ApiClient.open(endpoint(network, name)) as client:
        return await client.call(method, params, timeout=timeout)


async def run_task(
    network: Network,
    spec_text: str = DEFAULT_TASK_SPEC,
    *,
    timeout_s: float = 1800.0,
    on_progress: Progress | None = None,
    committee: list[str] | None = None,
) -> RunResult:
    """Publish ``spec_text`` from the devnet's manufacturer and follow it to the end.

    ``committee``: node names of the miners that judge the task (default: every active miner)."""
    manufacturers = _names(network, "manufacturer")
    miners = _names(network, "miner")
    if not manufacturers or not miners:
        raise DevnetError(
            "a training run needs a manufacturer and at least one miner in the devnet"
        )
    progress = on_progress or (lambda _s: None)
    started = time.time()
    progress({"stage": "publishing", "detail": "pre-training on the public slice"})
    try:
        params: dict[str, Any] = {"spec": spec_text}
        if committee is not None:
            params["committee"] = [network.node(name).address for name in committee]
        created = await _call(
            network, manufacturers[0], "task_create", params, timeout=_CREATE_TIMEOUT_S
        )
    except RpcError as exc:
        raise DevnetError(f"the manufacturer could not publish the task: {exc.message}") from None
    task = int(created["task"])
    progress({"stage": "published", **created})
    status: dict[str, Any] = {}
    with trio.move_on_after(timeout_s) as waited:
        while True:
            status = await _status_from_any_miner(network, miners, task)
            progress({"stage": "running", **status})
            if status.get("finished") or status.get("closed"):
                break
            await trio.sleep(_POLL_S)
    if waited.cancelled_caught:
        raise DevnetError(
            f"task {task} did not finish within {timeout_s:g} s (round {status.get('round')} of "
            f"{status.get('rounds')}); see `flnode devnet logs` and `flnode devnet status`"
        )
    progress({"stage": "collecting", "detail": "waiting for the miners' evaluations"})
    miner_record = await _complete_miner_record(network, miners, task, int(status["rounds"]))
    report = await _assemble(network, task, created, status, miner_record, started)
    paths = write_report(network.dir, report)
    return RunResult(report, paths)


async def _status_from_any_miner(network: Network, miners: list[str], task: int) -> dict[str, Any]:
    last: Exception | None = None
    for name in miners:
        if not _alive(network, name):
            continue
        try:
            return await _call(network, name, "round_status", {"task": task})
        except (RpcError, ApiConnectionError, OSError, trio.TooSlowError) as exc:
            last = exc
    raise DevnetError(f"no miner answers round_status for task {task}: {last}")


async def _complete_miner_record(
    network: Network, miners: list[str], task: int, rounds: int
) -> dict[str, Any]:
    """A miner's round records once it has evaluated every round (or the best one after 120 s).

    The best record is the one with the most evaluated rounds that this miner also judged the
    way the ledger committed them (``agreed_with_commit``): only those carry the accepted and
    rejected devices, and a faulty miner's records do not."""

    def score(record: dict[str, Any]) -> tuple[int, int]:
        rows = [r for r in record.get("rounds", []) if r.get("accuracy") is not None]
        return sum(1 for r in rows if r.get("agreed_with_commit")), len(rows)

    best: dict[str, Any] = {}
    with trio.move_on_after(120.0):
        while True:
            for name in miners:
                if not _alive(network, name):
                    continue
                try:
                    status = await _call(network, name, "round_status", {"task": task})
                except (RpcError, ApiConnectionError, OSError, trio.TooSlowError):
                    continue
                record = status.get("records", {}).get("miner", {})
                if score(record) > score(best):
                    best = {**record, "miner": name}
                if score(best)[0] >= rounds:
                    return best
            await trio.sleep(_POLL_S)
    return best


async def _assemble(
    network: Network,
    task: int,
    created: dict[str, Any],
    status: dict[str, Any],
    miner_record: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    device_rounds: dict[str, dict[str, Any]] = {}
    for node in network.nodes:
        if not _alive(network, node.name):
            nodes[node.name] = {"alive": False, "roles": list(node.roles), "address": node.address}
            continue
        info: dict[str, Any] = {"alive": True, "roles": list(node.roles), "address": node.address}
        try:
            info["final_model"] = (await _call(network, node.name, "task_get", {"task": task}))[
                "model"
            ]
            wallet = await _call(network, node.name, "wallet_balance")
            info["owed_wei"] = int(wallet["owed"]["wei"])
            if "device" in node.roles:
                rep = await _call(network, node.name, "reputation_get")
                info["reputation"] = rep["reputation"]
                rs = await _call(network, node.name, "round_status", {"task": task})
                record = rs.get("records", {}).get("device", {})
                device_rounds[node.name] = record.get("rounds", {})
                spent = [r.get("epsilon_spent") for r in device_rounds[node.name].values()]
                info["epsilon_spent"] = max((e for e in spent if e is not None), default=0.0)
                info["rounds_submitted"] = sum(
                    1 for r in device_rounds[node.name].values() if "cid" in r
                )
                info["refused"] = next(
                    (r["refused"] for r in device_rounds[node.name].values() if "refused" in r),
                    None,
                )
        except (RpcError, ApiConnectionError, OSError, trio.TooSlowError) as exc:
            info["error"] = str(exc)
        nodes[node.name] = info
    by_address = {n.address.lower(): n.name for n in network.nodes}
    rounds = []
    previous_end = None
    for r in miner_record.get("rounds", []):
        rnd = int(r["round"])
        trains = [
            device_rounds[d][str(rnd)]
            for d in device_rounds
            if str(rnd) in device_rounds[d] and "train_s" in device_rounds[d][str(rnd)]
        ]
        opened = r.get("opened_at")
        round_s = (r["timestamp"] - opened) if opened is not None else None
        if previous_end is not None and opened is None:
            round_s = r["timestamp"] - previous_end
        previous_end = r["timestamp"]
        rounds.append(
            {
                "round": rnd + 1,
                "accuracy": r.get("accuracy"),
                "loss": r.get("loss"),
                "aggregate": r.get("aggregate"),
                "accepted": r.get("accepted"),
                "rejected": r.get("rejected"),
                "accepted_devices": [
                    by_address.get(a.lower(), a) for a in r.get("accepted_devices") or []
                ],
                "rejected_devices": [
                    by_address.get(a.lower(), a) for a in r.get("rejected_devices") or []
                ],
                "carried_forward": r.get("carried_forward"),
                "paid_wei": r.get("paid_wei"),
                "proposer": by_address.get(str(r.get("proposer", "")).lower(), r.get("proposer")),
                "block": r.get("block"),
                # One height recorded the round's last updates and committed it.
                "closed_in_one_block": r.get("block") is not None
                and r.get("block") == r.get("last_submission_block"),
                "time_s": {
                    "round": round_s,
                    "training": max((t["train_s"] for t in trains), default=None),
                    "feature_noise": max((t.get("feature_s", 0.0) for t in trains), default=None),
                    "head_training": max((t.get("head_s", 0.0) for t in trains), default=None),
                    "model_fetch": max((t.get("fetch_s", 0.0) for t in trains), default=None),
                    "update_transfer": r.get("fetch_s"),
                    "aggregation": r.get("aggregate_s"),
                    "consensus": r.get("consensus_s"),
                },
                "critical_path": critical_path(
                    r,
                    {
                        d: rounds_[str(rnd)]
                        for d, rounds_ in device_rounds.items()
                        if str(rnd) in rounds_
                    },
                ),
            }
        )
    finals = {n["final_model"] for n in nodes.values() if n.get("final_model")}
    accuracies = [r["accuracy"] for r in rounds if r["accuracy"] is not None]
    public = float(created["public_only_accuracy"])
    final = accuracies[-1] if accuracies else None
    devices = {k: v for k, v in nodes.items() if "device" in v["roles"]}
    return {
        "format": 1,
        "task": task,
        "spec_name": created.get("spec_name"),
        "mode": created.get("mode"),
        "privacy": {
            "epsilon": created.get("epsilon"),
            "delta": created.get("delta"),
            "accounting": "per-sample (DP-SGD, RDP composition over all rounds)",
        },
        "rounds_planned": status.get("rounds"),
        "public_only_accuracy": public,
        "final_accuracy": final,
        "gain_points": None if final is None else 100.0 * (final - public),
        "final_model": status.get("model"),
        "all_nodes_agree_on_final_model": len(finals) == 1,
        "rounds": rounds,
        "devices": devices,
        "nodes": nodes,
        "deposit_wei": created.get("deposit_wei"),
        "paid_wei": str(sum(int(r["paid_wei"] or 0) for r in rounds)),
        "owed_total_wei": str(sum(int(n.get("owed_wei", 0)) for n in nodes.values())),
        "evaluated_by": miner_record.get("miner"),
        "validation": (miner_record.get("rounds") or [{}])[-1].get("validation"),
        "duration_s": time.time() - started,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "torch_threads_per_training": 1,
            "nodes": len(network.nodes),
        },
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def critical_path(
    miner_round: dict[str, Any], device_rounds: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """One round's wall time split along its critical path: the device that submitted last.

    All moments are wall-clock times taken on one machine (a devnet), so they compare:

    * ``round_s``: from the miner seeing the round open to it seeing the round's commit;
    * ``train_s``: the last submitter's training (DP-SGD); ``overhead_s`` = the rest, split into
    * ``start_s``: round open → that device starts training (notice the round, fetch the model,
      set up the learner on its first round);
    * ``store_s``: its training's end → its ``submitUpdate`` sent (store the update, check that
      the round is still open);
    * ``inclusion_s``: sent → the miner sees the round closable (the transaction gossiped into
      its mempool, or a block and its import);
    * ``transfer_s``: → every update fetched (usually fetched while others still trained);
    * ``aggregation_s``: → the miner's verification and robust aggregation done;
    * ``consensus_s``: → the commit seen (proposal, votes, import of the commit block).

    ``None`` when the records lack the moments (an older node, or a round nobody submitted to).
    """
    keys = ("seen_open_at", "closable_at", "judged_at", "commit_seen_at")
    if any(miner_round.get(k) is None for k in keys):
        return None
    submitted = [
        r
        for r in device_rounds.values()
        if r.get("submitted_at") is not None and r.get("training_started_at") is not None
    ]
    if not submitted:
        return None
    last = max(submitted, key=lambda r: float(r["submitted_at"]))
    opened = float(miner_round["seen_open_at"])
    closable = float(miner_round["closable_at"])
    fetched = float(miner_round.get("fetched_at") or closable)
    judged = float(miner_round["judged_at"])
    committed = float(miner_round["commit_seen_at"])
    train_s = float(last["train_s"]) + float(last.get("head_s") or 0.0)
    trained = float(last["training_started_at"]) + train_s
    round_s = committed - opened
    return {
        "round_s": round_s,
        "train_s": train_s,
        "overhead_s": round_s - train_s,
        "start_s": float(last["training_started_at"]) - opened,
        "store_s": float(last["submitted_at"]) - trained,
        "inclusion_s": closable - float(last["submitted_at"]),
        "transfer_s": max(0.0, fetched - closable),
        "aggregation_s": judged - max(fetched, closable),
        "consensus_s": committed - judged,
        "max_train_s": max(float(r["train_s"]) for r in submitted),
        "devices": len(submitted),
    }


def write_report(directory: Path, report: dict[str, Any]) -> tuple[Path, ...]:
    """``report.json``, ``report.md`` and ``accuracy.png`` in ``directory``."""
    json_path = directory / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path = directory / REPORT_MD
    md_path.write_text(render_markdown(report), encoding="utf-8")
    png_path = directory / REPORT_PNG
    plot_accuracy(report, png_path)
    return json_path, md_path, png_path


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    gain = report["gain_points"]
    gain_text = "–" if gain is None else f"{gain:+.2f}"
    lines = [
        f"# flnode devnet run: task {report['task']} ({report.get('spec_name')})",
        "",
        f"- privacy mode **{report.get('mode')}**, per-sample ε = {report['privacy']['epsilon']}, "
        f"δ = {report['privacy']['delta']} for the whole task",
        f"- public-only model (manufacturer, before round 1): **{_pct(report['public_only_accuracy'])}**",
        f"- final global model: **{_pct(report['final_accuracy'])}** (gain {gain_text} points)",
        f"- final model CID `{report['final_model']}`; every live node agrees: "
        f"{'yes' if report['all_nodes_agree_on_final_model'] else 'NO'}",
        f"- validation: {report.get('validation')} (evaluated by {report.get('evaluated_by')})",
        f"- wall time {report['duration_s']:.0f} s; deposit {int(report['deposit_wei']) / 1e18:g}, "
        f"paid out {int(report['paid_wei']) / 1e18:g} (units of 10^18 wei)",
        "",
        "| round | accuracy | loss | accepted | rejected | round s | training s | transfer s | aggregation s | consensus s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        t = r["time_s"]
        lines.append(
            f"| {r['round']} | {_pct(r['accuracy'])} | {_s(r['loss'])} | {r['accepted']} | "
            f"{r['rejected']} | {_s(t['round'])} | {_s(t['training'])} | {_s(t['update_transfer'])} | "
            f"{_s(t['aggregation'])} | {_s(t['consensus'])} |"
        )
    lines += [
        "",
        "| device | ε spent | reputation | rewards owed | rounds submitted |",
        "|---|---|---|---|---|",
    ]
    for name, d in report["devices"].items():
        rep = d.get("reputation")
        lines.append(
            f"| {name} | {_s(d.get('epsilon_spent'))} | {'–' if rep is None else f'{rep:.3f}'} | "
            f"{d.get('owed_wei', 0) / 1e18:.4f} | {d.get('rounds_submitted', '–')} |"
        )
    lines += ["", "![accuracy per round](accuracy.png)", ""]
    return "\n".join(lines)


def plot_accuracy(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"] if r["accuracy"] is not None]
    acc = [100 * r["accuracy"] for r in report["rounds"] if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(
        [0, *rounds], [100 * report["public_only_accuracy"], *acc], marker="o", label="global model"
    )
    ax.axhline(
        100 * report["public_only_accuracy"], color="grey", linestyle="--", label="public-only"
    )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"task {report['task']}: {report.get('mode')}, ε = {report['privacy']['epsilon']} per sample"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
