"""Node configuration: one typed, validated, frozen object built from four layers.

Layers, later ones winning: the defaults below < ``<datadir>/config.toml`` < ``FLNODE_<SECTION>_<KEY>``
environment variables < command-line flags. Every value remembers where it came from, so an error
names both the key and its source ("storage.max_blob_size (from FLNODE_STORAGE_MAX_BLOB_SIZE)").

Unknown keys are errors, not warnings: a misspelt setting that is silently ignored is worse than a
node that refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_origin

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

if TYPE_CHECKING:
    from .consensus.bft.service import ConsensusSettings

CONFIG_FILE = "config.toml"
ENV_PREFIX = "FLNODE_"
# FLNODE_* variables that are read by the CLI itself rather than being config settings.
NON_SETTING_ENV = frozenset({"FLNODE_DATADIR"})

Role = Literal["device", "edge", "miner", "manufacturer"]
ROLES: tuple[Role, ...] = ("device", "edge", "miner", "manufacturer")
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "console", "json"]


class _Section(BaseModel):
    # No NaN or infinity anywhere: ``p2p.max_clock_skew_s = inf`` passed ``gt=0`` and then crashed
    # the P2P service at start (``int(inf * 1000)``); "unlimited" is spelt 0 where it exists.
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )


class NodeSection(_Section):
    """[node]: who this node is in the network."""

    roles: tuple[Role, ...] = Field(
        ("device",), description="Roles this node runs: device, edge, miner, manufacturer."
    )
    network_id: str = Field(
        "flnode-devnet",
        pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
        description="Name of the network; nodes only talk to nodes with the same network id.",
    )
    shutdown_timeout_s: float = Field(
        1.5, gt=0, le=60, description="Seconds each service gets to stop before it is cancelled."
    )

    @field_validator("roles")
    @classmethod
    def _roles_unique_non_empty(cls, roles: tuple[Role, ...]) -> tuple[Role, ...]:
        if not roles:
            raise ValueError("at least one role is needed")
        if len(set(roles)) != len(roles):
            raise ValueError("roles must not repeat")
        return roles


class LogSection(_Section):
    """[log]: structured logging."""

    level: LogLevel = Field("info", description="debug, info, warning or error.")
    format: LogFormat = Field(
        "auto", description="console (key=value), json, or auto (console on a terminal)."
    )


class StorageSection(_Section):
    """[storage]: the content-addressed blob store."""

    max_blob_size: int = Field(
        64 * 2**20, gt=0, le=2**31, description="Largest blob the store accepts, in bytes."
    )
    gc_budget_bytes: int = Field(
        0, ge=0, description="Garbage-collect unpinned blobs beyond this many bytes (0 = never)."
    )
    gc_interval_s: float = Field(
        300.0, gt=0, description="Seconds between garbage collections when a budget is set."
    )


class P2PSection(_Section):
    """[p2p]: the libp2p host, gossip and fetch-by-CID."""

    listen: tuple[str, ...] = Field(
        ("/ip4/127.0.0.1/tcp/0",),
        description="Multiaddrs to listen on (tcp port 0 = any free port).",
    )
    bootstrap: tuple[str, ...] = Field(
        (), description="Peers to connect to at start, as /ip4/.../tcp/PORT/p2p/PEER_ID."
    )
    mdns: bool = Field(False, description="Discover peers on the local network with mDNS.")
    max_peers: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Most peers this node dials; peers that dial it are still accepted.",
    )
    peer_exchange_interval_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Seconds between announcements of this node's peers while it meets no peer that is"
            " new to it (a new one is announced within about a second)."
        ),
    )
    reconnect_max_backoff_s: float = Field(
        30.0, gt=0, description="Longest wait between reconnection attempts to a known peer."
    )
    gossip_queue: int = Field(
        1024, ge=16, description="Messages buffered per topic subscriber before drops are counted."
    )
    max_clock_skew_s: float = Field(
        60.0,
        gt=0,
        description="Gossip older or newer than this (by the sender's clock) is dropped.",
    )
    max_fetch_size: int = Field(
        16 * 2**20, gt=0, description="Largest blob accepted from a fetch-by-CID response (bytes)."
    )
    fetch_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of one fetch from one provider."
    )
    max_concurrent_fetches: int = Field(8, ge=1, description="Fetches running at once.")
    ban_threshold: float = Field(
        -100.0, lt=0, description="Peer score at which a misbehaving peer is banned."
    )
    ban_seconds: float = Field(120.0, gt=0, description="How long a ban lasts.")

    @field_validator("listen", "bootstrap")
    @classmethod
    def _multiaddrs(cls, addrs: tuple[str, ...], info: Any) -> tuple[str, ...]:
        import multiaddr

        for addr in addrs:
            try:
                parsed = multiaddr.Multiaddr(addr)
            except Exception:
                raise ValueError(f"{addr!r} is not a multiaddr") from None
            protocols = {p.name for p in parsed.protocols()}
            if "tcp" not in protocols:
                raise ValueError(f"{addr!r} has no /tcp/ part")
            if info.field_name == "bootstrap" and "p2p" not in protocols:
                raise ValueError(f"{addr!r} must end with /p2p/<peer id>")
        return addrs


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is on the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ListenSection(_Section):
    """A local TCP listener that stays on loopback unless ``allow_remote`` says otherwise."""

    listen_host: str = Field(
        "127.0.0.1", description="Address to listen on; loopback unless allow_remote is true."
    )
    port: int = Field(0, ge=0, le=65535, description="TCP port (0 = any free port, see node.json).")
    allow_remote: bool = Field(
        False, description="Allow a listen_host other than loopback (logs a warning when used)."
    )

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> _ListenSection:
        if not self.allow_remote and not is_loopback_host(self.listen_host):
            raise ValueError(
                f"listen_host {self.listen_host!r} is not a loopback address; "
                "set allow_remote = true to expose it to other machines"
            )
        return self


class ApiSection(_ListenSection):
    """[api]: the websocket JSON-RPC control API (token in <datadir>/api.token)."""

    enabled: bool = Field(True, description="Serve the control API.")
    max_frame_bytes: int = Field(
        2**20, ge=1024, le=2**28, description="Largest request frame answered (bytes)."
    )
    max_connections: int = Field(64, ge=1, le=10_000, description="Most API connections at once.")
    max_inflight: int = Field(
        64, ge=1, le=10_000, description="Requests one connection may have running at once."
    )
    max_batch: int = Field(100, ge=1, le=10_000, description="Most requests in one batch.")
    max_subscriptions: int = Field(
        32, ge=1, le=1_000, description="Event subscriptions per connection."
    )
    event_queue: int = Field(
        256, ge=1, description="Events queued per subscription before they are dropped."
    )
    call_timeout_s: float = Field(30.0, gt=0, description="Longest one call may run.")
    auth_timeout_s: float = Field(
        10.0, gt=0, description="A connection that has not authenticated by then is closed."
    )


class MetricsSection(_ListenSection):
    """[metrics]: Prometheus text-format metrics over HTTP (GET /metrics)."""

    enabled: bool = Field(True, description="Serve Prometheus metrics.")


class ChainSection(_Section):
    """[chain]: the embedded ledger (py-evm chain in <datadir>/chain.sqlite)."""

    network_file: str = Field(
        "",
        description="Network file (from `flnode network new`); empty = run without a ledger. "
        "Relative paths are relative to the data dir.",
    )
    mempool_max_txs: int = Field(
        10_000, ge=1, le=1_000_000, description="Most transactions waiting in the mempool."
    )
    max_tx_size: int = Field(
        128 * 1024, ge=1024, le=2**24, description="Largest transaction accepted (bytes)."
    )
    dev_mine_interval_s: float = Field(
        0.0,
        ge=0,
        description="Seal pending transactions into a block this often, as the only proposer "
        "(development chains without consensus; 0 = never).",
    )


class FederationSection(_Section):
    """[federation]: the node's part in federated training tasks (by role)."""

    shard_index: int = Field(
        0, ge=0, description="Device: which shard of the data set's private part is this node's."
    )
    shard_count: int = Field(
        1, ge=1, le=60_000, description="Device: how many shards the private part is split in."
    )
    auto_join: bool = Field(True, description="Device: join every open task it can serve.")
    edge: str = Field(
        "",
        description="Device: peer id of the edge node to offload head training to "
        "(dpsgd-extractor tasks; empty = train locally).",
    )
    epsilon_cap: float = Field(
        0.0,
        ge=0,
        description="Device: the most per-sample epsilon this device spends on one task, if less "
        "than the task asks (its privacy ledger refuses rounds beyond it); 0 = the task's budget.",
    )
    fault: Literal[
        "", "label-flip", "scale", "sign-flip", "gaussian-noise", "free-ride", "wrong-aggregate"
    ] = Field(
        "",
        description="Fault injection for tests and demonstrations: a device poisons its "
        "updates (label-flip, scale, sign-flip, gaussian-noise, free-ride: see "
        "flnode.learning.federated.POISONS), a miner proposes a wrong aggregate "
        "(wrong-aggregate).",
    )


