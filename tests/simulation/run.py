"""Runs seeds: one world each, its invariants checked, its log's digest taken."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from tests.simulation.invariants import check
from tests.simulation.scheduler import EPOCH
from tests.simulation.witnesses import witnesses
from tests.simulation.world import World

REPRODUCE = ".venv/bin/python -m tests.simulation --seed {seed} -v"


@dataclass(frozen=True)
class Outcome:
    seed: int
    digest: str
    problems: list[str]
    scenario: str
    crashes: list[str]
    steps: int
    timelines: dict[str, list[str]]
    witnessed: frozenset[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"seed {self.seed}: digest {self.digest} ({self.steps} steps; {self.scenario})"]
        if self.crashes:
            lines.append(f"  crashes: {'; '.join(self.crashes)}")
        lines += [f"  VIOLATION {p}" for p in self.problems]
        for pid, events in self.timelines.items():
            lines.append(f"  payment {pid}:")
            lines += [f"    {line}" for line in events]
        if self.problems:
            lines.append(f"  reproduce: {REPRODUCE.format(seed=self.seed)}")
        return "\n".join(lines)


def run_seed(seed: int, *, verbose: bool = False) -> Outcome:
    # The real code logs what it does; thousands of worlds a minute would drown the output.
    logging.disable(logging.CRITICAL)
    try:
        world = World(seed)
        world.run()
        problems = check(world)
    finally:
        logging.disable(logging.NOTSET)
    return Outcome(
        seed,
        world.store.digest(),
        problems,
        world.scenario.describe(),
        world.crashes,
        world.scheduler.steps,
        {pid: timeline(world, pid) for pid in sorted(_named(problems))} if verbose else {},
        frozenset(witnesses(world)),
    )


def _named(problems: list[str]) -> set[str]:
    return {p.split()[1].rstrip(":") for p in problems if p.startswith("payment ")}


def timeline(world: World, payment_id: str) -> list[str]:
    """The payment's events, one a line: what a reader of a failing seed needs first."""
    app = world.any_app()
    lines = []
    for event in app.events.get(UUID(payment_id)):
        at = event.timestamp.timestamp() - EPOCH
        fields = {
            k: v
            for k, v in vars(event).items()
            if k
            in ("sequence", "provider", "provider_key", "message", "kind", "effect", "event_id")
            and v not in ("", None)
        }
        cause = event.caused_by.get("kind", "") if hasattr(event, "caused_by") else ""
        lines.append(
            f"{at:8.3f} v{event.originator_version} {type(event).__name__} {fields} <- {cause}"
        )
    return lines
