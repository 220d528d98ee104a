"""The Flower ServerApp: the manufacturer's initial model, FedAvg rounds, final accuracy.

Run config (``pyproject.toml`` here): ``num-server-rounds``, ``num-clients`` (the round waits
for all of them), ``round-timeout``, ``num-shards`` and ``out-file``, where it writes a JSON
record: the wall-clock moments of the app's start, of each round's start and end (messages sent →
replies in → aggregated), every client's reply metrics (training CPU and wall time, learner setup
CPU, pid), and the final model's accuracy on the test set (flnode's evaluation: the first
``eval_size`` = 10,000 test images). Nothing is evaluated between rounds.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import bench_task
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flnode.learning.federated import evaluate_model, load_weights, publish_model
from flnode.learning.serialization import weights_to_bytes

EVAL_SIZE = 10_000

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    started_at = time.time()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    conf = bench_task.run_config(context)
    rounds = int(conf["num-server-rounds"])
    clients = int(conf["num-clients"])
    timeout = float(conf["round-timeout"])
    out = Path(str(conf["out-file"]))
    shards = int(conf.get("num-shards", 0)) or clients
    cfg = bench_task.config(shards, rounds)
    record: dict[str, Any] = {"started_at": started_at, "rounds": []}

    t0 = time.perf_counter()
    published = publish_model(cfg, EVAL_SIZE)
    record["publish_s"] = time.perf_counter() - t0
    record["public_only_accuracy"] = published.public_only_accuracy
    arrays = ArrayRecord(dict(load_weights(cfg, published.weights)))

    # Every client trains every round; no client-side evaluation rounds (flnode has none).
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=clients,
        min_available_nodes=clients,
    )
    while len(list(grid.get_node_ids())) < clients:
        time.sleep(0.2)
    record["nodes_ready_at"] = time.time()
    for rnd in range(1, rounds + 1):
        opened = time.time()
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        received = time.time()
        ok = [r for r in replies if not r.has_error()]
        metrics = [dict(next(iter(r.content.metric_records.values()))) for r in ok]
        aggregated, _ = strategy.aggregate_train(rnd, ok)
        if aggregated is None:
            raise RuntimeError(f"round {rnd}: no update to aggregate ({len(replies)} replies)")
        arrays = aggregated
        record["rounds"].append(
            {
                "round": rnd,
                "opened_at": opened,
                "replies_at": received,
                "closed_at": time.time(),
                "replies": len(ok),
                "errors": len(replies) - len(ok),
                "clients": metrics,
            }
        )
        out.write_text(json.dumps(record, indent=1))
    final = weights_to_bytes(dict(arrays.to_torch_state_dict()))
    accuracy, loss = evaluate_model(cfg, final, EVAL_SIZE)
    record["final_accuracy"] = accuracy
    record["final_loss"] = loss
    record["finished_at"] = time.time()
    out.write_text(json.dumps(record, indent=1))
