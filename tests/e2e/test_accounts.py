"""Accounts through the gRPC API: real gRPC over loopback, real stores (SQLite and PostgreSQL),
the real sandbox over HTTP. Until the auth interceptor lands, a test-only interceptor runs each
call as the caller its ``x-test-caller`` header names (``name@account``), exactly as the auth
interceptor does: the servicer's method runs inside ``acting_as(caller)``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import grpc
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.identity import ROLES, Caller, acting_as
from orchestrator.api.servicer import PaymentOrchestratorServicer
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router
from tests.e2e.helpers import create_request, error_reason

HEADER = "x-test-caller"


class ActingAsHeader(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Test only: runs the method as the caller named by the header; without it, as today's
    anonymous caller. Wraps the method call only, as the auth interceptor does: a streaming
    method's body runs later, outside the caller's context."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        named = dict(details.invocation_metadata or ()).get(HEADER)
        if handler is None or named is None:
            return handler
        name, account = str(named).split("@")
        caller = Caller(name=name, account=account, roles=ROLES, scope=name)

        def wrap(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            def run(request: Any, context: Any) -> Any:
                with acting_as(caller):
                    return behavior(request, context)

            return run

        if handler.unary_unary is not None:
            make, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        else:
            make, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        return make(
            wrap(behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class Served:
    app: Payments
    stub: payments_pb2_grpc.PaymentOrchestratorStub
    sandbox: SandboxServer

    def calls(self) -> int:
        return len(self.sandbox.state.ledger())

    def stored(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)


@pytest.fixture
def served(database_url: str, sandbox: SandboxServer) -> Iterator[Served]:
    app = build_payments(database_url, load_router(None, sandbox.url))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), interceptors=[ActingAsHeader()]
    )
    payments_pb2_grpc.add_PaymentOrchestratorServicer_to_server(  # type: ignore[no-untyped-call]
        PaymentOrchestratorServicer(app), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)  # type: ignore[no-untyped-call]
        yield Served(app, stub, sandbox)
    finally:
        channel.close()
        server.stop(grace=1).wait()
        app.close()


def as_(caller: str) -> tuple[tuple[str, str], ...]:
    return ((HEADER, caller),)


CHECKOUT, REFUNDS, INTRUDER = "checkout@shop", "refunds@shop", "billing@other"


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    code, reason = error_reason(error.value)
    return code, reason, str(error.value.details())


def test_another_accounts_caller_gets_not_found_for_every_rpc_on_the_payment(
    served: Served,
) -> None:
    stub = served.stub
    payment = stub.CreatePayment(create_request("order-1"), metadata=as_(CHECKOUT))
    pid, nobody = payment.payment_id, str(uuid4())
    # Another service of the same account sees and changes it.
    assert stub.GetPayment(pb.GetPaymentRequest(payment_id=pid), metadata=as_(REFUNDS)) == payment
    stored, calls = served.stored(), served.calls()

    def rpcs(payment_id: str) -> list[Callable[[], object]]:
        return [
            lambda: stub.GetPayment(
                pb.GetPaymentRequest(payment_id=payment_id), metadata=as_(INTRUDER)
            ),
            lambda: stub.ListPaymentEvents(
                pb.ListPaymentEventsRequest(payment_id=payment_id), metadata=as_(INTRUDER)
            ),
            lambda: stub.CapturePayment(
                pb.CapturePaymentRequest(idempotency_key="c-1", payment_id=payment_id),
                metadata=as_(INTRUDER),
            ),
            lambda: stub.CancelPayment(
                pb.CancelPaymentRequest(idempotency_key="x-1", payment_id=payment_id),
                metadata=as_(INTRUDER),
            ),
            lambda: stub.RefundPayment(
                pb.RefundPaymentRequest(idempotency_key="r-1", payment_id=payment_id, amount=1),
                metadata=as_(INTRUDER),
            ),
        ]

    for theirs, missing in zip(rpcs(pid), rpcs(nobody), strict=True):
        code, reason, details = refused(theirs)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
        # Word for word what an id that does not exist gets: nothing says it exists.
        assert (code, reason, details.replace(pid, nobody)) == refused(missing)
    assert (served.stored(), served.calls()) == (stored, calls)  # nothing written or sent
    # Today's anonymous caller is the default account: not the shop's either.
    code, reason, _ = refused(lambda: stub.GetPayment(pb.GetPaymentRequest(payment_id=pid)))
    assert code == grpc.StatusCode.NOT_FOUND
    captured = stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="c-1", payment_id=pid), metadata=as_(REFUNDS)
    )
    assert captured.status == pb.PAYMENT_STATUS_CAPTURED


def test_the_same_key_from_two_callers_makes_two_payments_and_two_provider_calls(
    served: Served,
) -> None:
    request = create_request("order-42")
    first = served.stub.CreatePayment(request, metadata=as_(CHECKOUT))
    second = served.stub.CreatePayment(request, metadata=as_(REFUNDS))  # same account too
    assert first.payment_id != second.payment_id
    assert served.calls() == 2
    assert served.stub.CreatePayment(request, metadata=as_(CHECKOUT)) == first
    assert served.calls() == 2


def stream(served: Served, caller: str | None) -> list[pb.StreamedEvent]:
    metadata = as_(caller) if caller else None
    return list(served.stub.StreamEvents(pb.StreamEventsRequest(), metadata=metadata))


def test_stream_events_gives_a_caller_only_its_accounts_payments_events(served: Served) -> None:
    shop = [
        served.stub.CreatePayment(create_request(f"s-{i}"), metadata=as_(CHECKOUT))
        for i in range(2)
    ]
    other = served.stub.CreatePayment(create_request("o-1"), metadata=as_(INTRUDER))
    anonymous = served.stub.CreatePayment(create_request("a-1"))
    served.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="c", payment_id=shop[0].payment_id),
        metadata=as_(REFUNDS),
    )
    everything = served.app.events_after(0)
    seen = {caller: stream(served, caller) for caller in (CHECKOUT, INTRUDER, None)}
    assert {e.payment_id for e in seen[CHECKOUT]} == {p.payment_id for p in shop}
    assert {e.payment_id for e in seen[INTRUDER]} == {other.payment_id}
    assert {e.payment_id for e in seen[None]} == {anonymous.payment_id}
    # Positions are the log's: each caller sees gaps, and together they see it all once.
    positions = sorted(e.position for events in seen.values() for e in events)
    assert positions == [p for p, _ in everything]
    assert stream(served, REFUNDS) == seen[CHECKOUT]  # the account's, not the caller's


def test_a_following_stream_never_shows_another_accounts_new_events(served: Served) -> None:
    call = served.stub.StreamEvents(pb.StreamEventsRequest(follow=True), metadata=as_(INTRUDER))
    seen: list[pb.StreamedEvent] = []

    def consume() -> None:
        try:
            for event in call:
                seen.append(event)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.CANCELLED

    reader = threading.Thread(target=consume)
    reader.start()
    served.stub.CreatePayment(create_request("s-1"), metadata=as_(CHECKOUT))
    mine = served.stub.CreatePayment(create_request("o-1"), metadata=as_(INTRUDER))
    served.stub.CreatePayment(create_request("s-2"), metadata=as_(CHECKOUT))
    expected = len(list(served.app.payment_events(mine.payment_id)))
    deadline = time.monotonic() + 10
    while len(seen) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a follow poll or two more: the shop's last payment is stored by now
    call.cancel()
    reader.join(timeout=5)
    assert len(seen) == expected
    assert {e.payment_id for e in seen} == {mine.payment_id}
