"""flnode against Flower 1.42: the same federated task on three engines, on this machine, in one run.

Run (needs the ``bench`` extra: ``pip install -e '.[bench]'``, which brings ``flwr[simulation]``
1.42.0 with ray)::

    python -m bench.vs_flower                 # 10 clients, 10 rounds (~15-20 min on 2 quiet cores)
    python -m bench.vs_flower --quick         # 2 clients, 1 round, 20 shards (a few minutes)
    python -m bench.vs_flower --clients 10 --rounds 5 --engines flnode deployment

The task is flnode's default devnet task (``flnode devnet run``: MNIST, the ``dp-cnn`` model,
IID partition after a 500-image public slice, 1 local epoch of DP-SGD per round at per-sample
epsilon = 10, delta = 1e-5 for the whole task, the initial model pre-trained on the public slice)
with the FedAvg rule, ``--clients`` clients each holding one of ``--shards`` shards (default: one
per client, 10 x 5,950 images), ``--rounds`` rounds, every client in every round. It runs on:

* ``deployment``: Flower's deployment engine on loopback: ``flower-superlink --insecure
  --disable-runtime-dependency-installation``, one ``flower-supernode`` per client (node config
  ``partition-id``/``num-partitions``), and ``flwr run bench/flower_app`` (the ServerApp and
  ClientApp in ``bench/flower_app/``, whose clients train with flnode's own
  :class:`~flnode.learning.federated.DeviceLearner`, so the training is identical);
* ``simulation``: Flower's simulation engine as ``flwr run`` drives it in 1.42: a SuperLink
  started with ``--simulation`` (no SuperNodes; it runs ``flwr-simulation`` on ray) with
  ``num-supernodes`` = clients and 1 CPU per client, so that ray runs as many clients at once as
  there are cores; same app (``--simulation-api python``: ``flwr.simulation.run_simulation``);
* ``flnode``: a flnode devnet of real ``flnode start`` processes (1 manufacturer, ``--miners`` 4
  miners, one device per client, no edge), the task published with ``task_create``.

Measured per engine, with a sampler reading every process of the run (all descendants of this
process) every 0.2 s:

* per round: ``wall_s`` (Flower: the ServerApp sends the round's messages → the aggregate is made;
  flnode: a miner sees the round open → sees its commit, the critical path of
  :func:`flnode.devnet.training.critical_path`), ``train_cpu_s`` = the clients' training CPU time
  summed: the CPU time of the thread that runs the DP-SGD training call (torch on one thread),
  over that call (Flower: ``time.thread_time()`` in the ClientApp, as it reports; flnode: the
  busiest thread of each device process over its training window, from the samples; the whole
  device process's CPU over the window is kept as ``train_process_cpu_s``),
  ``overhead_s`` = ``wall_s − train_cpu_s`` (the issue's definition; it goes negative when
  clients train in parallel on several cores) and ``overhead_parallel_s`` = ``wall_s −
  train_cpu_s / min(cores, clients)`` (wall time beyond perfectly parallel training);
  ``setup_cpu_s`` = Flower clients' learner setup CPU (DP-SGD engine, noise calibration): the
  deployment engine starts a new ClientApp process per message, so it is paid every round there,
  in the simulation engine once per actor and shard it serves, in flnode once per device (in
  round 1's overhead);
* ``startup_s``: launching the first process → the first round opens (includes pre-training the
  initial model on the public slice, the same work on every engine);
* ``total_s``: launching the first process → the last round's aggregate;
* ``peak_rss_gib``: the peak of the summed resident memory (RSS) of all the run's processes;
  ``peak_pss_gib``: the peak of their summed proportional set size (PSS: a page that ``n``
  processes share counts ``1/n`` in each), which is what they take from the machine. Summed RSS
  counts a shared page once per process: torch's libraries in every process of every engine,
  and the pages flnode's forked nodes share with the zygote they were forked from;
* ``cpu_total_s``: CPU time of all the run's processes; ``final_accuracy`` on the first 10,000
  test images (flnode's evaluation); flnode also records ``rounds_cpu_s_by_role``, the CPU
  seconds of its miners, devices and manufacturer from the first round's opening to the last
  commit.

Summary (``steady`` = median over rounds after the first, or round 1 when there is one round):
``overhead_ratio`` = flnode overhead / Flower deployment-engine overhead (``overhead_s``; also
``overhead_parallel_ratio``), ``total_ratio`` = flnode total / Flower simulation-engine total,
``memory_ratio`` = flnode peak PSS / deployment-engine peak PSS (``memory_ratio_rss``: the same
with summed RSS), ``startup_s``, ``peak_rss_gib``, ``peak_pss_gib``,
``flnode_accuracy``, ``flower_accuracy`` (deployment engine), and the issue's targets (overhead ≤
0.1x deployment, start-up < 20 s, memory ≤ 0.5x deployment, total ≤ simulation engine). Privacy:
both sides run the same DP-SGD (flnode's code); Flower's own DP wrappers are not used, and Flower
runs without TLS (``--insecure``) while flnode's devnet encrypts and signs every message and keeps
a chain. Writes ``bench/results/vs_flower.json`` (``--quick``: ``vs_flower_quick.json``, not a
result to keep) and prints a table.

The model is flnode's ``dp-cnn`` (26k parameters), not the 1.2M-parameter CNN of the reference
numbers quoted in issue #11 (Flower's deployment engine: 21-33 s overhead per round, 77 s start-up,
8.2 GiB); the ratios are between engines measured here, in one run, on the same task. Run it on a
quiet machine: every engine shares the cores with whatever else runs (``load_average_before``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
APP_DIR = Path(__file__).resolve().parent / "flower_app"
VENV_BIN = Path(sys.executable).parent
ENGINES = ("deployment", "simulation", "flnode")
MINERS = 4
GIB = 1024**3
TARGETS = {
    "overhead_ratio_max": 0.1,
    "startup_s_max": 20.0,
    "memory_ratio_max": 0.5,
    "total_ratio_max": 1.0,
}


# --------------------------------------------------------------------------------------------------
# Sampling every process of the run


class Sampler:
    """Every ``interval`` s: the memory (RSS and PSS) and CPU times of all descendants of this
    process."""

    def __init__(self, interval: float = 0.2, threads: bool = False) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.threads = threads
        self.thread_cpu: dict[tuple[int, int], list[tuple[float, float]]] = {}
        self.thread_names: dict[tuple[int, int], str] = {}
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.cpu: dict[int, list[tuple[float, float]]] = {}  # pid -> [(time, cpu s)]
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = self._psutil.Process()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self.interval)

    def sample(self, me: Any) -> None:
        total = 0
        total_pss = 0
        count = 0
        now = time.time()
        for proc in me.children(recursive=True):
            try:
                with proc.oneshot():
                    memory = proc.memory_full_info()  # PSS from /proc/<pid>/smaps_rollup
                    rss, pss = memory.rss, memory.pss
                    t = proc.cpu_times()
                    threads = _threads(proc.pid) if self.threads else []
                    if proc.pid not in self.names:
                        self.names[proc.pid] = " ".join(proc.cmdline()[:3])[-80:]
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, ProcessLookupError):
                continue
            total += rss
            total_pss += pss
            count += 1
            self.cpu.setdefault(proc.pid, []).append((now, t.user + t.system))
            for tid, name, cpu in threads:
                key = (proc.pid, tid)
                self.thread_cpu.setdefault(key, []).append((now, cpu))
                self.thread_names[key] = name  # the last one: a thread may rename itself
        if total > self.peak_rss:
            self.peak_rss = total
            self.peak_processes = count
        self.peak_pss = max(self.peak_pss, total_pss)

    def cpu_total(self) -> float:
        """CPU seconds of all sampled processes (each at its last sample)."""
        return sum(samples[-1][1] for samples in self.cpu.values())

    def cpu_between(self, pid: int, start: float, end: float) -> float | None:
        """CPU seconds ``pid`` used between two wall-clock moments (linear between samples)."""
        samples = self.cpu.get(pid)
        if not samples:
            return None
        return _interpolate(samples, end) - _interpolate(samples, start)

    def busiest_thread_between(self, pid: int, start: float, end: float) -> float | None:
        """CPU seconds of ``pid``'s busiest thread between two moments (its training thread,
        when it trains: torch runs on one thread there)."""
        deltas = [seconds for _tid, seconds in self._threads_between(pid, start, end)]
        return max(deltas) if deltas else None

    def _threads_between(self, pid: int, start: float, end: float) -> list[tuple[int, float]]:
        """(thread id, CPU seconds) of each of ``pid``'s threads alive between two moments."""
        return [
            # A thread first seen after ``start`` was made meanwhile (flnode trains on a fresh
            # thread): it had used no CPU at ``start``.
            (
                tid,
                _interpolate(samples, end)
                - (0.0 if samples[0][0] > start else _interpolate(samples, start)),
            )
            for (p, tid), samples in self.thread_cpu.items()
            if p == pid and samples[0][0] <= end and samples[-1][0] >= start
        ]

    def thread_count(self, pid: int) -> int:
        return sum(1 for p, _tid in self.thread_cpu if p == pid)

    def cpu_by_thread_between(self, pid: int, start: float, end: float) -> dict[str, float]:
        """CPU seconds of ``pid``'s threads between two moments, by kind of thread: the event
        loop (the main thread), ``learning`` (flnode's training/judging/evaluating threads),
        ``trio workers`` (``trio.to_thread``: chain and blob-store calls) and any other OS
        thread name."""
        out: dict[str, float] = {}
        main_name = self.thread_names.get((pid, pid), "")
        for tid, spent in self._threads_between(pid, start, end):
            kind = _thread_kind(pid, tid, self.thread_names.get((pid, tid), ""), main_name)
            out[kind] = out.get(kind, 0.0) + spent
        return out


