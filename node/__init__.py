"""flnode: a peer-to-peer node daemon for privacy-preserving, blockchain-based federated learning.

The daemon package. Its sub-packages each own one concern (see ARCHITECTURE.md):
``storage`` (content-addressed blobs), ``p2p`` (libp2p), ``consensus`` (the embedded chain),
``learning`` (models, differential privacy, aggregation) and ``api`` (the control API).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flnode")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