# The consensus' limits that bound settings below (flnode.consensus.bft.messages; importing it
# here would load py-evm into every command that reads the config, so tests check they agree).
_MAX_SYNC_BLOCKS = 64  # SyncRequest.count may not exceed it


def _seconds(
    default: float, description: str, *, gt: float | None = None, ge: float | None = None
) -> Any:
    return Field(default, gt=gt, ge=ge, allow_inf_nan=False, description=description)


class ConsensusSection(_Section):
    """[consensus]: the BFT consensus of the miner committee (nodes with a ledger).

    The defaults are those of ``flnode.consensus.bft`` (``Timeouts`` and ``ConsensusSettings``),
    written out here rather than imported because importing the consensus loads py-evm, which
    every command that reads the config would then pay for; a test checks that they are equal.
    ``timeout_<x>_s`` is ``Timeouts.<x>``; every other key has the name of its
    ``ConsensusSettings`` field.
    """

    timeout_propose_s: float = _seconds(
        3.0, "Wait for the round's proposal before prevoting nil, in round 0 (seconds).", gt=0
    )
    timeout_prevote_s: float = _seconds(
        1.0, "Wait after 2f+1 prevotes of any kind before precommitting nil, in round 0.", gt=0
    )
    timeout_precommit_s: float = _seconds(
        1.0, "Wait after 2f+1 precommits of any kind before the next round, in round 0.", gt=0
    )
    timeout_delta_s: float = _seconds(
        0.5,
        "Growth of every timeout per failed round (Tendermint's timeoutX(r) = base + r * delta), "
        "so that a slow network eventually agrees.",
        gt=0,
    )
    timeout_maximum_s: float = _seconds(
        30.0, "Cap on every timeout however many rounds have failed.", gt=0
    )
    timeout_credentials_s: float = _seconds(
        0.05,
        "How long a member holding the lowest of 2f+1 credentials waits for a lower one before "
        "proposing (grows per round like the others; 0 = propose at once).",
        ge=0,
    )
    timeout_rebroadcast_s: float = _seconds(
        2.0,
        "While a height is undecided, re-send this node's messages of the current round this "
        "often (grows per round like the others).",
        gt=0,
    )
    max_block_txs: int = Field(
        1000, ge=1, le=10_000, description="Most transactions a proposed block carries."
    )
    proposal_wait_s: float = _seconds(
        0.2,
        "A leader whose mempool is empty waits this long for transactions before proposing.",
        ge=0,
    )
    prepare_wait_s: float = _seconds(
        1.0,
        "The longest a leader waits for the federation to judge the round that its block's "
        "pending submissions complete (so one block records them and commits the round); keep "
        "it below the propose timeout.",
        ge=0,
    )
    max_block_interval_s: float = _seconds(
        0.0,
        "Start a height with nothing pending after this long, making an empty block (e.g. so "
        "that time-based contract rules advance); 0 = never make empty blocks.",
        ge=0,
    )
    tx_gossip_interval_s: float = _seconds(
        0.05, "Seconds between gossip batches of the mempool's new transactions.", gt=0
    )
    tx_regossip_s: float = _seconds(
        5.0,
        "Transactions this node sent that are still pending after this long are gossiped "
        "again (a gossip message can be lost), then again after as long each time.",
        gt=0,
    )
    sync_batch: int = Field(
        32,
        ge=1,
        le=_MAX_SYNC_BLOCKS,
        description=f"Certified blocks asked for per sync request (at most {_MAX_SYNC_BLOCKS}).",
    )
    sync_timeout_s: float = _seconds(
        10.0, "Timeout of one sync or round-pull request to one peer.", gt=0
    )
    sync_interval_s: float = _seconds(
        5.0,
        "Sync with peers at least this often, as a fallback to the hints that trigger it.",
        gt=0,
    )
    behind_grace_s: float = _seconds(
        1.0,
        "How long after seeing a later height's message a node still behind starts a sync.",
        ge=0,
    )
    sync_peers: int = Field(
        3,
        ge=1,
        le=10_000,
        description="Peers asked per sync pass when they have nothing new (a pass stops at the "
        "first that serves blocks).",
    )
    initial_sync_s: float = _seconds(
        10.0,
        "At start, catch up with the peers for at most this long before taking part (0 = skip).",
        ge=0,
    )

    @model_validator(mode="after")
    def _maximum_covers_the_bases(self) -> ConsensusSection:
        for name in ("propose", "prevote", "precommit", "credentials", "rebroadcast"):
            base = getattr(self, f"timeout_{name}_s")
            if base > self.timeout_maximum_s:
                raise ValueError(
                    f"timeout_{name}_s = {base!r} exceeds timeout_maximum_s = "
                    f"{self.timeout_maximum_s!r}, which caps every timeout"
                )
        return self

    def settings(self) -> ConsensusSettings:
        """The consensus service's settings (imports the consensus, so py-evm)."""
        from dataclasses import fields

        from .consensus.bft.core import Timeouts
        from .consensus.bft.service import ConsensusSettings

        timeouts = Timeouts(
            **{f.name: getattr(self, f"timeout_{f.name}_s") for f in fields(Timeouts)}
        )
        return ConsensusSettings(
            timeouts=timeouts,
            **{
                f.name: getattr(self, f.name)
                for f in fields(ConsensusSettings)
                if f.name != "timeouts"
            },
        )


