"""The soak's chaos: every few seconds the Webapp's tokens are revoked or expired, or the
operator rotates the password, with calm phases in which only the gateway's refresh runs."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from .rotation import Operator

TOKEN_LIFETIME = 10.0  # seconds: short, so that the calm phases see background refreshes
CHAOS_CYCLE = 60.0  # each cycle: a calm phase, then revocations and expiries every few seconds
CHAOS_CALM = TOKEN_LIFETIME + 2.0
CHAOS_GAP = (1.0, 4.0)
# Seconds of chaos between password rotations (a rotation takes the place of a revocation or an
# expiry): a 30-second soak, whose chaos starts after the first calm phase, sees two.
ROTATE_EVERY = 8.0


@dataclass
class Chaos:
    """Revocations, expiries and password rotations done while traffic flowed."""

    revocations: int = 0
    expiries: int = 0
    rotations: int = 0  # rotate-password runs that succeeded
    rotation_failures: list[str] = field(default_factory=list)  # what went wrong, one per run
    # Rotations whose password change at the Webapp revoked the user's earlier tokens, the
    # gateway's pooled one included (``Simulator.password_change_revokes``).
    revoking_rotations: int = 0
    slowest_rotation: float = 0.0  # seconds one rotate-password run took, start-up included

    @property
    def events(self) -> int:
        """What took the gateway's token away, each one calling for a login."""
        return self.revocations + self.expiries + self.revoking_rotations

    @property
    def rotations_tried(self) -> int:
        return self.rotations + len(self.rotation_failures)


async def rotate(operator: Operator, done: Chaos) -> None:
    """One rotation, by the operator; the Webapp's password changes alternately revoke the
    user's tokens and leave them valid."""
    sim = operator.sim
    sim.password_change_revokes = done.rotations_tried % 2 == 0
    changes = sim.password_changes
    began = asyncio.get_running_loop().time()
    problem = await operator.rotate_password()
    took = asyncio.get_running_loop().time() - began
    done.slowest_rotation = max(done.slowest_rotation, took)
    # Counted by what the Webapp did: a failed run may have changed the password all the same.
    if sim.password_changes > changes and sim.password_change_revokes:
        done.revoking_rotations += 1
    if problem is None:
        done.rotations += 1
    else:
        done.rotation_failures.append(problem)


async def chaos(operator: Operator, rng: random.Random, started: float, until: float) -> Chaos:
    """Revoke or expire every token every few seconds, except in each cycle's calm phase; the
    first of these events ``ROTATE_EVERY`` seconds or more after the last rotation began (and
    the first of each cycle's chaos) is a password rotation instead."""
    loop = asyncio.get_running_loop()
    sim = operator.sim
    done = Chaos()
    rotate_at = started + CHAOS_CALM
    while True:
        phase = (loop.time() - started) % CHAOS_CYCLE
        calm = phase < CHAOS_CALM
        pause = CHAOS_CALM - phase if calm else rng.uniform(*CHAOS_GAP)
        if loop.time() + pause >= until:
            return done
        await asyncio.sleep(pause)
        if calm:
            continue
        if loop.time() >= rotate_at:
            rotate_at = loop.time() + ROTATE_EVERY
            await rotate(operator, done)
        elif rng.random() < 0.5:
            sim.revoke_all()
            done.revocations += 1
        else:
            sim.expire_all()
            done.expiries += 1
