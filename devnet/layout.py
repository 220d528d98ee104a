"""What a devnet consists of: named nodes with roles, a network id, and shared config overrides.

A layout comes from role counts (``--miners 4 --devices 8 --edges 1 --manufacturers 1``) or from a
small TOML file::

    network_id = "flnode-devnet"      # optional
    miners = 4                        # counts, as the flags ...
    devices = 8
    [[node]]                          # ... and/or explicit nodes
    name = "gateway"
    roles = ["edge", "device"]
    config.p2p.max_peers = 8          # this node only
    [config.p2p]                      # settings written into every node's config.toml
    max_peers = 32

Nodes are named ``<role>-<i>`` (``miner-0``, ``device-7``); miners come first, so the first nodes
(the bootstrap seeds) are the ones that stay up longest in a training run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import NodeConfig, Role
from .errors import LayoutError

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
#: Role counts in start order: miners first (the seeds), the manufacturer last.
COUNT_ROLES: tuple[tuple[str, Role], ...] = (
    ("miners", "miner"),
    ("edges", "edge"),
    ("devices", "device"),
    ("manufacturers", "manufacturer"),
)
MAX_NODES = 64


class NodeSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    roles: tuple[Role, ...]
    #: Settings for this node only, over the layout's shared ``config``.
    config: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"node name {name!r} must be lower-case letters, digits and '-'")
        return name


class Layout(BaseModel):
    """The nodes of a devnet and what they share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network_id: str = "flnode-devnet"
    nodes: tuple[NodeSpec, ...]
    config: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Layout:
        if not self.nodes:
            raise ValueError("a devnet needs at least one node")
        if len(self.nodes) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes on one machine")
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names repeat: {', '.join(dupes)}")
        # The overrides must make a valid node config (sections and keys are checked here,
        # not when the tenth node fails to start).
        for node in self.nodes:
            try:
                NodeConfig.model_validate(
                    {**self.node_config(node), "node": {"network_id": self.network_id}}
                )
            except ValidationError as exc:
                where = "config" if not node.config else f"node {node.name}: config"
                raise ValueError(f"{where}.{_first_error(exc)}") from None
        return self

    def node_config(self, node: NodeSpec) -> dict[str, dict[str, Any]]:
        """The settings written for ``node``: the shared ``config`` with its own on top."""
        merged = {section: dict(values) for section, values in self.config.items()}
        for section, values in node.config.items():
            merged.setdefault(section, {}).update(values)
        return merged

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def layout_from_counts(
    *,
    miners: int = 0,
    devices: int = 0,
    edges: int = 0,
    manufacturers: int = 0,
    network_id: str = "flnode-devnet",
    config: dict[str, dict[str, Any]] | None = None,
    extra_nodes: tuple[NodeSpec, ...] = (),
) -> Layout:
    counts = {"miners": miners, "devices": devices, "edges": edges, "manufacturers": manufacturers}
    for key, value in counts.items():
        if value < 0:
            raise LayoutError(f"--{key} must be 0 or more, got {value}")
    nodes = [
        NodeSpec(name=f"{role}-{i}", roles=(role,))
        for key, role in COUNT_ROLES
        for i in range(counts[key])
    ]
    try:
        return Layout(network_id=network_id, nodes=(*nodes, *extra_nodes), config=config or {})
    except ValidationError as exc:
        raise LayoutError(_first_error(exc)) from None


def load_layout(path: Path, **count_overrides: int | None) -> Layout:
    """A layout from a TOML file; counts given as flags replace the file's."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"cannot read layout {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"{path}: not valid TOML: {exc}") from None
    known = {"network_id", "node", "config", *(key for key, _ in COUNT_ROLES)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LayoutError(
            f"{path}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}"
        )
    counts = {key: int(data.get(key, 0)) for key, _ in COUNT_ROLES}
    counts.update({k: v for k, v in count_overrides.items() if v is not None})
    try:
        extra = tuple(NodeSpec.model_validate(n) for n in data.get("node", []))
    except ValidationError as exc:
        raise LayoutError(f"{path}: {_first_error(exc)}") from None
    try:
        return layout_from_counts(
            **counts,
            network_id=data.get("network_id", "flnode-devnet"),
            config=data.get("config", {}),
            extra_nodes=extra,
        )
    except LayoutError as exc:
        raise LayoutError(f"{path}: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
