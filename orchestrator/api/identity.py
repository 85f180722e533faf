"""Who is calling: the authenticated caller of the current gRPC call.

The auth interceptor (``orchestrator/api/auth.py``) authenticates every call and runs the
servicer's method with its ``Caller`` set here; the servicer reads it to name the idempotency
scope and the account. With no authentication configured every call is ``ANONYMOUS``: the
pre-auth scope and the default account, with every role (today's loopback zero-config).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from orchestrator.accounts import DEFAULT_ACCOUNT
from orchestrator.domain.command import DEFAULT_SCOPE

# Roles (the auth configuration grants them per caller)
PAYMENTS_WRITE = "payments.write"  # create, capture, cancel, refund
PAYMENTS_READ = "payments.read"  # get, list a payment's events
EVENTS_STREAM = "events.stream"  # StreamEvents: the feed for downstream consumers
OPERATOR = "operator"  # operator tools (settling payments that need a person)
ROLES = frozenset({PAYMENTS_WRITE, PAYMENTS_READ, EVENTS_STREAM, OPERATOR})


@dataclass(frozen=True)
class Caller:
    name: str  # who it is, as logged
    account: str  # whose payments it sees and changes
    roles: frozenset[str]
    scope: str  # its idempotency scope: its name, or the pre-auth scope for one migrating

    def may(self, role: str) -> bool:
        return role in self.roles


ANONYMOUS = Caller(name="anonymous", account=DEFAULT_ACCOUNT, roles=ROLES, scope=DEFAULT_SCOPE)

_current: ContextVar[Caller] = ContextVar("payorch_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    return _current.get()


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[Caller]:
    """Runs the body as ``caller``; the previous caller is restored after, even on error."""
    token = _current.set(caller)
    try:
        yield caller
    finally:
        _current.reset(token)
