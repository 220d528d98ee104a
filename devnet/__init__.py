"""Launching and supervising local multi-node networks of real processes (``flnode devnet``).

``layout.py`` says which nodes a devnet has, ``network.py`` lays it out on disk (data dirs, ports,
configs, the network file), ``processes.py`` starts, finds and stops the node processes, and
``supervisor.py`` brings a devnet up (waiting for readiness checks), reports its status, restarts
a node and takes it down. The training driver of a later issue builds on these.
"""

from .errors import DevnetError as DevnetError
from .errors import LayoutError as LayoutError
from .layout import Layout as Layout
from .layout import NodeSpec as NodeSpec
from .layout import layout_from_counts as layout_from_counts
from .layout import load_layout as load_layout
from .network import DevnetNode as DevnetNode
from .network import Network as Network
from .network import load_network as load_network
from .supervisor import CONNECTED as CONNECTED
from .supervisor import DEFAULT_CHECKS as DEFAULT_CHECKS
from .supervisor import NodeStatus as NodeStatus
from .supervisor import ReadinessCheck as ReadinessCheck
from .supervisor import default_checks as default_checks
from .supervisor import down as down
from .supervisor import endpoint as endpoint
from .supervisor import first_block_check as first_block_check
from .supervisor import prepare as prepare
from .supervisor import restart as restart
from .supervisor import status as status
from .supervisor import up as up

__all__ = [
    "CONNECTED",
    "DEFAULT_CHECKS",
    "DevnetError",
    "DevnetNode",
    "Layout",
    "LayoutError",
    "Network",
    "NodeSpec",
    "NodeStatus",
    "ReadinessCheck",
    "default_checks",
    "down",
    "endpoint",
    "first_block_check",
    "layout_from_counts",
    "load_layout",
    "load_network",
    "prepare",
    "restart",
    "status",
    "up",
]
