"""Edge offload: a device sends its released (noised) features and labels, an edge trains the head.

Protocol ``/flnode/offload/1.0.0`` (libp2p request/response, one exchange per job). The request is
a safetensors file holding ``features`` (N×d float32: already bounded and noised on the device,
and charged to its privacy ledger), ``labels`` (N int64) and the round's ``head.*`` weights, with
the task id and training settings in its metadata; raw data never leaves the device. The response
is a safetensors file of the trained ``head.*`` weights, or an empty body when the edge refuses
(malformed job, unknown task, a head that does not match the task's model) — the device then
trains the head itself. Both sides log and count the jobs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
import trio
from libp2p.peer.id import ID
from libp2p.request_response import (
    BytesCodec,
    RequestContext,
    RequestResponse,
    RequestResponseConfig,
)

from ..learning.federated import network_config, train_offloaded_head
from ..learning.offload import HeadTrainingJob
from ..learning.serialization import read_metadata, weights_from_bytes, weights_to_bytes
from ..strictjson import loads_strict
from .context import FederationContext, FederationError, run_low_priority

OFFLOAD_PROTOCOL = "/flnode/offload/1.0.0"
MAX_JOB_BYTES = 64 * 2**20
MAX_HEAD_BYTES = 16 * 2**20
OFFLOAD_TIMEOUT_S = 120.0


def _config() -> RequestResponseConfig:
    return RequestResponseConfig(
        timeout=OFFLOAD_TIMEOUT_S,
        max_request_size=MAX_JOB_BYTES,
        max_response_size=MAX_HEAD_BYTES,
        max_concurrent_inbound=2,
    )


def encode_job(task_id: int, job: HeadTrainingJob) -> bytes:
    tensors = {"features": job.features.float(), "labels": job.labels.long(), **job.head_state}
    meta = {
        "task": str(task_id),
        "release_id": job.release_id,
        "extractor_version": job.extractor_version,
        "settings": json.dumps(
            {"epochs": job.epochs, "lr": job.lr, "batch_size": job.batch_size, "seed": job.seed}
        ),
    }
    return weights_to_bytes(tensors, meta)


def decode_job(data: bytes) -> tuple[int, HeadTrainingJob]:
    """Parse a job (raises ``FederationError`` naming what is wrong)."""
    try:
        meta = read_metadata(data)
        tensors = weights_from_bytes(data)
        settings = loads_strict(meta["settings"])  # bounded nesting: json's C scanner recurses
        task_id = int(meta["task"])
        head = {k: v for k, v in tensors.items() if k.startswith("head.")}
        extra = set(tensors) - set(head) - {"features", "labels"}
        if extra:
            raise FederationError(f"unexpected tensors in an offload job: {sorted(extra)}")
        job = HeadTrainingJob(
            task_id=f"task-{task_id}",
            release_id=str(meta["release_id"]),
            extractor_version=str(meta["extractor_version"]),
            features=tensors["features"].float(),
            labels=tensors["labels"].long(),
            head_state=head,
            epochs=int(settings["epochs"]),
            lr=float(settings["lr"]),
            batch_size=int(settings["batch_size"]),
            seed=int(settings["seed"]),
        )
    except FederationError:
        raise
    except Exception as exc:
        raise FederationError(f"malformed offload job: {type(exc).__name__}: {exc}") from None
    if not 1 <= job.epochs <= 100 or not 1 <= job.batch_size <= 65_536:
        raise FederationError("offload job settings out of range (epochs 1..100, batch 1..65536)")
    return task_id, job


class EdgeRole:
    """Serves offload jobs (see the module docstring)."""

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        self.log = ctx.log.bind(role="edge")
        self.served = 0
        self.refused = 0
        self.train_s = 0.0
        self._limiter = trio.CapacityLimiter(1)

    def serve(self) -> None:
        host = self.ctx.p2p.host
        if host is None:
            raise RuntimeError("the p2p service is not running")
        RequestResponse(host).set_handler(OFFLOAD_PROTOCOL, self._handle, BytesCodec(), _config())

    async def _handle(self, request: bytes, context: RequestContext) -> bytes:
        peer = context.peer_id.to_base58()
        try:
            task_id, job = decode_job(bytes(request))
            task = await self.ctx.chain.run_sync(
                self.ctx.contract.task, self.ctx.chain.chain.call, task_id
            )
            if task is None:
                raise FederationError(f"no task {task_id} on the ledger")
            spec = await self.ctx.spec(task.spec, prefer=[task.owner])
            cfg = network_config(spec, 1)
            t0 = time.perf_counter()
            async with self._limiter:
                head = await run_low_priority(train_offloaded_head, cfg, job)
            elapsed = time.perf_counter() - t0
        except Exception as exc:
            self.refused += 1
            self.log.warning("offload job refused", peer=peer, error=str(exc)[:200])
            return b""
        self.served += 1
        self.train_s += elapsed
        self.ctx.counters.offload_jobs += 1
        self.ctx.counters.train_s += elapsed
        self.log.info(
            "offload job served",
            peer=peer,
            task=task_id,
            samples=len(job.labels),
            train_s=round(elapsed, 3),
        )
        return weights_to_bytes(head)

    def status(self) -> dict[str, Any]:
        return {"served": self.served, "refused": self.refused, "train_s": self.train_s}


class OffloadClient:
    """The device side: send a job to the configured edge, check the head that comes back."""

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        self.edge = ctx.config.federation.edge
        self.log = ctx.log.bind(role="device")
        self.sent = 0
        self.failed = 0
        self._rr: RequestResponse | None = None

    def setup(self) -> None:
        host = self.ctx.p2p.host
        if host is None:
            raise RuntimeError("the p2p service is not running")
        self._rr = RequestResponse(host)

    async def __call__(self, task_id: int, job: HeadTrainingJob) -> dict[str, torch.Tensor]:
        assert self._rr is not None
        if self.edge not in self.ctx.p2p.connected_peers():
            self.failed += 1
            raise FederationError(f"edge {self.edge[-8:]} is not connected")
        t0 = time.perf_counter()
        request = await trio.to_thread.run_sync(encode_job, task_id, job)
        try:
            response = await self._rr.send_request(
                ID.from_base58(self.edge),
                [OFFLOAD_PROTOCOL],
                request,
                BytesCodec(),
                _config(),
            )
        except Exception as exc:
            self.failed += 1
            raise FederationError(f"edge {self.edge[-8:]} did not answer: {exc}") from None
        if not response:
            self.failed += 1
            raise FederationError(f"edge {self.edge[-8:]} refused the job")
        head = weights_from_bytes(bytes(response))
        if any(not k.startswith("head.") for k in head):
            self.failed += 1
            raise FederationError("the edge answered with tensors that are not the head's")
        self.sent += 1
        self.log.info(
            "head trained by edge",
            edge=self.edge[-8:],
            task=task_id,
            bytes_out=len(request),
            seconds=round(time.perf_counter() - t0, 3),
        )
        return head
