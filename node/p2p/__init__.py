"""libp2p host, gossip topics, signed envelopes, fetch-by-CID protocol and peer scoring.

Other layers use :class:`GossipAPI` and :class:`FetcherAPI`; the node runs :class:`P2PService`.
"""

from .abc import FetcherAPI as FetcherAPI
from .abc import GossipAPI as GossipAPI
from .envelope import Envelope as Envelope
from .envelope import EnvelopeCodec as EnvelopeCodec
from .envelope import ReplayGuard as ReplayGuard
from .envelope import Verdict as Verdict
from .errors import EnvelopeError as EnvelopeError
from .errors import P2PError as P2PError
from .fetch import FetchError as FetchError
from .messages import MessageRegistry as MessageRegistry
from .messages import PeerExchange as PeerExchange
from .messages import Ping as Ping
from .messages import UpdateAnnouncement as UpdateAnnouncement
from .messages import default_registry as default_registry
from .scoring import PeerScoreBook as PeerScoreBook
from .service import P2PService as P2PService
from .service import topic_name as topic_name

__all__ = [
    "Envelope",
    "EnvelopeCodec",
    "EnvelopeError",
    "FetchError",
    "FetcherAPI",
    "GossipAPI",
    "MessageRegistry",
    "P2PError",
    "P2PService",
    "PeerExchange",
    "PeerScoreBook",
    "Ping",
    "ReplayGuard",
    "UpdateAnnouncement",
    "Verdict",
    "default_registry",
    "topic_name",
]
