"""``python -m tests.simulation``: run seeds of the deterministic simulation.

--seed N          one seed, its digest and any violation (with -v, the scenario)
--seeds A:B       seeds A to B-1; exits 1 if any finds a violation
--long N          N seeds drawn at random (the seed of each is printed when it fails)
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from tests.simulation.run import run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int)
    group.add_argument("--seeds", help="A:B, the seeds A to B-1")
    group.add_argument("--long", type=int, metavar="N", help="N seeds drawn at random")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.seed is not None:
        seeds: list[int] = [args.seed]
    elif args.seeds:
        first, _, last = args.seeds.partition(":")
        seeds = list(range(int(first), int(last)))
    else:
        seeds = [random.SystemRandom().randrange(2**32) for _ in range(args.long)]
    failed = 0
    started = time.monotonic()
    for seed in seeds:
        outcome = run_seed(seed, verbose=args.verbose)
        if not outcome.ok:
            failed += 1
        if not outcome.ok or args.verbose or len(seeds) == 1:
            print(outcome.report(), flush=True)
    elapsed = time.monotonic() - started
    print(f"{len(seeds)} seed(s), {failed} with violations, in {elapsed:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
