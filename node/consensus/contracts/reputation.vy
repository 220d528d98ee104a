# pragma version ~=0.4.3
"""Device reputation: a beta (subjective-logic) score over decayed evidence.

Every time a committee judges one of a device's updates, the device's old evidence decays by
DECAY and the new outcome is added: an accepted update adds GOOD_WEIGHT to the positive evidence
``good``, a rejected one adds BAD_WEIGHT to the negative evidence ``bad`` (a rejection weighs twice
an acceptance, so poisoning costs more reputation than honest work earns). The score is the
expected value of Beta(good + 1, bad + 1), i.e. subjective logic's belief plus half the uncertainty:

    score = (good + 1) / (good + bad + 2)          (fixed point, SCALE = 10**6 means 1.0)

A new device scores 0.5; the decay bounds the evidence (at most GOOD_WEIGHT / (1 - DECAY) = 20 units),
so old behaviour fades and a reformed device can recover.
"""

SCALE: constant(uint256) = 10**6
DECAY: constant(uint256) = 950_000  # 0.95 per judgement, in SCALE units
GOOD_WEIGHT: constant(uint256) = 1 * SCALE
BAD_WEIGHT: constant(uint256) = 2 * SCALE

good: public(HashMap[address, uint256])
bad: public(HashMap[address, uint256])
judgements: public(HashMap[address, uint256])


event ReputationUpdated:
    device: indexed(address)
    accepted: bool
    good: uint256
    bad: uint256
    score: uint256


@internal
@pure
def _score(good: uint256, bad: uint256) -> uint256:
    return (good + SCALE) * SCALE // (good + bad + 2 * SCALE)


@internal
@view
def _reputation(device: address) -> uint256:
    return self._score(self.good[device], self.bad[device])


@internal
def _record(device: address, accepted: bool) -> uint256:
    g: uint256 = self.good[device] * DECAY // SCALE
    b: uint256 = self.bad[device] * DECAY // SCALE
    if accepted:
        g += GOOD_WEIGHT
    else:
        b += BAD_WEIGHT
    self.good[device] = g
    self.bad[device] = b
    self.judgements[device] += 1
    score: uint256 = self._score(g, b)
    log ReputationUpdated(device=device, accepted=accepted, good=g, bad=b, score=score)
    return score
