"""``flnode simulate``: the whole learning pipeline for N devices in one process."""

from __future__ import annotations

import json
import math

import click


def _epsilon(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    if value.lower() in ("inf", "infinity", "none", "∞"):
        return None
    try:
        eps = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (or 'inf' for no noise)") from None
    if not math.isfinite(eps) or eps <= 0:
        raise click.BadParameter(f"must be > 0 (or 'inf' for no noise). Got: {value}")
    return eps


@click.command("simulate")
@click.option("--devices", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option(
    "--epsilon",
    default="10",
    callback=_epsilon,
    show_default=True,
    help="Privacy budget ε in the --accounting convention; 'inf' for no noise.",
)
@click.option(
    "--accounting",
    type=click.Choice(["per-sample", "per-feature"]),
    default="per-sample",
    show_default=True,
    help="per-sample: ε covers a sample's whole feature vector (flnode's honest convention); "
    "per-feature: ε per coordinate (the paper's, weaker by a factor d).",
)
@click.option(
    "--mechanism", type=click.Choice(["laplace", "gaussian"]), default="laplace", show_default=True
)
@click.option(
    "--delta", type=float, default=1e-5, show_default=True, help="δ of the Gaussian mechanism."
)
@click.option(
    "--bottleneck",
    type=click.IntRange(1, 1024),
    default=None,
    help="Released feature dimension d [default: 8 Laplace, 64 Gaussian].",
)
@click.option(
    "--partition",
    type=click.Choice(["iid", "dirichlet", "classes"]),
    default="iid",
    show_default=True,
)
@click.option(
    "--alpha",
    type=float,
    default=0.5,
    show_default=True,
    help="Dirichlet concentration (smaller = more label skew).",
)
@click.option(
    "--public-size",
    type=click.IntRange(0, 20000),
    default=2000,
    show_default=True,
    help="Images in the manufacturer's public slice.",
)
@click.option("--norm", default="clampbn", show_default=True, help="Head normalisation.")
@click.option(
    "--rule",
    default="fedavg",
    show_default=True,
    help="Aggregation rule: fedavg, multikrum, krum, median, trimmed-mean, three-sigma.",
)
@click.option(
    "--rule-param",
    multiple=True,
    metavar="KEY=VALUE",
    help="A rule parameter, e.g. f=3 for multikrum (repeatable).",
)
@click.option(
    "--attack",
    default="none",
    show_default=True,
    help="none, label-flip, sign-flip, scale, gaussian-noise, free-ride.",
)
@click.option(
    "--attack-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.3,
    show_default=True,
    help="Share of devices that attack (when --attack is set).",
)
@click.option("--local-epochs", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option(
    "--pretrain-epochs",
    type=click.IntRange(0, 1000),
    default=30,
    show_default=True,
    help="Manufacturer's pre-training epochs on the public slice.",
)
@click.option(
    "--max-samples-per-device",
    type=click.IntRange(1),
    default=None,
    help="Cap each device's private shard (for quick runs).",
)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["frozen", "dpsgd-extractor", "dpsgd-full"]),
    default="frozen",
    show_default=True,
    help="Privacy mode: frozen public extractor + noisy features; DP-SGD extractor + noisy "
    "features; DP-SGD whole model. DP-SGD modes start from their measured preset; options you "
    "give override it.",
)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Run the task spec TOML file (see examples/); options you give override it.",
)
@click.option("--dp-lr", type=click.FloatRange(0, min_open=True), default=None, help="DP-SGD lr.")
@click.option(
    "--dp-clip",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="DP-SGD per-sample clipping norm C.",
)
@click.option("--dp-batch-size", type=click.IntRange(1), default=None, help="DP-SGD batch.")
@click.option(
    "--feature-share",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="dpsgd-extractor: share of ε planned for the feature releases.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def simulate_command(
    devices: int,
    rounds: int,
    epsilon: float | None,
    accounting: str,
    mechanism: str,
    delta: float,
    bottleneck: int | None,
    partition: str,
    alpha: float,
    public_size: int,
    norm: str,
    rule: str,
    rule_param: tuple[str, ...],
    attack: str,
    attack_fraction: float,
    local_epochs: int,
    pretrain_epochs: int,
    max_samples_per_device: int | None,
    threads: int,
    seed: int,
    mode: str,
    spec_path: str | None,
    dp_lr: float | None,
    dp_clip: float | None,
    dp_batch_size: int | None,
    feature_share: float | None,
    as_json: bool,
) -> None:
    """Simulate a federated task on real MNIST in this process (no network, no chain).

    The manufacturer pre-trains on its public slice. In the frozen mode each device releases its
    private features once with differential-privacy noise and trains the head on them each round;
    in the DP-SGD modes devices train on raw data with DP-SGD under one per-sample budget. Updates
    are aggregated with the chosen rule; accuracy is shown beside the public-only model.
    """
    if spec_path is not None or mode != "frozen":
        _simulate_dp_or_spec(click.get_current_context(), spec_path, mode, as_json)
        return
    from rich.console import Console
    from rich.table import Table

    from flnode.learning.simulation import SimulationConfig, run_simulation

    params: dict[str, object] = {}
    for item in rule_param:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--rule-param")
        params[key] = json.loads(raw) if raw.replace(".", "", 1).lstrip("-").isdigit() else raw
    try:
        cfg = SimulationConfig(
            n_devices=devices,
            rounds=rounds,
            epsilon=epsilon,
            accounting=accounting,  # type: ignore[arg-type]
            mechanism=mechanism,  # type: ignore[arg-type]
            delta=delta if mechanism == "gaussian" else None,
            bounding="l2"
            if mechanism == "gaussian"
            else ("minmax" if accounting == "per-feature" else "l1"),
            bottleneck=bottleneck or (64 if mechanism == "gaussian" else 8),
            partition=partition,
            alpha=alpha,
            public_size=public_size,
            norm=norm,
            strategy=rule,
            strategy_params=params,
            attack=attack,
            attack_fraction=attack_fraction if attack != "none" else 0.0,
            local_epochs=local_epochs,
            threads=threads,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    console = Console(stderr=True)
    with console.status("starting") as status:

        def on_round(r):  # type: ignore[no-untyped-def]
            console.log(
                f"round {r.round}: clean {r.accuracy.clean:.2%}, noisy {r.accuracy.noisy:.2%}, "
                f"accepted {r.accepted}, rejected {r.rejected}"
            )

        try:
            result = run_simulation(cfg, on_round=on_round, on_stage=status.update)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    if as_json:
        click.echo(
            json.dumps(
                {
                    "config": cfg.to_dict(),
                    "privacy": result.privacy_label,
                    "public_only": {
                        "clean": result.public_only.clean,
                        "noisy": result.public_only.noisy,
                    },
                    "rounds": [
                        {
                            "round": r.round,
                            "clean": r.accuracy.clean,
                            "noisy": r.accuracy.noisy,
                            "accepted": r.accepted,
                            "rejected": r.rejected,
                        }
                        for r in result.rounds
                    ],
                    "final_head_cid": result.final_head_cid,
                    "epsilon_spent": list(result.epsilon_spent),
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"{devices} devices, {partition}, {rule}; {result.privacy_label}")
    for col in ("model", "clean accuracy", "noisy accuracy", "accepted", "rejected"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row(
        "public-only", f"{result.public_only.clean:.2%}", f"{result.public_only.noisy:.2%}", "", ""
    )
    for r in result.rounds:
        table.add_row(
            f"round {r.round}",
            f"{r.accuracy.clean:.2%}",
            f"{r.accuracy.noisy:.2%}",
            str(r.accepted),
            str(r.rejected),
        )
    Console().print(table)
    click.echo(f"gain from federation: {result.gain_clean:+.2f} points (clean accuracy)")
    click.echo(f"final global head: {result.final_head_cid}")


# CLI option → SimulationConfig field, for options that override a preset or a spec.
_OVERRIDES = {
    "devices": "n_devices",
    "rounds": "rounds",
    "epsilon": "epsilon",
    "mechanism": "mechanism",
    "delta": "delta",
    "bottleneck": "bottleneck",
    "partition": "partition",
    "alpha": "alpha",
    "public_size": "public_size",
    "local_epochs": "local_epochs",
    "pretrain_epochs": "pretrain_epochs",
    "max_samples_per_device": "max_samples_per_device",
    "threads": "threads",
    "seed": "seed",
    "rule": "strategy",
    "dp_lr": "dp_lr",
    "dp_clip": "dp_clip",
    "dp_batch_size": "dp_batch_size",
    "feature_share": "feature_share",
}


def _simulate_dp_or_spec(
    ctx: click.Context, spec_path: str | None, mode: str, as_json: bool
) -> None:
    """Run a task spec or a DP-SGD preset, overridden by the options given on the command line."""
    from click.core import ParameterSource
    from rich.console import Console

    from flnode.learning.dp_simulation import run_dp_simulation
    from flnode.learning.simulation import preset, run_simulation
    from flnode.learning.taskspec import TaskSpecError, load_task_spec

    given = {
        field: ctx.params[option]
        for option, field in _OVERRIDES.items()
        if ctx.get_parameter_source(option) is ParameterSource.COMMANDLINE
    }
    try:
        if spec_path is not None:
            if ctx.get_parameter_source("mode") is ParameterSource.COMMANDLINE:
                raise click.UsageError("--mode comes from the spec; do not give both")
            cfg = load_task_spec(spec_path).simulation_config(**given)
        else:
            cfg = preset(mode, **given)
    except TaskSpecError as exc:
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    console = Console(stderr=True)
    if cfg.mode == "frozen":
        with console.status("starting") as status:
            result = run_simulation(cfg, on_stage=status.update)
        payload = {
            "mode": cfg.mode,
            "public_only_accuracy": result.public_only.clean,
            "accuracy_per_round": [r.accuracy.clean for r in result.rounds],
            "final_accuracy": result.final.clean,
            "gain_points": result.gain_clean,
            "privacy": result.privacy_label,
            "epsilon_spent": list(result.epsilon_spent),
        }
    else:
        with console.status("starting") as status:

            def on_round(r):  # type: ignore[no-untyped-def]
                console.log(
                    f"round {r.round}: accuracy {r.accuracy:.2%} "
                    f"({r.train_s_per_device:.1f} s per device)"
                )

            result = run_dp_simulation(cfg, on_stage=status.update, on_round=on_round)
        payload = {
            "mode": cfg.mode,
            "public_only_accuracy": result.public_only_accuracy,
            "accuracy_per_round": [r.accuracy for r in result.rounds],
            "final_accuracy": result.final_accuracy,
            "gain_points": result.gain,
            "privacy": f"ε={cfg.epsilon:g}, δ={cfg.delta:g} per sample over the whole task "
            f"({result.composition_rule} composition); DP-SGD noise multiplier "
            f"{result.noise_multiplier:.3f}, clip {cfg.dp_clip:g}, sample rate "
            f"{result.sample_rate:.4g}"
            + (f"; features: {result.feature_release}" if result.feature_release else ""),
            "epsilon_spent": list(result.epsilon_spent),
            "final_model_cid": result.final_model_cid,
        }
    if as_json:
        click.echo(json.dumps({"config": cfg.to_dict(), **payload}, indent=2))
        return
    click.echo(f"mode {cfg.mode}, {cfg.n_devices} devices; {payload['privacy']}")
    click.echo(f"public-only: {payload['public_only_accuracy']:.2%}")
    for i, acc in enumerate(payload["accuracy_per_round"], 1):
        click.echo(f"round {i}: {acc:.2%}")
    click.echo(
        f"gain from federation: {payload['gain_points']:+.2f} points; "
        f"ε spent per device: {max(payload['epsilon_spent']):.3f}"
    )
