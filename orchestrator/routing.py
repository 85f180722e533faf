"""Which provider serves a payment: regions (and optionally currencies) map to an ordered list
of adapters, a primary first. Adapters are looked up by name for follow-up operations, so a
payment always returns to the provider that authorized it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from orchestrator.ports import PaymentProvider
from orchestrator.resilience.breaker import CircuitBreaker
from orchestrator.resilience.bulkhead import Bulkhead

DEFAULT_ROUTE = "*"


@dataclass(frozen=True)
class Route:
    provider: PaymentProvider
    timeout: float  # the whole budget of one provider call, retries included, in seconds
    breaker: CircuitBreaker | None = None
    kind: str = ""  # the provider type: sandbox, stripe, razorpay, adyen
    adapter: object = None  # the bare adapter under the resilient layer (it verifies webhooks)
    bulkhead: Bulkhead | None = None

    def available(self) -> bool:
        """Whether a call would be let through now: an open circuit and a full bulkhead (every
        slot taken, or no token left this second) fail fast."""
        return (self.breaker is None or self.breaker.allows()) and (
            self.bulkhead is None or self.bulkhead.allows()
        )

    def admitted(self) -> AbstractContextManager[None]:
        """Holds a slot of the bulkhead (and its first token) for the call made inside the
        block; ``ProviderBusy`` when over its limits. See ``resilience/bulkhead.py``."""
        return nullcontext() if self.bulkhead is None else self.bulkhead.admitted()

    def retry_after(self) -> float:
        """Seconds until a call would be let through, as far as anyone can tell."""
        return max(
            0.0 if self.breaker is None else self.breaker.retry_after(),
            0.0 if self.bulkhead is None else self.bulkhead.retry_after(),
        )


class Router:
    def __init__(
        self,
        providers: Mapping[str, Route],
        routes: Mapping[str, Sequence[str]],
    ) -> None:
        """``routes`` maps ``"REGION"``, ``"REGION/CURRENCY"`` or ``"*"`` to provider names."""
        unknown = {name for names in routes.values() for name in names} - set(providers)
        if unknown:
            raise ValueError(f"routes name unknown providers: {sorted(unknown)}")
        self._providers = dict(providers)
        self._routes = {key: tuple(names) for key, names in routes.items()}

    def candidates(self, region: str, currency: str) -> list[Route]:
        """The providers to try for a new payment, in order; empty when none serves it."""
        for key in (f"{region}/{currency}", region, DEFAULT_ROUTE):
            if key in self._routes:
                return [self._providers[name] for name in self._routes[key]]
        return []

    def route(self, provider_name: str) -> Route:
        return self._providers[provider_name]

    @property
    def provider_names(self) -> list[str]:
        return sorted(self._providers)

    @property
    def routes(self) -> dict[str, Route]:
        return dict(self._providers)