def _interpolate(samples: list[tuple[float, float]], t: float) -> float:
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


# --------------------------------------------------------------------------------------------------
# Records


def round_record(
    rnd: int,
    wall_s: float,
    train_cpu: list[float],
    clients: int,
    setup_cpu: list[float] | None = None,
    train_wall: list[float] | None = None,
) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    total = sum(train_cpu)
    return {
        "round": rnd,
        "wall_s": round(wall_s, 3),
        "train_cpu_s": round(total, 3),
        "overhead_s": round(wall_s - total, 3),
        "overhead_parallel_s": round(wall_s - total / min(cores, clients), 3),
        "setup_cpu_s": None if setup_cpu is None else round(sum(setup_cpu), 3),
        "max_train_wall_s": None if not train_wall else round(max(train_wall), 3),
        "clients_reporting": len(train_cpu),
    }


def steady(rounds: list[dict[str, Any]], key: str) -> float | None:
    rows = [r[key] for r in rounds if r["round"] > 1 and r.get(key) is not None]
    if not rows:
        rows = [r[key] for r in rounds if r.get(key) is not None]
    return round(statistics.median(rows), 3) if rows else None


def engine_record(
    engine: str,
    *,
    launched: float,
    first_open: float,
    last_close: float,
    rounds: list[dict[str, Any]],
    sampler: Sampler,
    accuracy: float | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "engine": engine,
        "startup_s": round(first_open - launched, 2),
        "total_s": round(last_close - launched, 2),
        "rounds_s": round(sum(r["wall_s"] for r in rounds), 2),
        "steady_wall_s": steady(rounds, "wall_s"),
        "steady_train_cpu_s": steady(rounds, "train_cpu_s"),
        "steady_overhead_s": steady(rounds, "overhead_s"),
        "steady_overhead_parallel_s": steady(rounds, "overhead_parallel_s"),
        "first_round": rounds[0] if rounds else None,
        "peak_rss_gib": round(sampler.peak_rss / GIB, 3),
        "peak_pss_gib": round(sampler.peak_pss / GIB, 3),
        "processes_at_peak": sampler.peak_processes,
        "processes_seen": len(sampler.cpu),
        "cpu_total_s": round(sampler.cpu_total(), 1),
        "final_accuracy": accuracy,
        "rounds": rounds,
        **extra,
    }


