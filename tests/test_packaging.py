"""The package layout: every package folder is installed, and the layers depend on each other one way."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER_OF = {"flnode": "node", "flnode.cli": "cli", "flnode.devnet": "devnet"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py under node/, cli/, devnet/, by its import name."""
    found = {}
    for prefix, folder in FOLDER_OF.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            name = ".".join([prefix, *rel.parts]) if rel.parts else prefix
            found[name] = init.parent
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert set(_package_folders()) == listed


def test_torch_is_pinned_exactly() -> None:
    deps = _pyproject()["project"]["dependencies"]
    assert "torch==2.13.0" in deps
    for name in ("libp2p==", "py-evm==", "vyper==", "numpy=="):
        assert any(d.startswith(name) for d in deps), name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_learning_never_imports_trio_or_libp2p() -> None:
    """learning/ is plain synchronous code run in worker threads (DESIGN.md)."""
    for path in (ROOT / "node" / "learning").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("trio", "libp2p", "trio_websocket")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_subpackages_do_not_import_each_other() -> None:
    """storage, p2p, consensus, learning, api talk only through interfaces the Node passes in."""
    layers = ("storage", "p2p", "consensus", "learning", "api")
    for layer in layers:
        for path in (ROOT / "node" / layer).rglob("*.py"):
            source = path.read_text()
            tree = ast.parse(source)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                    top = node.module.split(".")[0]
                    assert top not in layers or top == layer, (
                        f"{path.relative_to(ROOT)} imports ..{node.module}"
                    )
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    parts = node.module.split(".")
                    if parts[0] == "flnode" and len(parts) > 1 and parts[1] in layers:
                        assert parts[1] == layer, f"{path.relative_to(ROOT)} imports {node.module}"
