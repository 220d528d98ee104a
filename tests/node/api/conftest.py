"""Real nodes (every default service, real websockets on 127.0.0.1) in the test's trio process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from flnode.api import ApiClient, ApiEndpoint
from flnode.config import NodeConfig
from flnode.datadir import init_datadir
from flnode.node import Node

RunningNode = Callable[..., Any]


@asynccontextmanager
async def _running(path: Path, **sections: Any) -> AsyncIterator[Node]:
    result = init_datadir(path)
    config = NodeConfig.model_validate({"node": {"shutdown_timeout_s": 1.0}, **sections})
    node = Node(config, result.identity, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            node.request_stop()


@pytest.fixture
def running_node(tmp_path: Path) -> RunningNode:
    """``async with running_node(name, api={...}) as node:`` starts a whole node."""

    def start(name: str = "node", **sections: Any) -> Any:
        return _running(tmp_path / name, **sections)

    return start


@pytest.fixture
def connect() -> Callable[..., Any]:
    """``async with connect(node) as client:`` an authenticated API client of ``node``."""

    def open_client(node: Node, **kwargs: Any) -> Any:
        return ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path), **kwargs)

    return open_client
