# pragma version ~=0.4.3
"""Miner registry: stakes, a delayed exit, and slashing on proof of equivocation.

A miner is *active* while its stake is at least ``min_stake`` and it has not asked to leave. Leaving
takes two steps (``requestLeave``, then ``leave`` once ``leave_delay`` blocks have passed) so that a
miner stays slashable for a while after its last vote. Its stake is then credited to ``rewards``
and withdrawn like any other payout.

Slashing: anyone may submit two votes signed by the same miner for the same (height, round, kind)
but different block hashes. A vote is signed as ``flnode.identity`` signs everything:

    payload = abi.encode(chain_id, height, round, kind, block_hash)     # 5 words, 160 bytes
    digest  = keccak256("\\x19Ethereum Signed Message:\\n32" ++ keccak256("flnode/vote/v1" ++ 0x00 ++ payload))
    sig     = r ++ s ++ v (65 bytes, v in {27, 28}, low s)

The chain id inside the payload keeps a vote from another network from counting here. The whole
stake is taken: REPORTER_BPS of it is credited to the reporter, the rest is burnt (sent to the
zero address, whose key nobody has).
"""

import rewards

uses: rewards

VOTE_DOMAIN: constant(Bytes[15]) = b"flnode/vote/v1\x00"
EIP191_PREFIX: constant(Bytes[28]) = b"\x19Ethereum Signed Message:\n32"
HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168  # secp256k1 n // 2
REPORTER_BPS: constant(uint256) = 1000  # 10 % of a slashed stake goes to whoever proved it

stake: public(HashMap[address, uint256])
leaving_at: public(HashMap[address, uint256])
min_stake: public(uint256)
leave_delay: public(uint256)
total_staked: public(uint256)


struct Vote:
    height: uint256
    round: uint256
    kind: uint256
    block_hash: bytes32


event MinerRegistered:
    miner: indexed(address)
    stake: uint256


event MinerLeaving:
    miner: indexed(address)
    leave_at_block: uint256


event MinerLeft:
    miner: indexed(address)
    stake: uint256


event MinerSlashed:
    miner: indexed(address)
    reporter: indexed(address)
    height: uint256
    round: uint256
    burnt: uint256
    reward: uint256


@internal
@view
def _is_active(miner: address) -> bool:
    s: uint256 = self.stake[miner]
    return s > 0 and s >= self.min_stake and self.leaving_at[miner] == 0


@internal
def _register(miner: address, amount: uint256):
    assert self.leaving_at[miner] == 0, "miner is leaving; finish with leave() first"
    assert amount > 0, "registering needs a stake (send value)"
    new_stake: uint256 = self.stake[miner] + amount
    assert new_stake >= self.min_stake, "stake below the minimum stake"
    self.stake[miner] = new_stake
    self.total_staked += amount
    log MinerRegistered(miner=miner, stake=new_stake)


@internal
def _request_leave(miner: address):
    assert self.stake[miner] > 0, "not a miner"
    assert self.leaving_at[miner] == 0, "already leaving"
    at: uint256 = block.number + self.leave_delay
    self.leaving_at[miner] = at
    log MinerLeaving(miner=miner, leave_at_block=at)


@internal
def _leave(miner: address):
    at: uint256 = self.leaving_at[miner]
    assert at != 0, "call requestLeave first"
    assert block.number >= at, "the leave delay has not passed"
    amount: uint256 = self.stake[miner]
    self.stake[miner] = 0
    self.leaving_at[miner] = 0
    self.total_staked -= amount
    rewards._credit(miner, amount, 0, rewards.KIND_STAKE)
    log MinerLeft(miner=miner, stake=amount)


@internal
@view
def _vote_signer(vote: Vote, sig: Bytes[65]) -> address:
    assert len(sig) == 65, "a vote signature is 65 bytes"
    payload: Bytes[160] = abi_encode(chain.id, vote.height, vote.round, vote.kind, vote.block_hash)
    message_hash: bytes32 = keccak256(concat(VOTE_DOMAIN, payload))
    digest: bytes32 = keccak256(concat(EIP191_PREFIX, message_hash))
    r: uint256 = convert(slice(sig, 0, 32), uint256)
    s: uint256 = convert(slice(sig, 32, 32), uint256)
    v: uint256 = convert(slice(sig, 64, 1), uint256)
    assert v == 27 or v == 28, "vote signature v must be 27 or 28"
    assert s <= HALF_N, "vote signature is not low-s"
    signer: address = ecrecover(digest, v, r, s)
    assert signer != empty(address), "invalid vote signature"
    return signer


@internal
def _slash(reporter: address, a: Vote, sig_a: Bytes[65], b: Vote, sig_b: Bytes[65]):
    assert a.height == b.height and a.round == b.round and a.kind == b.kind, "votes are for different heights, rounds or kinds"
    assert a.block_hash != b.block_hash, "votes do not conflict (same block hash)"
    signer: address = self._vote_signer(a, sig_a)
    assert self._vote_signer(b, sig_b) == signer, "votes are signed by different keys"
    amount: uint256 = self.stake[signer]
    assert amount > 0, "signer has no stake to slash"
    self.stake[signer] = 0
    self.leaving_at[signer] = 0
    self.total_staked -= amount
    reward: uint256 = amount * REPORTER_BPS // 10000
    burnt: uint256 = amount - reward
    rewards._credit(reporter, reward, 0, rewards.KIND_REPORTER)
    log MinerSlashed(miner=signer, reporter=reporter, height=a.height, round=a.round, burnt=burnt, reward=reward)
    if burnt > 0:
        send(empty(address), burnt)
