"""What a run went through: the rare paths a regression seed must still take to prove its fix.

A seed that found a defect becomes a regression test only while it still leads the simulator
down that defect's path; if a change to the simulator sends it elsewhere, its test fails and
says so, instead of passing without testing anything.
"""

from __future__ import annotations

from eventsourcing.utils import get_topic

from orchestrator.domain.command import Command
from orchestrator.domain.webhook import WebhookDelivery
from tests.simulation.world import World

# The path of each defect the simulator found, by the name its regression test uses.
FOREIGN_EVENT = "a provider's event about an attempt of another provider"
UNSENT_LOOKUP = "a lookup in doubt that could not be sent (provider down, circuit open)"
CONCURRENT_LOOKUPS = "two replicas looked up one step of the schedule together"
CALLER_LOOKUP = "a caller's follow-up looked up an operation in doubt off the schedule"
LEARNT_AFTER_ANSWER = "a command answered in doubt, and its outcome was learnt afterwards"
KEYLESS_AMONG_SEVERAL = "an event without a key, about one of several operations of its kind"
OVER_LIMIT = "a provider over its outbound limits refused a call (nothing sent)"
OPERATOR_RESOLVED = "an operator settled a payment in review from the provider's ledger"
OPERATOR_SETTLED_REVERSAL = "an operator recorded a cancel or refund in review as done"
REMATCHED = "a webhook that arrived before its payment was known was matched later"
GHOST = "an actor crashed its replica before a wait that outlasted the replica's restart"
UNBORN_GHOST = "an actor spawned for an incarnation that crashed came due on the next one"


def witnesses(world: World) -> set[str]:
    seen: set[str] = set()
    counts = world.recovery_counts()
    for host, died, would_wake in world.scheduler.died_before_waits:
        if any(name == host and died < at < would_wake for (name, _), at in world.started.items()):
            seen.add(GHOST)
    if world.scheduler.never_started:
        seen.add(UNBORN_GHOST)
    if any(
        route.bulkhead is not None and route.bulkhead.refused
        for app in world.apps
        for route in app.router.routes.values()
    ):
        seen.add(OVER_LIMIT)
    if counts.get("lookups_not_sent"):
        seen.add(UNSENT_LOOKUP)
    if counts.get("lookups_already_recorded"):
        seen.add(CONCURRENT_LOOKUPS)
    if counts.get("lookups_off_schedule"):
        seen.add(CALLER_LOOKUP)
    learnt = get_topic(Command.OutcomeLearned)
    if world.store.select_notifications(start=0, limit=1, topics=[learnt]):
        seen.add(LEARNT_AFTER_ANSWER)
    if world.resolutions:
        seen.add(OPERATOR_RESOLVED)
    if any(outcome in ("canceled", "refunded") for _, _, outcome in world.resolutions):
        seen.add(OPERATOR_SETTLED_REVERSAL)
    applied = get_topic(WebhookDelivery.Applied)
    unmatched = get_topic(WebhookDelivery.Unmatched)
    marked = {n.originator_id for n in world.store.select_notifications(
        start=0, limit=10**6, topics=[unmatched])}  # fmt: skip
    if any(n.originator_id in marked for n in world.store.select_notifications(
        start=0, limit=10**6, topics=[applied])):  # fmt: skip
        seen.add(REMATCHED)
    app = world.any_app()
    for page in app.event_pages():
        for _, event in page:
            effect = getattr(event, "effect", "")
            if "superseded" in effect or (" is at " in effect and ", not " in effect):
                seen.add(FOREIGN_EVENT)
            if effect.startswith("names no attempt"):
                seen.add(KEYLESS_AMONG_SEVERAL)
    return seen
