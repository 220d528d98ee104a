"""The compiled ledger contract: sources in ``contracts/*.vy``, build output in ``contracts/ledger.json``.

The artifact is checked in so that a node never needs the compiler at run time and every node of a
network runs byte-identical code; ``python -m flnode.consensus.artifact`` rebuilds it, and a test
checks that a fresh compile reproduces it byte for byte. The network file pins ``code_hash`` (the
keccak256 of the runtime bytecode), so a node built from different sources refuses the network.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils import keccak

from .errors import ContractArtifactError

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
ARTIFACT_FILE = CONTRACTS_DIR / "ledger.json"
MAIN_SOURCE = "task_registry.vy"
SOURCES = ("task_registry.vy", "miners.vy", "reputation.vy", "rewards.vy")


@dataclass(frozen=True, slots=True)
class LedgerArtifact:
    """ABI, runtime bytecode and storage layout of the ledger contract."""

    abi: tuple[dict[str, Any], ...]
    runtime: bytes
    storage_layout: dict[str, Any]
    vyper_version: str
    source_hashes: dict[str, str]

    @property
    def code_hash(self) -> bytes:
        return keccak(self.runtime)

    def slot(self, *path: str) -> int:
        """The storage slot of a variable, e.g. ``slot("miners", "min_stake")``."""
        node: Any = self.storage_layout
        try:
            for part in path:
                node = node[part]
            return int(node["slot"])
        except (KeyError, TypeError):
            raise ContractArtifactError(f"no storage variable {'.'.join(path)}") from None


def _source_hashes() -> dict[str, str]:
    return {
        name: hashlib.sha256((CONTRACTS_DIR / name).read_bytes()).hexdigest() for name in SOURCES
    }


def compile_artifact() -> dict[str, Any]:
    """Compile the Vyper sources (needs the ``vyper`` package) into the artifact's JSON form."""
    import vyper
    from vyper.compiler.input_bundle import FilesystemInputBundle

    out = vyper.compile_code(
        (CONTRACTS_DIR / MAIN_SOURCE).read_text(encoding="utf-8"),
        contract_path=MAIN_SOURCE,
        input_bundle=FilesystemInputBundle([CONTRACTS_DIR]),
        output_formats=["abi", "bytecode_runtime", "layout"],
    )
    return {
        "contract": "FLLedger",
        "vyper": vyper.__version__,
        "sources": _source_hashes(),
        "abi": out["abi"],
        "runtime": out["bytecode_runtime"],
        "storage_layout": out["layout"]["storage_layout"],
    }


def render_artifact(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


@cache
def load_artifact() -> LedgerArtifact:
    """The checked-in artifact; raises if it is missing or older than the sources."""
    try:
        data = json.loads(ARTIFACT_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContractArtifactError(
            f"cannot read the compiled contract {ARTIFACT_FILE}: {exc}; "
            "rebuild it with `python -m flnode.consensus.artifact`"
        ) from None
    if data.get("sources") != _source_hashes():
        raise ContractArtifactError(
            f"{ARTIFACT_FILE.name} was compiled from other sources than contracts/*.vy; "
            "rebuild it with `python -m flnode.consensus.artifact`"
        )
    return LedgerArtifact(
        abi=tuple(data["abi"]),
        runtime=bytes.fromhex(data["runtime"].removeprefix("0x")),
        storage_layout=data["storage_layout"],
        vyper_version=data["vyper"],
        source_hashes=data["sources"],
    )


def main() -> None:
    """Rebuild ``contracts/ledger.json`` (``--check`` only verifies it is up to date)."""
    text = render_artifact(compile_artifact())
    if "--check" in sys.argv[1:]:
        current = ARTIFACT_FILE.read_text(encoding="utf-8") if ARTIFACT_FILE.exists() else ""
        if current != text:
            print(f"{ARTIFACT_FILE} is out of date", file=sys.stderr)
            sys.exit(1)
        print(f"{ARTIFACT_FILE} is up to date")
        return
    ARTIFACT_FILE.write_text(text, encoding="utf-8")
    print(
        f"wrote {ARTIFACT_FILE} (code hash 0x{keccak(load_artifact.__wrapped__().runtime).hex()})"
    )


if __name__ == "__main__":
    main()
