"""The client's retry policy, to the exact sequence: real gRPC over loopback to a scripted
server (the edge of the world here), statuses built by payorch's own ``refusal``, the
randomness, the sleep and the clock injected."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from payorch_client import (
    DeadlineExceeded,
    FailedPrecondition,
    IdempotencyKeyReused,
    InProgress,
    InvalidArgument,
    PaymentNotFound,
    PaymentsClient,
    PayorchError,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    full_jitter,
    pb,
    pb_grpc,
)
from payorch_client.retry import delays

from orchestrator.api.errors import refusal, to_status
from orchestrator.domain import errors as domain

Answer = pb.Payment | pb.ListPaymentsResponse | grpc.Status | float  # float: answer that late


def half(value: float) -> float:
    return value / 2


class Scripted(pb_grpc.PaymentOrchestratorServicer):
    """Answers each call with the next scripted answer; remembers what each call carried."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.keys: list[str] = []
        self.authorization: list[str | None] = []
        self.listed: list[pb.ListPaymentsRequest] = []

    def CreatePayment(self, request: pb.CreatePaymentRequest, context: grpc.ServicerContext) -> pb.Payment:  # fmt: skip
        self.keys.append(request.idempotency_key)
        self.authorization.append(dict(context.invocation_metadata()).get("authorization"))
        answer = self.answers.pop(0)
        if isinstance(answer, float):
            time.sleep(answer)  # the caller has given up by then: what it answers is lost
            return pb.Payment(payment_id="too-late")
        if isinstance(answer, grpc.Status):
            context.abort_with_status(answer)
        assert isinstance(answer, pb.Payment)
        return answer

    def GetPayment(self, request: pb.GetPaymentRequest, context: grpc.ServicerContext) -> pb.Payment:  # fmt: skip
        return self.CreatePayment(pb.CreatePaymentRequest(), context)

    def ResolvePayment(self, request: pb.ResolvePaymentRequest, context: grpc.ServicerContext) -> pb.Payment:  # fmt: skip
        return self.CreatePayment(pb.CreatePaymentRequest(idempotency_key=request.idempotency_key), context)  # fmt: skip

    def ListPayments(self, request: pb.ListPaymentsRequest, context: grpc.ServicerContext) -> pb.ListPaymentsResponse:  # fmt: skip
        self.listed.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, grpc.Status):
            context.abort_with_status(answer)
        assert isinstance(answer, pb.ListPaymentsResponse)
        return answer


class World:
    def __init__(self, server: Scripted, port: int) -> None:
        self.server, self.port = server, port
        self.sleeps: list[float] = []
        self.now = 0.0
        self.generated: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def key(self) -> str:
        self.generated.append(str(uuid.uuid4()))
        return self.generated[-1]

    def client(self, policy: RetryPolicy | None = None, **options: object) -> PaymentsClient:
        return PaymentsClient(
            f"127.0.0.1:{self.port}",
            retry=policy or RetryPolicy(base=0.1, maximum=1.0, max_attempts=5, max_time=30),
            jitter=half,
            sleep=self.sleep,
            clock=self.clock,
            idempotency_keys=self.key,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
def world() -> Iterator[World]:
    scripted = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PaymentOrchestratorServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield World(scripted, port)
    finally:
        server.stop(grace=None)


PAYMENT = pb.Payment(payment_id="pay_1", status=pb.PAYMENT_STATUS_AUTHORIZED, amount=1000)


def create(client: PaymentsClient, **fields: object) -> pb.Payment:
    values: dict[str, object] = {
        "amount": 1000, "currency": "USD", "payment_method": "pm_card_visa", "region": "US",
    }  # fmt: skip
    return client.create_payment(**(values | fields))  # type: ignore[arg-type]


def in_progress(retry_after: float) -> grpc.Status:
    return refusal(grpc.StatusCode.ABORTED, "IDEMPOTENCY_REQUEST_IN_PROGRESS", "still running",
                   retry_after=retry_after)  # fmt: skip


def provider_unavailable(retry_after: float | None = None) -> grpc.Status:
    return refusal(grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", "no provider",
                   retry_after=retry_after)  # fmt: skip


def test_backoff_doubles_from_base_up_to_its_maximum_then_jitters() -> None:
    policy = RetryPolicy(base=0.1, maximum=0.5)
    sequence = delays(policy, half)
    assert [round(next(sequence), 6) for _ in range(5)] == [0.05, 0.1, 0.2, 0.25, 0.25]


def test_full_jitter_draws_uniformly_below_each_step_from_the_injected_randomness() -> None:
    policy = RetryPolicy(base=0.1, maximum=0.5)
    sequence = delays(policy, full_jitter(random.Random(7)))
    drawn = [next(sequence) for _ in range(4)]
    same = random.Random(7)
    assert drawn == [same.uniform(0, step) for step in (0.1, 0.2, 0.4, 0.5)]


def test_a_create_aborted_then_unavailable_is_retried_with_one_generated_key(
    world: World,
) -> None:
    world.server.answers = [in_progress(0.3), provider_unavailable(), PAYMENT]
    with world.client() as client:
        assert create(client) == PAYMENT
    (key,) = world.generated  # chosen once, before the first attempt
    assert world.server.keys == [key, key, key]
    assert uuid.UUID(key).version == 4
    # RetryInfo's 0.3 s beats the first jittered step (0.05); then the second step, 0.2 / 2.
    assert world.sleeps == [0.3, 0.1]


def test_a_key_given_by_the_caller_is_sent_on_every_attempt(world: World) -> None:
    world.server.answers = [provider_unavailable(), PAYMENT]
    with world.client() as client:
        create(client, idempotency_key="order-42-create")
    assert world.server.keys == ["order-42-create"] * 2
    assert world.generated == []


def test_a_rate_limit_with_retry_info_is_retried_after_its_delay(world: World) -> None:
    limited = refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down",
                      retry_after=1.5)  # fmt: skip
    world.server.answers = [limited, PAYMENT]
    with world.client() as client:
        assert create(client) == PAYMENT
    assert world.sleeps == [1.5]


