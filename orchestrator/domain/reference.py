"""Which payment a provider's own id belongs to: some webhooks (disputes, say) name only the
provider's payment id. One aggregate per (provider, reference), created with the outcome that
taught us the reference, so the index is exactly as durable as the payment's events."""

from __future__ import annotations

from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

_REFERENCES = UUID("3c9e0f2a-7d41-4b6e-9a85-1f2e3d4c5b6a")


def reference_id(provider: str, provider_reference: str) -> UUID:
    return uuid5(_REFERENCES, f"{provider}\x1f{provider_reference}")


class ProviderReference(Aggregate):
    class Learned(Aggregate.Created):
        provider: str
        provider_reference: str
        payment_id: UUID

    @event(Learned)
    def __init__(
        self, *, id: UUID, provider: str, provider_reference: str, payment_id: UUID
    ) -> None:
        self.provider = provider
        self.provider_reference = provider_reference
        self.payment_id = payment_id
