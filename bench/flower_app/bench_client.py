"""The Flower ClientApp: one device's round of flnode's default task (see ``bench_task.py``).

Node config: ``partition-id`` (the shard) and ``num-partitions``, as Flower's simulation engine
sets them and as ``bench/vs_flower.py`` passes to each SuperNode; the run config's ``num-shards``,
when not 0, replaces ``num-partitions`` (smaller shards for ``--quick``). The learner
(DP-SGD engine and noise calibration) is kept per process and shard between rounds, as a flnode
device keeps it: a simulation-engine actor builds it once for each shard it serves, while
Flower's deployment engine starts a new ClientApp process for every message, so there it is
rebuilt each round. Its CPU time is reported as ``setup-cpu-s``, apart from the training's
``train-cpu-s`` (CPU time of the thread that trains).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bench_task
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flnode.learning.federated import DeviceLearner, load_weights
from flnode.learning.serialization import weights_to_bytes

app = ClientApp()
_LEARNERS: dict[tuple[int, int, int], DeviceLearner] = {}

logging.getLogger("flwr").setLevel(logging.WARNING)


def _learner(context: Context) -> tuple[DeviceLearner, Any, float]:
    conf = bench_task.run_config(context)
    index = int(context.node_config["partition-id"])
    shards = int(conf.get("num-shards", 0)) or int(context.node_config["num-partitions"])
    rounds = int(conf["num-server-rounds"])
    key = (index, shards, rounds)
    cfg = bench_task.config(shards, rounds)
    if key in _LEARNERS:
        return _LEARNERS[key], cfg, 0.0
    cpu0 = bench_task.cpu_s()
    learner = bench_task.make_learner(cfg, index)
    setup = bench_task.cpu_s() - cpu0
    _LEARNERS[key] = learner
    return learner, cfg, setup


@app.train()
def train(msg: Message, context: Context) -> Message:
    received_at = time.time()
    learner, cfg, setup_cpu_s = _learner(context)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    global_weights = weights_to_bytes(dict(arrays.to_torch_state_dict()))
    round_ = int(msg.content["config"]["server-round"]) - 1  # flnode counts rounds from 0
    new_weights, metrics = bench_task.train_metrics(learner, global_weights, round_, setup_cpu_s)
    metrics["received-at"] = received_at
    state = load_weights(cfg, new_weights)
    content = RecordDict({"arrays": ArrayRecord(dict(state)), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