def test_resource_exhausted_without_retry_info_is_not_retried(world: World) -> None:
    world.server.answers = [refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", "busy")]
    with world.client() as client, pytest.raises(RateLimited) as refused:
        create(client)
    assert (refused.value.reason, refused.value.attempts) == ("TOO_MANY_STREAMS", 1)
    assert world.sleeps == []


def test_it_gives_up_after_max_attempts_naming_the_reason_and_the_key(world: World) -> None:
    world.server.answers = [provider_unavailable(0.01) for _ in range(3)]
    policy = RetryPolicy(base=0.1, maximum=1.0, max_attempts=3, max_time=30)
    with world.client(policy) as client, pytest.raises(Unavailable) as refused:
        create(client)
    error = refused.value
    assert (error.code, error.reason, error.attempts) == (
        grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", 3,
    )  # fmt: skip
    assert error.idempotency_key == world.generated[0] == world.server.keys[2]
    assert world.sleeps == [0.05, 0.1]


def test_it_gives_up_rather_than_wait_past_its_time_budget(world: World) -> None:
    world.server.answers = [in_progress(10.0), in_progress(10.0)]
    policy = RetryPolicy(base=0.1, maximum=1.0, max_attempts=5, max_time=5)
    with world.client(policy) as client, pytest.raises(InProgress) as refused:
        create(client)
    assert (refused.value.reason, refused.value.attempts) == ("IDEMPOTENCY_REQUEST_IN_PROGRESS", 1)
    assert refused.value.retry_after == 10.0
    assert world.sleeps == []


def test_a_deadline_exceeded_is_retried_with_the_same_key(world: World) -> None:
    world.server.answers = [0.5, PAYMENT]  # the first answer comes too late
    with world.client(timeout=0.2) as client:
        assert create(client) == PAYMENT
    assert len(world.server.keys) == 2
    assert len(set(world.server.keys)) == 1
    assert world.sleeps == [0.05]


def test_a_deadline_exceeded_every_time_is_a_typed_error_with_the_key(world: World) -> None:
    world.server.answers = [0.3, 0.3]
    policy = RetryPolicy(base=0.1, maximum=1.0, max_attempts=2, max_time=30)
    with world.client(policy, timeout=0.1) as client, pytest.raises(DeadlineExceeded) as late:
        create(client)
    assert late.value.idempotency_key == world.server.keys[0] == world.server.keys[1]


@pytest.mark.parametrize(
    ("code", "reason", "error_type"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED", IdempotencyKeyReused),
        (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND", PaymentNotFound),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", PermissionDenied),
        (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_EXCEEDS_REFUNDABLE", FailedPrecondition),
    ],
)
def test_errors_that_a_retry_cannot_fix_raise_their_type_at_once(
    world: World, code: grpc.StatusCode, reason: str, error_type: type[PayorchError]
) -> None:
    world.server.answers = [refusal(code, reason, "refused")]
    with world.client() as client, pytest.raises(error_type) as refused:
        create(client)
    assert (refused.value.code, refused.value.reason) == (code, reason)
    assert len(world.server.keys) == 1
    assert world.sleeps == []


def test_invalid_argument_carries_its_error_info_metadata(world: World) -> None:
    world.server.answers = [
        refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_AMOUNT",
            "amount must be positive",
            metadata={"field": "amount"},
        )
    ]
    with world.client() as client, pytest.raises(InvalidArgument) as refused:
        create(client)
    error = refused.value
    assert (error.reason, error.metadata, error.message) == (
        "INVALID_AMOUNT", {"field": "amount"}, "amount must be positive",
    )  # fmt: skip


def test_reads_are_retried_too(world: World) -> None:
    world.server.answers = [provider_unavailable(), PAYMENT]
    with world.client() as client:
        assert client.get("pay_1") == PAYMENT
    assert world.sleeps == [0.05]


def test_a_resolution_still_in_progress_is_retried_with_one_generated_key(world: World) -> None:
    world.server.answers = [in_progress(0.3), PAYMENT]
    with world.client() as client:
        resolved = client.resolve_payment("pay_1", outcome="not-found", note="no such charge")
    assert resolved == PAYMENT
    (key,) = world.generated
    assert world.server.keys == [key, key]  # an operator's retry acts once, like any command
    assert world.sleeps == [0.3]


def test_iterating_payments_retries_a_page_and_asks_for_the_next_with_the_same_filter(
    world: World,
) -> None:
    page = [pb.PaymentSummary(payment_id=f"pay_{i}") for i in range(5)]
    world.server.answers = [
        pb.ListPaymentsResponse(payments=page[:2], next_page_token="after-1"),
        provider_unavailable(),
        pb.ListPaymentsResponse(payments=page[2:4], next_page_token="after-3"),
        pb.ListPaymentsResponse(payments=page[4:]),
    ]
    with world.client() as client:
        found = client.iter_payments(status=pb.PAYMENT_STATUS_REQUIRES_REVIEW, region="EU",
                                     page_size=2)  # fmt: skip
        assert next(found) == page[0]
        assert len(world.server.listed) == 1  # pages are fetched as the iteration needs them
        rest = list(found)
    assert [p.payment_id for p in [page[0], *rest]] == [p.payment_id for p in page]
    tokens = [request.page_token for request in world.server.listed]
    assert tokens == ["", "after-1", "after-1", "after-3"]  # the failed page asked again
    filters = {
        (r.status, r.region, r.reference, r.provider, r.page_size) for r in world.server.listed
    }
    assert filters == {(pb.PAYMENT_STATUS_REQUIRES_REVIEW, "EU", "", "", 2)}
    assert world.sleeps == [0.05]


def test_a_token_is_sent_as_a_bearer_header(world: World) -> None:
    world.server.answers = [PAYMENT]
    with world.client(token="tok-1") as client:
        create(client)
    assert world.server.authorization == ["Bearer tok-1"]


def test_a_token_is_never_sent_in_plaintext_off_loopback() -> None:
    with pytest.raises(ValueError, match="only over TLS"):
        PaymentsClient("payorch.internal:50051", token="tok-1")


def test_amounts_are_integers_of_minor_units(world: World) -> None:
    with world.client() as client:
        for amount in (10.5, True, "1000"):
            with pytest.raises(TypeError, match="minor units"):
                create(client, amount=amount)
    assert world.server.keys == []


@pytest.mark.parametrize(
    ("error", "error_type", "retried"),
    [
        (domain.InvalidArgument("amount", "bad", reason="INVALID_AMOUNT"), InvalidArgument, False),
        (domain.PaymentNotFound("p-1"), PaymentNotFound, False),
        (domain.IdempotencyKeyReused("k", "CreatePayment"), IdempotencyKeyReused, False),
        (
            domain.TransitionNotAllowed("no", reason="AMOUNT_EXCEEDS_REFUNDABLE"),
            FailedPrecondition,
            False,
        ),
        (domain.RequestInProgress("k", retry_after=0.25), InProgress, True),
        (domain.OperationInProgress("p-1", retry_after=0.25), InProgress, True),
        (domain.ConcurrentModification("lost"), InProgress, True),
        (domain.NoProviderAvailable("none", region="US", retry_after=0.25), Unavailable, True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_the_client_retries_exactly_the_server_errors_that_say_try_again(
    world: World, error: domain.DomainError, error_type: type[PayorchError], retried: bool
) -> None:
    """Every domain error as the server sends it (``to_status``): the client's type and
    whether it retries. The simulator's callers retry by this same classification."""
    world.server.answers = [to_status(error), to_status(error)]
    policy = RetryPolicy(base=0.1, maximum=1.0, max_attempts=2, max_time=30)
    with world.client(policy) as client, pytest.raises(error_type) as refused:
        create(client)
    assert refused.value.reason == error.reason
    assert refused.value.metadata == error.metadata
    assert refused.value.retry_after == getattr(error, "retry_after", None)
    assert len(world.server.keys) == (2 if retried else 1)


@pytest.mark.parametrize(
    "bad",
    [{"max_attempts": 0}, {"base": 0}, {"base": 2.0, "maximum": 1.0}, {"max_time": 0}],
)
def test_a_policy_that_could_never_call_or_never_wait_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a usable retry policy"):
        RetryPolicy(**bad)  # type: ignore[arg-type]
