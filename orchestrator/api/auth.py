"""The gRPC interceptor that says who calls and what it may do, before the servicer runs.

One job per call, in order: name the caller (a verified client certificate, else a bearer
token), check the method's role, take a token from the caller's bucket, hold a stream slot for
StreamEvents; then run the servicer's method as that caller (``acting_as``). A refusal is a
status with an ``ErrorInfo`` reason, and the servicer never runs, so nothing is read or
written. Installed only when ``[auth]`` is configured: without it there is no per-call cost."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import grpc

from orchestrator.api._generated import payments_pb2
from orchestrator.api.errors import refusal
from orchestrator.api.handlers import Behaviour, WrappedByMethod, rewrapped
from orchestrator.api.identity import (
    EVENTS_STREAM,
    OPERATOR,
    PAYMENTS_READ,
    PAYMENTS_WRITE,
    Caller,
    acting_as,
)
from orchestrator.api.limits import Slots, TokenBucket
from orchestrator.api.trust import AuthSettings

log = logging.getLogger("payorch.auth")

PAYMENTS_SERVICE = payments_pb2.DESCRIPTOR.services_by_name["PaymentOrchestrator"].full_name
# The role each method of the payments service needs; a method not listed is refused.
METHOD_ROLES = {
    "CreatePayment": PAYMENTS_WRITE,
    "CapturePayment": PAYMENTS_WRITE,
    "CancelPayment": PAYMENTS_WRITE,
    "RefundPayment": PAYMENTS_WRITE,
    "GetPayment": PAYMENTS_READ,
    "ListPaymentEvents": PAYMENTS_READ,
    "ListPayments": PAYMENTS_READ,
    "StreamEvents": EVENTS_STREAM,
    "ResolvePayment": OPERATOR,
}
STREAMS = frozenset({"StreamEvents"})  # methods that hold a stream slot while they run
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")  # fmt: skip
_BEARER = "bearer "

_AuthContext = Mapping[str, Iterable[bytes]]  # each property's values (typeshed: one bytes)


class Refused(Exception):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class Authenticator:
    """Names the caller of a call, from its certificate or its token, or refuses it."""

    def __init__(self, settings: AuthSettings) -> None:
        self.identities = {i: s.caller for s in settings.callers for i in s.identities}
        self.tokens = [(d, s.caller) for s in settings.callers for d in s.token_sha256]

    def caller(self, context: grpc.ServicerContext) -> Caller:
        if self.identities:
            found = self._by_certificate(cast(_AuthContext, context.auth_context()))
            if found is not None:
                return found
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                found = self._by_token(value)
                if found is not None:
                    return found
        raise Refused(refusal(
            grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED",
            "no valid caller identity: present a client certificate of a configured caller "
            "or 'authorization: Bearer <token>'",
        ))  # fmt: skip

    def _by_certificate(self, auth: _AuthContext) -> Caller | None:
        """URI SANs first (SPIFFE IDs), then DNS SANs, then the subject's CN."""
        for key, kind in (("peer_uri", "uri"), ("peer_dns", "dns"), ("x509_common_name", "cn")):
            for value in auth.get(key, ()):
                found = self.identities.get(f"{kind}:{value.decode(errors='replace')}")
                if found is not None:
                    return found
        return None

    def _by_token(self, header: str) -> Caller | None:
        if header[: len(_BEARER)].lower() != _BEARER:
            return None
        digest = hashlib.sha256(header[len(_BEARER) :].strip().encode()).digest()
        found = None
        for expected, caller in self.tokens:  # every hash, whatever matched: constant time
            if hmac.compare_digest(expected, digest):
                found = caller
        return found


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] | None = None) -> None:
        self.authenticator = Authenticator(settings)
        self.buckets = {
            s.caller.name: TokenBucket(s.rate.per_second, s.rate.burst, **_clock(clock))
            for s in settings.callers
            if s.rate is not None
        }
        self.streams = Slots(settings.max_streams)
        self._wrapped = WrappedByMethod(self._guarded)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None:
            return None
        return self._wrapped(str(details.method), handler)

    def _guarded(
        self, path: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The method's handler, admitting each call first (built once per method: every call
        is still authenticated, checked and counted by ``_admit``)."""
        service, _, method = path.lstrip("/").partition("/")
        if service in OPEN_SERVICES:
            return handler
        role = METHOD_ROLES.get(method) if service == PAYMENTS_SERVICE else None
        return _wrap(handler, lambda context: self._admit(context, method, role),
                     stream=method in STREAMS, slots=self.streams)  # fmt: skip

    def _admit(self, context: grpc.ServicerContext, method: str, role: str | None) -> Caller:
        caller = self.authenticator.caller(context)
        if role is None or not caller.may(role):
            log.info("refused %s to caller %r: role %s missing", method, caller.name, role)
            raise Refused(refusal(
                grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED",
                f"caller {caller.name!r} may not call {method}"
                + (f" (needs role {role})" if role else " (not an API method)"),
                metadata={"role": role} if role else None,
            ))  # fmt: skip
        bucket = self.buckets.get(caller.name)
        wait = bucket.take() if bucket is not None else 0.0
        if wait > 0:
            raise Refused(refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                f"caller {caller.name!r} is over its rate limit: retry in {wait:.3f} s",
                retry_after=wait,
            ))  # fmt: skip
        return caller


def _clock(clock: Callable[[], float] | None) -> dict[str, Callable[[], float]]:
    return {"clock": clock} if clock is not None else {}


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    admit: Callable[[grpc.ServicerContext], Caller],
    *,
    stream: bool,
    slots: Slots,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler, its behaviour run after ``admit`` and as the caller it names."""
    return rewrapped(
        handler,
        unary=lambda behaviour: _unary(behaviour, admit),
        streamed=lambda behaviour: _streamed(behaviour, admit, slots if stream else None),
    )


def _unary(behaviour: Behaviour, admit: Callable[[grpc.ServicerContext], Caller]) -> Behaviour:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            caller = admit(context)
        except Refused as refused:
            context.abort_with_status(refused.status)
        with acting_as(caller):
            return behaviour(request, context)

    return run


def _streamed(
    behaviour: Behaviour, admit: Callable[[grpc.ServicerContext], Caller], slots: Slots | None
) -> Behaviour:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            caller = admit(context)
        except Refused as refused:
            context.abort_with_status(refused.status)
        if slots is not None and not slots.acquire():
            context.abort_with_status(refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS",
                f"{slots.limit} streams are open, the most this server serves: retry later",
            ))  # fmt: skip
        try:
            with acting_as(caller):
                responses = iter(behaviour(request, context))
            while True:
                # Each step as the caller: the servicer's generator runs only inside next(),
                # and the caller never leaks into the worker thread between steps.
                with acting_as(caller):
                    try:
                        response = next(responses)
                    except StopIteration:
                        return
                yield response
        finally:
            if slots is not None:
                slots.release()

    return run
