"""What every benchmark record carries: the machine, the date and the command that produced it."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """Cores, torch threads, CPU model, Python and library versions."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a runtime dependency
        info["torch_threads"] = None
    return info


def run_info() -> dict[str, Any]:
    """Date (UTC, ISO 8601) and the exact command line."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    argv = ["python", "-m", spec.name, *sys.argv[1:]] if spec else ["python", *sys.argv]
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in argv),
    }


def adopt_orphans() -> None:
    """Make this process its descendants' *child subreaper* (Linux ``prctl``): a process whose
    parent exits is re-parented here instead of to init. ``flnode devnet up`` forks the nodes
    from a zygote that exits once they run; a benchmark that samples its descendants keeps
    seeing them (and reaps them when they exit)."""
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus machine and run info to ``bench/results/<name>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {**payload, "machine": machine_info(), **run_info()}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def round_printer(label: str) -> Callable[[dict[str, Any]], None]:
    """A ``run_task`` progress callback that prints ``[label] round N`` once per round."""
    last: list[Any] = [None]

    def show(event: dict[str, Any]) -> None:
        key = (event.get("stage"), event.get("round"))
        if key != last[0]:
            last[0] = key
            if event.get("stage") == "running":
                print(f"[{label}] round {event.get('round')}", flush=True)

    return show
