"""The deterministic simulation, run by the suite: thousands of seeded worlds of replicas,
providers and callers, each checked against the invariants of money; and the proof that a seed
is a reproduction (the same seed, in another process with other hash seeds, gives the same log).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simulation.run import run_seed
from tests.simulation.witnesses import (
    CALLER_LOOKUP,
    CONCURRENT_LOOKUPS,
    FOREIGN_EVENT,
    GHOST,
    KEYLESS_AMONG_SEVERAL,
    LEARNT_AFTER_ANSWER,
    OPERATOR_RESOLVED,
    OPERATOR_SETTLED_REVERSAL,
    REMATCHED,
    UNBORN_GHOST,
    UNSENT_LOOKUP,
)

SEEDS = int(os.environ.get("PAYORCH_SIMULATION_SEEDS", "2000"))
ROOT = Path(__file__).resolve().parents[2]


def _problems(seed: int) -> tuple[int, list[str], str]:
    outcome = run_seed(seed)
    return seed, outcome.problems, outcome.report()


# About 75 s for 2,000 seeds on this 2-core machine when it is quiet; the limit only stops a
# run that hangs, on a machine that is busy with other work too.
@pytest.mark.timeout(1200)
def test_every_seed_keeps_the_invariants_of_money() -> None:
    # Two worker processes: this machine's two cores. spawn, not fork: the suite's process
    # may hold gRPC threads that a fork would copy half-alive.
    context = multiprocessing.get_context("spawn")
    failures = []
    with context.Pool(2) as pool:
        for _seed, problems, report in pool.imap_unordered(_problems, range(SEEDS), chunksize=25):
            if problems:
                failures.append(report)
    assert not failures, f"{len(failures)} of {SEEDS} seeds failed:\n" + "\n".join(failures[:5])


def test_a_seed_replays_exactly_in_the_same_process() -> None:
    first, second = run_seed(7), run_seed(7)
    assert first.digest == second.digest
    assert first.steps == second.steps
    assert run_seed(8).digest != first.digest  # a digest that tells runs apart


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_a_seed_replays_exactly_in_another_process(hash_seed: str) -> None:
    here = run_seed(11)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    printed = subprocess.run(
        [sys.executable, "-m", "tests.simulation", "--seed", "11"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    match = re.search(r"digest ([0-9a-f]{64})", printed)
    assert match is not None, printed
    assert match.group(1) == here.digest


def test_a_failing_seed_prints_the_command_that_reproduces_it() -> None:
    outcome = run_seed(3)
    failing = type(outcome)(**{**vars(outcome), "problems": ["payment x: made up"]})
    assert ".venv/bin/python -m tests.simulation --seed 3 -v" in failing.report()


# Seeds that take the path of a defect the simulator found (the closing note of issue 8 lists
# the run that found the first four; seeds 849, 21, 33, 1465 and 2162 found them). Each must
# still take its defect's path, and now keep every invariant. When the recovery index and the
# webhook consumer's skipping position changed which reads the workers make, those seeds went
# elsewhere, and the first seeds that take the same paths replaced them. So again in issue
# 10's session, when callers of two accounts (with their intruders and twin), outbound limits,
# webhooks reaching the intake in batches and each replica's listing projector (its reads are
# wait points) joined the worlds: the seeds below are the lowest that take each path now
# (survey of seeds 0-799, every one keeping every invariant). Issue 11's operator (it reads
# the review queue every few seconds) and the consumer's re-match of unmatched deliveries (its
# reads are wait points) moved them again: re-picked from a survey of seeds 0-799 (all keep
# every invariant), the lowest seed taking each path that no earlier entry holds. Seeds 731
# and 1182 found the ghost (a simulator defect): an actor that crashed its own replica slept
# on, woke after the restart and ran the old incarnation's code. The last two are no defects
# but the new paths, pinned so that the simulator keeps taking them. When the re-match came
# to read the unmatched index (its catch-up's reads are wait points) instead of the log,
# the seeds no longer on their path were re-picked the same way from a survey of seeds 0-1999
# (all keep every invariant); 0, 9, 15 and 13 still took theirs. After the consumer came to apply a page of
# deliveries in one transaction, only defect 3's seed moved (2 to 39; survey of seeds 0-1999
# with the operator's cancel and refund outcomes, all keeping every invariant).
REGRESSIONS = {
    14: FOREIGN_EVENT,  # defect 1: alpha's late failure declined what beta authorized
    0: UNSENT_LOOKUP,  # defect 2: lookups refused by the open breaker counted as asked
    39: CONCURRENT_LOOKUPS,  # defect 3: two replicas recorded one step twice
    9: CALLER_LOOKUP,  # a capture retried on a payment in doubt spent the schedule
    8: LEARNT_AFTER_ANSWER,  # a create answered in doubt replayed a later cancel
    # Seeds 386, 15, 13 and 16 took these four paths until the webhook consumer read a page's
    # payments in one query (fewer simulated store reads, other interleavings); 523, 6, 2
    # and 23 take them now.
    523: KEYLESS_AMONG_SEVERAL,  # a first refund's late event "refunded" the second
    6: GHOST,  # an old recovery worker sent past the new incarnation's rate limit
    2: OPERATOR_RESOLVED,  # an operator settled the review queue from the ledger
    23: REMATCHED,  # an authorization's event arrived before payorch knew the charge
    # A recovery worker spawned for an incarnation that crashed before its first pass ran on
    # the next incarnation with the old replica's bulkhead (a simulator defect: a real
    # process's threads die with it); seed 1734 found it breaking the rate-limit invariant,
    # before the operator and re-matching moved it; 160 takes that path now, and
    # test_scheduler.py pins the rule itself.
    160: UNBORN_GHOST,
    # A refund in review at a provider whose lookups see only authorizations: the operator's
    # "refunded" was refused as no outcome of a refund, leaving it in review for ever (seed
    # 183 found it; 26 takes that path since the re-match reads the unmatched index).
    26: OPERATOR_SETTLED_REVERSAL,
}


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_a_seed_that_found_a_defect_keeps_every_invariant(seed: int) -> None:
    outcome = run_seed(seed, verbose=True)
    assert REGRESSIONS[seed] in outcome.witnessed, (
        f"seed {seed} no longer goes through {REGRESSIONS[seed]!r}: the simulator changed; "
        "pick a seed that does (python -m tests.simulation --seeds ...)"
    )
    assert outcome.ok, outcome.report()