class NodeConfig(_Section):
    """The whole configuration of one node."""

    node: NodeSection = NodeSection()
    log: LogSection = LogSection()
    storage: StorageSection = StorageSection()
    p2p: P2PSection = P2PSection()
    api: ApiSection = ApiSection()
    metrics: MetricsSection = MetricsSection()
    chain: ChainSection = ChainSection()
    federation: FederationSection = FederationSection()
    consensus: ConsensusSection = ConsensusSection()


def load_config(
    datadir: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> NodeConfig:
    """Build the configuration from its layers.

    Parameters
    ----------
    datadir:
        The node's data directory; its ``config.toml`` is read if present.
    env:
        The environment (``os.environ`` if None); ``FLNODE_<SECTION>_<KEY>`` variables are read.
    overrides:
        Values from command-line flags, as dotted keys (``{"log.level": "debug"}``); None values
        are ignored, so unset flags do not override anything.
    config_file:
        An explicit config file instead of ``<datadir>/config.toml``; it must exist.
    """
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}

    path: Path | None = Path(config_file) if config_file is not None else None
    if path is None and datadir is not None:
        candidate = Path(datadir) / CONFIG_FILE
        path = candidate if candidate.exists() else None
    elif path is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path is not None:
        _merge_file(path, merged, sources)

    _merge_env(os.environ if env is None else env, merged, sources)

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        merged.setdefault(section, {})[key] = value
        sources[dotted] = "command line"

    try:
        return NodeConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, merged, sources)) from None


