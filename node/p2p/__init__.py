"""libp2p host, gossip topics, signed envelopes, fetch-by-CID protocol and peer scoring.

Not built yet: this package is filled by the P2P issue (#6).
"""
