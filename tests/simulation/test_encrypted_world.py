"""The simulated worlds store their events encrypted, mid key rotation: states sealed by both
keys sit in one log, and every replica reads them all (the invariants are checked on reads)."""

from __future__ import annotations

import logging
from collections import Counter

from orchestrator.encryption import key_id_of
from tests.simulation.invariants import check
from tests.simulation.world import World


def test_replicas_on_both_keys_store_nothing_in_clear_and_keep_the_invariants() -> None:
    logging.disable(logging.CRITICAL)
    try:
        seed = next(s for s in range(50) if World(s).scenario.replicas > 1)
        world = World(seed)
        world.run()
        problems = check(world)
    finally:
        logging.disable(logging.NOTSET)
    assert problems == []
    stored = world.store.select_notifications(start=0, limit=100_000)
    sealed_by = Counter(key_id_of(n.state) for n in stored)
    assert set(sealed_by) == {"sim-old", "sim-new"}, sealed_by  # no None: nothing in clear