def _merge_file(path: Path, merged: dict[str, dict[str, Any]], sources: dict[str, str]) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [{section}] table")
        for key, value in table.items():
            merged.setdefault(section, {})[key] = value
            sources[f"{section}.{key}"] = str(path)


def _merge_env(
    env: Mapping[str, str], merged: dict[str, dict[str, Any]], sources: dict[str, str]
) -> None:
    sections = NodeConfig.model_fields
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            raise ConfigError(
                f"unknown setting in environment variable {name}; expected "
                f"FLNODE_<SECTION>_<KEY> with a section of {', '.join(sections)}"
            )
        section_model = sections[section].annotation
        field = getattr(section_model, "model_fields", {}).get(key)
        value: Any = raw
        if field is not None and get_origin(field.annotation) in (tuple, list):
            value = tuple(part.strip() for part in raw.split(",") if part.strip())
        merged.setdefault(section, {})[key] = value
        sources[f"{section}.{key}"] = name


def _describe(exc: ValidationError, merged: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """One line naming the first offending key, its value and where it came from."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    dotted = ".".join(loc[:2])
    source = sources.get(dotted, "defaults")
    if err["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown config section [{loc[0]}] (from {source})"
        return f"unknown setting {dotted} (from {source})"
    if len(loc) == 1:  # a check across several keys of one section
        named = sorted({src for key, src in sources.items() if key.startswith(f"{loc[0]}.")})
        origin = ", ".join(named) or "defaults"
        return f"invalid [{loc[0]}] settings (from {origin}): {err['msg'].removeprefix('Value error, ')}"
    value = merged.get(loc[0], {}).get(loc[1])
    return f"invalid setting {dotted} = {value!r} (from {source}): {err['msg']}"


def default_config_toml() -> str:
    """A commented ``config.toml`` holding every setting at its default, generated from the model."""
    lines = [
        "# flnode node configuration. Every setting is shown at its default.",
        "# Precedence: defaults < this file < FLNODE_<SECTION>_<KEY> environment < flags.",
        "",
    ]
    defaults = NodeConfig()
    for section, field in NodeConfig.model_fields.items():
        model = field.annotation
        lines.append(f"[{section}]")
        for key, sub in model.model_fields.items():  # type: ignore[union-attr]
            if sub.description:
                lines.append(f"# {sub.description}")
            value = getattr(getattr(defaults, section), key)
            if isinstance(value, tuple):
                value = list(value)
            lines.append(tomli_w.dumps({key: value}).strip())
        lines.append("")
    return "\n".join(lines)
