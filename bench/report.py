"""Markdown tables of the recorded learning benchmarks, for README.md and the docs.

Run: ``python -m bench.report`` (reads ``bench/results/*.json``, prints Markdown). The README's
result tables are pasted from this output, so every number there comes from a results file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from bench._common import RESULTS_DIR


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _eps(x: float | None) -> str:
    return "∞" if x is None else f"{x:g}"


def accuracy_tables(data: dict[str, Any]) -> str:
    # The frozen-mode grid of bench.accuracy; bench.privacy_modes' records have their own table.
    records = [r for r in data["records"] if r.get("source") != "bench.privacy_modes"]
    out = []
    for accounting, bounding in (("per-sample", "l1"), ("per-feature", "minmax")):
        rows = [
            r
            for r in records
            if r["accounting"] == accounting
            and r["mechanism"] != "gaussian"
            and r["bounding"] == bounding
            and r["bottleneck"] == 8
        ]
        if not rows:
            continue
        epsilons = sorted(
            {r["epsilon"] for r in rows}, key=lambda e: float("inf") if e is None else e
        )
        norms = list(dict.fromkeys(r["norm"] for r in rows))
        for partition in dict.fromkeys(r["partition"] for r in rows):
            out.append(
                f"\n**{accounting} ε, {partition}, clean accuracy % (noisy in brackets); "
                f"public-only model first**\n"
            )
            out.append("| norm | " + " | ".join(f"ε={_eps(e)}" for e in epsilons) + " |")
            out.append("|---|" + "---|" * len(epsilons))
            public: dict[Any, float] = {}
            cells: dict[str, dict[Any, str]] = defaultdict(dict)
            for r in rows:
                if r["partition"] != partition:
                    continue
                cells[r["norm"]][r["epsilon"]] = (
                    f"{_pct(r['accuracy_clean'])} ({_pct(r['accuracy_noisy'])})"
                )
                if r["norm"] == "clampbn":
                    public[r["epsilon"]] = r["public_only_accuracy"]
            out.append(
                "| public-only (clampbn) | "
                + " | ".join(_pct(public.get(e)) for e in epsilons)
                + " |"
            )
            for norm in norms:
                out.append(
                    f"| {norm} | " + " | ".join(cells[norm].get(e, "–") for e in epsilons) + " |"
                )
    other = [r for r in records if r["mechanism"] == "gaussian" or r["bottleneck"] != 8]
    if other:
        out.append("\n**Other designs (per-sample ε, clampbn head)**\n")
        out.append("| mechanism | d | ε | δ | partition | public-only | clean | noisy |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in other:
            out.append(
                f"| {r['mechanism']} | {r['bottleneck']} | {_eps(r['epsilon'])} | "
                f"{r['delta'] or '–'} | {r['partition']} | {_pct(r['public_only_accuracy'])} | "
                f"{_pct(r['accuracy_clean'])} | {_pct(r['accuracy_noisy'])} |"
            )
    return "\n".join(out)


def robustness_table(data: dict[str, Any]) -> str:
    records = data["records"]
    rules = list(dict.fromkeys(r["rule"] for r in records))
    out = [
        "| attack (30 % of devices) | " + " | ".join(rules) + " |",
        "|---|" + "---|" * len(rules),
    ]
    for attack in dict.fromkeys(r["attack"] for r in records):
        cells = []
        for rule in rules:
            r = next((x for x in records if x["attack"] == attack and x["rule"] == rule), None)
            if r is None:
                cells.append("–")
                continue
            rejected = (
                f", {r['attackers_rejected_last_round']}/{r['attackers']} out"
                if r["attackers"]
                else ""
            )
            cells.append(f"{_pct(r['accuracy_clean'])}{rejected}")
        out.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def inversion_table(data: dict[str, Any]) -> str:
    out = [
        "| per-sample ε | attack PSNR (dB) | attack SSIM | mean-image PSNR | mean-image SSIM |",
        "|---|---|---|---|---|",
    ]
    for r in data["records"]:
        out.append(
            f"| {_eps(r['epsilon'])} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | "
            f"{r['mean_image_psnr_db']:.2f} | {r['mean_image_ssim']:.3f} |"
        )
    return "\n".join(out)


def privacy_modes_table(data: dict[str, Any]) -> str:
    out = [
        "| mode | public images | ε (δ = 1e-5) | public-only % | final % | gain (points) "
        "| per round % | DP-SGD z | s / round / device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["records"]:
        mode = r["mode"] + (
            " (public model stopped at 5 epochs)"
            if r.get("public_recipe") == "early-stopped"
            else ""
        )
        rounds = " ".join(_pct(a) for a in r["accuracy_per_round"])
        z = f"{r['noise_multiplier']:.3f}" if r.get("noise_multiplier") else "–"
        out.append(
            f"| {mode} | {r['public_size']} | {_eps(r['epsilon'])} | "
            f"{_pct(r['public_only_accuracy'])} | **{_pct(r['accuracy'])}** | "
            f"{r['gain_points']:+.1f} | {rounds} | {z} | {r['s_per_round_per_device']:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    for name, render in (
        ("accuracy", accuracy_tables),
        ("privacy_modes", privacy_modes_table),
        ("robustness", robustness_table),
        ("inversion", inversion_table),
    ):
        data = _load(name)
        if data is None:
            print(f"\n<!-- bench/results/{name}.json missing -->")
            continue
        print(f"\n### {name} ({data['date']}, `{data['command']}`)\n")
        print(render(data))


if __name__ == "__main__":
    main()