# --------------------------------------------------------------------------------------------------
# Flower


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flower_env(home: Path, run_config: dict[str, Any] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if run_config is not None:
        env["FLNODE_BENCH_RUN_CONFIG"] = json.dumps(run_config)
    return env


def _run_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return {
        "num-server-rounds": args.rounds,
        "num-clients": args.clients,
        "num-shards": args.shards,
        "round-timeout": 600.0,
        "out-file": str(out),
    }


def _toml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _wait_for_record(out: Path, procs: list[subprocess.Popen[bytes]], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            try:
                record = json.loads(out.read_text())
            except json.JSONDecodeError:
                record = {}
            if "finished_at" in record:
                return record
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a Flower process exited early: {dead[0].args}")
        time.sleep(0.5)
    raise TimeoutError(f"the Flower run did not finish within {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group we started, then SIGKILL what is left of them and of their
    descendants (ray starts its own) after 10 s."""
    import psutil

    descendants = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            descendants += psutil.Process(p.pid).children(recursive=True)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the group: superexec and app processes too
    _gone, alive = psutil.wait_procs(descendants, timeout=5.0)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _flower_rounds(record: dict[str, Any], clients: int) -> list[dict[str, Any]]:
    rows = []
    for r in record["rounds"]:
        c = r["clients"]
        rows.append(
            round_record(
                r["round"],
                r["closed_at"] - r["opened_at"],
                [float(m["train-cpu-s"]) for m in c],
                clients,
                setup_cpu=[float(m["setup-cpu-s"]) for m in c],
                train_wall=[float(m["train-wall-s"]) for m in c],
            )
        )
        rows[-1]["train_process_cpu_s"] = round(sum(float(m["train-process-cpu-s"]) for m in c), 3)
    return rows


def run_deployment(
    args: argparse.Namespace,
    workdir: Path,
    log: Callable[[str], None],
    *,
    simulation: bool = False,
) -> dict:
    """Flower's deployment engine, or with ``simulation`` its simulation engine the way ``flwr
    run`` drives it in 1.42: a SuperLink started with ``--simulation`` (which runs the app on ray
    through ``flwr-simulation``) and no SuperNodes."""
    engine = "simulation" if simulation else "deployment"
    home = workdir / "flwr-home"
    home.mkdir(parents=True)
    port = _free_port()
    connection = (
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    if simulation:  # deprecated in favour of --federation-config, but what 1.42 documents
        connection += (
            f"options.num-supernodes = {args.clients}\n"
            "options.backend.client-resources.num-cpus = 1\n"
            "options.backend.client-resources.num-gpus = 0\n"
            f"options.backend.init-args.num-cpus = {os.cpu_count() or 1}\n"
        )
    (home / "config.toml").write_text(connection)
    out = workdir / f"{engine}.json"
    env = _flower_env(home)
    logs = workdir / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as fh:
            p = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        procs.append(p)
        return p

    shards = args.shards or args.clients
    with Sampler() as sampler:
        launched = time.time()
        try:
            spawn(
                "superlink",
                [
                    str(VENV_BIN / "flower-superlink"),
                    "--insecure",
                    "--disable-runtime-dependency-installation",
                    *(["--simulation"] if simulation else []),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
            )
            for i in range(0 if simulation else args.clients):
                spawn(
                    f"supernode-{i}",
                    [
                        str(VENV_BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(_free_port()),
                        "--node-config",
                        f"partition-id={i} num-partitions={shards}",
                    ],
                )
            overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in _run_config(args, out).items())
            submitted = None
            for _attempt in range(60):  # the SuperLink takes a few seconds to listen
                res = subprocess.run(
                    [str(VENV_BIN / "flwr"), "run", str(APP_DIR), "bench", "--run-config",
                     overrides],
                    cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                if res.returncode == 0:
                    submitted = time.time()
                    break
                time.sleep(1.0)
            if submitted is None:
                raise RuntimeError(f"`flwr run` failed: {res.stdout[-500:]} {res.stderr[-500:]}")
            log(f"[{engine}] run submitted after {submitted - launched:.1f} s")
            record = _wait_for_record(out, procs, 900.0 + 300.0 * args.rounds)
        finally:
            _stop(procs)
    rounds = _flower_rounds(record, args.clients)
    how = (
        "flower-superlink --insecure --disable-runtime-dependency-installation --simulation, "
        f"flwr run bench/flower_app with num-supernodes = {args.clients}, ray backend, "
        "client-resources num-cpus = 1"
        if simulation
        else "flower-superlink --insecure --disable-runtime-dependency-installation, "
        f"{args.clients} flower-supernode, flwr run bench/flower_app"
    )
    return engine_record(
        f"flower-{engine}",
        launched=launched,
        first_open=record["rounds"][0]["opened_at"],
        last_close=record["rounds"][-1]["closed_at"],
        rounds=rounds,
        sampler=sampler,
        accuracy=record.get("final_accuracy"),
        extra={
            "how": how,
            "public_only_accuracy": record.get("public_only_accuracy"),
            "publish_s": round(record.get("publish_s", 0.0), 2),
            "run_submitted_s": round(submitted - launched, 2),
            "nodes_ready_s": round(record["nodes_ready_at"] - launched, 2),
        },
    )


def run_simulation_engine(
    args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict:
    """Flower's simulation engine: ``flwr run`` on a simulation SuperLink (the default), or
    ``--simulation-api python``: ``flwr.simulation.run_simulation`` in a child process
    (deprecated in 1.42, the same ray engine without a SuperLink)."""
    if args.simulation_api == "flwr-run":
        return run_deployment(args, workdir, log, simulation=True)
    home = workdir / "flwr-home-sim"
    home.mkdir(parents=True)
    out = workdir / "simulation.json"
    env = _flower_env(home, _run_config(args, out))
    cmd = [sys.executable, "-m", "bench.vs_flower", "--child-simulation", "--clients",
           str(args.clients)]  # fmt: skip
    with Sampler() as sampler:
        launched = time.time()
        with open(workdir / "simulation.log", "wb") as fh:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            proc.wait(timeout=900.0 + 300.0 * args.rounds)
        finally:
            _stop([proc])
    if not out.exists() or "finished_at" not in json.loads(out.read_text()):
        tail = (workdir / "simulation.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"the simulation did not finish (exit {proc.returncode}):\n{tail}")
    record = json.loads(out.read_text())
    rounds = _flower_rounds(record, args.clients)
    log(f"[simulation] finished in {record['finished_at'] - launched:.1f} s")
    return engine_record(
        "flower-simulation",
        launched=launched,
        first_open=record["rounds"][0]["opened_at"],
        last_close=record["rounds"][-1]["closed_at"],
        rounds=rounds,
        sampler=sampler,
        accuracy=record.get("final_accuracy"),
        extra={
            "how": "flwr.simulation.run_simulation (ray backend), "
            f"client_resources num_cpus=1, {args.clients} virtual SuperNodes",
            "public_only_accuracy": record.get("public_only_accuracy"),
            "publish_s": round(record.get("publish_s", 0.0), 2),
        },
    )


def child_simulation(clients: int) -> int:
    """The simulation engine, in its own process (so its memory is measured alone)."""
    sys.path.insert(0, str(APP_DIR))
    import bench_client
    import bench_server
    from flwr.simulation import run_simulation

    cores = os.cpu_count() or 1
    run_simulation(
        server_app=bench_server.app,
        client_app=bench_client.app,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "num_gpus": 0, "include_dashboard": False},
        },
    )
    return 0


# --------------------------------------------------------------------------------------------------
# flnode


def run_flnode(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> dict:
    import trio

    sys.path.insert(0, str(APP_DIR))
    import bench_task

    from flnode.devnet import down, layout_from_counts, prepare, up
    from flnode.devnet.processes import node_pid
    from flnode.devnet.training import run_task

    shards = args.shards or args.clients
    layout = layout_from_counts(
        miners=args.miners,
        devices=args.clients,
        edges=0,
        manufacturers=1,
        config={"federation": {"shard_count": shards}},
    )
    network = prepare(workdir / "devnet", layout, reset=True)
    spec = bench_task.task_spec(args.clients, args.rounds)

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]:
        launched = time.time()
        await up(network, timeout_s=600.0)
        log(f"[flnode] {len(network.nodes)} processes up in {time.time() - launched:.1f} s")
        pids.update({n.name: node_pid(network, n.name) for n in network.nodes})
        try:
            result = await run_task(
                network, spec, timeout_s=600.0 + 180.0 * args.rounds * max(1, args.clients // 4)
            )
            task = int(result.report["task"])
            miner = result.report.get("evaluated_by") or next(
                n.name for n in network.nodes if "miner" in n.roles
            )
            miner_record = (await _status(network, miner, task))["records"]["miner"]
            devices = {}
            for node in network.nodes:
                if "device" in node.roles:
                    status = await _status(network, node.name, task)
                    devices[node.name] = status["records"]["device"].get("rounds", {})
        finally:
            down(network)
        return result.report, miner_record, devices, launched

    async def _status(net: Any, name: str, task: int) -> dict[str, Any]:
        from flnode.api import ApiClient
        from flnode.devnet.supervisor import endpoint

        async with ApiClient.open(endpoint(net, name)) as client:
            return await client.call("round_status", {"task": task}, timeout=30.0)

    pids: dict[str, int | None] = {}
    from bench._common import adopt_orphans

    adopt_orphans()  # the nodes outlive the zygote that forks them; keep them our descendants
    with Sampler(threads=True) as sampler:
        report, miner_record, devices, launched = trio.run(main)
    miner_rounds = sorted(miner_record.get("rounds", []), key=lambda r: int(r["round"]))
    rounds = []
    for mr in miner_rounds:
        rnd = int(mr["round"])
        opened, committed = mr.get("seen_open_at"), mr.get("commit_seen_at")
        if opened is None or committed is None:
            continue
        train_cpu, train_wall, process_cpu, detail = [], [], [], []
        for name, recs in devices.items():
            r = recs.get(str(rnd))
            if not r or r.get("training_started_at") is None or "train_s" not in r:
                continue
            start = float(r["training_started_at"])
            wall = float(r["train_s"]) + float(r.get("head_s") or 0.0)
            pid = _pid_of(name, pids, sampler)
            thread = (
                None if pid is None else sampler.busiest_thread_between(pid, start, start + wall)
            )
            whole = None if pid is None else sampler.cpu_between(pid, start, start + wall)
            train_cpu.append(thread if thread is not None else wall)
            process_cpu.append(whole if whole is not None else wall)
            train_wall.append(wall)
            detail.append(
                {
                    "device": name,
                    "pid": pid,
                    "train_wall_s": round(wall, 3),
                    "thread_cpu_s": None if thread is None else round(thread, 3),
                    "process_cpu_s": None if whole is None else round(whole, 3),
                    "threads": None if pid is None else sampler.thread_count(pid),
                }
            )
        row = round_record(rnd + 1, committed - opened, train_cpu, args.clients, None, train_wall)
        row["train_process_cpu_s"] = round(sum(process_cpu), 3)
        row["devices"] = detail
        rounds.append(row)
    if not rounds:
        raise RuntimeError("the devnet's round records carry no timings")
    first = miner_rounds[0]
    first_open, last_close = float(first["seen_open_at"]), float(miner_rounds[-1]["commit_seen_at"])
    # Where the CPU went while the rounds ran: the devices' training is only part of it.
    cpu_by_role: dict[str, float] = {}
    cpu_by_thread: dict[str, dict[str, float]] = {}
    for node in network.nodes:
        pid = _pid_of(node.name, pids, sampler)
        spent = None if pid is None else sampler.cpu_between(pid, first_open, last_close)
        if spent is not None:
            role = node.roles[0]
            cpu_by_role[role] = round(cpu_by_role.get(role, 0.0) + spent, 1)
            kinds = cpu_by_thread.setdefault(role, {})
            by_thread = sampler.cpu_by_thread_between(pid, first_open, last_close)
            # Threads that began and ended between two samples were never seen.
            by_thread["unseen threads"] = max(0.0, spent - sum(by_thread.values()))
            for kind, seconds in by_thread.items():
                kinds[kind] = round(kinds.get(kind, 0.0) + seconds, 1)
    return engine_record(
        "flnode-devnet",
        launched=launched,
        first_open=first_open,
        last_close=last_close,
        rounds=rounds,
        sampler=sampler,
        accuracy=report.get("final_accuracy"),
        extra={
            "how": f"flnode devnet: 1 manufacturer, {args.miners} miners, {args.clients} "
            "devices (one `flnode start` process each, forked from a zygote), task_create + "
            "round_status",
            "public_only_accuracy": report.get("public_only_accuracy"),
            "all_nodes_agree": report.get("all_nodes_agree_on_final_model"),
            "aggregation_rule": "fedavg",
            "rounds_cpu_s_by_role": cpu_by_role,
            "rounds_cpu_s_by_role_and_thread": cpu_by_thread,
            "spawn": "fork",
        },
    )


def _threads(pid: int) -> list[tuple[int, str, float]]:
    """(thread id, OS thread name, CPU seconds) of every thread of ``pid``, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out.append((int(tid), name, (int(fields[11]) + int(fields[12])) / tick))
    return out


def _thread_kind(pid: int, tid: int, name: str, main_name: str) -> str:
    if tid == pid:
        return "event loop"
    if name.startswith("Trio thread"):
        return "trio workers"
    if name == "flnode-learn":
        return "learning"
    if name == main_name:
        return "other threads"  # unnamed: started by the main thread, whose name they inherit
    return name


def _pid_of(name: str, pids: dict[str, int | None], sampler: Sampler) -> int | None:
    pid = pids.get(name)
    if pid in sampler.cpu:
        return pid
    return None


def _model_parameters() -> int:
    from flnode.learning.dp_simulation import model_spec_for
    from flnode.learning.models import build_model

    sys.path.insert(0, str(APP_DIR))
    import bench_task

    model = build_model(model_spec_for(bench_task.config(2, 1)))
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 4)


def summarise(engines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fl = engines.get("flnode")
    dep = engines.get("deployment")
    sim = engines.get("simulation")
    out: dict[str, Any] = {
        "overhead_ratio": _ratio(fl and fl["steady_overhead_s"], dep and dep["steady_overhead_s"]),
        "overhead_parallel_ratio": _ratio(
            fl and fl["steady_overhead_parallel_s"], dep and dep["steady_overhead_parallel_s"]
        ),
        "total_ratio": _ratio(fl and fl["total_s"], sim and sim["total_s"]),
        "steady_round_ratio_vs_simulation": _ratio(
            fl and fl["steady_wall_s"], sim and sim["steady_wall_s"]
        ),
        "memory_ratio": _ratio(fl and fl.get("peak_pss_gib"), dep and dep.get("peak_pss_gib")),
        "memory_ratio_rss": _ratio(fl and fl["peak_rss_gib"], dep and dep["peak_rss_gib"]),
        "startup_s": fl and fl["startup_s"],
        "peak_rss_gib": fl and fl["peak_rss_gib"],
        "peak_pss_gib": fl and fl.get("peak_pss_gib"),
        "flnode_accuracy": fl and fl["final_accuracy"],
        "flower_accuracy": (dep or sim or {}).get("final_accuracy"),
        "flower_simulation_accuracy": sim and sim["final_accuracy"],
    }
    met: dict[str, bool | None] = {
        "overhead": None
        if out["overhead_ratio"] is None
        else out["overhead_ratio"] <= TARGETS["overhead_ratio_max"],
        "startup": None
        if out["startup_s"] is None
        else out["startup_s"] < TARGETS["startup_s_max"],
        "memory": None
        if out["memory_ratio"] is None
        else out["memory_ratio"] <= TARGETS["memory_ratio_max"],
        "total": None
        if out["total_ratio"] is None
        else out["total_ratio"] <= TARGETS["total_ratio_max"],
    }
    out["targets"] = {**TARGETS, "met": met}
    return out


def table(engines: dict[str, dict[str, Any]]) -> str:
    cols = [
        ("startup_s", "start-up s"),
        ("total_s", "total s"),
        ("steady_wall_s", "round s"),
        ("steady_train_cpu_s", "train CPU s"),
        ("steady_overhead_s", "overhead s"),
        ("steady_overhead_parallel_s", "overhead ∥ s"),
        ("peak_rss_gib", "peak RSS GiB"),
        ("peak_pss_gib", "peak PSS GiB"),
        ("cpu_total_s", "CPU s"),
        ("final_accuracy", "accuracy"),
    ]
    head = f"{'engine':<18}" + "".join(f"{label:>13}" for _, label in cols)
    lines = [head, "-" * len(head)]
    for rec in engines.values():
        cells = []
        for key, _ in cols:
            v = rec.get(key)
            cells.append(
                f"{'–' if v is None else (f'{v:.4f}' if key == 'final_accuracy' else f'{v:.2f}'):>13}"
            )
        lines.append(f"{rec['engine']:<18}" + "".join(cells))
    lines.append("")
    lines.append("per round (wall s / train CPU s / overhead s):")
    for rec in engines.values():
        parts = [
            f"r{r['round']} {r['wall_s']:.1f}/{r['train_cpu_s']:.1f}/{r['overhead_s']:.1f}"
            for r in rec["rounds"]
        ]
        lines.append(f"  {rec['engine']:<18} " + "  ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--shards", type=int, default=0, help="split the private data in this many shards "
        "(0 = one per client); client i trains shard i",
    )  # fmt: skip
    parser.add_argument("--miners", type=int, default=MINERS, help="flnode committee size")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument(
        "--quick", action="store_true", help="2 clients, 1 round, 20 shards (~3,000 images each)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="keep logs and devnet here")
    parser.add_argument("--cooldown", type=float, default=10.0, help="seconds between engines")
    parser.add_argument(
        "--simulation-api",
        choices=("flwr-run", "python"),
        default="flwr-run",
        help="drive the simulation engine with `flwr run` on a simulation SuperLink (default) "
        "or with flwr.simulation.run_simulation",
    )
    parser.add_argument("--child-simulation", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_simulation:
        return child_simulation(args.clients)
    if args.quick:
        args.clients, args.rounds, args.shards = 2, 1, 20
    if args.clients < 2:
        parser.error("--clients must be at least 2")
    if args.shards and args.shards < args.clients:
        parser.error("--shards must be at least --clients")
    try:
        import flwr
        import psutil  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: pip install -e '.[bench]'") from None
    from bench._common import write_result

    def log(msg: str) -> None:
        print(msg, flush=True)

    load_before = os.getloadavg()
    engines: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    runners = {
        "deployment": run_deployment,
        "simulation": run_simulation_engine,
        "flnode": run_flnode,
    }
    tmp = tempfile.mkdtemp(prefix="flnode-vs-flower-")
    base = args.dir or Path(tmp)
    try:
        for n, name in enumerate(e for e in ENGINES if e in args.engines):
            if n:
                time.sleep(args.cooldown)
            log(f"[{name}] {args.clients} clients, {args.rounds} round(s)")
            workdir = base / name
            if workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True)
            try:
                engines[name] = runners[name](args, workdir, log)
            except Exception as exc:  # keep the other engines' numbers
                errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"[{name}] FAILED: {errors[name]} (logs in {workdir})")
                if args.dir is None:
                    args.dir = base  # keep the logs
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    payload = {
        "benchmark": "vs_flower",
        "quick": args.quick,
        "flwr": flwr.__version__,
        **summarise(engines),
        "setup": {
            "clients": args.clients,
            "rounds": args.rounds,
            "shards": args.shards or args.clients,
            "flnode_miners": args.miners,
            "task": "flnode's default devnet task (MNIST, dp-cnn, IID, 500 public images, "
            "1 local epoch) with rule fedavg on both sides",
            "model": {"arch": "dp-cnn", "parameters": _model_parameters()},
            "privacy": {
                "flnode": "DP-SGD on every device, per-sample epsilon = 10, delta = 1e-5 for the "
                "whole task (RDP), clip 0.1; libp2p-encrypted, signed messages; chain",
                "flower": "the same DP-SGD, by flnode's DeviceLearner inside the ClientApp "
                "(in-memory privacy ledger); no Flower DP wrapper; --insecure (no TLS)",
            },
            "cores": os.cpu_count(),
        },
        "engines": engines,
        "errors": errors,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    path = write_result("vs_flower_quick" if args.quick else "vs_flower", payload)
    print()
    print(table(engines))
    print()
    keys = ("overhead_ratio", "overhead_parallel_ratio", "total_ratio", "memory_ratio",
            "memory_ratio_rss", "startup_s", "peak_rss_gib", "peak_pss_gib", "flnode_accuracy",
            "flower_accuracy")  # fmt: skip
    print(json.dumps({k: payload[k] for k in keys}))
    print(json.dumps(payload["targets"]["met"]))
    if errors:
        print(f"FAILED engines: {errors}")
    print(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
