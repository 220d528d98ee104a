"""What the Flower app shares with flnode's devnet: task spec, partition, local training.

The task is ``flnode devnet run``'s default (:data:`flnode.devnet.training.DEFAULT_TASK_SPEC`:
MNIST, the ``dp-cnn`` model, IID partition after a 500-image public slice, one local epoch of
DP-SGD per round at a per-sample budget of epsilon = 10, delta = 1e-5 for the whole task) with the
aggregation rule set to ``fedavg`` (Flower's FedAvg is the same rule; see
``bench/aggregation_vs_flower.py``). The initial model is the manufacturer's: pre-trained on the
public slice (:func:`flnode.learning.federated.publish_model`). A client with partition id ``i``
of ``n`` trains shard ``i`` of ``n``, as devnet device ``i`` does, with flnode's
:class:`~flnode.learning.federated.DeviceLearner` (same DP-SGD, same noise calibration, an
in-memory privacy ledger).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from flnode.devnet.training import edit_spec
from flnode.learning.federated import (
    DeviceLearner,
    device_shard,
    network_config,
)
from flnode.learning.simulation import SimulationConfig
from flnode.learning.taskspec import load_task_spec


def task_spec(clients: int, rounds: int, rule: str = "fedavg") -> str:
    """The default devnet task with ``rounds`` rounds, each closing when all clients are in."""
    return edit_spec(
        rounds=rounds, updates_per_round=clients, min_updates=min(2, clients), rule=rule
    )


def config(shards: int, rounds: int) -> SimulationConfig:
    """The learning settings every client (and the devnet's devices) derive from the spec."""
    return network_config(load_task_spec(task_spec(shards, rounds).encode()), shards)


def make_learner(cfg: SimulationConfig, index: int) -> DeviceLearner:
    """A device's learner, as the devnet device builds it (seeded by its shard index)."""
    return DeviceLearner(
        dataclasses.replace(cfg),
        device_shard(cfg, index),
        ledger_path=None,
        task_id="flower-bench",
        device_id=f"device-{index}",
        seed=index,
    )


RUN_CONFIG_ENV = "FLNODE_BENCH_RUN_CONFIG"


def run_config(context: Any) -> dict[str, Any]:
    """The run config: ``pyproject.toml``'s (as ``flwr run`` passes it) over the JSON in
    ``$FLNODE_BENCH_RUN_CONFIG`` (Flower's ``run_simulation`` passes none)."""
    base = json.loads(os.environ.get(RUN_CONFIG_ENV) or "{}")
    return {**base, **dict(context.run_config)}


def cpu_s() -> float:
    """CPU time (user + system) of this whole process so far."""
    return time.process_time()


def train_metrics(
    learner: DeviceLearner, weights: bytes, round_: int, setup_cpu_s: float
) -> tuple[bytes, dict[str, Any]]:
    """Train one round; the new weights and what it cost (for the reply's MetricRecord)."""
    started_at = time.time()
    cpu0, thread0 = cpu_s(), time.thread_time()
    update = learner.train_round(weights, round_)
    cpu1, thread1 = cpu_s(), time.thread_time()
    return update.weights, {
        "num-examples": update.n_samples,
        # torch trains on the calling thread (the learner sets one torch thread)
        "train-cpu-s": thread1 - thread0,
        "train-process-cpu-s": cpu1 - cpu0,
        "train-wall-s": time.time() - started_at,
        "train-started-at": started_at,
        "setup-cpu-s": setup_cpu_s,
        "pid": os.getpid(),
        "epsilon-spent": update.epsilon_spent,
    }
